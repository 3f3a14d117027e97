"""nanoft.recipes.mlm: BERT's masking recipe (15% of real tokens; of those 80% [MASK], 10% random, 10% unchanged)."""
import pytest
import torch
from tokenizers import Tokenizer

from nanoft.recipes.mlm import MLMCollator, mask_tokens

CLS, SEP, PAD, MASK, UNK, V = 101, 102, 0, 103, 100, 30522
SPECIALS = (PAD, UNK, CLS, SEP, MASK)


def _batch(B=64, T=512, seed=0):
    """[CLS] words [SEP] [PAD]...: rows of different real lengths, ids drawn from the ordinary vocabulary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, V, (B, T), generator=g)
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    attention_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    ids[:, 0] = CLS
    ids[torch.arange(B), lengths - 1] = SEP
    ids[attention_mask == 0] = PAD
    ids[::7, 5] = UNK  # specials inside the text, too
    return ids, attention_mask


def test_rates_on_a_large_batch():
    ids, am = _batch()
    original = ids.clone()
    masked, labels = mask_tokens(ids, SPECIALS, V, MASK, generator=torch.Generator().manual_seed(1), attention_mask=am)
    assert torch.equal(ids, original)  # the input is not modified
    eligible = (am == 1) & ~torch.isin(ids, torch.tensor(SPECIALS))
    picked = labels != -100
    assert picked.sum() > 2000
    assert abs(picked.sum() / eligible.sum() - 0.15) < 0.01
    to_mask = picked & (masked == MASK)
    unchanged = picked & (masked == ids)
    to_random = picked & (masked != MASK) & (masked != ids)
    n = picked.sum()
    assert abs(to_mask.sum() / n - 0.8) < 0.02
    assert abs(to_random.sum() / n - 0.1) < 0.02
    assert abs(unchanged.sum() / n - 0.1) < 0.02
    assert masked[to_random].unique().numel() > 0.9 * to_random.sum()  # random ids spread over the vocabulary
    assert masked[to_random].max() < V and masked[to_random].min() >= 0


def test_specials_and_pads_never_touched_and_labels_elsewhere_ignored():
    ids, am = _batch(B=16, T=128, seed=3)
    masked, labels = mask_tokens(ids, SPECIALS, V, MASK, mlm_probability=0.9,
                                 generator=torch.Generator().manual_seed(0), attention_mask=am)
    protected = (am == 0) | torch.isin(ids, torch.tensor(SPECIALS))
    assert (labels[protected] == -100).all() and torch.equal(masked[protected], ids[protected])
    picked = labels != -100
    assert torch.equal(labels[picked], ids[picked])  # the label is the original token
    assert torch.equal(masked[~picked], ids[~picked])  # nothing changes outside the picked tokens
    assert picked.sum() > 0.8 * (~protected).sum()


def test_attention_mask_protects_padding_whatever_its_id():
    ids, am = _batch(B=16, T=128, seed=4)
    ids[am == 0] = 5000  # padded with an ordinary id (as when a model has no [PAD] token)
    masked, labels = mask_tokens(ids, SPECIALS, V, MASK, mlm_probability=0.9,
                                 generator=torch.Generator().manual_seed(0), attention_mask=am)
    assert (am == 0).sum() > 100
    assert (labels[am == 0] == -100).all() and (masked[am == 0] == 5000).all()


def test_seeded_determinism():
    ids, am = _batch(B=8, T=64)
    def run(seed):
        return mask_tokens(ids, SPECIALS, V, MASK, generator=torch.Generator().manual_seed(seed), attention_mask=am)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    torch.manual_seed(5)
    d = mask_tokens(ids, SPECIALS, V, MASK, attention_mask=am)
    torch.manual_seed(5)
    e = mask_tokens(ids, SPECIALS, V, MASK, attention_mask=am)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])  # no generator: the (seeded) global RNG


def test_bad_probability():
    with pytest.raises(ValueError, match="between 0 and 1"):
        mask_tokens(torch.zeros(2, 2, dtype=torch.long), SPECIALS, V, MASK, mlm_probability=1.5)


def test_collator_on_real_tokenizer(minilm_dir):
    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    collate = MLMCollator.from_tokenizer(tok, generator=torch.Generator().manual_seed(0))
    assert (collate.mask_token_id, collate.pad_token_id, collate.vocab_size) == (MASK, PAD, V)
    assert set(collate.special_ids) == set(SPECIALS)
    texts = ["The film was a delight from start to finish.", "Dull.", "An uneven but often moving portrait " * 20]
    rows = [tok.encode(t).ids for t in texts]
    batch = collate(rows + [{"input_ids": rows[1]}])
    T = max(len(r) for r in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, T)
    assert batch["attention_mask"].sum(1).tolist() == [len(r) for r in rows] + [len(rows[1])]
    pads = batch["attention_mask"] == 0
    assert (batch["input_ids"][pads] == PAD).all() and (batch["labels"][pads] == -100).all()
    assert (batch["labels"][:, 0] == -100).all()  # [CLS] is never a target
    picked = batch["labels"] != -100
    assert picked.any()
    restored = torch.where(picked, batch["labels"], batch["input_ids"])
    for i, r in enumerate(rows + [rows[1]]):
        assert restored[i, :len(r)].tolist() == r


def test_collator_needs_a_mask_token(gpt2_bpe_dir):
    from tokenizers import models
    bpe = Tokenizer(models.BPE.from_file(str(gpt2_bpe_dir / "encoder.json"), str(gpt2_bpe_dir / "vocab.bpe")))
    with pytest.raises(ValueError, match=r"no \[MASK\]"):
        MLMCollator.from_tokenizer(bpe)


def test_collated_batch_trains_bert_for_masked_lm():
    """The batch's keys are BertForMaskedLM's arguments, and its loss covers exactly the picked tokens."""
    from nanoft.models.bert import BertConfig, BertForMaskedLM
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model = BertForMaskedLM(config).eval()
    collate = MLMCollator(MASK, PAD, V, SPECIALS, mlm_probability=0.5, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    batch = collate([[CLS] + torch.randint(1000, V, (n,), generator=g).tolist() + [SEP] for n in (5, 17, 30)])
    logits, loss = model(**batch)
    picked = batch["labels"] != -100
    by_hand = -torch.log_softmax(logits[picked], -1).gather(1, batch["labels"][picked][:, None]).mean()
    assert torch.allclose(loss, by_hand, atol=1e-5)


def _tiny_mlm():
    from nanoft.models.bert import BertConfig, BertForMaskedLM
    return BertForMaskedLM(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=37, max_position_embeddings=64))


def test_masked_lm_loss_equals_the_full_models_loss():
    from nanoft.recipes.mlm import masked_lm_loss
    torch.manual_seed(0)
    model = _tiny_mlm().eval()
    collate = MLMCollator(mask_token_id=4, pad_token_id=0, vocab_size=120, special_ids=(0, 1, 2, 3, 4),
                          mlm_probability=0.3, generator=torch.Generator().manual_seed(0))
    batch = collate([torch.randint(5, 120, (n,)).tolist() for n in (12, 7, 20, 3)])
    assert (batch["labels"] != -100).any()
    with torch.no_grad():
        _, full = model(**batch)
        assert masked_lm_loss(model, batch).item() == pytest.approx(full.item(), rel=1e-5)
        nothing = dict(batch, labels=torch.full_like(batch["labels"], -100))
        assert masked_lm_loss(model, nothing).item() == 0.0  # no picked token: zero, not NaN


def test_continue_pretraining_trains_the_head_alone_first_then_everything(minilm_dir):
    from nanoft.recipes.mlm import continue_pretraining
    from nanoft.models.bert import BertConfig, BertForMaskedLM
    from nanoft.io.tokenizer import load_bert_tokenizer
    from nanoft.training.train import TrainConfig
    tok = load_bert_tokenizer(minilm_dir)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=37, max_position_embeddings=64))
    ids = tok.encode_batch([f"the film number {i} is {'good' if i % 2 else 'bad'} ." for i in range(40)])
    encoder_before = {k: v.clone() for k, v in model.bert.state_dict().items()}
    cfg = TrainConfig(lr=1e-2, max_steps=1, batch_size=8, progress=False, precision="fp32")
    out = continue_pretraining(model, ids[:32], ids[32:], tok, cfg, head_steps=3)
    assert out.step == 3 + 1 and [r["step"] for r in out.history] == [3, 1]  # the head's 3 steps, then 1
    assert [r["step"] for r in out.curve] == [0, 4] and out.curve[-1]["val_loss"] < out.curve[0]["val_loss"]
    assert all(p.requires_grad for p in model.bert.parameters())  # unfrozen again after the head's phase
    moved = [k for k, v in encoder_before.items() if not torch.equal(v, model.bert.state_dict()[k])]
    assert moved  # the second phase trains the encoder too
