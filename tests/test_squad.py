"""nanoft.data.squad against the real SQuAD v1.1 dev set: official scoring (checked against an independent implementation
of evaluate-v1.1.py's definition), feature windows (checked against transformers' tokenizer), labels,
post-processing."""
import json
import random
import re
import string
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from nanoft.data.squad import (collate, exact_match_score, f1_score, load_squad_examples, normalize_answer,
                          postprocess_predictions, prepare_eval_features, prepare_train_features, squad_evaluate)

REPO = Path(__file__).resolve().parents[1]
MAX_LEN, STRIDE = 128, 32


@pytest.fixture(scope="module")
def dev_path(shared_data_dir):
    if shared_data_dir is not None and (shared_data_dir / "squad_v1.1" / "dev-v1.1.json").is_file():
        return shared_data_dir / "squad_v1.1" / "dev-v1.1.json"
    samples = REPO / "data" / "sample"
    for sample in [samples / "squad_sample.json", samples / "squad_sample" / "eval.json"]:
        if sample.is_file():
            return sample
    pytest.skip("no SQuAD data: put ../shared/data beside the repo (or set NANOFT_DATA), "
                "or add data/sample/squad_sample/eval.json")


@pytest.fixture(scope="module")
def dev(dev_path):
    return load_squad_examples(dev_path)


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def sample(dev):
    """A seeded sample of questions; nearly all SQuAD contexts are longer than one 128-token window."""
    return random.Random(0).sample(dev, min(250, len(dev)))


@pytest.fixture(scope="module")
def features(sample, tok):
    return (prepare_train_features(sample, tok, MAX_LEN, STRIDE), prepare_eval_features(sample, tok, MAX_LEN, STRIDE))


# ----------------------------------------------------------------------------- an independent reference scorer
# The definition of evaluate-v1.1.py written another way: translate() for punctuation, a hand-written scan with
# \b's meaning (word char = alphanumeric or "_") for articles, re.findall for whitespace, list removal for overlap.

_DROP_PUNCT = str.maketrans("", "", r"""!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~""")


def _is_word_char(c):
    return c.isalnum() or c == "_"


def ref_normalize(text):
    text = text.lower().translate(_DROP_PUNCT)
    out, i = [], 0
    while i < len(text):
        for article in ("the", "an", "a"):
            j = i + len(article)
            if (text.startswith(article, i) and (i == 0 or not _is_word_char(text[i - 1]))
                    and (j == len(text) or not _is_word_char(text[j]))):
                out.append(" ")
                i = j
                break
        else:
            out.append(text[i])
            i += 1
    return " ".join(re.findall(r"\S+", "".join(out)))


def ref_f1(prediction, gold):
    pred, rest = ref_normalize(prediction).split(), ref_normalize(gold).split()
    same = 0
    for word in pred:
        if word in rest:
            rest.remove(word)
            same += 1
    return 0.0 if same == 0 else 2.0 * same / (len(pred) + len(ref_normalize(gold).split()))


def ref_evaluate(articles, predictions):
    em = f1 = n = 0
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                n += 1
                if qa["id"] in predictions:
                    p = predictions[qa["id"]]
                    em += max(int(ref_normalize(p) == ref_normalize(a["text"])) for a in qa["answers"])
                    f1 += max(ref_f1(p, a["text"]) for a in qa["answers"])
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}


