"""Sentence classification with a BERT encoder: sentences -> features -> batches, accuracy, and fine-tuning.

    encoder = BERT.from_pretrained(folder); tok = load_bert_tokenizer(folder)
    data = load_sst2(tok)                                        # or: encode_sentences([(text, label), ...], tok)
    model = sentence_classifier(encoder, num_labels=2)           # encoder + a fresh head, as a one-task model
    fine_tune_classifier(model, data["train"], data["val"], TrainConfig(lr=1e-4, max_steps=300, batch_size=32))
    evaluate_accuracy(model, data["dev"])                        # percent

Hyperparameters are chosen on a validation split carved out of the training data; the dev set is touched only for
the final figure. A frozen encoder is a feature extractor: `fine_tune_frozen` computes every sentence vector once
and trains only the head on them, hundreds of epochs in the time one fine-tuning epoch takes.
"""
import random
import sys
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from nanoft.training.batching import Collate, eval_order, real_length
from nanoft.data.datasets import dataset_path, read_sst2
from nanoft.training.device import to_device
from nanoft.training.freeze import freeze_encoder
from nanoft.models.heads import ClassificationHead, MultiTaskModel
from nanoft.training.train import TrainConfig, train


def carve_validation(rows, n_val, seed=0):
    """(train_rows, val_rows): a seeded random n_val rows held out of train for choosing hyperparameters.
    n_val may be a count or a fraction (0 < n_val < 1); the order of what is left is unchanged."""
    n = len(rows)
    if 0 < n_val < 1:
        n_val = round(n * n_val)
    n_val = int(n_val)
    if n < 2:
        raise ValueError(f"{n} training row(s): at least 2 are needed to hold one out for validation; "
                         "give a training file with more rows")
    if not 0 < n_val < n:
        raise ValueError(f"cannot hold out {n_val} of {n} training rows for validation: ask for between 1 and "
                         f"{n - 1} validation rows")
    held = set(random.Random(seed).sample(range(n), n_val))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def subset(items, n, seed=0):
    """A seeded random n of items (all when n is 0 or at least len(items)), in their original order."""
    if not n or n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def encode_sentences(rows, tokenizer, max_len=64):
    """[(sentence, label)] -> [{"input_ids": [CLS] sentence [SEP] cut to max_len, "labels": label}].

    Cutting keeps the closing [SEP], like transformers' truncation=True: BERT never saw a sequence without one."""
    if max_len < 3:
        raise ValueError(f"max_len={max_len} leaves no room for a word between [CLS] and [SEP]: use max_len >= 3")
    if not rows:
        raise ValueError("no sentences to encode: pass a non-empty list of (sentence, label) rows")
    ids = tokenizer.encode_batch([sentence for sentence, _ in rows])
    return [{"input_ids": x if len(x) <= max_len else x[:max_len - 1] + x[-1:], "labels": int(label)}
            for x, (_, label) in zip(ids, rows)]


