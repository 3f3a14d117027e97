"""nanoft.models.heads against Hugging Face's BertForSequenceClassification / BertForQuestionAnswering."""
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from nanoft.models.bert import BERT, BertConfig  # noqa: E402
from nanoft.models.heads import (ClassificationHead, MultiTaskModel, SpanHead, classification_loss,  # noqa: E402
                          span_loss)
from nanoft.training.freeze import freeze_encoder  # noqa: E402

H, T = 32, 12


def tiny_hf_config(**kw):
    return transformers.BertConfig(vocab_size=99, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=37, max_position_embeddings=40, **kw)


def tiny_bert():
    return BERT(BertConfig(vocab_size=99, hidden_size=H, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=40))


def randomize_(model, std=0.3):
    # random biases and LayerNorms too, so a head that skipped e.g. the pooler's bias could not match by luck
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def batch(B=3):
    ids = torch.randint(1, 99, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    tt = torch.zeros(B, T, dtype=torch.long)
    tt[0, 6:] = 1
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=tt)


def hf_to_nanoft(hf, tmp_path, head, hf_name):
    """Encoder through BERT.from_pretrained (it skips the head); the head's Linear has HF's name, so its keys copy 1:1."""
    hf.save_pretrained(tmp_path)
    encoder = BERT.from_pretrained(tmp_path).eval()
    sd = hf.state_dict()
    getattr(head, hf_name).load_state_dict({"weight": sd[f"{hf_name}.weight"], "bias": sd[f"{hf_name}.bias"]})
    return encoder, head.eval()


def test_classification_head_matches_bert_for_sequence_classification(tmp_path):
    hf = randomize_(transformers.BertForSequenceClassification(tiny_hf_config(num_labels=3))).eval()
    encoder, head = hf_to_nanoft(hf, tmp_path, ClassificationHead(H, 3, pooling="cls"), "classifier")
    x = batch()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        ref = hf(**x, labels=labels)
        hidden = encoder(**x)
        logits = head(hidden, x["attention_mask"], pooled=encoder.pool(hidden))
    assert logits.shape == (3, 3)
    assert (logits - ref.logits).abs().max() < 1e-4
    assert abs(classification_loss(logits, labels).item() - ref.loss.item()) < 1e-4
    # the same through MultiTaskModel, the way the training loop calls it
    model = MultiTaskModel(encoder, {"sst2": head}).eval()
    with torch.no_grad():
        out = model("sst2", {**x, "labels": labels})
    assert (out["logits"] - ref.logits).abs().max() < 1e-4 and abs(out["loss"].item() - ref.loss.item()) < 1e-4


def test_span_head_matches_bert_for_question_answering(tmp_path):
    hf = randomize_(transformers.BertForQuestionAnswering(tiny_hf_config())).eval()
    encoder, head = hf_to_nanoft(hf, tmp_path, SpanHead(H), "qa_outputs")
    x = batch()
    # the third answer lies outside the window (cut off by doc_stride): HF clamps it to T and ignores it
    starts, ends = torch.tensor([3, 5, T + 7]), torch.tensor([4, 7, T + 9])
    with torch.no_grad():
        ref = hf(**x, start_positions=starts, end_positions=ends)
        start, end = head(encoder(**x), x["attention_mask"])
    assert start.shape == end.shape == (3, T)
    keep = x["attention_mask"].bool()
    assert (start - ref.start_logits)[keep].abs().max() < 1e-4
    assert (end - ref.end_logits)[keep].abs().max() < 1e-4
    assert abs(span_loss(start, end, starts, ends).item() - ref.loss.item()) < 1e-5


def test_span_loss_is_hf_rule_on_known_logits():
    start, end = torch.randn(4, T), torch.randn(4, T)
    starts, ends = torch.tensor([0, 5, T + 3, -2]), torch.tensor([1, 6, T + 4, 2])
    # by hand: row 2 is out of the window (ignored); a negative position clamps to 0 (the [CLS] "no answer" slot)
    s_ref = F.cross_entropy(start[[0, 1, 3]], torch.tensor([0, 5, 0]))
    e_ref = F.cross_entropy(end[[0, 1, 3]], torch.tensor([1, 6, 2]))
    assert torch.allclose(span_loss(start, end, starts, ends), (s_ref + e_ref) / 2, atol=1e-6)


def test_mean_pooling_is_the_masked_mean():
    head = randomize_(ClassificationHead(H, 2, pooling="mean")).eval()
    hidden = torch.randn(3, T, H)
    x = batch()
    mask = x["attention_mask"]
    want = torch.stack([hidden[i, : int(mask[i].sum())].mean(0) for i in range(3)])  # mean over real tokens only
    got = head(hidden, mask)
    assert torch.allclose(got, head.classifier(want), atol=1e-5)
    hidden2 = hidden.clone()
    hidden2[mask == 0] = 100.0  # anything in the pad slots
    assert torch.allclose(head(hidden2, mask), got, atol=1e-5)
    with pytest.raises(ValueError, match="pooled=encoder.pool"):
        ClassificationHead(H, 2, pooling="cls")(hidden, mask)
    with pytest.raises(ValueError, match="'max'"):
        ClassificationHead(H, 2, pooling="max")


