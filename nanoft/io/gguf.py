"""GGUF, llama.cpp's one-file checkpoint format, read from its specification (ggml-org/ggml, docs/gguf.md) with numpy.

    config, state_dict = read_gguf_checkpoint(smollm2_gguf())   # HF config.json dict, {HF name: fp32 tensor}
    f = GGUFFile(path); f.metadata["general.architecture"]; f.tensor("blk.0.attn_q.weight")   # numpy float32

A file is, all little-endian:
    "GGUF" | version u32 (2 or 3) | tensor count u64 | metadata count u64
    metadata  count x (key: string, value type: u32, value)        string = u64 byte length + UTF-8 bytes;
                                                                   an array = item type u32, count u64, items
    tensors   count x (name: string, n_dims u32, dims n_dims x u64, ggml type u32, offset u64)
    padding to general.alignment (default 32), then the tensor data; tensor i starts at data + offset_i
dims list the fastest-varying axis first (ggml's ne[0] is the length of a row), so the numpy shape is dims reversed:
a Linear's (out, in) weight is stored with dims [in, out]. The tokenizer and the chat template are metadata too
(nanoft.io.tokenizer reads them). Nothing is loaded until asked: the file is memory-mapped, and a tensor is
dequantized when .tensor(name) reads it.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# metadata value types (gguf_type): struct format of one value; 8 is a string, 9 an array
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY, FLOAT32 = 8, 9, 6

# ggml tensor types nanoft reads: name, values per block, bytes per block
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2),
              2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34)}
# the others, by name only, so that an error can say what a file holds
OTHER_GGML_TYPES = {6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K",
                    15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
                    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
                    34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4"}
SUPPORTED = ", ".join(name for name, _, _ in GGML_TYPES.values())


def type_name(ggml_type: int) -> str:
    if ggml_type in GGML_TYPES:
        return GGML_TYPES[ggml_type][0]
    return OTHER_GGML_TYPES.get(ggml_type, f"unknown type {ggml_type}")


# ---------------------------------------------------------------------------------------------------------------
# Dequantization. The quantized types cut a row into blocks of 32 values; each block stores its own scale d (and
# for Q4_1 a minimum m) as float16, then 32 small integers q. A value is rebuilt as d * q (+ m). Small blocks keep
# one outlier from spoiling the precision of a whole row: the same idea as chapter 12's NF4 (nanoft/quant/nf4.py).

def _halves(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 stored at bytes [start, start + 2) of every block, as a (n_blocks, 1) float32 column."""
    return blocks[:, start:start + 2].view(np.float16).astype(np.float32)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """(n_blocks, 16) bytes -> (n_blocks, 32) values 0..15: the low 4 bits hold values 0..15 of the block, the high
    4 bits values 16..31 (not neighbours in pairs: ggml's layout, so one shift unpacks half a block)."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1)


def dequantize(raw: np.ndarray, ggml_type: int, shape) -> np.ndarray:
    """Raw tensor bytes (uint8) -> float32 array of `shape` (numpy order), for the types in GGML_TYPES."""
    name = type_name(ggml_type)
    if name == "F32":
        return raw.view(np.float32).reshape(shape).copy()
    if name == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(shape)
    if name == "BF16":
        # bfloat16 is the top half of a float32: put the 16 bits back on top, zeros below
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    _, block_values, block_bytes = GGML_TYPES[ggml_type]
    blocks = raw.reshape(-1, block_bytes)                  # (n_blocks, block_bytes)
    if name == "Q8_0":
        # symmetric 8-bit: d (f16), then 32 signed bytes; x = d * q with q in -128..127
        x = blocks[:, 2:].view(np.int8).astype(np.float32) * _halves(blocks, 0)
    elif name == "Q4_0":
        # symmetric 4-bit: d (f16), then 16 bytes of 4-bit q in 0..15, centred by 8: x = d * (q - 8)
        x = _halves(blocks, 0) * (_nibbles(blocks[:, 2:]).astype(np.int8) - 8).astype(np.float32)
    else:
        # Q4_1, asymmetric 4-bit: d and m (f16), then 16 bytes of q in 0..15; x = d * q + m, so the 16 levels
        # span [m, m + 15 d], the block's own range (NF4 instead places 16 levels at normal quantiles times absmax)
        x = _halves(blocks, 0) * _nibbles(blocks[:, 4:]).astype(np.float32) + _halves(blocks, 2)
    return x.reshape(shape)                                # (n_blocks, 32) -> shape


# ---------------------------------------------------------------------------------------------------------------
# The file: header, metadata, tensor infos.

class GGUFError(ValueError):
    pass


class _Cursor:
    """Reads the header's little-endian values one after another; a read past the end is a truncated file."""

    def __init__(self, path, buf: np.ndarray):
        self.path, self.buf, self.pos = path, buf, 0
        self.mem = memoryview(buf)

    def take(self, n: int, what: str):
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated GGUF file: reading {what} at byte {self.pos} needs {n} bytes but "
                            f"the file has {len(self.buf)}; download it again")
        start, self.pos = self.pos, self.pos + n
        return self.mem[start:self.pos]

    def scalar(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        return bytes(self.take(self.scalar("Q", what), what)).decode("utf-8", errors="replace")

    def value(self, value_type: int, what: str):
        if value_type == STRING:
            return self.string(what)
        if value_type == ARRAY:
            item_type, count = self.scalar("I", what), self.scalar("Q", what)
            if item_type in SCALAR_FORMATS:  # numbers in one go (token types: 49,152 of them)
                fmt = SCALAR_FORMATS[item_type]
                items = np.frombuffer(self.take(count * struct.calcsize(fmt), what), dtype="<" + fmt)
                return items.tolist()
            return [self.value(item_type, what) for _ in range(count)]  # strings (the vocabulary), nested arrays
        if value_type not in SCALAR_FORMATS:
            raise GGUFError(f"{self.path}: corrupt GGUF metadata: {what} has value type {value_type}, the "
                            "specification's types are 0-12")
        v = self.scalar(SCALAR_FORMATS[value_type], what)
        # a float32 like rms_norm_eps was written from the float64 1e-5: give back that shortest spelling
        return float(str(np.float32(v))) if value_type == FLOAT32 else v


class GGUFFile:
    """A memory-mapped GGUF file: .version, .metadata (key -> Python value), .tensors (name -> (ggml type, numpy
    shape, byte offset)), and .tensor(name), which dequantizes one tensor to float32."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        self.buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        r = _Cursor(self.path, self.buf)
        magic = bytes(r.take(4, "the magic number"))
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file: it starts with {magic!r}, a GGUF file with {GGUF_MAGIC!r} "
                            "(nanoft reads GGUF versions 2 and 3, and safetensors/.bin folders with from_pretrained)")
        self.version = r.scalar("I", "the version")
        if self.version not in (2, 3):
            raise GGUFError(f"{self.path}: GGUF version {self.version}; nanoft reads versions 2 and 3 (convert the "
                            "model again with a current llama.cpp)")
        n_tensors, n_kv = r.scalar("Q", "the tensor count"), r.scalar("Q", "the metadata count")
        self.metadata = {}
        for _ in range(n_kv):
            key = r.string("a metadata key")
            self.metadata[key] = r.value(r.scalar("I", key), key)
        self.tensors = {}
        for _ in range(n_tensors):
            name = r.string("a tensor name")
            dims = [r.scalar("Q", name) for _ in range(r.scalar("I", name))]
            ggml_type, offset = r.scalar("I", name), r.scalar("Q", name)
            self.tensors[name] = (ggml_type, tuple(reversed(dims)), offset)   # numpy order: slowest axis first
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        self.data_start = -(-r.pos // alignment) * alignment                  # round up to the alignment
        for name, (ggml_type, shape, offset) in self.tensors.items():
            end = self.data_start + offset + self.nbytes(name)
            if end > len(self.buf):
                raise GGUFError(f"{self.path}: truncated GGUF file: tensor {name} ends at byte {end} but the file has "
                                f"{len(self.buf)}; download it again")

    def nbytes(self, name: str) -> int:
        """Bytes of a tensor's data (0 for a type nanoft does not know the block size of)."""
        ggml_type, shape, _ = self.tensors[name]
        if ggml_type not in GGML_TYPES:
            return 0
        _, block_values, block_bytes = GGML_TYPES[ggml_type]
        return int(np.prod(shape, dtype=np.int64)) // block_values * block_bytes

    def check_supported(self, name: str):
        ggml_type, shape, _ = self.tensors[name]
        if ggml_type not in GGML_TYPES:
            raise GGUFError(f"{self.path}: tensor {name} is stored as {type_name(ggml_type)}; nanoft reads {SUPPORTED} "
                            "(pick a Q8_0, Q4_0 or Q4_1 file, or re-quantize with llama.cpp's llama-quantize)")

    def tensor(self, name: str) -> np.ndarray:
        """Tensor `name` as a float32 numpy array in PyTorch's shape ((out, in) for a Linear weight)."""
        self.check_supported(name)
        ggml_type, shape, offset = self.tensors[name]
        start = self.data_start + offset
        return dequantize(self.buf[start:start + self.nbytes(name)], ggml_type, shape)


# ---------------------------------------------------------------------------------------------------------------
# A Llama-family checkpoint in Hugging Face's form: config.json's keys and LlamaForCausalLM's tensor names.

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.")
LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(name: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'; 'token_embd.weight' ->
    'model.embed_tokens.weight'."""
    stem, _, kind = name.rpartition(".")                   # kind: weight or bias
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{kind}"
    raise KeyError(name)


def gguf_config(f: GGUFFile) -> dict:
    """The Hugging Face config.json (as a dict) of the Llama or Qwen2 model a GGUF file holds."""
    meta = f.metadata
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{f.path}: GGUF architecture {arch!r}; nanoft reads {', '.join(ARCHITECTURES)} (Llama 3.x, "
                        "SmolLM2, Qwen2.5 and other models of that shape)")
    key = lambda k, default=None: meta.get(f"{arch}.{k}", default)  # noqa: E731
    hidden, heads = key("embedding_length"), key("attention.head_count")
    config = {
        "architectures": [ARCHITECTURES[arch]], "model_type": arch,
        "vocab_size": key("vocab_size", len(meta.get("tokenizer.ggml.tokens", []))),
        "hidden_size": hidden, "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"), "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads),
        "head_dim": key("attention.key_length", key("rope.dimension_count", hidden // heads)),
        "max_position_embeddings": key("context_length"), "rope_theta": key("rope.freq_base", 10000.0),
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon"), "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in f.tensors,     # no separate head: it reuses the embedding
        "attention_bias": "blk.0.attn_q.bias" in f.tensors, "mlp_bias": False,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"), "torch_dtype": "float32",
    }
    config["rope_scaling"] = _llama3_rope_scaling(f, config)
    return config


def llama3_rope_factors(head_dim, rope_theta, factor, low_freq_factor, high_freq_factor,
                        original_max_position_embeddings) -> np.ndarray:
    """Llama 3.1+'s RoPE scaling: how much each rotary frequency is slowed down. Fast ones (short wavelengths, local
    order) keep 1, slow ones (longer than the pretraining context) get `factor`, and the band between is blended."""
    inv_freq = 1.0 / rope_theta ** (np.arange(0, head_dim, 2) / head_dim)           # (head_dim/2,)
    wavelen = 2 * np.pi / inv_freq
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original_max_position_embeddings / high_freq_factor, 1.0,
                    np.where(wavelen > original_max_position_embeddings / low_freq_factor, factor, blended))


def _llama3_rope_scaling(f: GGUFFile, config: dict):
    """Llama 3.1+ files store their RoPE scaling as the factors themselves (the tensor rope_freqs.weight), not as
    config.json's four numbers. The largest factor is `factor`; the other three are Meta's values (1, 4, 8192),
    checked by recomputing every factor."""
    if "rope_freqs.weight" not in f.tensors:
        return None
    stored = f.tensor("rope_freqs.weight")
    scaling = {"factor": float(stored.max()), "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    expected = llama3_rope_factors(config["head_dim"], config["rope_theta"], **scaling)
    if stored.shape != expected.shape or not np.allclose(stored, expected, rtol=1e-5):
        raise GGUFError(f"{f.path}: rope_freqs.weight holds RoPE factors that are not Llama 3's scaling with factor "
                        f"{scaling['factor']}, low/high 1/4, context 8192; nanoft reads only that one (load the "
                        "model from its Hugging Face folder instead)")
    return {"rope_type": "llama3", **scaling}


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of q/k rows. llama.cpp's RoPE rotates neighbouring pairs (x0, x1), (x2, x3), ...
    of each head, Hugging Face's rotate_half rotates (x_i, x_{i + d/2}); its converter reorders each head's rows so
    the same weights give the same attention under its own rotation. Putting the rows back lets one RoPE (Hugging
    Face's) serve safetensors folders and GGUF files alike."""
    out = w.shape[0]
    return (w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:])    # (heads, d/2, pair, in): GGUF's row order
             .transpose(1, 2).reshape(w.shape))                          # (heads, pair, d/2, in): Hugging Face's


