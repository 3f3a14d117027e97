"""Preference tuning with DPO (direct preference optimisation, Rafailov et al., 2023): make the model prefer the
chosen response of each pair to the rejected one, without a reward model and without sampling.

    prefs = load_preferences()
    pairs = preference_features(prefs["train"], tokenizer)                     # [{"chosen": ..., "rejected": ...}]
    pairs = with_reference_logps(model, pairs.features)                          # the reference: the model as it is
    result = fine_tune_dpo(model, pairs, TrainConfig(lr=2e-4, max_steps=60, batch_size=8), beta=0.1)
    evaluate_preferences(model, with_reference_logps(reference, test_pairs))    # accuracies, margin, rewards

With log pi(y|x) the summed log-probability of a response (its end-of-turn token included) under the model being
trained and log ref(y|x) under a fixed reference model, DPO's implicit reward of a response is
beta * (log pi - log ref), and the loss of a pair is

    -logsigmoid(reward(chosen) - reward(rejected)) = -logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))

the Bradley-Terry likelihood that the chosen response wins. beta sets how far the model may move from the
reference: the reward is measured relative to it, so there is nothing to gain by drifting where the pairs say
nothing. At the first step the policy is the reference, both rewards are 0 and the loss is exactly log 2.

The reference never changes, so its log-probs are computed once, up front (with_reference_logps), and no second
model lives through training:
- a fresh LoRA adapter: the reference is the model with its adapters switched off (lora_off=True), the base;
- an adapter that continues (DPO after SFT) or full fine-tuning: the reference is the model as it is before DPO
  (the SFT model), i.e. what a frozen copy would give. Pass a frozen copy itself as `model` just as well.
Logged per step (result.history, type "dpo"): loss, reward accuracy (the share of pairs whose chosen reward is the
larger), reward margin, and the mean chosen and rejected rewards.

DPO pushes the two log-probs apart; it may lower both (likelihood displacement: the chosen answers become less
likely too, just less so than the rejected ones). sft_weight > 0 adds the mean NLL of the chosen responses to the
loss (RPO, Pang et al., 2024), which holds them up.
"""
import math
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F

from nanoft.data.instructions import chat_messages
from nanoft.quant.lora import lora_disabled
from nanoft.recipes.instruction_tuning import (Features, SFTCollate, encode_conversation, end_of_turn, labelled_logits,
                                              lm_feature)
from nanoft.training.device import to_device
from nanoft.training.train import TrainConfig, TrainResult, train


def preference_features(records, tokenizer, max_len: int = 512, end_id: Optional[int] = None,
                        verbose: bool = True) -> Features:
    """Records with "chosen" and "rejected" -> [{"chosen": feature, "rejected": feature}], each feature as
    sft_features makes it (the prompt masked, the response and its end-of-turn token labelled). A pair with either
    sequence longer than max_len is left out and counted: cutting one would compare a partial answer to a whole one."""
    out, end_id = Features([], []), end_of_turn(tokenizer, end_id)
    for i, record in enumerate(records):
        pair = {}
        for side in ("chosen", "rejected"):
            ids, n_prompt = encode_conversation(tokenizer, chat_messages(record, record[side]), end_id)
            pair[side] = lm_feature(ids, n_prompt) if len(ids) - 1 <= max_len else None
        if pair["chosen"] is None or pair["rejected"] is None:
            out.dropped.append(i)
            continue
        out.features.append(pair)
        out.records.append(record)
    if verbose and out.dropped:
        print(f"nanoft: {len(out.dropped)} of {len(records)} preference pairs are longer than max_len={max_len} "
              "tokens and were left out: raise max_len to keep them")
    if not out.features:
        raise ValueError(f"no preference pair fits max_len={max_len}: raise max_len")
    return out


class PairCollate:
    """pairs -> {"input_ids": (2B, T): the B chosen sequences, then the B rejected ones, "labels": (2B, T),
    "ref_logps": (2B,) when the pairs carry reference log-probs, "num_tokens"}. One forward pass scores both sides."""

    def __init__(self, pad_id: int = 0):
        self.collate = SFTCollate(pad_id)

    def __call__(self, pairs) -> dict:
        batch = self.collate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
        if "ref_chosen" in pairs[0]:
            batch["ref_logps"] = torch.tensor([p["ref_chosen"] for p in pairs] + [p["ref_rejected"] for p in pairs],
                                              dtype=torch.float64)
        return batch


