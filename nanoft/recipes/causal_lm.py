"""The causal-LM recipe: fine-tune a pretrained GPT-2 (or train an LSTM from scratch) on a corpus of task examples,
measure validation perplexity as it learns, and sample from it.

    lm = load_pretrained_gpt2("gpt2")                      # small_gpt2.py: a hub id, a local folder, or "offline"
    start_id, end_id = add_task_tokens(lm.model, lm.tokenizer)
    task = task_blocks(split_examples(text), lm.tokenizer, block_size=128)
    result = fine_tune_lm(lm.model, task.train, task.val, TrainConfig(lr=5e-5, max_steps=300, eval_every=50))
    print(result.curve[-1]["ppl"], sample(lm.model, lm.tokenizer, "ROMEO:\n", start_id=start_id, end_id=end_id))

Every example is wrapped in [TASK_START] ... [TASK_END], two tokens added to the vocabulary, so the model learns
where an example begins and ends, and generation can be prompted with the first and stopped at the second.
"""
import time
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch.utils.data import DataLoader

from nanoft.data.lm_data import LMBlocks, split_train_val, tokenize_corpus, wrap_with_task_tokens
from nanoft.data.metrics import evaluate_lm
from nanoft.io.tokenizer import add_special_tokens
from nanoft.training.plots import plot_lines
from nanoft.training.train import TrainConfig, TrainResult, train

TASK_TOKENS = ("[TASK_START]", "[TASK_END]")


def lm_loss(model, batch):
    """Mean next-token cross-entropy of a language-model batch {"input_ids": (B, T), "labels": (B, T)}."""
    _, loss = model(batch["input_ids"], targets=batch["labels"])
    return loss


# ----------------------------------------------------------------------------- task data


def add_task_tokens(model, tokenizer, tokens=TASK_TOKENS) -> list:
    """Add the task tokens to the tokenizer and grow the model's embeddings (tied to its output layer) to hold
    them; returns their ids. The new rows start as the mean of the old ones, so predictions barely move at first."""
    ids = add_special_tokens(tokenizer, list(tokens))
    model.resize_token_embeddings(tokenizer.vocab_size)
    return ids


def task_ids(examples, tokenizer, task_tokens: bool = True) -> torch.Tensor:
    """All examples in one row of ids: each wrapped in the task tokens (added first with add_task_tokens), or,
    with task_tokens=False, as plain text followed by a blank line, as in a file of paragraphs."""
    if task_tokens:
        return wrap_with_task_tokens(examples, tokenizer, *TASK_TOKENS)
    return tokenize_corpus("".join(t + "\n\n" for t in examples), tokenizer)


@dataclass
class TaskBlocks:
    train: LMBlocks
    val: LMBlocks
    train_ids: torch.Tensor  # (N_train,) the ids behind train, for counting what the model sees
    val_ids: torch.Tensor  # (N_val,) a contiguous tail of the corpus


def task_blocks(examples, tokenizer, block_size: int, val_fraction: float = 0.05, task_tokens: bool = True,
                train_tokens: int = 0) -> TaskBlocks:
    """examples -> ids -> (train, val) blocks of block_size tokens. Validation is the last val_fraction of the ids,
    at least two blocks even on a tiny corpus; train_tokens > 0 keeps only the first train_tokens training ids."""
    ids = task_ids(examples, tokenizer, task_tokens)
    val_fraction = max(val_fraction, (2 * block_size + 2) / len(ids))
    train_ids, val_ids = split_train_val(ids, val_fraction)
    if train_tokens:
        train_ids = train_ids[:train_tokens]
    return TaskBlocks(LMBlocks(train_ids, block_size), LMBlocks(val_ids, block_size), train_ids, val_ids)


# ----------------------------------------------------------------------------- training and measuring


def evaluate_perplexity(model, blocks: LMBlocks, batch_size: int = 32) -> dict:
    """{"loss", "perplexity", "tokens"} over every block: exp of the mean NLL per predicted token."""
    return evaluate_lm(model, DataLoader(blocks, batch_size=batch_size), lm_loss)


