"""nanoft.training.batching.Collate, the one collate of every task: lists or padded tensors in, the longest real length out,
and cutting the padding changes no logit."""
import pytest
import torch

from nanoft.training.batching import Collate, eval_order
from nanoft.models.bert import BERT, BertConfig
from nanoft.models.heads import MultiTaskModel, SpanHead


def tiny_config():
    return BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                      max_position_embeddings=64)


def test_padded_windows_are_cut_to_the_longest_real_one_and_score_the_same():
    torch.manual_seed(0)
    model = MultiTaskModel(BERT(tiny_config()), {"squad": SpanHead(32)}).eval()
    T, lengths = 24, (10, 17, 13)
    feats = []
    for n in lengths:
        mask = torch.zeros(T, dtype=torch.long)
        mask[:n] = 1
        feats.append({"input_ids": torch.randint(5, 120, (T,)) * mask, "attention_mask": mask,
                      "token_type_ids": (torch.arange(T) >= 4).long() * mask, "start_positions": torch.tensor(n - 2),
                      "end_positions": torch.tensor(n - 1), "example_id": f"q{n}", "offsets": [None] * T})
    cut = Collate()(feats)
    assert cut["input_ids"].shape == (3, max(lengths)) and cut["start_positions"].tolist() == [8, 15, 11]
    assert cut["example_id"] == ["q10", "q17", "q13"] and len(cut["offsets"]) == 3  # carried through as lists
    full = {k: torch.stack([f[k] for f in feats]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        s_cut, e_cut = model("squad", cut)["logits"]
        s_full, e_full = model("squad", full)["logits"]
    for i, n in enumerate(lengths):  # the real tokens score the same with or without the trailing pads
        torch.testing.assert_close(s_cut[i, :n], s_full[i, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(e_cut[i, :n], e_full[i, :n], atol=1e-5, rtol=1e-5)


def test_lists_are_padded_with_the_pad_id_and_per_token_labels_with_minus_100():
    batch = Collate(pad_id=7)([{"input_ids": [1, 2, 3], "labels": [5, -100, 6]}, {"input_ids": [4], "labels": [9]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, -100, 6], [9, -100, -100]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    scalar = Collate()([{"input_ids": [1, 2], "labels": 1}, {"input_ids": [3], "labels": 0}])
    assert scalar["labels"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="input_ids"):
        Collate()([{"ids": [1]}])


def test_eval_order_is_shortest_first():
    feats = [{"input_ids": [0] * n} for n in (5, 2, 9, 2)]
    assert eval_order(feats) == [1, 3, 0, 2]