def sequence_logps(model, input_ids, labels) -> torch.Tensor:
    """(N,) summed log-probability of each row's labelled tokens (labels != -100), in fp32."""
    logits, targets = labelled_logits(model, {"input_ids": input_ids, "labels": labels})  # (M, V), (M,)
    rows = (labels != -100).nonzero()[:, 0]  # (M,): the row of each labelled position
    logp = -F.cross_entropy(logits, targets, reduction="none")  # (M,)
    return torch.zeros(len(labels), dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1) -> tuple:
    """(mean DPO loss over the pairs, {"reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"}):
    the rewards are beta * (log pi - log ref) of each response, detached; the accuracy is a fraction."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)  # (B,)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return loss, {"reward_accuracy": (c > r).float().mean(), "reward_margin": (c - r).mean(),
                  "chosen_reward": c.mean(), "rejected_reward": r.mean()}


@torch.no_grad()
def pair_logps(model, pairs, batch_size: int = 8, pad_id: int = 0, lora_off: bool = False) -> torch.Tensor:
    """(len(pairs), 2): the summed log-probs of [chosen, rejected] of each pair under model (lora_off: with its LoRA
    adapters switched off, i.e. the base model)."""
    was_training = model.training
    model.eval()
    device, collate = next(model.parameters()).device, PairCollate(pad_id)
    out = torch.empty(len(pairs), 2, dtype=torch.float64)  # filled in the sorted order below
    longest = [max(len(p["chosen"]["input_ids"]), len(p["rejected"]["input_ids"])) for p in pairs]
    order = sorted(range(len(pairs)), key=longest.__getitem__)  # pairs of similar length together: little padding
    try:
        with lora_disabled(model) if lora_off else nullcontext():
            for i in range(0, len(pairs), batch_size):
                rows = order[i:i + batch_size]
                batch = to_device(collate([pairs[j] for j in rows]), device)
                out[rows] = sequence_logps(model, batch["input_ids"], batch["labels"]).double().view(2, -1).T.cpu()
    finally:
        model.train(was_training)
    return out


def with_reference_logps(reference, pairs, batch_size: int = 8, pad_id: int = 0, lora_off: bool = False,
                         logps: Optional[torch.Tensor] = None) -> list:
    """Copies of the pairs carrying "ref_chosen" and "ref_rejected": their log-probs under the reference model (the
    model before DPO, a frozen copy, or with lora_off=True the base under a fresh adapter), computed once. logps:
    the reference's pair_logps(reference, pairs) when already computed (e.g. to measure it), so it is not run twice."""
    if logps is None:
        logps = pair_logps(reference, pairs, batch_size, pad_id, lora_off)
    if logps.shape != (len(pairs), 2):
        raise ValueError(f"logps has shape {tuple(logps.shape)}, want ({len(pairs)}, 2): [chosen, rejected] per pair")
    return [{**p, "ref_chosen": c.item(), "ref_rejected": r.item()} for p, (c, r) in zip(pairs, logps)]


def fine_tune_dpo(model, pairs: list, cfg: TrainConfig, beta: float = 0.1, sft_weight: float = 0.0,
                  pad_id: int = 0, eval_fn=None, average_logps: bool = False) -> TrainResult:
    """Train model on preference pairs with DPO's loss (plus sft_weight x the chosen responses' mean NLL: RPO).
    average_logps=True uses the mean log-prob per response token instead of the sum, for policy and reference
    alike: DPO's sums favour the longer answer of a pair (TRL #789); the mean does not, and wants a larger beta.
    The pairs must carry reference log-probs (with_reference_logps). The per-step statistics land in
    result.history as {"type": "dpo", "step", "loss", "reward_accuracy", "reward_margin", "chosen_reward",
    "rejected_reward"} (means over the step's micro-batches)."""
    if beta <= 0:
        raise ValueError(f"beta={beta}: DPO's beta must be positive (0.1 is usual; smaller lets the model move further)")
    if "ref_chosen" not in pairs[0]:
        raise ValueError("the pairs carry no reference log-probs: pass with_reference_logps(reference, pairs), with "
                         "the model before DPO as the reference (or lora_off=True for a fresh adapter)")
    seen = []  # one dict per micro-batch, in order

    def loss_fn(m, batch):
        logps = sequence_logps(m, batch["input_ids"], batch["labels"])  # (2B,)
        ref = batch["ref_logps"].to(logps.dtype)
        n_chosen = (batch["labels"].chunk(2)[0] != -100).sum()
        if average_logps:
            counts = (batch["labels"] != -100).sum(-1)  # (2B,) response tokens of each row
            logps, ref = logps / counts, ref / counts
        policy_chosen, policy_rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        loss, stats = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
        seen.append({"loss": loss.item(), **{k: v.item() for k, v in stats.items()}})
        if sft_weight:  # the chosen answers' NLL per token (their sum of log-probs over their count)
            chosen_sums = policy_chosen * counts.chunk(2)[0] if average_logps else policy_chosen
            loss = loss + sft_weight * (-chosen_sums.sum() / n_chosen)
        return loss

    result = train(model, pairs, loss_fn, cfg, eval_fn=eval_fn, collate_fn=PairCollate(pad_id))
    k = cfg.grad_accum_steps
    for step in range(len(seen) // k):
        group = seen[step * k:(step + 1) * k]
        result.history.append({"type": "dpo", "step": step + 1, **{key: sum(g[key] for g in group) / k
                                                                 for key in group[0]}})
    return result


def evaluate_preferences(model, pairs, beta: float = 0.1, batch_size: int = 8, pad_id: int = 0) -> dict:
    """preference_metrics of the model's log-probs on the pairs."""
    return preference_metrics(pair_logps(model, pairs, batch_size, pad_id), pairs, beta)


def preference_metrics(logps, pairs, beta: float = 0.1) -> dict:
    """From logps (N, 2), the summed log-probs of [chosen, rejected] of each pair under a model (pair_logps):
    {"preference_accuracy": % of pairs where the model alone gives the chosen response the higher log-prob (a tie
    counts as a miss), "chosen_perplexity": the perplexity of the chosen responses (exp of their mean NLL per token,
    end-of-turn included)}; with reference log-probs on the pairs also DPO's "reward_accuracy" (%),
    "reward_margin", "chosen_reward", "rejected_reward" and the reference's "reference_chosen_perplexity"."""
    n_chosen = sum(sum(t != -100 for t in p["chosen"]["labels"]) for p in pairs)  # response tokens in all
    out = {"preference_accuracy": 100.0 * (logps[:, 0] > logps[:, 1]).double().mean().item(),
           "chosen_perplexity": math.exp(-logps[:, 0].sum().item() / n_chosen)}
    if "ref_chosen" in pairs[0]:
        ref = torch.tensor([[p["ref_chosen"], p["ref_rejected"]] for p in pairs], dtype=torch.float64)
        _, stats = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta)
        out.update({k: v.item() for k, v in stats.items()})
        out["reward_accuracy"] *= 100.0
        out["reference_chosen_perplexity"] = math.exp(-ref[:, 0].sum().item() / n_chosen)
    return out
