"""Llama in one file: the decoder that SmolLM2, Llama 3.x and Qwen2.5 share, with the module names of Hugging Face's
LlamaForCausalLM (model.embed_tokens, model.layers.N.self_attn.q_proj, ..., model.norm, lm_head), so checkpoints
and PEFT adapters load by name.

GPT-2 (gpt2.py) with four changes, each a lesson of the five years after it:
- RMSNorm instead of LayerNorm: rescale each vector by its root mean square, without subtracting the mean first;
- rotary position embeddings (RoPE) instead of a learned position table: each query and key is rotated by an angle
  that grows with its position, so that attention scores depend on how far apart two tokens are;
- grouped-query attention (GQA): several query heads share one key/value head, which shrinks the KV cache;
- a SwiGLU MLP: a SiLU-gated product of two projections instead of one GELU layer.
No biases (except Qwen2's on q, k and v) and no dropout outside attention. The LM head may be tied to the token
embedding (SmolLM2, Llama 3.2 1B, Qwen2.5 0.5B) or not (Llama 3.1 8B, Qwen2.5 7B).

from_pretrained reads a Hugging Face folder or hub id through hf_files.py; from_gguf reads a llama.cpp file through
gguf.py, which hands over the same (config dict, tensors by HF name); save_pretrained writes a folder transformers
loads. generate() decodes with the KV cache (kv_cache.py) and picks tokens with sampling.py.
"""
import math
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

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@dataclass
class LlamaConfig:
    """Field names = HF config.json keys, so hf_files.config_from_dict(LlamaConfig, config_json) builds one (the keys
    it does not know are dropped). The shape defaults to SmolLM2-135M's; the options default to transformers'
    LlamaConfig defaults, which is what a config.json that leaves them out means."""
    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536  # the SwiGLU MLP's width
    num_hidden_layers: int = 30
    num_attention_heads: int = 9  # query heads
    num_key_value_heads: int = 3  # key/value heads, each shared by num_attention_heads // num_key_value_heads queries
    head_dim: Optional[int] = None  # None: hidden_size // num_attention_heads (Llama 3 and Qwen may set it)
    max_position_embeddings: int = 2048  # the context it was trained for (RoPE itself has no table to run out of)
    rope_theta: float = 10000.0  # RoPE's base: the slowest pair turns once every ~2 pi rope_theta positions
    rope_scaling: Optional[dict] = None  # None, or Llama 3.1's {"rope_type": "llama3", "factor": 8.0, ...}
    rope_parameters: Optional[dict] = None  # transformers 5 writes rope_theta and rope_scaling together here
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    attention_bias: bool = False  # Llama: a bias on q, k, v and o together
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    model_type: str = "llama"  # "qwen2": a Llama with biases on q, k and v (and none on o)
    use_sliding_window: bool = False  # Qwen2's sliding-window attention, which nanoft does not implement
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int | list] = None  # Llama 3.1 Instruct lists three
    pad_token_id: Optional[int] = None

    def __post_init__(self):
        if self.model_type not in ARCHITECTURES:
            raise ValueError(f"model_type={self.model_type!r}: this class implements {', '.join(ARCHITECTURES)}")
        self._read_rope_parameters()
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                                 f"{self.num_attention_heads}: set head_dim, or pick a divisor of hidden_size")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}: each key/value head serves a whole "
                             "group of query heads, so pick a divisor")
        unsupported = [f"{k}={v!r}" for k, v in (("hidden_act", self.hidden_act),
                                                  ("use_sliding_window", self.use_sliding_window))
                       if v != {"hidden_act": "silu", "use_sliding_window": False}[k]]
        if unsupported:
            raise ValueError(f"{', '.join(unsupported)} is not supported (Llama, SmolLM2 and Qwen2 use SwiGLU's "
                             "'silu' and full attention): load this checkpoint with transformers instead")
        if self.model_type == "qwen2":
            self.attention_bias = False  # Qwen2's q/k/v biases come with its model_type; o_proj has none

    def _read_rope_parameters(self):
        # one form whatever wrote the config: rope_theta, and rope_scaling None or {"rope_type": "llama3", ...}
        rope = {**(self.rope_parameters or {}), **(self.rope_scaling or {})}
        self.rope_parameters = None
        self.rope_theta = float(rope.pop("rope_theta", self.rope_theta))
        rope_type = rope.pop("type", rope.pop("rope_type", "default"))  # transformers 4.3x wrote "type"
        if rope.get("partial_rotary_factor", 1.0) != 1.0 or rope_type not in ("default", "llama3"):
            raise ValueError(f"rope scaling {rope_type!r} with {rope} is not supported: nanoft implements the plain "
                             "RoPE and Llama 3.1's 'llama3' scaling; load this checkpoint with transformers instead")
        self.rope_scaling = None if rope_type == "default" else {**rope, "rope_type": rope_type}

    @property
    def qkv_bias(self):  # Qwen2 keeps biases on the query, key and value projections
        return self.attention_bias or self.model_type == "qwen2"


