"""Choosing the next token from a model's logits, and the decoding loops around it: greedy or sampling (temperature,
top-k, top-p) one token at a time, or beam search, which keeps the num_beams most likely sequences at every step.

Shared by every model that generates (GPT2.generate, Llama.generate, LSTMLM.generate): they differ in how they
compute the logits of the next position and what they cache, not in how they pick a token or when they stop.
Both loops can forbid repeating an n-gram (no_repeat_ngram_size), as transformers' generate does.
"""
import torch
import torch.nn.functional as F


def check_generate_args(input_ids, max_new_tokens, temperature, top_k, top_p, num_beams=1, no_repeat_ngram_size=0,
                        do_sample=None):
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
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams={num_beams!r} is not a positive integer: pass 1 (no beam search) or more")
    if not isinstance(no_repeat_ngram_size, int) or no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size={no_repeat_ngram_size!r} is not an integer >= 0: pass 0 (off) or "
                         "the n-gram length that may occur only once, such as 2")
    if num_beams > 1 and (do_sample or top_k is not None or top_p is not None):
        raise ValueError(f"num_beams={num_beams} is beam search, which keeps the most likely sequences and samples "
                         "nothing: drop do_sample=True, top_k and top_p, or pass num_beams=1 to sample")


@torch.no_grad()
def generate(model, next_logits, input_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, do_sample=None,
             eos_token_id=None, generator=None, num_beams=1, no_repeat_ngram_size=0):
    """Continue input_ids (B, T) by up to max_new_tokens tokens -> (B, T + n_new). next_logits(ids, cache) returns
    the logits (B, V) of the position after ids and the model's new cache (None on the first call): a KVCache for
    the transformers, the LSTM's (h, c). eos_token_id (off when None): a sequence that emits it is padded with it
    until every one has, then the loop stops. num_beams > 1: beam search (see beam_search), greedy otherwise or
    sampled. no_repeat_ngram_size=n > 0: no n-gram of tokens (the prompt's included) occurs twice."""
    was_training = model.training
    model.eval()  # dropout while generating only adds noise (and would make cached and uncached runs differ)
    try:
        if num_beams > 1:
            return beam_search(next_logits, input_ids, max_new_tokens, num_beams, eos_token_id, no_repeat_ngram_size)
        ids, cache = input_ids, None
        finished = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            logits, cache = next_logits(ids, cache)
            if no_repeat_ngram_size > 0:
                logits = ban_repeated_ngrams(ids, logits, no_repeat_ngram_size)
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


def ban_repeated_ngrams(ids, logits, n):
    """Set to -inf the logits (B, V) of every token that would complete an n-gram already in ids (B, T).

    The next token completes the n-gram (last n-1 tokens, token); it is a repeat if some earlier window of n tokens
    starts with those same n-1 tokens, and then that window's last token is banned. The prompt counts, as in
    transformers: a decoder-only model cannot tell prompt from output. (n=1 bans every token seen so far.)"""
    T = ids.size(1)
    if T < n:  # not one complete n-gram yet
        return logits
    prefix = ids[:, T - n + 1:]  # (B, n-1): what the next token would extend
    windows = ids.unfold(1, n, 1)  # (B, T-n+1, n): every n-gram so far, window i = ids[:, i:i+n]
    repeats = (windows[:, :, :-1] == prefix[:, None, :]).all(dim=-1)  # (B, T-n+1): windows that start like it
    rows, starts = repeats.nonzero(as_tuple=True)
    banned = torch.zeros_like(logits, dtype=torch.bool)
    banned[rows, windows[rows, starts, -1]] = True
    return logits.masked_fill(banned, float("-inf"))


# ---------------------------------------------------------------------------------------------------------------------
# Beam search. Greedy decoding commits to the single most likely token at each step, and a token that looks best now
# can lead to a less likely sequence than a runner-up would have. Beam search keeps the num_beams most likely
# sequences ("beams") so far, extends each by every token, and keeps the num_beams most likely of those, scored by
# the sum of their tokens' log-probabilities. It finds likelier sequences than greedy (not always the likeliest),
# and is what translation and summarisation used before sampling took over for chat.
#
# This follows transformers' beam search with its defaults (length_penalty=1.0, early_stopping=False), so the two
# return the same sequences:
# - each step scores 2 * num_beams candidates, so that num_beams remain to continue even if num_beams of them end;
# - a candidate that emits eos (or reaches max_new_tokens) ends: if it ranks among the num_beams best candidates
#   of the step, it joins the input's finished hypotheses with its score divided by its new-token count **
#   length_penalty (1.0: the mean log-probability per token, so short endings are not favoured just for being short);
#   the best num_beams finished hypotheses are kept;
# - an input is done once it has num_beams finished hypotheses and its best running beam, scored the same way
#   now, is no better than the worst of them: from then on nothing is added. (A heuristic, early_stopping=False's:
#   the running beam's mean log-probability could still rise with more likely tokens, but rarely does.);
# - the result is each input's best finished hypothesis, the rows padded with eos to the longest.
# At exact ties the running beams match transformers' too (the same torch.topk over the same (B, K*V) layout);
# finished hypotheses with exactly equal scores differ: nanoft keeps the earlier one (higher-ranked, or finished
# first), transformers whichever its topk over its merged buffer returns first.


