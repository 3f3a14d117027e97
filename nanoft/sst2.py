"""SST-2 for a BERT sentence classifier: sentences -> token ids -> padded batches, and accuracy on a split.

    rows = read_sst2(dataset_path("sst2/train.tsv").path)            # [(sentence, label)], nanoft.data
    train_rows, val_rows = carve_validation(rows, n_val=500, seed=0)   # choose hyperparameters on val, never on dev
    train_feats = encode_sst2(train_rows, tok, max_len=64)             # [{"input_ids": [...], "labels": 0/1}]
    train(model, train_feats, loss_fn, cfg, collate_fn=Collate(pad_id=0))            # nanoft.train
    acc = evaluate_accuracy(lambda batch: model("sst2", batch)["logits"], encode_sst2(val_rows, tok, 64))

Batches are padded to their longest sentence, not to max_len: SST-2's sentences are short (train.tsv is mostly
phrases of a few words), so padding every one to 64 tokens would spend most of the compute on [PAD].
"""
import random
from dataclasses import dataclass

import torch

from nanoft.metrics import accuracy


def carve_validation(rows, n_val, seed=0):
    """(train_rows, val_rows): a seeded random n_val rows held out of train for choosing hyperparameters.
    n_val may be a count or a fraction (0 < n_val < 1); the order of what is left is unchanged."""
    n = len(rows)
    if 0 < n_val < 1:
        n_val = round(n * n_val)
    n_val = int(n_val)
    if not 0 < n_val < n:
        raise ValueError(f"cannot hold out {n_val} of {n} rows for validation: pass n_val between 1 and {n - 1} "
                         "(or a fraction such as 0.1)")
    held = set(random.Random(seed).sample(range(n), n_val))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def encode_sst2(rows, tokenizer, max_len=64):
    """[(sentence, label)] -> [{"input_ids": [CLS] sentence [SEP] cut to max_len, "labels": label}].

    Cutting keeps the closing [SEP], like transformers' truncation=True: BERT never saw a sequence without one."""
    if max_len < 3:
        raise ValueError(f"max_len={max_len} leaves no room for a word between [CLS] and [SEP]: use max_len >= 3")
    ids = tokenizer.encode_batch([sentence for sentence, _ in rows])
    return [{"input_ids": x if len(x) <= max_len else x[:max_len - 1] + x[-1:], "labels": int(label)}
            for x, (_, label) in zip(ids, rows)]


@dataclass
class Collate:
    """collate_fn: features -> {"input_ids", "attention_mask", "token_type_ids", "labels"}, padded to the longest."""
    pad_id: int = 0

    def __call__(self, features) -> dict:
        T = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), T), self.pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(features), T), dtype=torch.long)  # 1 = real token, 0 = [PAD]
        for i, f in enumerate(features):
            input_ids[i, :len(f["input_ids"])] = torch.as_tensor(f["input_ids"])
            attention_mask[i, :len(f["input_ids"])] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "token_type_ids": torch.zeros_like(input_ids),  # one sentence: segment A throughout
                "labels": torch.tensor([f["labels"] for f in features], dtype=torch.long)}


def eval_batches(features, batch_size=64, pad_id=0):
    """Batches for evaluation, shortest sentences first: similar lengths share a batch, so little is padding.
    (The order of the predictions does not matter for accuracy.)"""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    collate = Collate(pad_id)
    for i in range(0, len(order), batch_size):
        yield collate([features[j] for j in order[i:i + batch_size]])


@torch.no_grad()
def evaluate_accuracy(logits_fn, features, batch_size=64, pad_id=0, device="cpu") -> float:
    """Accuracy of logits_fn(batch) -> (B, num_labels) on features (the caller puts the model in eval mode)."""
    if not features:
        raise ValueError("no features to evaluate: pass encode_sst2(rows, tokenizer) of a non-empty split")
    all_logits, all_labels = [], []
    for batch in eval_batches(features, batch_size, pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        all_logits.append(logits_fn(batch).float().cpu())
        all_labels.append(batch["labels"].cpu())
    return accuracy(torch.cat(all_logits), torch.cat(all_labels))
