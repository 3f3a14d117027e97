"""Choosing the next token from a model's logits (greedy, or sampling with temperature, top-k and top-p), and the
decoding loop around it.

Shared by every model that generates (GPT2.generate, LSTMLM.generate): they differ in how they compute the
logits of the next position and what they cache, not in how they pick a token or when they stop.
"""
import torch


def check_generate_args(input_ids, max_new_tokens, temperature, top_k, top_p):
    if input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a (B, T) tensor of token ids (torch.long), got shape "
                         f"{tuple(input_ids.shape)} {input_ids.dtype}: use ids[None] for one sequence, ids.long()")
    if input_ids.size(1) == 0:
        raise ValueError("input_ids is empty: pass at least one token (e.g. the bos/eos token) to start from")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} is negative: pass 0 or more")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} is negative: pass 0 for greedy or a positive value")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} keeps no token: pass top_k >= 1 or None")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} is outside (0, 1]: pass a probability mass such as 0.9, or None")


@torch.no_grad()
def generate(model, next_logits, input_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, do_sample=None,
             eos_token_id=None, generator=None):
    """Continue input_ids (B, T) by up to max_new_tokens tokens -> (B, T + n_new). next_logits(ids, cache) returns
    the logits (B, V) of the position after ids and the model's new cache (None on the first call): GPT-2's keys and
    values, the LSTM's (h, c). eos_token_id (off when None): a sequence that emits it is padded with it until every
    one has, then the loop stops."""
    was_training = model.training
    model.eval()  # dropout while generating only adds noise (and would make cached and uncached runs differ)
    try:
        ids, cache = input_ids, None
        finished = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            logits, cache = next_logits(ids, cache)
            next_id = sample_next_token(logits, temperature, top_k, top_p, do_sample, generator)  # (B,)
            if eos_token_id is not None:
                next_id = next_id.masked_fill(finished, eos_token_id)
                finished |= next_id == eos_token_id
            ids = torch.cat([ids, next_id[:, None]], dim=1)
            if eos_token_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)
    return ids


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, do_sample=None, generator=None):
    """Pick one token per row of logits (B, V) -> (B,). Greedy when do_sample is False or temperature is 0;
    otherwise sample from softmax(logits / temperature) after top_k / top_p filtering."""
    if do_sample is None:
        do_sample = temperature > 0
    if not do_sample or temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_top_k_top_p(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    # one multinomial call per step in both generate() paths: with the same generator the same random numbers
    # are drawn, and since cached and uncached probabilities agree to ~1e-7, the same tokens come out
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def filter_top_k_top_p(logits, top_k=None, top_p=None):
    """Set logits (B, V) to -inf outside the top_k tokens, then outside the smallest set of tokens whose
    probability reaches top_p (nucleus sampling), in the same order as transformers."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (the first one always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop).scatter(-1, order, drop)  # back from rank order to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits
