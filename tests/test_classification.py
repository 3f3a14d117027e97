"""nanoft.recipes.classification: token ids against transformers' BERT tokenizer, padding that changes no prediction, the
validation split, accuracy that does not depend on how the sentences are batched, and the fine-tuning recipes (the
best weights kept; the frozen baseline trains its head only, on vectors equal to the encoder's)."""
import pytest
import torch

from nanoft.models.bert import BERT, BertConfig
from nanoft.data.datasets import SAMPLE_DIR, read_sst2
from nanoft.models.heads import ClassificationHead, MultiTaskModel
from nanoft.training.batching import Collate
from nanoft.recipes.classification import (carve_validation, encode_sentences, evaluate_accuracy, fine_tune_classifier,
                                   fine_tune_frozen, load_sst2, predict_logits, sentence_vectors)
from nanoft.training.train import TrainConfig
from nanoft.io.tokenizer import load_bert_tokenizer

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
    feats = encode_sentences(rows, load_bert_tokenizer(minilm_dir), max_len=max_len)
    expected = ref([s for s, _ in rows], truncation=True, max_length=max_len)["input_ids"]
    assert [f["input_ids"] for f in feats] == expected
    assert [f["labels"] for f in feats] == [label for _, label in rows]
    assert max(len(f["input_ids"]) for f in feats) == max_len  # some were cut, and they still end in [SEP]
    assert all(f["input_ids"][-1] == ref.sep_token_id for f in feats)


def test_encode_rejects_max_len_without_room():
    with pytest.raises(ValueError, match="max_len"):
        encode_sentences(ROWS[:2], None, max_len=2)


def test_padded_batch_gives_the_same_logits_as_each_sentence_alone(minilm_dir):
    torch.manual_seed(0)
    model = tiny_classifier()
    feats = encode_sentences(ROWS[:6], load_bert_tokenizer(minilm_dir), max_len=64)
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
        with pytest.raises(ValueError, match="hold out .* validation rows"):
            carve_validation(rows, bad)


def test_accuracy_does_not_depend_on_batching(minilm_dir):
    torch.manual_seed(0)
    model = tiny_classifier()
    feats = encode_sentences(ROWS[:50], load_bert_tokenizer(minilm_dir), max_len=32)
    with torch.no_grad():  # reference: each sentence alone, in file order
        preds = [model("sst2", Collate()([f]))["logits"].argmax(-1).item() for f in feats]
    expected = 100 * sum(p == f["labels"] for p, f in zip(preds, feats)) / len(feats)
    for bs in (1, 7, 64):
        assert evaluate_accuracy(model, feats, batch_size=bs) == pytest.approx(expected)
    assert model.training is False


def test_fine_tuning_keeps_the_best_weights_and_the_frozen_baseline_trains_only_the_head(minilm_dir, tmp_path):
    torch.manual_seed(0)
    tok = load_bert_tokenizer(minilm_dir)
    feats = encode_sentences(ROWS[:64], tok, max_len=32)
    model = tiny_classifier()
    cfg = TrainConfig(lr=1e-3, max_steps=6, batch_size=16, eval_every=2, progress=False, precision="fp32")
    result = fine_tune_classifier(model, feats[:48], feats[48:], cfg)
    assert result.best_metric == pytest.approx(evaluate_accuracy(model, feats[48:]))  # the best, not the last

    model = tiny_classifier()
    model.heads["sst2"].pooling = "mean"
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = model.heads["sst2"].classifier.weight.clone()
    # the cached vectors are exactly what the head sees through the whole model
    x = sentence_vectors(model, feats[:5])
    torch.testing.assert_close(model.heads["sst2"].classifier(x), predict_logits(model, feats[:5]), atol=1e-5, rtol=1e-5)
    result = fine_tune_frozen(model, feats[:48], feats[48:], cfg)
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert not torch.equal(head_before, model.heads["sst2"].classifier.weight)
    assert result.best_metric == pytest.approx(evaluate_accuracy(model, feats[48:]))


def test_load_sst2_from_a_named_folder(tmp_path, minilm_dir):
    (tmp_path / "sst2").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "sst2" / name).write_text("sentence\tlabel\n" + "".join(f"word {i} .\t{i % 2}\n" for i in range(30)))
    data = load_sst2(load_bert_tokenizer(minilm_dir), max_len=16, n_train=10, n_val=5, n_dev=7, data_dir=tmp_path)
    assert (len(data["train"]), len(data["val"]), len(data["dev"])) == (10, 5, 7)
    assert data["label"] == "SST-2 dev, first 7 of 30" and not data["sample"]
    with pytest.raises(ValueError, match=f"{tmp_path / 'sst2' / 'train.tsv'} leaves 10 training sentence\\(s\\) once 5 "
                                         "are held out for validation, fewer than a batch of 32: give a train.tsv of "
                                         "at least 37 rows"):
        load_sst2(load_bert_tokenizer(minilm_dir), n_train=10, n_val=5, data_dir=tmp_path, batch_size=32)


def test_labels_outside_the_head_are_named_before_training(minilm_dir, tmp_path):
    tok = load_bert_tokenizer(minilm_dir)
    feats = encode_sentences([(s, label + 1) for s, label in ROWS[:20]], tok, max_len=16)  # labels 1 and 2
    cfg = TrainConfig(max_steps=2, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"the train labels are \[1, 2\], but a head of 2 labels needs 0..1: map "
                                         r"them to 0..n-1 first"):
        fine_tune_classifier(tiny_classifier(), feats[:16], feats[16:], cfg)


def test_resume_onto_a_head_of_another_size_names_the_checkpoint(minilm_dir, tmp_path):
    tok = load_bert_tokenizer(minilm_dir)
    feats = encode_sentences(ROWS[:20], tok, max_len=16)
    cfg = TrainConfig(max_steps=2, batch_size=4, eval_every=1, progress=False, out_dir=str(tmp_path / "run"),
                      checkpoint_every=1, resume=True)
    fine_tune_classifier(tiny_classifier(), feats[:16], feats[16:], cfg)
    three = tiny_classifier()
    three.heads["sst2"] = ClassificationHead(32, 3)
    with pytest.raises(ValueError, match=f"{tmp_path / 'run' / 'checkpoint.pt'} was written for another model "
                                         r"\(size mismatch for heads.sst2.classifier.weight.*give another out_dir"):
        fine_tune_classifier(three, feats[:16], feats[16:], cfg)
