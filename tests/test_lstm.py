"""nanoft.models.lstm: the chapter-4 LSTM baseline. The loss is checked against a hand-written cross-entropy, the
cached (hidden-state) generation against re-reading the whole prefix, and sampling against nanoft.models.gpt2's rules."""
import pytest
import torch

from nanoft.models.sampling import sample_next_token
from nanoft.models.kv_cache import KVCache
from nanoft.models.lstm import LSTMConfig, LSTMLM

V = 50


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()  # tiny models: one thread avoids thread sync on a busy shared CPU
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ids(B=3, T=9, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_defaults_names_and_shapes():
    cfg = LSTMConfig(vocab_size=V)
    assert (cfg.emb_dim, cfg.hidden_dim, cfg.n_layers, cfg.tie_weights) == (128, 128, 2, False)
    model = LSTMLM(cfg)
    names = set(model.state_dict())
    assert {"embedding.weight", "head.weight", "head.bias", "lstm.weight_ih_l0", "lstm.weight_hh_l1"} <= names
    assert model.lstm.num_layers == 2 and model.lstm.batch_first and model.lstm.dropout == 0.1
    logits, loss = model(ids())
    assert logits.shape == (3, 9, V) and loss is None
    cache = KVCache()
    logits, loss = model(ids(), targets=ids(seed=1), kv_cache=cache)
    h, c = cache.state  # an LSTM's cache is its state
    assert h.shape == c.shape == (2, 3, 128) and loss.dim() == 0


def test_loss_is_cross_entropy_with_ignore_index():
    model = LSTMLM(LSTMConfig(vocab_size=V, emb_dim=16, hidden_dim=24)).eval()
    x, y = ids(), ids(seed=1)
    y[0, :4] = -100
    logits, loss = model(x, targets=y)
    logp = logits.log_softmax(-1)
    keep = y != -100
    manual = -logp[keep].gather(-1, y[keep][:, None]).mean()  # -log p(target), averaged over kept positions
    torch.testing.assert_close(loss, manual, atol=1e-6, rtol=0)
    loss.backward()
    assert model.embedding.weight.grad is not None


def test_weight_tying():
    tied = LSTMLM(LSTMConfig(vocab_size=V, emb_dim=32, hidden_dim=32, tie_weights=True))
    assert tied.head.weight is tied.embedding.weight and tied.head.weight.data_ptr() == tied.embedding.weight.data_ptr()
    assert tied.proj is None
    untied = LSTMLM(LSTMConfig(vocab_size=V, emb_dim=32, hidden_dim=32))
    assert tied.num_parameters() == untied.num_parameters() - V * 32  # the shared matrix is counted once
    wide = LSTMLM(LSTMConfig(vocab_size=V, emb_dim=16, hidden_dim=40, tie_weights=True))
    assert wide.proj.weight.shape == (16, 40) and wide.head.weight is wide.embedding.weight
    assert wide(ids())[0].shape == (3, 9, V)
    _, loss = wide(ids(), targets=ids(seed=1))
    loss.backward()  # one gradient reaches the shared matrix from both ends
    assert wide.embedding.weight.grad is wide.head.weight.grad


def test_hidden_state_carries_the_prefix():
    model = LSTMLM(LSTMConfig(vocab_size=V, emb_dim=16, hidden_dim=24)).eval()
    x = ids(T=12)
    with torch.no_grad():
        full, _ = model(x)
        parts, cache = [], KVCache()
        for t in range(12):  # token by token, carrying (h, c)
            logits, _ = model(x[:, t:t + 1], kv_cache=cache)
            parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [dict(do_sample=False), dict(), dict(temperature=0.8, top_k=10, top_p=0.9)])
def test_generate_cached_equals_recomputed(kw):
    model = LSTMLM(LSTMConfig(vocab_size=V, emb_dim=16, hidden_dim=24))
    x = ids(B=2, T=4)
    cached = model.generate(x, 30, generator=torch.Generator().manual_seed(3), **kw)
    recomputed = model.generate(x, 30, generator=torch.Generator().manual_seed(3), use_cache=False, **kw)
    assert cached.shape == (2, 34) and torch.equal(cached[:, :4], x)
    assert torch.equal(cached, recomputed)
    assert model.training  # generate() turns dropout off and restores the mode


def test_generate_greedy_is_argmax_of_the_prefix():
    model = LSTMLM(LSTMConfig(vocab_size=V, emb_dim=16, hidden_dim=24)).eval()
    out = model.generate(ids(B=2, T=3), 10, do_sample=False)
    with torch.no_grad():
        for t in range(3, 13):
            assert torch.equal(out[:, t], model(out[:, :t])[0][:, -1].argmax(-1))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(ids(B=2, T=3), 10, top_k=1, generator=g), out)
    logits = model(out)[0][:, -1]
    assert torch.equal(sample_next_token(logits, do_sample=False), logits.argmax(-1))


def test_generate_stops_at_eos():
    model = LSTMLM(LSTMConfig(vocab_size=V, emb_dim=16, hidden_dim=24)).eval()
    x = ids(B=1, T=3)
    free = model.generate(x, 15, do_sample=False)[0, 3:]
    eos = int(free[2])
    stop = int((free == eos).nonzero()[0])
    out = model.generate(x, 15, do_sample=False, eos_token_id=eos)
    assert torch.equal(out[0, 3:], free[:stop + 1])
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(x[0], 5)
