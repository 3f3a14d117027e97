"""nanoft.data.metrics: perplexity is exp of the mean NLL over all predicted tokens, whatever the batch sizes."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoft.data.metrics import accuracy, count_targets, evaluate_lm, perplexity

V = 50


def _batches():
    """Three batches with very different numbers of predicted tokens (lengths and -100 labels)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for B, T, ignored in [(4, 32, 0.0), (1, 3, 0.0), (2, 16, 0.5)]:
        x = torch.randint(V, (B, T), generator=g)
        y = torch.randint(V, (B, T), generator=g)
        y[torch.rand(B, T, generator=g) < ignored] = -100
        out.append({"input_ids": x, "labels": y})
    return out


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, V)

    def forward(self, x, targets=None):
        logits = self.head(self.drop(self.emb(x)))  # (B, T, V)
        return logits, F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)


def test_perplexity_is_token_weighted():
    torch.manual_seed(0)
    logits = [torch.randn(n, V) * 3 for n in (200, 3, 40)]
    targets = [torch.randint(V, (n,)) for n in (200, 3, 40)]
    losses = [F.cross_entropy(l, t).item() for l, t in zip(logits, targets)]
    counts = [200, 3, 40]
    reference = math.exp(F.cross_entropy(torch.cat(logits), torch.cat(targets)).item())  # one loss over all tokens
    assert perplexity(losses, counts) == pytest.approx(reference, rel=1e-6)
    naive_mean_loss = math.exp(sum(losses) / 3)
    naive_mean_ppl = sum(math.exp(l) for l in losses) / 3
    assert abs(naive_mean_loss - reference) / reference > 0.01 and abs(naive_mean_ppl - reference) / reference > 0.01
    assert perplexity(losses[0], counts[0]) == pytest.approx(math.exp(losses[0]))  # one batch: plain exp(loss)
    assert perplexity([2.0, 2.0], [5, 50]) == pytest.approx(math.exp(2.0))
    with pytest.raises(ValueError, match="one count per loss"):
        perplexity([1.0, 2.0], [3])


def test_evaluate_lm_matches_cross_entropy_over_all_tokens():
    torch.manual_seed(0)
    model = TinyLM().train()
    batches = _batches()
    result = evaluate_lm(model, batches, lambda m, b: m(b["input_ids"], targets=b["labels"])[1])
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(b["input_ids"], b["labels"])[0].reshape(-1, V) for b in batches])
    targets = torch.cat([b["labels"].reshape(-1) for b in batches])
    loss = F.cross_entropy(logits, targets, ignore_index=-100)  # torch's mean over every non-ignored token
    assert result["tokens"] == int((targets != -100).sum()) == sum(count_targets(b) for b in batches)
    assert result["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(loss.item()), rel=1e-6)
    per_batch = [F.cross_entropy(model(b["input_ids"], b["labels"])[0].reshape(-1, V), b["labels"].reshape(-1)).item() for b in batches]
    assert abs(math.exp(sum(per_batch) / len(per_batch)) - result["perplexity"]) > 1e-3  # the naive way differs


def test_count_targets_forms():
    y = torch.tensor([[1, -100, 3], [4, 5, -100]])
    assert count_targets({"labels": y}) == count_targets((None, y)) == 4
    with pytest.raises(ValueError, match="count_fn"):
        count_targets({"input_ids": y})


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == pytest.approx(0.75)
    assert accuracy(logits, torch.tensor([0, 1, 1, -100])) == pytest.approx(2 / 3)
    tokens = torch.randn(2, 5, 7)
    assert accuracy(tokens, tokens.argmax(-1)) == 1.0
    with pytest.raises(ValueError, match="no labels"):
        accuracy(logits, torch.full((4,), -100))
