"""ROUGE-L against the rouge-score package, and the repetition metrics on hand-worked sequences."""
import json

import pytest
from rouge_score import rouge_scorer

from nanoft.data.datasets import dataset_path
from nanoft.data.generation_metrics import (distinct_n, lcs_length, mean_rouge_l, ngrams, rouge_l, rouge_tokenize,
                                            seq_rep_n)


def _pairs():
    """Real response pairs (chosen vs rejected, and output vs the next record's output), plus edge cases."""
    with open(dataset_path("instruction/instruction-data-with-preference.json").path, encoding="utf-8") as f:
        records = json.load(f)
    pairs = [(r["rejected"], r["chosen"]) for r in records]
    pairs += [(a["output"], b["output"]) for a, b in zip(records, records[1:])]
    pairs += [("", "a reference"), ("a prediction", ""), ("!!! ...", "words"), ("Café au lait, s'il vous plaît",
              "cafe au lait"), ("The the THE the", "the"), ("x1 y2-z3", "X1, y2 z3!"), ("a b c d", "d c b a")]
    return pairs


def test_rouge_l_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"])  # the package's defaults: its tokenizer, no stemming
    pairs = _pairs()
    assert len(pairs) > 40
    for prediction, reference in pairs:
        ref = scorer.score(reference, prediction)["rougeL"]  # score(target, prediction)
        ours = rouge_l(prediction, reference)
        assert ours["precision"] == pytest.approx(ref.precision, abs=1e-12), (prediction, reference)
        assert ours["recall"] == pytest.approx(ref.recall, abs=1e-12), (prediction, reference)
        assert ours["f1"] == pytest.approx(ref.fmeasure, abs=1e-12), (prediction, reference)
    mean = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / len(pairs)
    assert mean_rouge_l([p for p, _ in pairs], [r for _, r in pairs]) == pytest.approx(100 * mean, abs=1e-9)


def test_rouge_tokenizer_matches_rouge_score():
    from rouge_score import tokenize
    for text in ["Hello, World! It's 2026.", "  tabs\tand\nnewlines ", "naïve café", "--", ""]:
        assert rouge_tokenize(text) == tokenize.tokenize(text, None)


def test_lcs_length_by_hand():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook example (BCBA)
    assert lcs_length([], [1, 2]) == 0
    assert lcs_length([1, 2, 3], [1, 2, 3]) == 3
    assert lcs_length([1, 2, 3], [3, 2, 1]) == 1


def test_seq_rep_and_distinct_by_hand():
    assert ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
    assert seq_rep_n([[1, 2, 3, 4, 5, 6]], 4) == 0.0  # three 4-grams, all different
    # 1 2 3 4 1 2 3 4 1 2: seven 4-grams, four distinct -> 1 - 4/7
    assert seq_rep_n([[1, 2, 3, 4, 1, 2, 3, 4, 1, 2]], 4) == pytest.approx(3 / 7)
    # the mean over sequences; one too short to have a 4-gram is left out
    assert seq_rep_n([[7] * 5, [1, 2, 3, 4], [1, 2]], 4) == pytest.approx((0.5 + 0.0) / 2)
    assert seq_rep_n([[1, 2]], 4) == 0.0
    # distinct-2 pools every sequence: (1,2) (2,1) (1,2) | (1,2) -> 2 unique of 4
    assert distinct_n([[1, 2, 1, 2], [1, 2]], 2) == pytest.approx(2 / 4)
    assert distinct_n([[5]], 2) == 0.0
    with pytest.raises(ValueError, match="n >= 1"):
        ngrams([1], 0)
    with pytest.raises(ValueError, match="one reference per prediction"):
        mean_rouge_l(["a"], [])
