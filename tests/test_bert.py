"""nanoft.models.bert against Hugging Face transformers: real all-MiniLM-L6-v2 weights and tiny random models."""
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer  # noqa: E402

import nanoft.models.bert as bert_module  # noqa: E402
from nanoft.models.bert import BERT, BertConfig, BertForMaskedLM  # noqa: E402

SENTENCES = [
    "A man is playing a guitar.",
    ("Where does the cat sleep?", "The cat sleeps on the warm mat near the kitchen window."),
    "Fine-tuning beats training from scratch.",
    "Hi",
]


def tiny_hf_config(**kw):
    return transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=37, max_position_embeddings=40, type_vocab_size=2, **kw)


def randomize_(model, std=0.3):
    # HF's init leaves biases at 0 and LayerNorms at 1/0: a mapping that swaps or drops them would still match.
    # Random values everywhere make every single parameter count.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def batch(vocab=99, B=3, T=12):
    ids = torch.randint(1, vocab, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    tt = torch.zeros(B, T, dtype=torch.long)
    tt[0, 6:] = 1
    return ids, mask, tt


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    ours = BERT.from_pretrained(minilm_dir).eval()
    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
    enc = tok.encode_batch(SENTENCES)
    inputs = dict(input_ids=torch.tensor([e.ids for e in enc]),
                  attention_mask=torch.tensor([e.attention_mask for e in enc]),
                  token_type_ids=torch.tensor([e.type_ids for e in enc]))
    return hf, ours, inputs


def test_minilm_hidden_states_and_pooler_match_transformers(minilm):
    hf, ours, x = minilm
    assert x["attention_mask"].eq(0).any() and x["token_type_ids"].eq(1).any()  # padded, with a sentence pair
    with torch.no_grad():
        ref = hf(**x)
        hidden = ours(x["input_ids"], attention_mask=x["attention_mask"], token_type_ids=x["token_type_ids"])
        pooled = ours.pool(hidden)
    keep = x["attention_mask"].bool()
    assert hidden.shape == ref.last_hidden_state.shape == (len(SENTENCES), keep.size(1), 384)
    assert (hidden - ref.last_hidden_state)[keep].abs().max() < 1e-4
    assert (pooled - ref.pooler_output).abs().max() < 1e-4


def test_minilm_sentence_embeddings_match_transformers(minilm):
    # the sentence-transformers recipe for all-MiniLM-L6-v2: mean over real tokens, then L2-normalise
    def embed(hidden, mask):
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)

    hf, ours, x = minilm
    with torch.no_grad():
        ref = embed(hf(**x).last_hidden_state, x["attention_mask"])
        got = embed(ours(**x), x["attention_mask"])
    assert (got - ref).abs().max() < 1e-5
    assert ((got @ got.T) - (ref @ ref.T)).abs().max() < 1e-5  # the cosine similarities users actually read


def test_mlm_logits_and_loss_match_transformers(tmp_path):
    hf = randomize_(transformers.BertForMaskedLM(tiny_hf_config())).eval()
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight  # HF ties them too
    hf.save_pretrained(tmp_path)
    ours = BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask, tt = batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[2, 1] = 7, 11, 13
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels)
        logits, loss = ours(ids, attention_mask=mask, token_type_ids=tt, labels=labels)
    keep = mask.bool()
    assert logits.shape == (3, 12, 99)
    assert (logits - ref.logits)[keep].abs().max() < 1e-4
    assert abs(loss.item() - ref.loss.item()) < 1e-4
    # the decoder is the word embedding itself: one tensor, stored once
    assert ours.mlm_head.word_embeddings.weight is ours.bert.embeddings.word.weight
    assert not any("word_embeddings" in k or "decoder" in k for k in ours.state_dict())
    assert len(list(ours.parameters())) == len({id(p) for p in ours.parameters()})


def test_mlm_decoder_is_tied_to_embeddings():
    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16))
    ids = torch.randint(1, 50, (2, 6))
    model(ids, labels=ids)[1].backward()
    emb = model.bert.embeddings.word.weight
    # gradient arrives from both the input lookup and the output scores (every row scores, even unused tokens)
    unused = sorted(set(range(1, 50)) - set(ids.flatten().tolist()))
    assert emb.grad[unused].abs().sum(dim=1).gt(0).all()
    with torch.no_grad():
        emb[7] += 1.0
    assert torch.equal(model.mlm_head.word_embeddings.weight[7], emb[7])


