"""AdamW with two parameter groups, and the learning-rate schedule.

Weight decay pulls weights towards zero. That is a sensible prior for the weight matrices that mix
features, but not for biases and LayerNorm gains (shrinking a gain towards 0 switches a feature off)
nor for embeddings (a rare token's row would decay away between the few steps that update it).
So only matrices that are not embeddings get decay.

The schedule is the one transformers uses (so a chapter's numbers compare with the book's): linear
warmup from 0 to the peak, then linear or cosine decay down to a floor of min_lr_ratio * peak.
`step` counts optimizer steps, not micro-batches.
"""
import math

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list:
    """Two AdamW groups: weight matrices (decayed) and everything else (biases, norms, embeddings)."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    # named_parameters() yields a shared tensor once, under its first name: GPT-2's lm_head.weight is
    # wte.weight, so it shows up as transformer.wte.weight (an embedding: no decay) and nowhere else
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # frozen: nothing for the optimizer to do
        # biases and LayerNorm weight/bias are 1-D; embedding tables are 2-D but are looked up, not multiplied
        is_matrix = p.dim() >= 2 and id(p) not in embedding_params
        (decay if is_matrix else no_decay).append((name, p))
    return [
        # "param_names" is the key torch.optim uses for named groups; it is saved in optimizer.state_dict()
        {"params": [p for _, p in decay], "param_names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "param_names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def describe_groups(groups: list, with_names: bool = False) -> str:
    """Which parameters get weight decay: a line per group, and with_names every parameter's name under it."""
    lines = []
    for g in groups:
        n_params = sum(p.numel() for p in g["params"])
        lines.append(f"weight_decay={g['weight_decay']}: {len(g['params'])} tensors, {n_params:,} parameters")
        if with_names:
            lines += [f"    {name}" for name in g["param_names"]]
    return "\n".join(lines)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                    fused=None) -> torch.optim.AdamW:
    """AdamW over param_groups(model). Call it after the model is on its device: fused needs to know."""
    groups = param_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError(f"no parameter of {type(model).__name__} requires grad, so there is nothing to train: "
                         "unfreeze some (requires_grad_(True), or freeze_encoder(..., unfreeze_top_k=k))")
    if fused is None:
        # torch's fused AdamW (CUDA, and the CPU since torch 2.4) updates every tensor in one pass: on a CPU it is
        # several times faster than the foreach path, a few percent of a training step (figures: bench/README.md)
        fused = all(p.device.type in ("cuda", "cpu") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None,
                             foreach=None if fused else True)


def lr_factor(step: int, cfg) -> float:
    """The schedule as a multiple of the peak lr, for optimizer step `step` (0-based).
    cfg has warmup_steps, max_steps, decay ("linear" | "cosine") and min_lr_ratio."""
    if step < cfg.warmup_steps:
        return step / cfg.warmup_steps  # starts at 0, as in transformers' schedules
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    if cfg.decay == "linear":
        factor = 1.0 - progress
    elif cfg.decay == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown decay {cfg.decay!r}: use 'linear' or 'cosine'")
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * factor  # decays to the floor, then stays there


def lr_at(step: int, cfg) -> float:
    """Learning rate of optimizer step `step` (0-based): cfg.lr times the schedule."""
    return cfg.lr * lr_factor(step, cfg)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """lr_at as a torch scheduler: call scheduler.step() once per optimizer step. Its state_dict saves the step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
