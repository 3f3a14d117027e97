"""The chapter-4 baseline: a small LSTM language model trained from scratch, to compare with fine-tuned GPT-2.

embedding -> 2-layer LSTM -> linear head over the vocabulary. Same forward/generate interface as nanoft.models.gpt2.GPT2,
so the training loop and the chapter scripts treat both models alike.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoft.models import sampling
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

    def forward(self, input_ids, targets=None, hidden=None, use_cache=False):
        """input_ids (B, T) -> logits (B, T, V); with targets also the mean cross-entropy (-100 = ignore); with
        use_cache also the LSTM state (h, c), each (n_layers, B, hidden_dim), to continue from via hidden=.
        Returns logits alone, or a tuple (logits, [loss], [hidden]) of what was asked for, in that order."""
        x = self.drop(self.embedding(input_ids))  # (B, T, emb_dim)
        x, hidden = self.lstm(x, hidden)  # (B, T, hidden_dim)
        x = self.drop(x)
        if self.proj is not None:
            x = self.proj(x)  # (B, T, emb_dim)
        logits = self.head(x)  # (B, T, V)
        if targets is None and not use_cache:
            return logits
        out = (logits,)
        if targets is not None:
            out += (F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100),)
        if use_cache:
            out += (hidden,)
        return out

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, do_sample=None,
                 eos_token_id=None, use_cache=True, generator=None):
        """Same arguments and output as GPT2.generate. The LSTM state is the cache: with use_cache it is carried
        from step to step; use_cache=False re-reads the whole prefix each step (slower, same tokens)."""
        check_generate_args(input_ids, max_new_tokens, temperature, top_k, top_p)

        def next_logits(ids, hidden):
            if use_cache:  # the prompt first, then one token a step, continuing from the carried state
                logits, hidden = self(ids if hidden is None else ids[:, -1:], hidden=hidden, use_cache=True)
            else:
                logits = self(ids)
            return logits[:, -1, :], hidden  # (B, V)
        return sampling.generate(self, next_logits, input_ids, max_new_tokens, temperature, top_k, top_p, do_sample,
                                 eos_token_id, generator)