# ---------------------------------------------------------------------------------------------------------------------
# The model

class RMSNorm(nn.Module):
    """x / rms(x) * weight, where rms(x) = sqrt(mean(x^2) + eps) over the channels (Zhang & Sennrich, 2019).
    LayerNorm subtracts the mean and divides by the standard deviation; RMSNorm keeps only the division. What keeps
    a deep stack stable is controlling the scale of the residual stream, not re-centring it: dropping the mean (and
    LayerNorm's bias) costs nothing in quality and saves a reduction per call. Computed in fp32, as transformers
    does: under bf16 the mean of squares would lose precision."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        y = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps)  # one fused kernel for x * rsqrt(mean(x^2) + eps)
        return self.weight * y.to(x.dtype)


def rope_frequencies(config, device=None):
    """The angle each position turns per step, one per pair of channels: (head_dim // 2,), from fast (1 radian per
    position) to slow (rope_theta ** -1). Llama 3.1's "llama3" scaling slows the low frequencies down by `factor`
    (those whose wavelength exceeds the original context), keeps the high ones, and blends the ones in between: a
    model trained on 8k positions then reads 128k without angles it has never seen."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))
    s = config.rope_scaling or {}
    if s.get("rope_type", "default") != "llama3":
        return inv_freq
    old_len = s["original_max_position_embeddings"]
    low, high, factor = s["low_freq_factor"], s["high_freq_factor"], s["factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)  # long wavelengths: slowed down
    smooth = (old_len / wavelen - low) / (high - low)  # 0 at the long end of the middle band, 1 at the short end
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    middle = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(middle, blended, scaled)


def rope_cos_sin(config, positions):
    """cos and sin of every position's angles: positions (T,) or (B, T) -> two (T, head_dim) or (B, T, head_dim)
    tensors, fp32."""
    freqs = positions.float()[..., None] * rope_frequencies(config, positions.device)  # (..., T, head_dim // 2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, head_dim): channel i and i + head_dim // 2 share an angle
    return emb.cos(), emb.sin()


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a quarter turn of every pair (x1[i], x2[i])."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    """Rotate each pair of channels of x (B, nh, T, head_dim) by its position's angle.
    Why this encodes relative position: a query rotated by angle m*w and a key rotated by n*w have the dot product of
    the unrotated pair rotated by (m - n)*w, since rotations compose and preserve dot products. So attention scores
    depend on the offset m - n only, never on absolute positions, and no position table is learned.
    Hugging Face's convention pairs channel i with channel i + head_dim // 2 (rotate_half), not neighbours 2i and
    2i + 1 as the RoPE paper and llama.cpp do; gguf.py reorders the q/k rows of a GGUF file to this layout."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # bf16 under autocast, as transformers casts them
    return x * cos + rotate_half(x) * sin


def causal_mask(T, T_k, device=None):
    """(T, T_k) bool, True = may attend: the last T of T_k positions, query i (at position T_k - T + i) seeing keys
    0 .. T_k - T + i."""
    return torch.ones(T, T_k, dtype=torch.bool, device=device).tril(diagonal=T_k - T)


def padded_positions(attention_mask, T):
    """For the last T positions of a left-padded batch, attention_mask (B, T_k) with 1 = token, 0 = padding ->
    (positions (B, T): each token's index among its row's tokens, which RoPE rotates by; keep (B, 1, T, T_k): True
    where a query may attend, i.e. a key at or before it that is a token). A padding query keeps itself, so that
    no row of the softmax is empty (that would give NaN); nothing reads a padding position's output."""
    mask = attention_mask.bool()
    B, T_k = mask.shape
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)
    keep = causal_mask(T, T_k, mask.device)[None] & mask[:, None, :]  # (B, T, T_k)
    cols = torch.arange(T_k, device=mask.device)
    keep |= (cols == cols[-T:, None])[None]  # every query sees itself: query i is key T_k - T + i
    return positions, keep[:, None]


