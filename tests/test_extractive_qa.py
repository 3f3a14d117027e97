"""nanoft.recipes.extractive_qa: the split by article, the SQuAD data of a named folder or the samples, and a fine-tuning
run that keeps its best weights and scores them with the official metric."""
import pytest
import torch

from nanoft.models.bert import BERT, BertConfig
from nanoft.data.datasets import SAMPLE_DIR
from nanoft.recipes.extractive_qa import evaluate_qa, fine_tune_qa, load_squad, span_model, split_by_article
from nanoft.io.tokenizer import load_bert_tokenizer
from nanoft.training.train import TrainConfig


def test_split_by_article_keeps_articles_whole():
    examples = [{"title": f"article {a}", "id": f"{a}-{q}"} for a in range(20) for q in range(3)]
    train, val = split_by_article(examples)
    assert {e["title"] for e in val} == {"article 18", "article 19"}
    assert not {e["title"] for e in train} & {e["title"] for e in val}
    assert len(train) + len(val) == len(examples)
    with pytest.raises(ValueError, match="at least 2"):
        split_by_article(examples[:3])


def test_fine_tune_qa_keeps_the_best_weights(minilm_dir):
    tok = load_bert_tokenizer(minilm_dir)
    folder = SAMPLE_DIR / "squad_sample"
    files = sorted(folder.glob("*.json"))
    data = load_squad(tok, max_length=96, doc_stride=32, n_train=16, n_val=4, n_eval=4,
                      train_file=files[0], eval_file=files[-1])
    assert {f["example_id"] for f in data["val"]} == {ex["id"] for ex in data["val_examples"]}
    torch.manual_seed(0)
    encoder = BERT(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=37, max_position_embeddings=128))
    model = span_model(encoder)
    cfg = TrainConfig(lr=1e-3, max_steps=4, batch_size=4, eval_every=2, progress=False, precision="fp32")
    result = fine_tune_qa(model, data["train"], data["val_examples"], data["val"], cfg)
    assert result.best_metric == pytest.approx(evaluate_qa(model, data["val_examples"], data["val"])["f1"])
    with pytest.raises(ValueError, match="doc_stride=96 must be smaller than max_length=96"):
        load_squad(tok, max_length=96, doc_stride=96, train_file=files[0], eval_file=files[-1])
