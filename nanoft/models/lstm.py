"""The chapter-4 baseline: a small LSTM language model trained from scratch, to compare with fine-tuned GPT-2.

embedding -> 2-layer LSTM -> linear head over the vocabulary. Same forward/generate interface as nanoft.models.gpt2.GPT2,
so the training loop and the chapter scripts treat both models alike.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoft.models import sampling
from nanoft.models.kv_cache import KVCache
from nanoft.models.sampling import check_generate_args


@dataclass
class LSTMConfig:
    vocab_size: int
    emb_dim: int = 128
    hidden_dim: int = 128
    n_layers: int = 2
    dropout: float = 0.1
    tie_weights: bool = False  # share embedding and head (Press & Wolf 2017): fewer parameters, often lower perplexity


class LSTMLM(nn.Module):

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.emb_dim)
        self.drop = nn.Dropout(config.dropout)
        # nn.LSTM applies its dropout between layers only, so it is meaningless (and warns) with one layer
        self.lstm = nn.LSTM(config.emb_dim, config.hidden_dim, config.n_layers, batch_first=True,
                            dropout=config.dropout if config.n_layers > 1 else 0.0)
        # a tied head reads vectors of the embedding's width, so a wider or narrower hidden state is mapped to it
        needs_proj = config.tie_weights and config.hidden_dim != config.emb_dim
        self.proj = nn.Linear(config.hidden_dim, config.emb_dim) if needs_proj else None
        self.head = nn.Linear(config.emb_dim if needs_proj else config.hidden_dim, config.vocab_size)
        if config.tie_weights:
            self.head.weight = self.embedding.weight  # (V, emb_dim) serves both as lookup table and as output layer
        # small uniform init for embedding and head, as in PyTorch's word_language_model example
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.head.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())  # a tied weight is counted once

    def forward(self, input_ids, targets=None, kv_cache=None):
        """input_ids (B, T) -> (logits (B, T, V), loss); loss is the mean cross-entropy against targets (B, T)
        (-100 = ignore), None without targets. kv_cache (a KVCache, generation only): an LSTM has no keys and
        values, its whole past is its state (h, c), each (n_layers, B, hidden_dim); it continues from
        kv_cache.state and leaves the new state there."""
        x = self.drop(self.embedding(input_ids))  # (B, T, emb_dim)
        x, hidden = self.lstm(x, kv_cache.state if kv_cache is not None else None)  # (B, T, hidden_dim)
        if kv_cache is not None:
            kv_cache.state = hidden
        x = self.drop(x)
        if self.proj is not None:
            x = self.proj(x)  # (B, T, emb_dim)
        logits = self.head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, do_sample=None,
                 eos_token_id=None, use_cache=True, generator=None, num_beams=1, no_repeat_ngram_size=0):
        """Same arguments and output as GPT2.generate (num_beams and no_repeat_ngram_size included). The LSTM
        state is the cache (KVCache.state, reordered with the beams): with use_cache it is carried from step to step;
        use_cache=False re-reads the whole prefix each step (slower, same tokens)."""
        check_generate_args(input_ids, max_new_tokens, temperature, top_k, top_p, num_beams, no_repeat_ngram_size,
                            do_sample)

        def next_logits(ids, cache):
            if use_cache:  # the prompt first, then one token a step, continuing from the carried state
                first = cache is None
                cache = KVCache() if first else cache
                logits, _ = self(ids if first else ids[:, -1:], kv_cache=cache)
            else:
                logits, _ = self(ids)
            return logits[:, -1, :], cache  # (B, V)
        return sampling.generate(self, next_logits, input_ids, max_new_tokens, temperature, top_k, top_p, do_sample,
                                 eos_token_id, generator, num_beams, no_repeat_ngram_size)