class Attention(nn.Module):
    """Causal self-attention with grouped-query attention.
    Generation keeps every layer's keys and values for every position (the KV cache): 2 * n_layer * T * n_kv_head *
    head_dim numbers per sequence. Multi-head attention has as many key/value heads as query heads; GQA lets a group
    of query heads share one, so the cache (and the memory traffic of reading it each step) shrinks by the group
    size, 3x for SmolLM2 (9 query, 3 kv heads), 4x for Llama 3 8B, at almost no cost in quality."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx  # which entry of the KV cache is this layer's
        self.n_head, self.n_kv_head, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                      config.head_dim)
        self.dropout = config.attention_dropout
        C, hd = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(C, self.n_head * hd, bias=config.qkv_bias)
        self.k_proj = nn.Linear(C, self.n_kv_head * hd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(C, self.n_kv_head * hd, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * hd, C, bias=config.attention_bias)

    def forward(self, x, cos, sin, kv_cache=None, keep=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # keys are cached rotated: positions never change
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, n_kv, T_past + T, hd)
        T_k = k.size(2)
        if keep is not None:  # a padded batch: (B, 1, T, T_k), built once by Llama.forward
            mask, is_causal = keep, False
        elif T == T_k:  # no cache: the usual lower-triangular mask, which SDPA builds itself
            mask, is_causal = None, True
        elif T == 1:  # one new token sees every cached position
            mask, is_causal = None, False
        else:  # several new tokens after a cache: query i sits at position T_k - T + i
            mask, is_causal = causal_mask(T, T_k, x.device), False
        y = attention(q, k, v, mask, is_causal, dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    """SwiGLU (Shazeer, 2020): down(silu(gate(x)) * up(x)). The gate decides, per channel and token, how much of
    `up` passes; three matrices instead of two, so the width is ~8/3 of hidden_size, not 4x, for the same size."""

    def __init__(self, config):
        super().__init__()
        C, H, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(C, H, bias=bias)
        self.up_proj = nn.Linear(C, H, bias=bias)
        self.down_proj = nn.Linear(H, C, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm, as GPT-2: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv_cache=None, keep=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, keep)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    # what quant/ (LoRA, PEFT files, quantization, QAT) reads from the model class: see nanoft/quant/targets.py
    HF_MODEL_TYPE = tuple(ARCHITECTURES)  # config.json model_types this class loads
    CONFIG = LlamaConfig
    BLOCKS = "model.layers"
    BLOCK_LINEARS = {"attention": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                     "mlp": ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    HF_TRANSPOSED = ()

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False  # trade compute for memory in training: recompute blocks in backward
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList([DecoderLayer(config, i) for i in range(config.num_hidden_layers)]),
            norm=RMSNorm(config.hidden_size, config.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:  # one matrix reads tokens in and scores them out (as GPT-2)
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)

    def _init_weights(self, module):  # transformers' init (initializer_range 0.02), for training from scratch
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, exclude_embeddings=False):
        """Parameters counted once (a tied lm_head is the embedding); exclude_embeddings drops embed_tokens."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.embed_tokens.weight.numel() if exclude_embeddings else n

    def forward(self, input_ids, targets=None, kv_cache=None, *, last_only=False, attention_mask=None, logits_at=None):
        """input_ids (B, T) -> (logits (B, T, V), loss). targets (B, T): the token to predict at each position
        (already shifted; -100 = ignore); loss is their mean cross-entropy, None without targets. kv_cache (a
        KVCache, filled in place): the positions it holds come before input_ids. last_only: logits of the last
        position only, (B, 1, V), all that generation needs (the LM head is the biggest matmul of a decode step).
        attention_mask (B, T_past + T), 1 = a token, 0 = padding: for a LEFT-padded batch of prompts (batched
        generation), the cached positions' included. Padding is then never attended to, and each row's positions
        count from its own first token, so every row gets the logits it would get alone.
        logits_at (B, T) bool: logits of those positions only, (N, V) in row-major order (a loss on the labelled
        positions needs no others, and the LM head is a fifth of a small model's forward)."""
        B, T = input_ids.shape
        if (last_only or logits_at is not None) and targets is not None:
            raise ValueError("last_only and logits_at give logits for some positions only, so there is no loss over "
                             "targets: pass targets, or one of them")
        T_past = kv_cache.length if kv_cache is not None else 0
        keep = None
        if attention_mask is None:
            positions = torch.arange(T_past, T_past + T, device=input_ids.device)  # (T,)
        else:
            if attention_mask.shape != (B, T_past + T):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, not (batch, cached + new "
                                 f"positions) = ({B}, {T_past + T}): give one column per token, the cached ones too")
            positions, keep = padded_positions(attention_mask, T)  # (B, T), (B, 1, T, T_past + T)
        cos, sin = rope_cos_sin(self.config, positions)  # (T, hd), or (B, T, hd) with a mask
        if keep is not None:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd): one rotation per row, shared by the heads
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # keep only the layer's input; backward re-runs the layer instead of storing its activations
                x = checkpoint(layer, x, cos, sin, None, keep, use_reentrant=False)
            else:
                x = layer(x, cos, sin, kv_cache, keep)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        elif logits_at is not None:
            x = x[logits_at]  # (N, C)
        logits = self.lm_head(self.model.norm(x))  # (B, T, V), or (N, V) with logits_at
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, do_sample=None,
                 eos_token_id=None, use_cache=True, generator=None, num_beams=1, no_repeat_ngram_size=0,
                 attention_mask=None):
        """Continue input_ids (B, T) by up to max_new_tokens tokens -> (B, T + n_new), as GPT2.generate.
        Greedy when do_sample=False or temperature=0, otherwise samples (after top_k / top_p filtering); num_beams > 1
        is beam search; no_repeat_ngram_size=n forbids repeating an n-gram. eos_token_id (off when None): a sequence
        that emits it is padded with it until every one has, then we stop (a chat model's is the tokenizer's eos, e.g.
        <|im_end|>). use_cache=False re-runs the whole sequence each step; the tokens are the same either way.
        attention_mask (B, T), 1 = token, 0 = padding: prompts of different lengths in one batch, LEFT-padded (so
        that every row's next token goes at the same column); each row then decodes as it would alone. Greedy and
        sampling only; no_repeat_ngram_size would count the padding as tokens."""
        check_generate_args(input_ids, max_new_tokens, temperature, top_k, top_p, num_beams, no_repeat_ngram_size,
                            do_sample)
        if attention_mask is not None and (num_beams > 1 or no_repeat_ngram_size):
            raise ValueError("attention_mask (a padded batch) works with greedy decoding and sampling: for beam search "
                             "or no_repeat_ngram_size, generate one prompt at a time")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}: give one 1/0 per prompt token")

        def next_logits(ids, cache):
            if use_cache and cache is None:
                cache = KVCache()
            mask = None
            if attention_mask is not None:  # the new tokens are never padding
                new = attention_mask.new_ones(ids.size(0), ids.size(1) - input_ids.size(1))
                mask = torch.cat([attention_mask, new], dim=1)  # (B, T_prompt + n_generated)
            # with the cache, feed only what it has not seen: the prompt first, then one token a step
            logits, _ = self(ids[:, cache.length:] if use_cache else ids, kv_cache=cache, last_only=True,
                             attention_mask=mask)
            return logits[:, -1, :], cache  # (B, V)
        return sampling.generate(self, next_logits, input_ids, max_new_tokens, temperature, top_k, top_p, do_sample,
                                 eos_token_id, generator, num_beams, no_repeat_ngram_size)

    # -----------------------------------------------------------------------------------------------------------------
    # Loading and saving

    @classmethod
    def from_pretrained(cls, name_or_path, *, strict=True, **hub_kwargs):
        """A Llama from a Hugging Face folder or hub id (LlamaForCausalLM or Qwen2ForCausalLM: SmolLM2, Llama 3.x,
        Qwen2.5). hub_kwargs (revision, cache_dir, offline) go to nanoft.io.hub.resolve."""
        config = hf_files.config_from_dict(LlamaConfig, hf_files.read_config(name_or_path, cls.HF_MODEL_TYPE,
                                                                                **hub_kwargs))
        tensors = hf_files.read_tensors(name_or_path, **hub_kwargs)  # after the config: refuse before downloading
        return cls.from_hf_tensors(config, tensors, name_or_path, strict)

    @classmethod
    def from_gguf(cls, path, *, strict=True):
        """A Llama from a llama.cpp GGUF file (e.g. nanoft.smollm2_gguf()), dequantized to fp32. gguf.py turns the
        file into what a Hugging Face folder holds (config dict, tensors by HF name), so the rest is from_pretrained's
        path; save_pretrained then exports it as a Hugging Face folder."""
        from nanoft.io.gguf import read_gguf_checkpoint
        config, tensors = read_gguf_checkpoint(path)
        return cls.from_hf_tensors(hf_files.config_from_dict(LlamaConfig, config), tensors, path, strict)

    @classmethod
    def from_hf_tensors(cls, config, tensors, source, strict=True):
        """Build from a LlamaConfig and tensors named as in LlamaForCausalLM, checking every name and shape."""
        model = cls(config)
        tensors = dict(tensors)
        if config.tie_word_embeddings:  # the head is the embedding: a saved copy must be that same matrix
            head, emb = tensors.pop("lm_head.weight", None), tensors.get("model.embed_tokens.weight")
            if head is not None and emb is not None and not torch.equal(head, emb):
                raise ValueError(f"{source} sets tie_word_embeddings but its lm_head.weight differs from "
                                 "model.embed_tokens.weight: set tie_word_embeddings=false in config.json")
            if emb is not None:
                tensors["lm_head.weight"] = emb
        return hf_files.load_into(model, tensors, source, strict)

    def save_pretrained(self, folder):
        """Write config.json + model.safetensors as LlamaForCausalLM (or Qwen2ForCausalLM) saves them."""
        config = {k: v for k, v in asdict(self.config).items() if v is not None}
        config["architectures"] = [ARCHITECTURES[self.config.model_type]]
        if self.config.model_type == "qwen2":  # keys Qwen2Config does not have
            for key in ("attention_bias", "mlp_bias"):
                config.pop(key)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()
                   if not (self.config.tie_word_embeddings and k == "lm_head.weight")}  # the loader re-ties it
        hf_files.write_folder(folder, config, tensors)

    def hf_modules(self):
        """{nanoft module path: (HF module path,)}: the same names. A tied lm_head is left out (it is the
        embedding, and transformers does not save it either)."""
        names = ["model.embed_tokens"]
        for i in range(self.config.num_hidden_layers):
            names += [f"model.layers.{i}.{m}" for m in
                      ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                       "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
                       "mlp.down_proj")]
        names += ["model.norm"] + ([] if self.config.tie_word_embeddings else ["lm_head"])
        return {name: (name,) for name in names}
