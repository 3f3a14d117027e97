"""The files a training run leaves in its out_dir, and how they are written and read back.

    checkpoint.pt   everything the next step depends on: weights, AdamW moments, schedule step, position in
                    the data, and the RNG states that drive dropout, so a resumed run retraces the same numbers
    best.pt         the weights of the best evaluation so far
    log.jsonl       one JSON record per logged step or evaluation; plot_log draws it

Checkpoints are written to a temp file and renamed over the old one, so a kill mid-write loses nothing.
"""
import json
import os
import random
from typing import Optional

import numpy as np
import torch

from nanoft.io.files import atomic_write
from nanoft.training.plots import plot_lines


def save_checkpoint(path: str, state: dict) -> None:
    """Write to a temp file, then rename over `path`: a kill mid-write leaves the previous checkpoint whole."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str, model=None, optimizer=None, scheduler=None, scaler=None) -> dict:
    """Load checkpoint.pt / best.pt into the objects given. Only tensors and plain containers: weights_only=True."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for obj, key in ((model, "model"), (optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None:
            try:
                obj.load_state_dict(ckpt[key])  # optimizer state moves to its parameters' device
            except (RuntimeError, ValueError) as e:  # another model: other shapes (e.g. labels), other names
                first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e)[:200])
                raise ValueError(f"{path} was written for another {key} ({first}): it is not this run's (another "
                                 "model, number of labels or settings); give another out_dir, delete the file, or "
                                 "set resume=False") from None
    return ckpt


def rng_state(device: torch.device) -> dict:
    """Every random stream a training step draws from (dropout, shuffles, masking), as plain types."""
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_name, np_keys.tolist(), int(np_pos), int(np_gauss), float(np_cached))}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np_name, np_keys, *rest = state["numpy"]
    np.random.set_state((np_name, np.array(np_keys, dtype=np.uint32), *rest))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def plain(config: dict) -> dict:
    """Paths and tuples -> str and lists, so that a checkpoint holding `config` loads with weights_only=True."""
    return json.loads(json.dumps(config, default=str))


def read_log(path: str) -> list:
    """The records of a log.jsonl (a line torn by a kill mid-write is skipped)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def open_log(out_dir: str, resume_step: int):
    """Open out_dir/log.jsonl; on resume keep the records up to the checkpoint (later ones will be redone)."""
    path = os.path.join(out_dir, "log.jsonl")
    kept = [r for r in read_log(path) if r["step"] <= resume_step] if resume_step and os.path.exists(path) else []
    f = open(path, "w")
    f.writelines(json.dumps(r) + "\n" for r in kept)
    return f, kept


class RunLog:
    """The records of a run: in memory (TrainResult.history) and, with an out_dir, in out_dir/log.jsonl, flushed
    record by record so that a killed run keeps its log. resume_step: keep the file's records up to there."""

    def __init__(self, out_dir: Optional[str], resume_step: int = 0):
        self.file, self.records = open_log(out_dir, resume_step) if out_dir else (None, [])

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def curve(self) -> list:
        """The evaluations: {"step", **metrics} per "eval" record."""
        return [{k: v for k, v in r.items() if k != "type"} for r in self.records if r["type"] == "eval"]

    def close(self) -> None:
        if self.file:
            self.file.close()


def plot_log(log_path: str, png_path: Optional[str] = None) -> Optional[str]:
    """Loss curves of a log.jsonl as a PNG (default: beside it); None when matplotlib is not installed."""
    records = read_log(log_path)
    train_recs = [r for r in records if r["type"] == "train"]
    lines = {"train loss": ([r["step"] for r in train_recs], [r["loss"] for r in train_recs])}
    val_recs = [r for r in records if r["type"] == "eval" and "val_loss" in r]
    if val_recs:
        lines["val loss"] = ([r["step"] for r in val_recs], [r["val_loss"] for r in val_recs])
    return plot_lines([("optimizer step", "loss", lines)], png_path or os.path.splitext(log_path)[0] + ".png")