class Finished:
    """The best num_beams ended hypotheses of one input, as (score, token ids (T + n_new,)), best first."""

    def __init__(self, num_beams):
        self.num_beams, self.hyps, self.done = num_beams, [], False

    def add(self, score, ids):
        self.hyps.append((score, ids))
        self.hyps.sort(key=lambda h: -h[0])  # stable: at equal scores the earlier hypothesis stays ahead
        del self.hyps[self.num_beams:]

    def update_done(self, best_running_score):
        """Done (for good) once full and the best running beam, scored now, does not beat the worst one kept."""
        if len(self.hyps) == self.num_beams and best_running_score <= self.hyps[-1][0]:
            self.done = True


@torch.no_grad()
def beam_search(next_logits, input_ids, max_new_tokens, num_beams, eos_token_id=None, no_repeat_ngram_size=0,
                length_penalty=1.0):
    """The most likely continuation of each row of input_ids (B, T) found with num_beams beams -> (B, T + n_new),
    a row that ended with eos before the longest padded with eos. next_logits as in generate(); the cache it returns
    must have reorder(rows) (KVCache) to follow the beams, else it is dropped and the model re-reads the prefix."""
    B, K = input_ids.size(0), num_beams
    if max_new_tokens == 0:
        return input_ids
    ids = input_ids.repeat_interleave(K, dim=0)  # (B*K, T): rows b*K .. b*K+K-1 are input b's beams
    # The K beams start as K copies of the prompt. Only beam 0 may be extended at the first step, or the K best
    # candidates would be one continuation K times; -1e9 (not -inf) as transformers, so the sums stay finite.
    scores = torch.zeros(B, K, device=ids.device)
    scores[:, 1:] = -1e9
    finished = [Finished(K) for _ in range(B)]
    cache = None
    for step in range(max_new_tokens):
        n_new = step + 1  # the candidates' new-token count
        logits, cache = next_logits(ids, cache)  # (B*K, V)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        if no_repeat_ngram_size > 0:
            log_probs = ban_repeated_ngrams(ids, log_probs, no_repeat_ngram_size)
        V = log_probs.size(-1)
        # the score of every beam followed by every token: (B, K, V), flattened per input to (B, K*V)
        candidates = (log_probs.view(B, K, V) + scores[:, :, None]).view(B, K * V)
        cand_scores, flat = candidates.topk(2 * K, dim=1)  # (B, 2K), best first
        cand_beam, cand_token = flat // V, flat % V  # (B, 2K): which beam each candidate extends, with which token
        cand_rows = cand_beam + torch.arange(B, device=ids.device)[:, None] * K  # (B, 2K): its row in ids
        ends = cand_token == eos_token_id if eos_token_id is not None else torch.zeros_like(cand_token, dtype=bool)
        if n_new == max_new_tokens:
            ends[:] = True  # the last step ends every candidate

        # Finished hypotheses: the ending candidates among the K best of the step (the next K are only spares for
        # the running beams), length-normalised; an input already done takes no more.
        normalised = (cand_scores / n_new ** length_penalty).tolist()
        ends_, rows_ = ends.tolist(), cand_rows.tolist()
        for b in range(B):
            for i in range(K):
                if ends_[b][i] and not finished[b].done:
                    finished[b].add(normalised[b][i], torch.cat([ids[rows_[b][i]], cand_token[b, i:i + 1]]))
        if n_new == max_new_tokens:
            break

        # Running beams: the K best candidates that did not end (an ending one drops by 1e9, below any other).
        scores, keep = (cand_scores + ends.float() * -1e9).topk(K, dim=1)  # (B, K) each, best first
        rows = cand_rows.gather(1, keep).view(B * K)  # the row each new beam continues
        ids = torch.cat([ids[rows], cand_token.gather(1, keep).view(B * K, 1)], dim=1)  # (B*K, T + n_new)
        if hasattr(cache, "reorder"):
            cache.reorder(rows)  # beam j's cache is now the cache of the row it continues
        else:
            cache = None  # a cache that cannot follow the beams: the model re-reads the whole prefix

        best_running = (scores[:, 0] / n_new ** length_penalty).tolist()
        for b in range(B):
            finished[b].update_done(best_running[b])
        if all(f.done for f in finished):
            break

    best = [f.hyps[0][1] for f in finished]
    out = torch.full((B, max(len(s) for s in best)), eos_token_id if eos_token_id is not None else 0,
                     dtype=input_ids.dtype, device=input_ids.device)
    for b, seq in enumerate(best):
        out[b, :len(seq)] = seq
    return out