def perturb(answer, other, rng):
    words = answer.split()
    kind = rng.randrange(12)
    if kind == 0:
        return " ".join(words[:-1]) if len(words) > 1 else answer[: max(1, len(answer) // 2)]
    if kind == 1:
        return " ".join(words[1:]) if len(words) > 1 else answer + " " + answer
    if kind == 2:
        return answer + " " + rng.choice(["of the year", "and more", "in 1990", "the"])
    if kind == 3:
        return other
    if kind == 4:
        return answer.upper() if rng.random() < 0.5 else answer.title()
    if kind == 5:
        return rng.choice(['"', "(", "'"]) + answer + rng.choice([".", ",", ")", "!?", "'s"])
    if kind == 6:
        return rng.choice(["The ", "a ", "An ", "the_"]) + answer
    if kind == 7:
        return ""
    if kind == 8:
        return "  " + answer.replace(" ", " \n\t ") + "  "
    if kind == 9:
        return answer + rng.choice(["’s", " — ", " «a»", "-the"])
    if kind == 10:
        return answer.replace("-", " ") if "-" in answer else answer.replace(" ", "-")
    return answer + " " + other


# ----------------------------------------------------------------------------- scoring


def test_official_examples_by_hand():
    assert normalize_answer("  The  Denver-Broncos!  ") == "denverbroncos"
    assert normalize_answer("an anthem, a thea") == "anthem thea"  # articles only as whole words
    assert normalize_answer("Grand Theft’s") == "grand theft’s"  # ASCII punctuation only, as the official script
    assert exact_match_score("the Denver Broncos.", "Denver Broncos") == 1.0
    assert f1_score("Denver", "Denver Broncos") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert f1_score("Denver Broncos Denver", "Denver Broncos") == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1))
    assert {chr(c) for c in _DROP_PUNCT} == set(string.punctuation)  # the reference drops the same 32 characters
    assert f1_score("", "Denver") == 0.0 and f1_score("the", "a") == 0.0  # empty after normalizing: 0, as official


def test_gold_answers_score_100(dev, dev_path):
    predictions = {ex["id"]: ex["answers"][0]["text"] for ex in dev}
    assert squad_evaluate(dev, predictions) == {"exact_match": 100.0, "f1": 100.0}
    articles = json.loads(dev_path.read_text(encoding="utf-8"))["data"]
    assert squad_evaluate(articles, predictions) == {"exact_match": 100.0, "f1": 100.0}


def test_perturbed_predictions_match_independent_scorer(dev, dev_path, capsys):
    rng = random.Random(1234)
    predictions = {}
    for i, ex in enumerate(dev):
        if i == 0 or rng.random() < 0.02:
            continue  # unanswered (the first always, so a small sample file has one too): scores 0 in both
        gold = rng.choice(ex["answers"])["text"]
        predictions[ex["id"]] = perturb(gold, rng.choice(dev)["answers"][0]["text"], rng)
    articles = json.loads(dev_path.read_text(encoding="utf-8"))["data"]

    ours, ref = squad_evaluate(dev, predictions), ref_evaluate(articles, predictions)
    assert ours["exact_match"] == pytest.approx(ref["exact_match"], abs=1e-9)
    assert ours["f1"] == pytest.approx(ref["f1"], abs=1e-9)
    assert 10 < ours["exact_match"] < 90 and ours["exact_match"] < ours["f1"] < 95  # the perturbations bite
    assert "have no prediction" in capsys.readouterr().err
    for ex in dev[::5]:  # and question by question
        if ex["id"] in predictions:
            p = predictions[ex["id"]]
            for a in ex["answers"]:
                assert normalize_answer(p) == ref_normalize(p)
                assert f1_score(p, a["text"]) == pytest.approx(ref_f1(p, a["text"]), abs=1e-12)


# ----------------------------------------------------------------------------- features


def _window_contains(offsets_ctx, start_char, end_char):
    return offsets_ctx[0][0] <= start_char and end_char <= offsets_ctx[-1][1]


def test_windows_match_transformers_and_cover_context(sample, tok, features, minilm_dir):
    train, evalf = features
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))  # local folder: no download
    enc = hf([e["question"] for e in sample], [e["context"] for e in sample], truncation="only_second",
             max_length=MAX_LEN, stride=STRIDE, return_overflowing_tokens=True, return_offsets_mapping=True,
             padding="max_length")
    assert len(train) == len(evalf) == len(enc["input_ids"]) > len(sample)  # many contexts need several windows
    for i, (t, e) in enumerate(zip(train, evalf)):
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert t[key].tolist() == e[key].tolist() == enc[key][i], key
        assert e["example_id"] == sample[enc["overflow_to_sample_mapping"][i]]["id"]
        seq = enc.sequence_ids(i)
        assert e["offsets"] == [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], seq)]

    # every context token is in some window, and neighbouring windows share exactly STRIDE tokens
    plain = Tokenizer.from_str(tok.to_str())
    plain.no_truncation()
    plain.no_padding()
    by_id = {}
    for e in evalf:
        by_id.setdefault(e["example_id"], []).append([o for o in e["offsets"] if o is not None])
    for ex in sample:
        ctx = [tuple(o) for o in plain.encode(ex["context"], add_special_tokens=False).offsets]
        windows, pos = by_id[ex["id"]], 0
        for k, w in enumerate(windows):
            assert w == ctx[pos:pos + len(w)]
            if k + 1 < len(windows):
                pos += len(w) - STRIDE
        assert pos + len(windows[-1]) == len(ctx)


