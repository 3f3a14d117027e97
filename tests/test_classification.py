"""nanoft.sst2: token ids against transformers' BERT tokenizer, padding that changes no prediction, the validation
split, and accuracy that does not depend on how the sentences are batched."""
import pytest
import torch

from nanoft.bert import BERT, BertConfig
from nanoft.data import SAMPLE_DIR, read_sst2
from nanoft.heads import ClassificationHead, MultiTaskModel
from nanoft.sst2 import Collate, carve_validation, encode_sst2, eval_batches, evaluate_accuracy
from nanoft.tokenizer import load_bert_tokenizer

ROWS = read_sst2(SAMPLE_DIR / "sst2_sample" / "train.tsv")


def tiny_classifier():
    encoder = BERT(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=37, max_position_embeddings=64))
    return MultiTaskModel(encoder, {"sst2": ClassificationHead(32, 2)}).eval()


@pytest.mark.parametrize("max_len", [8, 64])
def test_encode_matches_transformers_truncation(minilm_dir, max_len):
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    rows = ROWS[:40] + [("a " * 100 + "film .", 1)]  # one far longer than max_len
    feats = encode_sst2(rows, load_bert_tokenizer(minilm_dir), max_len=max_len)
    expected = ref([s for s, _ in rows], truncation=True, max_length=max_len)["input_ids"]
    assert [f["input_ids"] for f in feats] == expected
    assert [f["labels"] for f in feats] == [label for _, label in rows]
    assert max(len(f["input_ids"]) for f in feats) == max_len  # some were cut, and they still end in [SEP]
    assert all(f["input_ids"][-1] == ref.sep_token_id for f in feats)


def test_encode_rejects_max_len_without_room():
    with pytest.raises(ValueError, match="max_len"):
        encode_sst2(ROWS[:2], None, max_len=2)


def test_padded_batch_gives_the_same_logits_as_each_sentence_alone(minilm_dir):
    torch.manual_seed(0)
    model = tiny_classifier()
    feats = encode_sst2(ROWS[:6], load_bert_tokenizer(minilm_dir), max_len=64)
    batch = Collate(pad_id=0)(feats)
    lengths = [len(f["input_ids"]) for f in feats]
    assert batch["input_ids"].shape == (6, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert batch["labels"].tolist() == [f["labels"] for f in feats]
    with torch.no_grad():
        padded = model("sst2", batch)["logits"]
        alone = torch.cat([model("sst2", Collate()([f]))["logits"] for f in feats])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_carve_validation_is_a_seeded_disjoint_split():
    rows = [(f"sentence {i}", i % 2) for i in range(100)]
    train, val = carve_validation(rows, 20, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert sorted(train + val) == sorted(rows)
    assert carve_validation(rows, 20, seed=3) == (train, val)
    assert carve_validation(rows, 20, seed=4)[1] != val
    assert train == [r for r in rows if r not in val]  # what is left keeps its order
    assert len(carve_validation(rows, 0.1)[1]) == 10
    for bad in (0, 100, 150):
        with pytest.raises(ValueError, match="hold out"):
            carve_validation(rows, bad)


def test_accuracy_does_not_depend_on_batching(minilm_dir):
    torch.manual_seed(0)
    model = tiny_classifier()
    feats = encode_sst2(ROWS[:50], load_bert_tokenizer(minilm_dir), max_len=32)
    with torch.no_grad():  # reference: each sentence alone, in file order
        preds = [model("sst2", Collate()([f]))["logits"].argmax(-1).item() for f in feats]
    expected = sum(p == f["labels"] for p, f in zip(preds, feats)) / len(feats)
    for bs in (1, 7, 64):
        assert evaluate_accuracy(lambda b: model("sst2", b)["logits"], feats, batch_size=bs) == pytest.approx(expected)
    # eval batches hold every sentence once, shortest first
    seen = [n for b in eval_batches(feats, 8) for n in b["attention_mask"].sum(1).tolist()]
    assert sorted(seen) == seen and len(seen) == len(feats)