def load_sst2(tokenizer, max_len=64, n_train=0, n_val=500, n_dev=0, seed=0, data_dir=None, batch_size=1):
    """SST-2 features: train (a seeded subset of n_train; 0 = all), val (n_val carved out of train.tsv) and dev (the
    official dev set, first n_dev; 0 = all 872), plus a label for tables and whether the bundled sample was used.
    batch_size: the batch the caller trains with, so that a train.tsv too small for it is named now."""
    train_file = dataset_path("sst2/train.tsv", data_dir)
    dev_file = dataset_path("sst2/dev.tsv", data_dir)
    rows = read_sst2(train_file.path)
    if len(rows) < 2:
        raise ValueError(f"{train_file.path} holds {len(rows)} sentence(s): fine-tuning needs at least 2, one of them "
                         "held out for validation; give a train.tsv with more rows")
    train_rows, val_rows = carve_validation(rows, min(n_val, max(1, len(rows) // 5)), seed)  # a sample is small
    train_rows = subset(train_rows, n_train, seed)
    if len(train_rows) < batch_size:
        raise ValueError(f"{train_file.path} leaves {len(train_rows)} training sentence(s) once {len(val_rows)} are "
                         f"held out for validation, fewer than a batch of {batch_size}: give a train.tsv of at least "
                         f"{batch_size + len(val_rows)} rows")
    dev_rows = read_sst2(dev_file.path)
    n_all_dev = len(dev_rows)
    dev_rows = dev_rows[:n_dev] if n_dev else dev_rows
    sample = train_file.is_sample or dev_file.is_sample
    label = "SAMPLE SST-2" if sample else "SST-2 dev"
    if len(dev_rows) < n_all_dev:
        label += f", first {len(dev_rows)} of {n_all_dev}"
    encode = lambda r: encode_sentences(r, tokenizer, max_len)  # noqa: E731
    return dict(train=encode(train_rows), val=encode(val_rows), dev=encode(dev_rows), label=label, sample=sample)


def sentence_classifier(encoder, num_labels=2, pooling="cls", dropout=0.1, task="classify"):
    """The encoder + a fresh classification head ([CLS] pooler or mean of the tokens -> dropout -> linear), named
    `task` in the MultiTaskModel."""
    head = ClassificationHead(encoder.config.hidden_size, num_labels, dropout=dropout, pooling=pooling)
    return MultiTaskModel(encoder, {task: head})


def _device(model):
    return next(model.parameters()).device


def terminal() -> bool:
    """A bar nested in the training bar moves the cursor up ("\\x1b[A") to redraw: only on a terminal, not in logs."""
    return sys.stderr.isatty()


@torch.no_grad()
def predict_logits(model, features, task=None, batch_size=64, progress=False):
    """(N, num_labels) logits for the features, in their order. Batches hold sentences of similar length.
    task: the head to use (None: the model's only head)."""
    task = model.task_name(task)
    if not features:
        raise ValueError("no features to predict: pass encode_sentences(rows, tokenizer) of a non-empty split")
    was_training = model.training
    model.eval()
    order, collate, device = eval_order(features), Collate(), _device(model)
    out = [None] * len(features)
    for i in tqdm(range(0, len(order), batch_size), desc="eval", leave=False, disable=not (progress and terminal())):
        idx = order[i:i + batch_size]
        logits = model(task, to_device(collate([features[j] for j in idx]), device))["logits"].float().cpu()
        for j, row in zip(idx, logits):
            out[j] = row
    model.train(was_training)
    return torch.stack(out)


def evaluate_accuracy(model, features, task=None, batch_size=64, progress=False) -> float:
    """Accuracy in percent on labelled features."""
    logits = predict_logits(model, features, task, batch_size, progress)
    labels = torch.tensor([f["labels"] for f in features])
    return 100.0 * (logits.argmax(-1) == labels).float().mean().item()


def _loss(task):
    return lambda model, batch: model(task, batch)["loss"]


def fine_tune_classifier(model, train_features, val_features, cfg: TrainConfig, task=None):
    """nanoft's training loop on the sentences, evaluated on val_features every cfg.eval_every steps (accuracy in
    percent, "val_acc"); the model ends with the weights of its best evaluation. Returns the loop's TrainResult."""
    task = model.task_name(task)
    check_labels(model.heads[task].classifier.out_features, train=train_features, validation=val_features)
    cfg = replace(cfg, metric="val_acc", mode="max", restore_best=True)
    evaluate = lambda m: {"val_acc": evaluate_accuracy(m, val_features, task, progress=cfg.progress)}  # noqa: E731
    return train(model, train_features, _loss(task), cfg, eval_fn=evaluate, collate_fn=Collate(), length_fn=real_length)


def check_labels(num_labels, **splits):
    """Every label of every split in 0..num_labels-1 (the head's outputs), or one error that names the split, the
    labels found and the fix, instead of cross-entropy's "Target 2 is out of bounds" in the middle of training."""
    for name, features in splits.items():
        found = sorted({f["labels"] for f in features})
        bad = [x for x in found if not (isinstance(x, int) and 0 <= x < num_labels)]
        if bad:
            raise ValueError(f"the {name} labels are {found[:10]}, but a head of {num_labels} labels needs 0.."
                             f"{num_labels - 1}: map them to 0..n-1 first (e.g. {{1: 0, 2: 1}}, or by name), or "
                             "give sentence_classifier the right num_labels")


@torch.no_grad()
def sentence_vectors(model, features, task=None, batch_size=128, progress=False):
    """(N, H): what the head of `task` sees for each sentence (the [CLS] pooler or the masked mean), in order."""
    model.eval()
    head, encoder = model.heads[model.task_name(task)], model.encoder
    order, collate, device = eval_order(features), Collate(), _device(model)
    out = [None] * len(features)
    for i in tqdm(range(0, len(order), batch_size), desc="embed", leave=False, disable=not (progress and terminal())):
        idx = order[i:i + batch_size]
        batch = to_device(collate([features[j] for j in idx]), device)
        hidden = encoder(batch["input_ids"], attention_mask=batch["attention_mask"])  # (B, T, H)
        pooled = encoder.pool(hidden) if head.pooling == "cls" else None
        x = head.sentence_vector(hidden, batch["attention_mask"], pooled)  # (B, H)
        for j, row in zip(idx, x.float().cpu()):
            out[j] = row
    return torch.stack(out)


def fine_tune_frozen(model, train_features, val_features, cfg: TrainConfig, task=None):
    """The frozen-encoder baseline: the encoder stays as pretrained and only the head learns. Its input never
    changes, so each sentence's vector is computed once; the head then trains on those vectors (cfg counts steps
    over them), evaluated by val accuracy; the model ends with its best head. Returns the loop's TrainResult."""
    freeze_encoder(model)
    task = model.task_name(task)
    head = model.heads[task]
    vectors = sentence_vectors(model, train_features, task, progress=cfg.progress)  # (N, H)
    val_vectors = sentence_vectors(model, val_features, task, progress=cfg.progress)
    data = [{"x": x, "labels": f["labels"]} for x, f in zip(vectors, train_features)]
    val_labels = torch.tensor([f["labels"] for f in val_features])

    def loss_fn(h, batch):  # the head's own dropout and linear layer, on the cached vectors
        return h.loss(h.classifier(h.dropout(batch["x"])), batch)

    def evaluate(h):
        logits = h.classifier(val_vectors.to(_device(h)))
        return {"val_acc": 100.0 * (logits.argmax(-1).cpu() == val_labels).float().mean().item()}

    cfg = replace(cfg, metric="val_acc", mode="max", restore_best=True)
    result = train(head, data, loss_fn, cfg, eval_fn=evaluate, collate_fn=torch.utils.data.default_collate)
    model.eval()
    return result