def test_train_labels_point_at_the_answer(sample, features):
    train, evalf = features
    ex_by_id = {ex["id"]: ex for ex in sample}
    labelled, unaligned = set(), 0
    for t, e in zip(train, evalf):
        ex = ex_by_id[e["example_id"]]
        a = ex["answers"][0]
        sc, ec = a["answer_start"], a["answer_start"] + len(a["text"])
        ctx_offsets = [o for o in e["offsets"] if o is not None]
        s, en = t["start_positions"].item(), t["end_positions"].item()
        if not _window_contains(ctx_offsets, sc, ec):
            assert (s, en) == (0, 0)  # [CLS]: "the answer is not in this window"
            continue
        labelled.add(ex["id"])
        assert 0 < s <= en and e["offsets"][s] is not None and e["offsets"][en] is not None
        text = ex["context"][e["offsets"][s][0]:e["offsets"][en][1]]
        if sc in {o[0] for o in ctx_offsets} and ec in {o[1] for o in ctx_offsets}:
            assert normalize_answer(text) == normalize_answer(a["text"]), (text, a["text"])
        else:  # the annotator cut inside a word piece ("8" of "18"): the span is the tightest one covering it
            unaligned += 1
            assert e["offsets"][s][0] <= sc < e["offsets"][s][1] and e["offsets"][en][0] < ec <= e["offsets"][en][1]
    assert unaligned <= 0.02 * len(train)
    assert labelled == set(ex_by_id)  # with a 32-token overlap every (short) answer lies whole in some window


def test_train_labels_match_transformers_run_qa(sample, tok, features, minilm_dir):
    """The label algorithm of transformers' examples/pytorch/question-answering/run_qa.py, on the same windows."""
    train, evalf = features
    ex_by_id = {ex["id"]: ex for ex in sample}
    for t, e in zip(train, evalf):
        a = ex_by_id[e["example_id"]]["answers"][0]
        sc, ec = a["answer_start"], a["answer_start"] + len(a["text"])
        offsets = [o or (0, 0) for o in e["offsets"]]
        seq = [1 if o is not None else 0 for o in e["offsets"]]
        ts, te = seq.index(1), len(seq) - 1 - seq[::-1].index(1)
        if not (offsets[ts][0] <= sc and offsets[te][1] >= ec):
            expected = (0, 0)
        else:
            while ts < len(offsets) and offsets[ts][0] <= sc:
                ts += 1
            while offsets[te][1] >= ec:
                te -= 1
            expected = (ts - 1, te + 1)
        ours = (t["start_positions"].item(), t["end_positions"].item())
        if expected[0] > expected[1]:
            # run_qa's start scan walks past a window's last context token when the answer is that token
            assert ours == (expected[1], expected[1])
        else:
            assert ours == expected


def test_answer_that_is_the_last_token_of_a_window(tok):
    """An edge where run_qa's scan overshoots into [SEP]: the label must be that one token."""
    context = " ".join(f"word{i}" for i in range(300))
    ex = {"id": "x", "question": "Which?", "context": context, "answers": []}
    window = prepare_eval_features([ex], tok, 64, 16)[0]
    last = max(t for t, o in enumerate(window["offsets"]) if o is not None)
    s, e = window["offsets"][last]
    assert context[s:e] == "word"  # the first piece of "wordN": the window ends inside that word
    ex = {"id": "x", "question": "Which?", "context": context, "answers": [{"text": context[s:e], "answer_start": s}]}
    first = prepare_train_features([ex], tok, 64, 16)[0]
    assert (first["start_positions"].item(), first["end_positions"].item()) == (last, last)


