"""Accuracy, and perplexity weighted by tokens: exp of the mean negative log-likelihood over every predicted token.

Averaging per-batch losses (or per-batch perplexities) is wrong whenever batches hold different numbers of tokens
(a short last batch, padding, -100 labels): a batch of 10 tokens would weigh as much as one of 10,000.
"""
import math

import torch

from nanoft.training.device import to_device


def accuracy(logits, labels, ignore_index=-100) -> float:
    """Share of argmax(logits) equal to labels; logits (..., C), labels (...); labels == ignore_index don't count."""
    keep = labels != ignore_index
    if not keep.any():
        raise ValueError("no labels to score (all are ignore_index): pass the batch's real labels")
    return (logits.argmax(-1)[keep] == labels[keep]).float().mean().item()


def perplexity(mean_nlls, token_counts) -> float:
    """exp(Σ nll_b * n_b / Σ n_b), where nll_b is batch b's mean loss over its n_b predicted tokens.
    Lists (one entry per batch) or scalars (one batch)."""
    mean_nlls = torch.as_tensor(mean_nlls, dtype=torch.float64).flatten()
    token_counts = torch.as_tensor(token_counts, dtype=torch.float64).flatten()
    if mean_nlls.shape != token_counts.shape or token_counts.sum() <= 0:
        raise ValueError(f"{mean_nlls.numel()} losses and {token_counts.numel()} token counts (total "
                         f"{token_counts.sum().item():g}): pass one count per loss, with at least one token")
    return math.exp((mean_nlls * token_counts).sum().item() / token_counts.sum().item())


def count_targets(batch) -> int:
    """Predicted tokens in a batch: labels that are not -100, from a dict's "labels" or a tuple's last item."""
    if isinstance(batch, dict):
        targets = batch.get("labels")
    else:
        targets = batch[-1] if isinstance(batch, (list, tuple)) else None
    if not torch.is_tensor(targets):
        raise ValueError("cannot find the targets in this batch: use a dict with 'labels', "
                         "a tuple (inputs, targets), or pass count_fn=lambda batch: number of predicted tokens")
    return int((targets != -100).sum())


@torch.no_grad()
def evaluate_lm(model, batches, loss_fn, count_fn=count_targets) -> dict:
    """{"loss": mean NLL per token, "perplexity", "tokens"}, where loss_fn(model, batch) is a batch's mean loss
    over its count_fn(batch) tokens (cross_entropy's default 'mean' with ignore_index=-100 is exactly that)."""
    was_training = model.training
    model.eval()  # no dropout while measuring
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    try:
        for batch in batches:
            n = count_fn(batch)
            total_nll += loss_fn(model, to_device(batch, device)).item() * n  # undo the mean: the batch's summed NLL
            total_tokens += n
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("no predicted tokens in these batches: pass non-empty evaluation batches")
    mean_nll = total_nll / total_tokens
    return {"loss": mean_nll, "perplexity": math.exp(mean_nll), "tokens": total_tokens}