def read_gguf_checkpoint(path):
    """(config, state_dict) of the Llama-family model in a GGUF file: the config as Hugging Face's config.json dict,
    the tensors as {Hugging Face name: float32 tensor}, q/k rows in Hugging Face's order. A tied model has no
    lm_head.weight (config["tie_word_embeddings"] is True); Llama 3.1+'s rope_freqs.weight becomes
    config["rope_scaling"]."""
    f = GGUFFile(path)
    config = gguf_config(f)
    for name in f.tensors:       # fail before dequantizing anything
        f.check_supported(name)
    state_dict = {}
    for name in f.tensors:
        if name == "rope_freqs.weight":  # already in config["rope_scaling"]
            continue
        w = torch.from_numpy(f.tensor(name))
        # only the llama converter permutes: qwen2 models use rotate_half's layout (llama.cpp's "neox" RoPE) already
        if config["model_type"] == "llama" and ".attn_q." in name:
            w = unpermute_rope_rows(w, config["num_attention_heads"])
        elif config["model_type"] == "llama" and ".attn_k." in name:
            w = unpermute_rope_rows(w, config["num_key_value_heads"])
        try:
            state_dict[hf_name(name)] = w
        except KeyError:
            raise GGUFError(f"{f.path}: unexpected tensor {name!r} for a {config['model_type']} model; nanoft maps "
                            f"token_embd, output_norm, output and blk.N.{{{', '.join(LAYER_NAMES)}}}") from None
    return config, state_dict
