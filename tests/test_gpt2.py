"""nanoft.models.gpt2 against transformers' GPT2LMHeadModel on the same (tiny, random) weights, plus the properties
generate() promises: the KV cache changes nothing, top_k/top_p restrict the support, eos stops, errors are clear."""
import math

import pytest
import torch
import transformers  # the reference (test-only; nanoft itself never imports it)

import nanoft.models.gpt2 as gpt2_module
from nanoft.models.gpt2 import GPT2, GPT2Config
from nanoft.models.kv_cache import KVCache

V, P = 1000, 128
TINY = dict(vocab_size=V, n_positions=P, n_embd=64, n_layer=2, n_head=4)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: a second thread only adds synchronisation, which on a busy shared CPU makes
    each step of generate() 10-100x slower; one thread is the fast choice, restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(nanoft model, transformers model), the same weights, loaded through GPT2.from_pretrained."""
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY, bos_token_id=V - 1, eos_token_id=V - 1))
    with torch.no_grad():
        # HF starts biases at 0 and LayerNorms at 1, and its 0.02 init keeps the MLP inputs so small that tanh
        # and erf GELU agree to 1e-5: randomise everything at a larger scale so a wrong detail shows in the logits
        for name, p in hf.named_parameters():
            if p.dim() == 2 and ".h." in name:
                p.normal_(0.0, 0.2)
            else:
                p.add_((0.02 if p.dim() == 2 else 0.2) * torch.randn_like(p))
    hf.eval()
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    hf.save_pretrained(folder)
    model = GPT2.from_pretrained(str(folder)).eval()
    return model, hf


def prompts(B=2, T=7, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_greedy(hf, x, n, eos=None):
    kw = dict(eos_token_id=eos, pad_token_id=eos) if eos is not None else dict(eos_token_id=None, pad_token_id=0)
    return hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=0, do_sample=False,
                       **kw)


# ---------------------------------------------------------------- parity with transformers

def test_loaded_config_and_logits_match_transformers(pair):
    model, hf = pair
    assert model.config.n_layer == 2 and model.config.n_embd == 64 and model.config.vocab_size == V
    assert model.lm_head.weight is model.transformer.wte.weight
    x = prompts(T=20)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(x).logits, atol=1e-5, rtol=0)  # erf GELU would be 2e-4 off


def test_loss_matches_transformers(pair):
    model, hf = pair
    x = prompts(B=3, T=16)
    labels = x.clone()
    labels[0, 5:9] = -100  # ignored positions must drop out of the mean the same way
    with torch.no_grad():
        ref = hf(x, labels=labels).loss  # transformers shifts labels inside; nanoft takes targets already shifted
        logits, loss = model(x[:, :-1], targets=labels[:, 1:])
    assert logits.shape == (3, 15, V)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)


def test_logits_at_some_positions_equal_transformers_there(pair):
    model, hf = pair
    x = prompts(B=2, T=12)
    at = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.3  # e.g. the response's positions
    with torch.no_grad():
        some, _ = model(x, logits_at=at)
        torch.testing.assert_close(some, hf(x).logits[at], atol=1e-5, rtol=0)


def test_greedy_matches_transformers_generate(pair):
    model, hf = pair
    x = prompts(B=2, T=7)
    ref = hf_greedy(hf, x, 25)
    assert ref.shape == (2, 32)
    assert torch.equal(model.generate(x, 25, do_sample=False), ref)
    assert torch.equal(model.generate(x, 25, temperature=0.0, use_cache=False), ref)


def test_eos_stops_like_transformers(pair):
    model, hf = pair
    x = prompts(B=2, T=5, seed=3)
    free = model.generate(x, 20, do_sample=False)[:, 5:]  # (2, 20) without eos
    eos = int(free[0, 3])  # a token the first row emits early...
    stop0 = int((free[0] == eos).nonzero()[0])
    assert stop0 < 19 and not (free[0, stop0 + 1:] == eos).all()  # ...and would not repeat forever
    assert stop0 < int((free[1] == eos).nonzero()[0]) if (free[1] == eos).any() else True  # the second goes on
    ref = hf_greedy(hf, x, 20, eos=eos)  # transformers pads finished rows with pad_token_id (= eos here)
    for use_cache in (True, False):
        out = model.generate(x, 20, do_sample=False, eos_token_id=eos, use_cache=use_cache)
        assert torch.equal(out, ref)
    assert (out[0, 5 + stop0:] == eos).all() and torch.equal(out[0, 5:5 + stop0], free[0, :stop0])
    # alone, the first row stops right after its eos
    out = model.generate(x[:1], 20, do_sample=False, eos_token_id=eos)
    assert torch.equal(out[0, 5:], free[0, :stop0 + 1])


# ---------------------------------------------------------------- KV cache and sampling

def test_cache_forward_matches_full_forward(pair):
    model, _ = pair
    x = prompts(B=2, T=24)
    with torch.no_grad():
        full, loss = model(x)
        assert loss is None  # no targets, no loss: the return is (logits, loss) either way
        cache = KVCache()
        logits1, _ = model(x[:, :10], kv_cache=cache)  # prefix
        assert len(cache.keys) == 2 and cache.keys[0].shape == (2, 4, 10, 16)  # (B, nh, T_past, hs)
        logits2, _ = model(x[:, 10:15], kv_cache=cache)  # several tokens after a cache
        logits3, _ = model(x[:, 15:16], kv_cache=cache)  # one token after a cache
        logits4, _ = model(x[:, 16:], kv_cache=cache)
    assert cache.length == 24 and cache.values[1].shape == (2, 4, 24, 16)
    torch.testing.assert_close(torch.cat([logits1, logits2, logits3, logits4], dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7, top_k=20), dict(temperature=1.3, top_p=0.8),
                                dict(top_k=50, top_p=0.9)])
def test_cached_sampling_equals_uncached(pair, kw):
    model, _ = pair
    x = prompts(B=3, T=6)
    cached = model.generate(x, 40, generator=torch.Generator().manual_seed(7), **kw)
    uncached = model.generate(x, 40, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    again = model.generate(x, 40, generator=torch.Generator().manual_seed(7), **kw)
    other = model.generate(x, 40, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(cached, again) and not torch.equal(cached, other)  # the seed is what decides


def test_cached_greedy_equals_uncached(pair):
    model, _ = pair
    x = prompts(B=4, T=3)
    assert torch.equal(model.generate(x, 60, do_sample=False), model.generate(x, 60, do_sample=False, use_cache=False))


def test_top_k_1_and_tiny_top_p_are_greedy(pair):
    model, _ = pair
    x = prompts(B=2, T=5)
    greedy = model.generate(x, 20, do_sample=False)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(x, 20, top_k=1, temperature=1.5, generator=g), greedy)
    assert torch.equal(model.generate(x, 20, top_p=1e-6, temperature=1.5, generator=g), greedy)
    assert not torch.equal(model.generate(x, 20, temperature=1.5, generator=g), greedy)  # plain sampling differs


# ---------------------------------------------------------------- errors

def test_length_errors(pair):
    model, _ = pair
    with pytest.raises(ValueError, match="n_positions=128"):
        model(prompts(B=1, T=P + 1))
    with torch.no_grad():
        cache = KVCache()
        model(prompts(B=1, T=100), kv_cache=cache)
        with pytest.raises(ValueError, match="exceeds n_positions"):
            model(prompts(B=1, T=29), kv_cache=cache)
    x = prompts(B=1, T=100)
    with pytest.raises(ValueError, match=r"max_new_tokens.*n_positions=128: lower max_new_tokens to 29.*use_cache=False"):
        model.generate(x, 30)
    # 29 fit: the 29th new token is returned but never fed back, so the cache ends at position 128
    full = model.generate(x, 29, do_sample=False)
    assert full.shape == (1, 129) and torch.equal(full, model.generate(x, 29, do_sample=False, use_cache=False))
    long = model.generate(x, 40, do_sample=False, use_cache=False)  # crops the context to the last 128 tokens
    assert long.shape == (1, 140)
    with torch.no_grad():
        for t in range(P, 140):  # every token past the window is the greedy pick given the last P tokens
            assert long[0, t] == model(long[:, t - P:t])[0][0, -1].argmax()
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(x[0], 5)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(x, 5, top_p=1.5)


def test_config_errors():
    with pytest.raises(ValueError, match="relu.*gelu_new"):
        GPT2Config(**TINY, activation_function="relu")
    with pytest.raises(ValueError, match="n_head"):
        GPT2Config(vocab_size=10, n_embd=30, n_head=4)


# ---------------------------------------------------------------- from scratch: init, size, tying, resizing

def test_init_and_parameter_count():
    cfg = GPT2Config(**dict(TINY, n_embd=128, n_layer=8))
    model = GPT2(cfg)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**dict(TINY, n_embd=128, n_layer=8)))
    assert model.num_parameters() == hf.num_parameters()  # tied lm_head counted once, as transformers does
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - (V + P) * 128
    hf_names = {k for k in hf.state_dict() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert set(model.state_dict()) == hf_names  # same names; gpt2_from_hf only transposes Conv1D weights
    assert model.lm_head.weight is model.transformer.wte.weight
    scaled = 0.02 / math.sqrt(2 * 8)
    for block in model.transformer.h:
        assert abs(block.attn.c_proj.weight.std().item() - scaled) < 0.1 * scaled
        assert abs(block.mlp.c_proj.weight.std().item() - scaled) < 0.1 * scaled
        assert abs(block.mlp.c_fc.weight.std().item() - 0.02) < 0.002
        assert block.attn.c_attn.weight.shape == (3 * 128, 128) and (block.attn.c_attn.bias == 0).all()


def test_resize_token_embeddings(pair, tmp_path):
    model = GPT2(GPT2Config(**TINY))  # a copy: resizing must not change the shared fixture
    model.load_state_dict(pair[0].state_dict())
    model.eval()
    x = prompts(B=2, T=10)
    with torch.no_grad():
        before, _ = model(x)
    old = model.transformer.wte.weight.detach().clone()
    model.resize_token_embeddings(V + 3)
    wte = model.transformer.wte.weight
    assert model.config.vocab_size == V + 3 and wte.shape == (V + 3, 64)
    assert model.lm_head.weight is wte and model.lm_head.weight.data_ptr() == wte.data_ptr()
    assert torch.equal(wte[:V], old)
    torch.testing.assert_close(wte[V:], old.mean(0).expand(3, -1), atol=0, rtol=0)
    with torch.no_grad():
        after, _ = model(x)
    assert after.shape == (2, 10, V + 3)
    torch.testing.assert_close(after[..., :V], before, atol=1e-5, rtol=0)
    # the new tokens are usable, and training them moves the shared matrix
    x_new = torch.tensor([[V, V + 2, 5]])
    _, loss = model(x_new, targets=torch.tensor([[V + 1, 3, V + 2]]))
    loss.backward()
    assert wte.grad is not None and wte.grad[V:].abs().sum() > 0
    # the saved checkpoint says the new size, and transformers reads the same model back
    folder = tmp_path / "resized"
    model.save_pretrained(folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    assert hf.config.vocab_size == V + 3
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-5, rtol=0)
    model.resize_token_embeddings(V - 10)  # shrinking keeps the first rows
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(model.transformer.wte.weight, old[:V - 10])
    with pytest.raises(ValueError, match="init="):
        model.resize_token_embeddings(V, init="zeros")


def test_gradient_checkpointing_same_loss_and_grads(monkeypatch):
    cfg = GPT2Config(**dict(TINY, n_layer=3))  # dropout 0.1 on: recomputation must reuse the same masks
    model = GPT2(cfg).train()
    x, y = prompts(B=2, T=16), prompts(B=2, T=16, seed=2)

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(123)
        _, loss = model(x, targets=y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_loss, ref_grads = loss_and_grads()
    calls = []
    real_checkpoint = gpt2_module.checkpoint
    monkeypatch.setattr(gpt2_module, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    model.gradient_checkpointing = True
    loss, grads = loss_and_grads()
    assert len(calls) == 3  # every block went through checkpoint
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-6, rtol=0)
    model.eval()
    calls.clear()
    with torch.no_grad():
        model(x)
    assert not calls  # no checkpointing outside training


def test_generate_keeps_training_mode_and_skips_dropout(pair):
    model = GPT2(GPT2Config(**TINY))
    model.load_state_dict(pair[0].state_dict())
    model.train()  # with dropout on, the continuation would be random; generate switches it off
    x = prompts(B=1, T=4)
    assert torch.equal(model.generate(x, 10, do_sample=False), pair[0].generate(x, 10, do_sample=False))
    assert model.training
