"""Instruction tuning (supervised fine-tuning, SFT): teach a chat model to answer by training it on prompt/response
pairs rendered with its own chat template, with the loss on the response alone.

    tokenizer = load_tokenizer(smollm2_gguf())                             # with its chat template
    data = load_instructions()
    train_set = sft_features(data["train"], tokenizer)                     # [{"input_ids", "labels"}], + counts
    model = prepare_for_tuning(model, "lora")                              # or "qlora" (NF4 base) or "full"
    fine_tune_sft(model, train_set.features, TrainConfig(lr=2e-4, epochs=1, batch_size=8), val=...)
    response_perplexity(model, test_set.features)["perplexity"]

What the model learns is decided by the labels:
- a sequence is the conversation rendered by the tokenizer's chat template (tokenizer.apply_chat_template), cut
  right after the assistant's end-of-turn token (end_id, by default the tokenizer's eos: <|im_end|> for ChatML): the template's newline after it is never trained on and never generated;
- labels are targets, as everywhere in nanoft: labels[t] is the token to predict at position t (already shifted;
  the model never shifts). They are -100 on every prompt position and on padding, so the loss covers the response
  and its end-of-turn token. A model that is never trained on the end-of-turn token never learns to stop;
- with gradient accumulation the loss of an optimizer step is the summed negative log-likelihood of all its response
  tokens divided by their count, not the mean of per-micro-batch means, which would weigh a micro-batch of 10
  response tokens like one of 100 (transformers #34191, torchtune #1875). The loop's TrainConfig(loss_sum=True)
  divides by the step's count; the collate puts each micro-batch's count in batch["num_tokens"], where it looks.
"""
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
import torch.nn.functional as F

from nanoft.data.instructions import chat_messages, prompt_messages
from nanoft.quant.lora import add_lora
from nanoft.quant.quantize import quantize_model
from nanoft.training.batching import Collate
from nanoft.training.device import to_device
from nanoft.training.train import TrainConfig, TrainResult, train

METHODS = ("full", "lora", "qlora")


# ----------------------------------------------------------------------------- records -> features


def end_of_turn(tokenizer, end_id: Optional[int] = None) -> int:
    """The id that ends the assistant's turn: end_id, else the tokenizer's eos token (<|im_end|> for ChatML)."""
    end_id = end_id if end_id is not None else getattr(tokenizer, "eos_token_id", None)
    if end_id is None:
        raise ValueError("the tokenizer has no eos token: pass end_id, the id of the chat template's end-of-turn token")
    return end_id


def prompt_ids(tokenizer, messages: list) -> list:
    """The ids the model answers from: the conversation rendered with the assistant's header at its end."""
    return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True),
                            add_special_tokens=False)


def encode_conversation(tokenizer, messages: list, end_id: int) -> tuple:
    """(ids of the whole conversation cut after the assistant's end-of-turn token, number of prompt ids).

    The prompt is the conversation without the assistant's turn, rendered with the generation prompt
    ("<|im_start|>assistant\\n"): exactly what the model sees when it answers, so it must be a prefix of the whole
    conversation's ids, which is checked."""
    prompt = prompt_ids(tokenizer, messages[:-1])
    full = tokenizer.encode(tokenizer.apply_chat_template(messages), add_special_tokens=False)
    if full[:len(prompt)] != prompt:
        raise ValueError("the chat template's prompt is not a prefix of the whole conversation once tokenized: "
                         "check that the template writes the assistant's header the same way in both")
    response = full[len(prompt):]
    if end_id not in response:
        raise ValueError(f"the rendered assistant turn has no end-of-turn token (id {end_id}): pass the template's "
                         "end-of-turn id (<|im_end|> for ChatML) as end_id")
    return full[:len(prompt) + response.index(end_id) + 1], len(prompt)


def lm_feature(ids: list, n_prompt: int) -> dict:
    """{"input_ids": ids[:-1], "labels": ids[1:] with -100 on every position whose next token is in the prompt}."""
    labels = [-100] * (n_prompt - 1) + list(ids[n_prompt:])  # position t predicts ids[t + 1]
    return {"input_ids": list(ids[:-1]), "labels": labels}