def test_multitask_routes_to_the_right_head_and_shares_one_encoder():
    encoder = tiny_bert()
    cls_head, span_head = ClassificationHead(H, 2, pooling="cls"), SpanHead(H)
    model = MultiTaskModel(encoder, {"sst2": cls_head, "squad": span_head}).eval()
    x = batch()
    with torch.no_grad():
        hidden = encoder(**x)
        out_c = model("sst2", x)
        out_s = model("squad", x)
        assert torch.allclose(out_c["logits"], cls_head(hidden, pooled=encoder.pool(hidden)), atol=1e-6)
        assert out_c["logits"].shape == (3, 2) and out_c["loss"] is None
        start, end = span_head(hidden)
        assert torch.allclose(out_s["logits"][0], start, atol=1e-6) and torch.allclose(out_s["logits"][1], end, atol=1e-6)
    with pytest.raises(ValueError, match="'mnli'.*squad.*sst2"):
        model("mnli", x)
    # one encoder, stored once: both tasks' losses land their gradients on the very same tensors
    assert len(list(model.parameters())) == len(list(encoder.parameters())) + 4
    assert {id(p) for p in encoder.parameters()} <= {id(p) for p in model.parameters()}
    model.train()
    grads = {}
    for task, labels in [("sst2", {"labels": torch.tensor([0, 1, 1])}),
                         ("squad", {"start_positions": torch.tensor([1, 2, 3]), "end_positions": torch.tensor([2, 3, 3])})]:
        model.zero_grad(set_to_none=True)
        model(task, {**x, **labels})["loss"].backward()
        grads[task] = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    shared = {f"encoder.{n}" for n, _ in encoder.named_parameters() if not n.startswith("pooler.")}
    assert shared <= grads["sst2"] and shared <= grads["squad"]  # the span task never touches the pooler
    assert "heads.sst2.classifier.weight" in grads["sst2"] and "heads.sst2.classifier.weight" not in grads["squad"]
    assert "heads.squad.qa_outputs.weight" in grads["squad"] and "heads.squad.qa_outputs.weight" not in grads["sst2"]


def test_each_head_owns_its_loss_so_a_new_kind_of_head_needs_no_library_change():
    class TokenTagger(torch.nn.Module):  # a head the library has never heard of: one label per token
        def __init__(self):
            super().__init__()
            self.tagger = torch.nn.Linear(H, 3)

        def forward(self, hidden, attention_mask=None, pooled=None):
            return self.tagger(hidden)  # (B, T, 3)

        def loss(self, logits, batch):
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["tags"].flatten(), ignore_index=-100)

    model = MultiTaskModel(tiny_bert(), {"a": ClassificationHead(H, 2), "tags": TokenTagger()})
    x = batch()
    tags = torch.randint(3, x["input_ids"].shape)
    out = model("tags", {**x, "tags": tags})
    assert torch.allclose(out["loss"], torch.nn.functional.cross_entropy(out["logits"].flatten(0, 1), tags.flatten()))
    assert model("a", x)["loss"] is None  # no labels in the batch: prediction only
    with pytest.raises(ValueError, match="no loss"):
        MultiTaskModel(tiny_bert(), {"c": torch.nn.Linear(H, 2)})


def test_freeze_encoder_head_only_and_top_k():
    model = MultiTaskModel(tiny_bert(), {"sst2": ClassificationHead(H, 2)})
    enc = model.encoder
    trainable = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731

    freeze_encoder(model)  # head-only baseline
    assert trainable(model) == {"heads.sst2.classifier.weight", "heads.sst2.classifier.bias"}
    model("sst2", {**batch(), "labels": torch.tensor([0, 1, 0])})["loss"].backward()
    assert all(p.grad is None for p in enc.parameters())

    freeze_encoder(model, unfreeze_top_k=1)
    got = trainable(enc)
    assert got == {n for n, _ in enc.named_parameters() if n.startswith(("layers.2.", "pooler."))}
    assert not any(n.startswith(("embeddings.", "layers.0.", "layers.1.")) for n in got)

    freeze_encoder(model, unfreeze_top_k=3)
    assert trainable(enc) == {n for n, _ in enc.named_parameters() if not n.startswith("embeddings.")}
    assert "heads.sst2.classifier.weight" in trainable(model)
    with pytest.raises(ValueError, match="unfreeze_top_k=4.*3 layers"):
        freeze_encoder(model, unfreeze_top_k=4)
