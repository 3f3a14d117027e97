"""Token-level unlikelihood: the negative candidates by hand, the penalty against a plain loop over positions, and
that training with it moves probability off the tokens already said."""
import math

import pytest
import torch

from nanoft.models.gpt2 import GPT2, GPT2Config
from nanoft.recipes.instruction_tuning import SFTCollate, lm_feature
from nanoft.recipes.unlikelihood import fine_tune_unlikelihood, previous_target_candidates, unlikelihood_terms
from nanoft.training.train import TrainConfig


def test_candidates_by_hand():
    labels = torch.tensor([[-100, 3, 1, 3, 2, -100]])  # padding / prompt at both ends
    c = previous_target_candidates(labels, vocab_size=5)
    as_sets = [set(torch.nonzero(c[0, t]).flatten().tolist()) for t in range(6)]
    # t=1: nothing before; t=2: {3}; t=3: {3, 1} minus its own target 3; t=4: {3, 1}; masked positions: nothing
    assert as_sets == [set(), set(), {3}, {1}, {1, 3}, set()]


def test_penalty_matches_a_loop():
    torch.manual_seed(0)
    B, T, V = 2, 7, 11
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    labels[0, :2] = -100
    labels[1, -1] = -100
    nll, penalty = unlikelihood_terms(logits[labels != -100], labels)  # the labelled positions' logits
    p = logits.softmax(-1)
    want_nll, want_penalty = 0.0, 0.0
    for b in range(B):
        for t in range(T):
            if labels[b, t] == -100:
                continue
            want_nll -= math.log(p[b, t, labels[b, t]])
            earlier = {int(x) for x in labels[b, :t] if x != -100} - {int(labels[b, t])}
            want_penalty -= sum(math.log(1 - p[b, t, c]) for c in earlier)
    assert nll.item() == pytest.approx(want_nll, rel=1e-5)
    assert penalty.item() == pytest.approx(want_penalty, rel=1e-5)
    assert want_penalty > 0


def test_training_moves_probability_off_earlier_tokens():
    """20 steps from the same weights with alpha 0 (plain likelihood) and alpha 1: with the penalty, the probability
    the model puts on the earlier targets (other than the right one) ends lower, at little cost in likelihood."""
    g = torch.Generator().manual_seed(0)
    features = []
    for _ in range(8):  # responses that use each of 8 tokens once, in a random order
        response = torch.randperm(8, generator=g).tolist()
        features.append(lm_feature(torch.randint(8, 40, (4,), generator=g).tolist() + response, 4))
    batch = SFTCollate()(features)
    negatives = previous_target_candidates(batch["labels"], 40)
    mass, histories = {}, {}
    for alpha, steps in ((0.0, 20), (1.0, 20)):
        torch.manual_seed(0)
        model = GPT2(GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0))
        result = fine_tune_unlikelihood(model, features, TrainConfig(lr=1e-2, max_steps=steps, batch_size=8,
                                                                     progress=False, precision="fp32"), alpha=alpha)
        histories[alpha, steps] = [r for r in result.history if r["type"] == "unlikelihood"]
        with torch.no_grad():
            p = model(batch["input_ids"])[0].softmax(-1)
        mass[alpha, steps] = (p * negatives).sum().item() / negatives.any(-1).sum().item()
    plain, penalised = histories[0.0, 20], histories[1.0, 20]
    assert len(plain) == len(penalised) == 20 and plain[0] == penalised[0]  # the same first step's numbers
    # as the model learns the 8 tokens, likelihood alone puts more and more on those already said (measured here:
    # 0.42 per position); the penalty holds that ~9% lower (0.38), for ~1% more NLL
    assert mass[1.0, 20] < 0.95 * mass[0.0, 20]
    assert penalised[-1]["penalty"] < 0.95 * plain[-1]["penalty"]
    assert penalised[-1]["nll"] < 1.05 * plain[-1]["nll"]
    with pytest.raises(ValueError, match="alpha"):
        fine_tune_unlikelihood(model, features, TrainConfig(max_steps=1), alpha=-1)