@dataclass
class Features:
    features: list  # [{"input_ids": [...], "labels": [...]}] (preference pairs: {"chosen": ..., "rejected": ...})
    records: list  # the records kept, in the same order
    truncated: int = 0  # over-long sequences cut to max_len (the end of their response lost)
    dropped: list = field(default_factory=list)  # indices of records dropped: their prompt alone fills max_len


def sft_features(records, tokenizer, max_len: int = 512, overlong: str = "truncate", response_key: str = "output",
                 end_id: Optional[int] = None, mask_prompt: bool = True, verbose: bool = True) -> Features:
    """Records -> SFT features (see the module docstring). A sequence longer than max_len is cut to max_len
    (overlong="truncate": its response loses its end, end-of-turn token included) or left out ("drop"); a record
    whose prompt alone leaves no response token within max_len is always left out. Both are counted and said.
    mask_prompt=False trains on the prompt's tokens too (Shi et al., 2024, "Instruction tuning with loss over
    instructions"); measure with the default, so that perplexities stay those of the responses."""
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong={overlong!r}: use 'truncate' or 'drop'")
    out, end_id = Features([], []), end_of_turn(tokenizer, end_id)
    for i, record in enumerate(records):
        ids, n_prompt = encode_conversation(tokenizer, chat_messages(record, record[response_key]), end_id)
        if len(ids) - 1 > max_len:
            if overlong == "drop" or n_prompt >= max_len:
                out.dropped.append(i)
                continue
            ids, out.truncated = ids[:max_len + 1], out.truncated + 1
        out.features.append(lm_feature(ids, n_prompt if mask_prompt else 1))
        out.records.append(record)
    if verbose and (out.truncated or out.dropped):
        print(f"nanoft: {out.truncated} of {len(records)} conversations cut to max_len={max_len} tokens and "
              f"{len(out.dropped)} left out (their prompt fills it, or overlong='drop'): raise max_len to keep them")
    if not out.features:
        raise ValueError(f"no record fits max_len={max_len}: raise max_len")
    return out


