"""Metrics of generated text: ROUGE-L against references, and how much a generation repeats itself.

ROUGE-L (Lin, 2004) scores a generation by the longest common subsequence (LCS) of its words and the reference's:
words in the same order, not necessarily next to each other. With LCS length l, a generation of m words and a
reference of n words, precision = l / m, recall = l / n, F1 = 2 P R / (P + R). Words are cut as the `rouge-score`
package cuts them by default (lower case; every run of characters outside a-z and 0-9 is a space; no stemming), so
the numbers match it (tests/test_generation_metrics.py checks).

Repetition (Welleck et al., 2019, "Neural text degeneration with unlikelihood training"):
- seq-rep-n of one continuation: the share of its n-grams that are repeats, 1 - |unique n-grams| / |n-grams|;
  the paper reports seq-rep-4, averaged over continuations. 0 for text that never repeats a 4-gram.
- distinct-n (Li et al., 2016, which Welleck et al. report beside it as "uniq"): unique n-grams over all n-grams,
  pooled over every generation. Low when the model says the same few things whatever the prompt (mode collapse).
Both take token sequences: lists of model token ids (as the paper measures) or of words.
"""
import re

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str) -> list:
    """rouge-score's default tokenizer: lower case, non-alphanumerics to spaces, split on whitespace."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a, b) -> int:
    """Length of the longest common subsequence of sequences a and b, by dynamic programming over one row:
    row[j] = LCS of a[:i] and b[:j], updated for each i. O(len(a) * len(b)) time, O(len(b)) memory."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous i: LCS of a[:i-1] and b[:j-1]
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> dict:
    """{"precision", "recall", "f1"} of ROUGE-L between two texts; all 0 when either has no words."""
    pred, ref = rouge_tokenize(prediction), rouge_tokenize(reference)
    if not pred or not ref:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    lcs = lcs_length(ref, pred)
    p, r = lcs / len(pred), lcs / len(ref)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r > 0 else 0.0}


def mean_rouge_l(predictions, references) -> float:
    """Mean ROUGE-L F1 over pairs, in percent."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions and {len(references)} references: pass one reference per "
                         "prediction, at least one pair")
    return 100.0 * sum(rouge_l(p, r)["f1"] for p, r in zip(predictions, references)) / len(predictions)


def ngrams(tokens, n: int) -> list:
    """The n-grams of a sequence, as tuples, in order (len(tokens) - n + 1 of them)."""
    if n < 1:
        raise ValueError(f"n={n}: n-grams need n >= 1")
    tokens = list(tokens)
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def seq_rep_n(sequences, n: int = 4) -> float:
    """Mean over sequences of 1 - unique n-grams / n-grams (Welleck et al., 2019), as a fraction. Sequences shorter
    than n have no n-gram and are left out of the mean; 0.0 when none is long enough."""
    scores = []
    for seq in sequences:
        grams = ngrams(seq, n)
        if grams:
            scores.append(1.0 - len(set(grams)) / len(grams))
    return sum(scores) / len(scores) if scores else 0.0


def distinct_n(sequences, n: int = 2) -> float:
    """Unique n-grams / n-grams, pooled over all sequences (Li et al., 2016), as a fraction; 0.0 when there are none."""
    grams = [g for seq in sequences for g in ngrams(seq, n)]
    return len(set(grams)) / len(grams) if grams else 0.0
