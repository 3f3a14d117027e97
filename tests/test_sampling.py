"""nanoft.models.sampling: the filters against transformers' warpers, the draws, and the decoding loop on its own."""
import pytest
import torch
import torch.nn as nn

from nanoft.models.sampling import filter_top_k_top_p, generate, sample_next_token

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper  # noqa: E402


def test_filters_match_transformers_warpers():
    logits = torch.randn(8, 200, generator=torch.Generator().manual_seed(0)) * 3
    for k in (1, 5, 50):
        ours = torch.isinf(filter_top_k_top_p(logits, top_k=k))
        assert torch.equal(ours, torch.isinf(TopKLogitsWarper(k)(None, logits)))
        assert (~ours).sum(-1).eq(k).all()
    for p in (0.05, 0.5, 0.9, 0.99):
        ours = torch.isinf(filter_top_k_top_p(logits, top_p=p))
        assert torch.equal(ours, torch.isinf(TopPLogitsWarper(p)(None, logits)))
    both = filter_top_k_top_p(logits, top_k=20, top_p=0.7)  # transformers applies top_k, then top_p
    assert torch.equal(torch.isinf(both), torch.isinf(TopPLogitsWarper(0.7)(None, TopKLogitsWarper(20)(None, logits))))


def test_samples_stay_in_the_filtered_support():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1])).repeat(4000, 1)  # 4000 draws in one call
    g = torch.Generator().manual_seed(0)
    for kw, support in [(dict(top_k=2), {0, 1}), (dict(top_p=0.6), {0, 1}), (dict(top_p=0.75), {0, 1, 2}),
                        (dict(), {0, 1, 2, 3})]:
        drawn = sample_next_token(logits, generator=g, **kw)
        assert set(drawn.tolist()) == support
    drawn = sample_next_token(logits, top_k=2, generator=g)
    assert abs((drawn == 0).float().mean().item() - 0.4 / 0.7) < 0.03  # renormalised over the kept tokens


def test_generate_loop_pads_after_eos_stops_when_all_done_and_restores_training_mode():
    """A fake model whose next token is scripted per row: row 0 emits eos (9) at its 2nd step, row 1 at its 4th."""
    script = torch.tensor([[1, 9, 5, 5, 5, 5], [2, 3, 4, 9, 5, 5]])
    calls = []

    def next_logits(ids, cache):
        step = ids.size(1) - 1  # one prompt token
        calls.append(cache)
        return nn.functional.one_hot(script[:, step], 10).float() * 10, step  # (B, V); the "cache" is the step
    model = nn.Linear(1, 1).train()
    out = generate(model, next_logits, torch.zeros(2, 1, dtype=torch.long), 6, do_sample=False, eos_token_id=9)
    assert out.tolist() == [[0, 1, 9, 9, 9], [0, 2, 3, 4, 9]]  # row 0 padded with eos; stopped once both ended
    assert calls == [None, 0, 1, 2]  # the cache the step returned is handed back next step
    assert model.training  # eval() while generating, then back to how it was
    assert generate(model, next_logits, torch.zeros(2, 1, dtype=torch.long), 0).shape == (2, 1)