@dataclass
class SFTCollate:
    """features -> {"input_ids": (B, T) padded with pad_id, "labels": (B, T) padded with -100, "num_tokens": the
    count of labels that are not -100, which TrainConfig(loss_sum=True) divides the step's summed loss by}."""
    pad_id: int = 0

    def __call__(self, features) -> dict:
        batch = Collate(self.pad_id)([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        return {"input_ids": batch["input_ids"], "labels": batch["labels"],
                "num_tokens": int((batch["labels"] != -100).sum())}


# ----------------------------------------------------------------------------- the model and the loss


def prepare_for_tuning(model, method: str = "lora", r: int = 16, alpha: int = 32, dropout: float = 0.0,
                       targets="all"):
    """One argument for what trains: "full" (every weight), "lora" (adapters on a frozen base) or "qlora" (adapters
    on a base quantized to NF4, QLoRA's recipe). targets: the block linears LoRA adapts ("all": every one, as
    QLoRA; "attention": q/k/v). Returns the model."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {', '.join(METHODS)}")
    if method == "full":
        return model.requires_grad_(True)
    if method == "qlora":
        quantize_model(model, "nf4", targets=targets)  # the base in 4 bits; the adapters below train in fp32
    return add_lora(model, r=r, alpha=alpha, dropout=dropout, targets=targets)


def labelled_logits(model, batch) -> tuple:
    """(logits (N, V) in fp32, targets (N,)) of the N labelled positions of a batch (labels != -100), in row-major
    order. The LM head runs on those alone: the response is about a quarter of an SFT sequence, and the head
    (576 x 49,152 for SmolLM2-135M) is a fifth of its forward."""
    labelled = batch["labels"] != -100  # (B, T)
    logits, _ = model(batch["input_ids"], logits_at=labelled)  # (N, V)
    return logits.float(), batch["labels"][labelled]


def response_nll(model, batch) -> torch.Tensor:
    """Summed negative log-likelihood of the labelled tokens of a batch (a 0-d tensor), in fp32."""
    logits, targets = labelled_logits(model, batch)
    return F.cross_entropy(logits, targets, reduction="sum")


def sft_loss(model, batch) -> torch.Tensor:
    """The summed NLL of the response tokens: train(..., TrainConfig(loss_sum=True)) divides by the step's count."""
    return response_nll(model, batch)


def fine_tune_sft(model, train_features: list, cfg: TrainConfig, val_features: Optional[list] = None,
                  pad_id: int = 0, eval_batch_size: int = 16) -> TrainResult:
    """Train model (prepared with prepare_for_tuning) on SFT features with nanoft's loop, the loss normalised by the
    response tokens of each whole optimizer step. With val_features, eval_fn reports their response perplexity
    ({"val_loss", "val_ppl"}) every cfg.eval_every steps and at the end."""
    eval_fn = None
    if val_features:
        def eval_fn(m):
            r = response_perplexity(m, val_features, eval_batch_size, pad_id)
            return {"val_loss": r["loss"], "val_ppl": r["perplexity"]}
    return train(model, train_features, sft_loss, replace(cfg, loss_sum=True), eval_fn=eval_fn,
                 collate_fn=SFTCollate(pad_id))


# ----------------------------------------------------------------------------- measuring


@torch.no_grad()
def response_perplexity(model, features: list, batch_size: int = 16, pad_id: int = 0) -> dict:
    """{"loss": mean NLL per response token, "perplexity": its exp, "tokens": how many} over features, each
    response's end-of-turn token included."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate, total, count = SFTCollate(pad_id), 0.0, 0
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))  # little padding per batch
    try:
        for i in range(0, len(order), batch_size):
            batch = to_device(collate([features[j] for j in order[i:i + batch_size]]), device)
            total += response_nll(model, batch).item()
            count += batch["num_tokens"]
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no response tokens to score: pass features made by sft_features")
    loss = total / count
    return {"loss": loss, "perplexity": float(torch.tensor(loss).exp()), "tokens": count}


@torch.no_grad()
def generate_responses(model, tokenizer, records, max_new_tokens: int = 64, end_id: Optional[int] = None,
                       batch_size: int = 32) -> list:
    """Greedy answers to each record's prompt, in the records' order: [{"text": without the end-of-turn token, "ids":
    the new token ids (end-of-turn excluded), "stopped": whether the model ended its turn within max_new_tokens}].
    Prompts of similar length go batch_size at a time, left-padded with an attention mask (Llama.generate), so that
    each decode step reads the weights once for the whole batch (SmolLM2's 110 test answers on 2 cores: 32 a batch
    takes 0.6-0.75x the time of 16 a batch, the same tokens); batch_size=1 runs one prompt at a time, for models
    whose generate takes no mask."""
    device, end_id = next(model.parameters()).device, end_of_turn(tokenizer, end_id)
    prompts = [prompt_ids(tokenizer, prompt_messages(record)) for record in records]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # little padding per batch
    answers = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = [prompts[i] for i in order[start:start + batch_size]]
        T = max(len(r) for r in rows)
        x = torch.tensor([[end_id] * (T - len(r)) + r for r in rows], device=device)  # (B, T), padded on the left
        mask = {} if batch_size == 1 else {"attention_mask": torch.tensor(
            [[0] * (T - len(r)) + [1] * len(r) for r in rows], device=device)}
        out = model.generate(x, max_new_tokens=max_new_tokens, temperature=0, eos_token_id=end_id, **mask)
        for i, new in zip(order[start:start + batch_size], out[:, T:].tolist()):  # new: (n_new,) ids of one row
            stopped = end_id in new
            ids = new[:new.index(end_id)] if stopped else new
            answers[i] = {"text": tokenizer.decode(ids, skip_special_tokens=True), "ids": ids, "stopped": stopped}
    return answers


@torch.no_grad()
def tokens_per_second(model, tokenizer, record: dict, max_new_tokens: int = 64, repeats: int = 3) -> float:
    """Greedy decoding speed on one record's prompt: max_new_tokens / the median time of `repeats` generations (the
    KV cache on, no end-of-turn stop, so every run makes the same number of tokens), after one short warm-up."""
    device = next(model.parameters()).device
    prompt = torch.tensor([prompt_ids(tokenizer, prompt_messages(record))], device=device)  # (1, T)
    model.generate(prompt, 2, temperature=0)  # the first call pays for allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate(prompt, max_new_tokens, temperature=0)
        times.append(time.perf_counter() - t0)
    return max_new_tokens / statistics.median(times)
