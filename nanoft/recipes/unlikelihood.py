"""Unlikelihood training, token level (Welleck et al., 2019, "Neural text degeneration with unlikelihood training"):
maximum likelihood plus a penalty on tokens that would repeat what came before.

    model = prepare_for_tuning(model, "lora")
    fine_tune_unlikelihood(model, sft_features(data["train"], tokenizer).features, TrainConfig(...), alpha=1.0)
    seq_rep_n([a["ids"] for a in generate_responses(model, tokenizer, prompts, max_new_tokens=128)], 4)

Likelihood training alone never says what *not* to do, and greedy decoding of a likelihood-trained model falls into
loops ("the the the", a sentence over and over): a token seen in the context is cheap to predict again. At each
position t the unlikelihood term takes the negative candidates C_t = the tokens of the earlier targets of the same
sequence, minus the true next token, and adds

    -sum over c in C_t of log(1 - p(c | x_<t))

which pushes their probability down, and with it the habit of copying the context. The loss of a batch is
sum_t [NLL_t + alpha * UL_t] over the labelled positions (the response tokens, when the features come from
sft_features), divided by their count for the whole step: TrainConfig(loss_sum=True), as instruction tuning does.
Candidates are the earlier *targets*, as in the paper's code: the prompt is not a candidate, so an answer may still
copy the words it was asked about.
"""
from dataclasses import replace

import torch
import torch.nn.functional as F

from nanoft.recipes.instruction_tuning import SFTCollate, labelled_logits
from nanoft.training.train import TrainConfig, TrainResult, train


def previous_target_candidates(labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, T, V) bool: at position t, the tokens of the labelled targets before t, minus the target at t itself.
    All False where labels[b, t] is -100 (nothing is learned there)."""
    B, T = labels.shape
    valid = labels != -100
    ids = labels.clamp(min=0)
    # context[b, t, s] = labels[b, s] for the labelled s < t; everything else points at an extra column V, cut below
    earlier = torch.ones(T, T, dtype=torch.bool, device=labels.device).tril(-1)  # (T, T): s < t
    keep = earlier[None] & valid[:, None, :]  # (B, T, T)
    context = torch.where(keep, ids[:, None, :].expand(B, T, T), vocab_size)
    candidates = torch.zeros(B, T, vocab_size + 1, dtype=torch.bool, device=labels.device)
    candidates.scatter_(2, context, True)
    candidates = candidates[..., :vocab_size]
    candidates.scatter_(2, ids[..., None], False)  # the true next token is never a negative
    return candidates & valid[..., None]


def unlikelihood_terms(logits: torch.Tensor, labels: torch.Tensor) -> tuple:
    """(summed NLL of the labelled targets, summed unlikelihood penalty), both 0-d fp32 tensors. logits (N, V): those
    of the N labelled positions of labels (B, T) in row-major order (labelled_logits), the only ones with a loss."""
    valid = labels != -100  # (B, T), N of them
    with torch.no_grad():
        negatives = previous_target_candidates(labels, logits.size(-1))[valid]  # (N, V)
    logits = logits.float()
    nll = F.cross_entropy(logits, labels[valid], reduction="sum")
    # log(1 - p) from log-probabilities; the clamp keeps a candidate the model is sure of from giving -inf
    one_minus_p = (1.0 - logits.log_softmax(-1).exp()).clamp(min=1e-5)
    penalty = -(one_minus_p.log() * negatives).sum()
    return nll, penalty


def fine_tune_unlikelihood(model, train_features: list, cfg: TrainConfig, alpha: float = 1.0, pad_id: int = 0,
                           eval_fn=None) -> TrainResult:
    """Train on SFT features with NLL + alpha * token-level unlikelihood, normalised by the labelled tokens of each
    optimizer step. alpha = 1 is the paper's; alpha = 0 is plain instruction tuning. The per-step NLL and penalty (per
    token) land in result.history as {"type": "unlikelihood", "step", "nll", "penalty"}."""
    if alpha < 0:
        raise ValueError(f"alpha={alpha}: the weight of the unlikelihood term must be >= 0 (the paper uses 1)")
    seen = []

    def loss_fn(m, batch):
        logits, _ = labelled_logits(m, batch)  # (N, V)
        nll, penalty = unlikelihood_terms(logits, batch["labels"])
        seen.append((nll.item(), penalty.item(), batch["num_tokens"]))
        return nll + alpha * penalty

    result = train(model, train_features, loss_fn, replace(cfg, loss_sum=True), eval_fn=eval_fn,
                   collate_fn=SFTCollate(pad_id))
    k = cfg.grad_accum_steps
    for step in range(len(seen) // k):
        group = seen[step * k:(step + 1) * k]
        n = sum(g[2] for g in group)
        result.history.append({"type": "unlikelihood", "step": step + 1, "nll": sum(g[0] for g in group) / n,
                               "penalty": sum(g[1] for g in group) / n})
    return result
