"""One way to turn a list of features into a batch, for every task in nanoft.

A feature is a dict. Its "input_ids" are a sentence's token ids (a list, or a 1-D tensor that may already be padded
at its end, as SQuAD's windows are); "attention_mask" and "token_type_ids" are optional and follow input_ids.

    collate = Collate(pad_id=tokenizer.pad_id)
    batch = collate(features)   # {"input_ids": (B, T), "attention_mask": (B, T), "token_type_ids": (B, T), ...}

T is the longest *real* length in the batch, not the length the features were stored at: the trailing columns that
are padding in every row are cut, because they cost compute and change nothing (attention ignores them). Per-token
fields ("input_ids", "attention_mask", "token_type_ids", a per-token "labels") are padded to T; scalar fields
("labels" of a sentence, "start_positions", ...) are stacked to (B,); anything else (example ids, offsets) stays a
list, so evaluation can carry it through.
"""
from dataclasses import dataclass

import torch

# how each per-token field is padded: [PAD] ids, attention 0 (not a real token), segment 0, label -100 (ignored)
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "labels": -100}


def real_length(feature) -> int:
    """Tokens of a feature before its padding: the attention mask's sum when it has one, else len(input_ids)."""
    mask = feature.get("attention_mask")
    return int(sum(mask) if not torch.is_tensor(mask) else mask.sum()) if mask is not None else len(feature["input_ids"])


def _is_sequence(value) -> bool:
    return (torch.is_tensor(value) and value.dim() == 1) or isinstance(value, (list, tuple))


@dataclass
class Collate:
    """collate_fn: features -> one padded batch (see the module docstring)."""
    pad_id: int = 0

    def __call__(self, features) -> dict:
        if not features:
            raise ValueError("Collate got no features: a batch needs at least one")
        if "input_ids" not in features[0]:
            raise ValueError(f"features have keys {sorted(features[0])}: each needs 'input_ids'")
        lengths = [real_length(f) for f in features]
        B, T = len(features), max(lengths)
        batch = {}
        for key in features[0]:
            values = [f[key] for f in features]
            per_token = key in ("input_ids", "attention_mask", "token_type_ids") or (
                key == "labels" and _is_sequence(values[0]))
            if per_token:
                out = torch.full((B, T), self.pad_id if key == "input_ids" else _PAD_VALUES[key], dtype=torch.long)
                for i, (v, n) in enumerate(zip(values, lengths)):
                    out[i, :n] = torch.as_tensor(v[:n], dtype=torch.long)  # (n,) of the row's real tokens
                batch[key] = out
            elif torch.is_tensor(values[0]) or isinstance(values[0], (int, float)):
                batch[key] = torch.stack([torch.as_tensor(v) for v in values])  # (B,)
            else:
                batch[key] = values  # example ids, offsets: carried through as lists
        if "attention_mask" not in batch:  # 1 = a real token, 0 = [PAD]
            batch["attention_mask"] = (torch.arange(T) < torch.tensor(lengths)[:, None]).long()  # (B, T)
        if "token_type_ids" not in batch:  # one sentence: segment A throughout
            batch["token_type_ids"] = torch.zeros((B, T), dtype=torch.long)
        return batch


def eval_order(features) -> list:
    """Feature indices, shortest first: evaluation batches of similar lengths carry little padding (the order of
    predictions is put back afterwards, so it changes no metric)."""
    return sorted(range(len(features)), key=lambda i: real_length(features[i]))
