"""GPT-2 in one file, with the parameter names of Hugging Face's GPT2LMHeadModel (so checkpoints load by name).

A decoder-only transformer: token + position embeddings, n_layer pre-LayerNorm blocks (causal self-attention,
then an MLP), a final LayerNorm and a language-model head that shares its weight with the token embedding.
generate() samples with a key/value cache so each new token costs one position, not the whole prefix (the choice
of each token is in sampling.py). from_pretrained reads a Hugging Face folder through hf_files.py and maps the
names at the end of this file; save_pretrained writes one back.
"""
import math
import re
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nanoft.io import hf_files
from nanoft.models import sampling
from nanoft.models.attention import attention
from nanoft.models.kv_cache import KVCache
from nanoft.models.sampling import check_generate_args


@dataclass
class GPT2Config:  # field names = HF config.json keys, so GPT2Config(**known_keys) works
    vocab_size: int = 50257
    n_positions: int = 1024  # max sequence length (nanoGPT's block_size)
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: Optional[int] = None  # MLP width; None means 4 * n_embd
    activation_function: str = "gelu_new"  # tanh-approximated GELU, the one GPT-2 was trained with
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    def __post_init__(self):
        if self.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"activation_function={self.activation_function!r} is not supported: GPT-2 uses "
                             "'gelu_new' (tanh-approximated GELU), and a checkpoint trained with another activation "
                             "would compute something else here: load it with transformers instead")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                             "pick n_head so that each head gets n_embd // n_head dimensions")


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer  # this block's index: where its keys and values go in a KVCache
        self.n_head = config.n_head
        self.attn_pdrop = config.attn_pdrop
        # one matmul for query, key and value together (rows ordered q, k, v), as in the original GPT-2
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, kv_cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:  # the cached keys/values of earlier positions come first in time
            k, v = kv_cache.update(self.layer, k, v)  # (B, nh, T_past + T, hs)

        T_k = k.size(2)
        if T == T_k:  # no cache: the usual lower-triangular mask, which SDPA builds (and may fuse) itself
            mask, is_causal = None, True
        elif T == 1:  # one new token sees every cached position, so nothing needs masking
            mask, is_causal = None, False
        else:  # several new tokens after a cache: query i sits at position T_k - T + i and sees keys up to there
            mask = torch.ones(T, T_k, dtype=torch.bool, device=x.device).tril(diagonal=T_k - T)
            is_causal = False
        y = attention(q, k, v, mask, is_causal, dropout_p=self.attn_pdrop if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, nh * hs): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        n_inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, n_inner)
        self.c_proj = nn.Linear(n_inner, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        # "gelu_new" is the tanh approximation; the exact erf GELU would shift every logit of a pretrained GPT-2
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LN: normalise the input of each sub-layer and add its output to an untouched residual stream.
    GPT-2 moved LayerNorm there (from after the sum, as in BERT) because it keeps deep stacks trainable
    without a careful warm-up; the price is one more LayerNorm at the very end (ln_f)."""

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2(nn.Module):
    # What nanoft.quant reads (LoRA, quantization; see quant/targets.py), and the Hugging Face names, declared once.
    HF_MODEL_TYPE = "gpt2"
    CONFIG = GPT2Config
    BLOCKS = "transformer.h"
    # the linear layers of a block: the fused q/k/v projection (LoRA's original choice), then every other one
    BLOCK_LINEARS = {"attention": ("attn.c_attn",), "mlp": ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    # HF's c_attn, c_proj and c_fc are "Conv1D" layers, a port of the original TensorFlow code where they were 1x1
    # convolutions computing x @ W with W stored (in, out). nn.Linear computes x @ W.T with W stored (out, in), so
    # these weights are transposed between the two (a LoRA's A (r, in) and B (out, r) are not: PEFT gives Conv1D
    # the same shapes as nn.Linear).
    HF_TRANSPOSED = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False  # trade compute for memory in training: recompute blocks in backward
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.n_positions, config.n_embd),
            drop=nn.Dropout(config.embd_pdrop),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token in and writing it out use one matrix. GPT-2 was trained this way (its
        # checkpoints have no separate lm_head), and it saves V * C parameters, 38M of GPT-2 small's 124M.
        self.lm_head.weight = self.transformer.wte.weight

        self.apply(self._init_weights)
        # Each block adds two outputs (attention, MLP) to the residual stream, so its variance grows with depth;
        # GPT-2 scales the init of those projections by 1/sqrt(2 * n_layer) to keep the sum at the scale of one.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):  # GPT-2's init, for training from scratch (from_pretrained overwrites it)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, exclude_embeddings=False):
        """Parameters counted once (the tied lm_head is the embedding); exclude_embeddings drops wte and wpe."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor only once
        if exclude_embeddings:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def forward(self, input_ids, targets=None, kv_cache=None, last_only=False, logits_at=None):
        """input_ids (B, T) -> (logits (B, T, V), loss); loss is the mean cross-entropy against targets (B, T)
        (-100 = ignore), None without targets. kv_cache (a KVCache, generation only): the keys and values of the
        positions before input_ids, extended in place by these T positions.
        last_only: logits of the last position only, (B, 1, V): all that generation needs.
        logits_at (B, T) bool: logits of those positions only, (N, V) in row-major order (a loss on the labelled
        positions needs no others)."""
        B, T = input_ids.shape
        if (last_only or logits_at is not None) and targets is not None:
            raise ValueError("last_only and logits_at give logits for some positions only, so there is no loss over "
                             "targets: pass targets, or one of them")
        T_past = kv_cache.length if kv_cache is not None else 0
        if T_past + T > self.config.n_positions:
            raise ValueError(f"sequence length {T_past + T} exceeds n_positions={self.config.n_positions}: "
                             f"crop input_ids to the last {self.config.n_positions} tokens")
        pos = torch.arange(T_past, T_past + T, dtype=torch.long, device=input_ids.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(pos))  # (B, T, C)

        for block in self.transformer.h:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None:
                # keep only the block's input; backward re-runs the block (with the same dropout masks,
                # since checkpoint restores the RNG state) instead of storing all its activations
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, kv_cache)
        if last_only:
            # the LM head costs C * V per position and its output is the forward's largest tensor (a 1024-token
            # prompt: 206 MB per sequence): generation wants the next token only, so skip the other positions
            x = x[:, -1:, :]  # (B, 1, C)
        elif logits_at is not None:
            x = x[logits_at]  # (N, C)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V), or (N, V) with logits_at

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, do_sample=None,
                 eos_token_id=None, use_cache=True, generator=None, num_beams=1, no_repeat_ngram_size=0):
        """Continue input_ids (B, T) by up to max_new_tokens tokens -> (B, T + n_new).
        Greedy when do_sample=False or temperature=0, otherwise samples (after top_k / top_p filtering);
        num_beams > 1 is beam search (as transformers'); no_repeat_ngram_size=n forbids repeating an n-gram.
        eos_token_id (off when None): a sequence that emits it is padded with it until every one has, then we stop.
        use_cache=False re-runs the prefix (cropped to n_positions) each step; the tokens are the same either way."""
        check_generate_args(input_ids, max_new_tokens, temperature, top_k, top_p, num_beams, no_repeat_ngram_size,
                            do_sample)
        T = input_ids.size(1)
        # the cache holds every position the model reads: the prompt and all new tokens but the last, which is
        # sampled and returned but never fed back
        if use_cache and T + max_new_tokens - 1 > self.config.n_positions:
            raise ValueError(f"input length {T} + max_new_tokens {max_new_tokens} - 1 exceeds n_positions="
                             f"{self.config.n_positions}: lower max_new_tokens to "
                             f"{max(self.config.n_positions - T + 1, 0)} or pass use_cache=False (which crops the "
                             "context to the last n_positions tokens once it is longer)")

        def next_logits(ids, cache):
            if use_cache:  # feed only what the cache has not seen: the prompt first, then one token a step
                if cache is None:
                    cache = KVCache()
                logits, _ = self(ids[:, cache.length:], kv_cache=cache, last_only=True)
            else:
                logits, _ = self(ids[:, -self.config.n_positions:], last_only=True)
            return logits[:, -1, :], cache  # (B, V)
        return sampling.generate(self, next_logits, input_ids, max_new_tokens, temperature, top_k, top_p, do_sample,
                                 eos_token_id, generator, num_beams, no_repeat_ngram_size)

    def resize_token_embeddings(self, new_vocab_size, init="mean"):
        """Grow (or shrink) the vocabulary, e.g. after adding special tokens; lm_head stays tied.
        init="mean": new rows are the mean of the old ones, so a new token starts as an "average" token and
        the model's predictions barely move (a random row would be far from the learned embeddings and get
        almost no probability at first); init="normal": N(0, 0.02) as for training from scratch."""
        if init not in ("mean", "normal"):
            raise ValueError(f"init={init!r} is not supported: use init='mean' or init='normal'")
        old = self.transformer.wte.weight
        old_vocab_size, C = old.shape
        wte = nn.Embedding(new_vocab_size, C, device=old.device, dtype=old.dtype)
        with torch.no_grad():
            n = min(old_vocab_size, new_vocab_size)
            wte.weight[:n] = old[:n]
            if new_vocab_size > old_vocab_size:
                if init == "mean":
                    wte.weight[old_vocab_size:] = old.mean(dim=0)
                else:
                    nn.init.normal_(wte.weight[old_vocab_size:], mean=0.0, std=0.02)
        wte.weight.requires_grad_(old.requires_grad)  # a frozen embedding stays frozen
        self.transformer.wte = wte
        self.lm_head = nn.Linear(C, new_vocab_size, bias=False, device=old.device, dtype=old.dtype)
        self.lm_head.weight = wte.weight  # re-tie: the new head must be the new embedding, not a copy
        self.config.vocab_size = new_vocab_size
        return wte

    @classmethod
    def from_pretrained(cls, name_or_path, *, strict=True, **hub_kwargs):
        """A GPT2 from a Hugging Face GPT-2 checkpoint: a local folder or a hub id such as "gpt2".
        hub_kwargs (revision, cache_dir, offline) go to nanoft.io.hub.resolve."""
        supported = dict(scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, add_cross_attention=False)
        config, tensors = hf_files.read_folder(name_or_path, cls.HF_MODEL_TYPE, supported, **hub_kwargs)
        model = cls(hf_files.config_from_dict(GPT2Config, config))
        return hf_files.load_into(model, gpt2_from_hf(tensors), name_or_path, strict)

    def save_pretrained(self, folder):
        """Write config.json + model.safetensors in Hugging Face's format (loadable by transformers too)."""
        config = {"model_type": self.HF_MODEL_TYPE, "architectures": ["GPT2LMHeadModel"], **asdict(self.config)}
        tensors = gpt2_to_hf({k: v.detach() for k, v in self.state_dict().items()})
        hf_files.write_folder(folder, config, tensors)

    def hf_modules(self):
        """nanoft module path -> HF GPT2LMHeadModel module paths: the same names. lm_head is left out: it is the
        token embedding (tied), and transformers does not save it either."""
        names = ["transformer.wte", "transformer.wpe", "transformer.ln_f"]
        for i in range(self.config.n_layer):
            names += [f"transformer.h.{i}.{m}"
                      for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")]
        return {name: (name,) for name in names}


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face checkpoints. nanoft uses GPT2LMHeadModel's own names, so only two things change:
# - the original "gpt2" repo was saved from GPT2Model and has no "transformer." prefix (h.0.attn..., wte.weight);
# - the Conv1D weights (GPT2.HF_TRANSPOSED) are transposed on the way in and out.

GPT2_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask constants older versions saved


def is_conv1d_weight(name):
    module, _, param = name.rpartition(".")
    return param == "weight" and module.endswith(GPT2.HF_TRANSPOSED)


def gpt2_from_hf(sd):
    out, lm_head = {}, None
    for name, t in sd.items():
        name = name.removeprefix("transformer.")
        if GPT2_BUFFERS.fullmatch(name):
            continue
        if name == "lm_head.weight":
            lm_head = t
            continue
        out["transformer." + name] = t.t() if is_conv1d_weight(name) else t
    wte = out.get("transformer.wte.weight")
    if lm_head is not None and wte is not None and lm_head.shape == wte.shape and not torch.equal(lm_head, wte):
        raise ValueError("this GPT-2 checkpoint has an lm_head.weight that differs from transformer.wte.weight: "
                         "nanoft's GPT2 always ties them, so load it with transformers instead")
    if wte is not None:
        out["lm_head.weight"] = wte  # tied: the head is the token embedding
    return out


def gpt2_to_hf(sd):
    # lm_head.weight is left out, as transformers does: it is the same tensor as wte and the loader re-ties it
    return {name: (t.t() if is_conv1d_weight(name) else t).contiguous()
            for name, t in sd.items() if name != "lm_head.weight"}