def test_fresh_mlm_head_is_initialised_like_bert():
    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16))
    h = model.mlm_head
    assert torch.equal(h.bias, torch.zeros(50)) and torch.equal(h.transform.dense.bias, torch.zeros(64))
    assert torch.equal(h.transform.ln.weight, torch.ones(64)) and torch.equal(h.transform.ln.bias, torch.zeros(64))
    assert abs(h.transform.dense.weight.std().item() - 0.02) < 0.003
    assert torch.equal(model.bert.embeddings.word.weight[0], torch.zeros(64))  # [PAD] row, as BERT/HF init it


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(monkeypatch):
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                     max_position_embeddings=40)  # dropout stays on: recomputation must replay the same masks
    model = BERT(cfg).train()
    ids, mask, tt = batch()

    def run(ckpt):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        torch.manual_seed(1)
        out = model(ids, attention_mask=mask, token_type_ids=tt)
        model.pool(out).pow(2).sum().add(out.pow(2).mean()).backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    calls = []
    real = bert_module.checkpoint
    monkeypatch.setattr(bert_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    out0, g0 = run(False)
    assert calls == []
    out1, g1 = run(True)
    assert len(calls) == cfg.num_hidden_layers  # every block really went through torch.utils.checkpoint
    assert torch.allclose(out0, out1, atol=1e-6)
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6), n


def test_input_longer_than_max_positions_is_a_clear_error():
    model = BERT(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=16))
    model(torch.ones(1, 16, dtype=torch.long))  # exactly the limit is fine
    with pytest.raises(ValueError, match=r"17 tokens.*max_position_embeddings=16.*truncate"):
        model(torch.ones(1, 17, dtype=torch.long))


def test_config_errors_are_clear_and_come_from_the_config():
    with pytest.raises(ValueError, match="'relu'.*gelu"):
        BertConfig(vocab_size=9, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                   hidden_act="relu")
    with pytest.raises(ValueError, match="hidden_size=10 is not divisible by num_attention_heads=4"):
        BertConfig(vocab_size=9, hidden_size=10, num_hidden_layers=1, num_attention_heads=4, intermediate_size=8)


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_activation_is_the_official_gelu(act):
    model = BERT(BertConfig(vocab_size=9, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=8, hidden_act=act))
    x = torch.linspace(-4, 4, 101)
    erf = 0.5 * x * (1 + torch.erf(x / 2 ** 0.5))  # BERT's GELU (Hendrycks & Gimpel)
    tanh = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3)))  # GPT-2's approximation
    want, other = (erf, tanh) if act == "gelu" else (tanh, erf)
    got = model.layers[0].mlp.act(x)
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, other, atol=1e-5)


def test_padding_is_masked_out():
    model = randomize_(BERT(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=37, max_position_embeddings=40)), std=0.3).eval()
    ids, mask, tt = batch()
    other = ids.clone()
    other[mask == 0] = torch.randint(1, 99, (int((mask == 0).sum()),))  # different tokens in the pad slots
    keep = mask.bool()
    with torch.no_grad():
        a = model(ids, attention_mask=mask, token_type_ids=tt)
        b = model(other, attention_mask=mask, token_type_ids=tt)
        assert torch.allclose(a[keep], b[keep], atol=1e-6)
        assert torch.allclose(model.pool(a), model.pool(b), atol=1e-6)
        # the check can fail: without the mask the pad tokens do leak into the real ones
        c = model(ids, token_type_ids=tt)
        d = model(other, token_type_ids=tt)
        assert (c[keep] - d[keep]).abs().max() > 1e-3


def test_all_padding_row_stays_finite():
    model = BERT(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=40)).eval()
    ids, mask, _ = batch()
    mask[2] = 0
    with torch.no_grad():
        assert torch.isfinite(model(ids, attention_mask=mask)).all()


def test_save_pretrained_loads_in_transformers(tmp_path):
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                     max_position_embeddings=40)
    ids, mask, tt = batch()
    keep = mask.bool()
    mlm = randomize_(BertForMaskedLM(cfg)).eval()
    mlm.save_pretrained(tmp_path / "mlm")
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "mlm", attn_implementation="eager").eval()
    enc = randomize_(BERT(cfg)).eval()
    enc.save_pretrained(tmp_path / "enc")
    hf_enc = transformers.BertModel.from_pretrained(tmp_path / "enc", attn_implementation="eager").eval()
    with torch.no_grad():
        assert (mlm(ids, mask, tt) - hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits)[keep].abs().max() < 1e-4
        ref = hf_enc(input_ids=ids, attention_mask=mask, token_type_ids=tt)
        hidden = enc(ids, mask, tt)
        assert (hidden - ref.last_hidden_state)[keep].abs().max() < 1e-4
        assert (enc.pool(hidden) - ref.pooler_output).abs().max() < 1e-4


def test_mlm_from_a_checkpoint_without_mlm_head(minilm_dir, minilm):
    _, encoder, _ = minilm
    model = BertForMaskedLM.from_pretrained(minilm_dir)
    want = encoder.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.bert.state_dict().items())  # same pretrained encoder
    head = model.mlm_head  # all-MiniLM-L6-v2 ships no cls.predictions.*: a fresh head, initialised like BERT's
    assert torch.equal(head.bias, torch.zeros(30522)) and torch.equal(head.transform.ln.weight, torch.ones(384))
    assert abs(head.transform.dense.weight.std().item() - 0.02) < 0.002
    assert head.word_embeddings.weight is model.bert.embeddings.word.weight