def test_postprocess_perfect_logits_recovers_gold(sample, features):
    train, evalf = features
    g = torch.Generator().manual_seed(0)
    start = torch.randn(len(evalf), MAX_LEN, generator=g) * 0.5  # (N, T) noise
    end = torch.randn(len(evalf), MAX_LEN, generator=g) * 0.5
    for i, t in enumerate(train):
        s, e = t["start_positions"].item(), t["end_positions"].item()
        if s == 0:
            start[i, 0] += 50.0  # a confident "not here" on [CLS]: never a valid answer
            end[i, 0] += 50.0
        else:
            start[i, s] += 10.0
            end[i, e] += 10.0
    preds = postprocess_predictions(sample, evalf, start, end)
    assert set(preds) == {ex["id"] for ex in sample}
    aligned = []
    for ex in sample:
        a = ex["answers"][0]
        gold_span = ex["context"][a["answer_start"]:a["answer_start"] + len(a["text"])]
        if preds[ex["id"]] == gold_span:
            aligned.append(ex)
        else:  # only answers cut inside a word piece decode to the whole piece
            assert gold_span in preds[ex["id"]]
    assert len(aligned) >= 0.97 * len(sample)
    assert squad_evaluate(aligned, preds)["exact_match"] == 100.0
    assert squad_evaluate(sample, preds)["exact_match"] < 100.0 or len(aligned) == len(sample)

    # max_answer_length counts tokens: with 1, only the one-token gold answers survive
    preds_short = postprocess_predictions(sample, evalf, start, end, max_answer_length=1)
    for t, e in zip(train, evalf):
        s, en = t["start_positions"].item(), t["end_positions"].item()
        if s != 0 and preds[e["example_id"]] == preds_short[e["example_id"]]:
            assert s == en
    assert sum(preds[ex["id"]] == preds_short[ex["id"]] for ex in sample) < len(sample) / 2


def test_dataloader_batches_features(features):
    train, evalf = features
    batch = next(iter(DataLoader(train, batch_size=4)))
    assert batch["input_ids"].shape == (4, MAX_LEN) and batch["start_positions"].shape == (4,)
    assert batch["input_ids"].dtype == torch.long
    batch = next(iter(DataLoader(evalf, batch_size=4, collate_fn=collate)))
    assert batch["input_ids"].shape == (4, MAX_LEN) and len(batch["offsets"]) == 4 and len(batch["example_id"]) == 4


# ----------------------------------------------------------------------------- errors


def test_question_longer_than_max_length_raises(tok, sample):
    ex = dict(sample[0], id="long-q", question="why " * 200)
    with pytest.raises(ValueError, match=r"'long-q'.*raise max_length"):
        prepare_train_features([ex], tok, max_length=128, doc_stride=32)
    with pytest.raises(ValueError, match="lower doc_stride"):  # fits, but leaves no room for the stride
        prepare_eval_features([dict(ex, question="why " * 100)], tok, max_length=128, doc_stride=32)


def _write(tmp_path, obj):
    p = tmp_path / "squad.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return p


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="SQuAD v1.1 JSON"):
        load_squad_examples(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_squad_examples(_write(tmp_path, "{not json"))
    with pytest.raises(ValueError, match="no top-level 'data'"):
        load_squad_examples(_write(tmp_path, {"version": "1.1"}))
    with pytest.raises(ValueError, match="no questions"):
        load_squad_examples(_write(tmp_path, {"version": "1.1", "data": []}))
    qa = {"id": "q1", "question": "Who?", "answers": [{"text": "Bob", "answer_start": 0}]}
    with pytest.raises(ValueError, match="article 0 is malformed"):
        load_squad_examples(_write(tmp_path, {"data": [{"paragraphs": [{"qas": [qa]}]}]}))
    with pytest.raises(ValueError, match="SQuAD v2.0 unanswerable"):
        unanswerable = dict(qa, answers=[])
        paragraph = {"context": "Bob ran.", "qas": [unanswerable]}
        load_squad_examples(_write(tmp_path, {"data": [{"paragraphs": [paragraph]}]}))
    with pytest.raises(ValueError, match="not at answer_start=4"):
        bad = dict(qa, answers=[{"text": "Bob", "answer_start": 4}])
        load_squad_examples(_write(tmp_path, {"data": [{"paragraphs": [{"context": "Bob ran.", "qas": [bad]}]}]}))
    good = {"data": [{"title": "T", "paragraphs": [{"context": "Bob ran.", "qas": [qa]}]}]}
    ok = load_squad_examples(_write(tmp_path, good))
    assert ok == [{"id": "q1", "title": "T", "context": "Bob ran.", "question": "Who?",
                   "answers": [{"text": "Bob", "answer_start": 0}]}]