def fine_tune_lm(model, train_blocks: LMBlocks, val_blocks: LMBlocks, cfg: TrainConfig, name: str = "model",
                 verbose: bool = True) -> TrainResult:
    """Train `model` (GPT2 or LSTMLM) on train_blocks with nanoft's loop. The result's curve is one row
    {"step", "tokens", "seconds", "ppl"} before training and at every evaluation (every cfg.eval_every steps and
    at the end). "seconds" is the time spent learning: the clock stops while we evaluate, so that the column
    compares models, not the cost of their evaluations."""
    n_positions = getattr(getattr(model, "config", None), "n_positions", None)  # an LSTM reads any length
    if n_positions is not None and train_blocks.block_size > n_positions:
        raise ValueError(f"block_size {train_blocks.block_size} is longer than the model's n_positions "
                         f"{n_positions}: use blocks of {n_positions} tokens or fewer")
    tokens_per_step = cfg.batch_size * cfg.grad_accum_steps * train_blocks.block_size
    rows = [dict(step=0, tokens=0, seconds=0.0, ppl=evaluate_perplexity(model, val_blocks)["perplexity"])]
    if verbose:
        print(f"{name}: validation perplexity before training {rows[0]['ppl']:,.1f}")
    clock = {"start": 0.0, "in_eval": 0.0}
    measured = []  # (training seconds, perplexity) per evaluation

    def eval_fn(m):
        t = time.perf_counter()
        seconds = t - clock["start"] - clock["in_eval"]
        metrics = evaluate_perplexity(m, val_blocks)
        measured.append((seconds, metrics["perplexity"]))
        clock["in_eval"] += time.perf_counter() - t
        return {"val_loss": metrics["loss"], "val_ppl": metrics["perplexity"]}

    clock["start"] = time.perf_counter()
    result = train(model, train_blocks, lm_loss, cfg, eval_fn=eval_fn)
    steps = [r["step"] for r in result.curve]  # one row per eval_fn call, in order
    rows += [dict(step=s, tokens=s * tokens_per_step, seconds=sec, ppl=ppl) for s, (sec, ppl) in zip(steps, measured)]
    return replace(result, curve=rows)


def first_reaching(curve: list, target: float) -> Optional[dict]:
    """The first row of a curve at or below perplexity `target`, or None: when did the model get there?"""
    return next((r for r in curve if r["ppl"] <= target), None)


def best_and_final(curve: list) -> tuple:
    """(lowest, last) validation perplexity of a curve: on a small corpus the last may be deep into overfitting,
    and the lowest is what early stopping would keep."""
    return min(r["ppl"] for r in curve), curve[-1]["ppl"]


def sample(model, tokenizer, prompt: str, max_new_tokens: int = 60, start_id: Optional[int] = None,
           end_id: Optional[int] = None, temperature: float = 0.8, top_k: int = 40, seed: int = 0) -> str:
    """Text the model writes after [start_id] + prompt, stopping at end_id (the task tokens; None: no such token),
    with a seeded generator, so the same model and seed write the same text."""
    ids = ([start_id] if start_id is not None else []) + tokenizer.encode(prompt)
    device = next(model.parameters()).device
    out = model.generate(torch.tensor([ids], dtype=torch.long, device=device), max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, eos_token_id=end_id,
                         generator=torch.Generator(device).manual_seed(seed))
    return tokenizer.decode(out[0].cpu())


def plot_curves(curves: dict, path, title: str) -> Optional[str]:
    """Validation perplexity against tokens seen and against training time, one line per {name: curve}, as a PNG;
    None when matplotlib is not installed."""
    panels = [(label, "validation perplexity", {name: ([r[key] for r in curve], [r["ppl"] for r in curve])
                                                for name, curve in curves.items()})
              for key, label in (("tokens", "tokens seen"), ("seconds", "training wall time (s)"))]
    return plot_lines(panels, path, title, log_y=True)
