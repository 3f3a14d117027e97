"""SQuAD v1.1 for BERT: questions with their paragraph -> model inputs, start/end logits -> answer text, and the
official exact-match / F1 scores.

    examples = load_squad_examples("dev-v1.1.json")         # one dict per question
    train = prepare_train_features(examples, tok)           # list of dicts of tensors: DataLoader-ready
    feats = prepare_eval_features(examples, tok)            # + example_id and offsets, batch with collate_fn=collate
    ... start_logits, end_logits = model(...)               # (N, T) each, one row per feature
    preds = postprocess_predictions(examples, feats, start_logits, end_logits)   # {id: answer text}
    squad_evaluate(examples, preds)                         # {"exact_match": 81.2, "f1": 88.5}

A feature is "[CLS] question [SEP] context window [SEP]". A context longer than one window is cut into overlapping
windows (doc_stride = tokens shared by neighbouring windows, Hugging Face's meaning; the original BERT script used
doc_stride as the step between windows instead), so every answer lies whole in at least one window.
"""
import json
import re
import string
import sys
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer

_PUNCTUATION = set(string.punctuation)  # ASCII only, like the official script: "—" or "’" stay

# ----------------------------------------------------------------------------- examples


def load_squad_examples(path) -> list:
    """A SQuAD v1.1 JSON file -> [{id, title, context, question, answers: [{text, answer_start}]}], one per question."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SQuAD file at {path}: pass a SQuAD v1.1 JSON file such as dev-v1.1.json "
                                "(nanoft.data.datasets.dataset_path('squad_v1.1/dev-v1.1.json') finds or downloads it)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): pass the SQuAD file unchanged (re-download it)") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte offset {e.start}): pass the SQuAD JSON file unchanged, as UTF-8 "
                         "(re-download it)") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise ValueError(f"{path} has no top-level 'data' list: expected SQuAD format "
                         "{'version': '1.1', 'data': [{'title', 'paragraphs': [{'context', 'qas'}]}]}")
    examples = []
    for a, article in enumerate(raw["data"]):
        try:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    answers = [{"text": x["text"], "answer_start": int(x["answer_start"])} for x in qa["answers"]]
                    examples.append({"id": qa["id"], "title": article.get("title", ""), "context": context,
                                     "question": qa["question"], "answers": answers})
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: article {a} is malformed ({type(e).__name__}: {e}): every article needs "
                             "paragraphs -> context + qas -> id, question, answers -> text, answer_start") from None
    if not examples:
        raise ValueError(f"{path}: no questions under data -> paragraphs -> qas: pass a SQuAD v1.1 file with questions")
    for ex in examples:
        if not ex["answers"]:
            raise ValueError(f"{path}: question {ex['id']!r} has no answer (a SQuAD v2.0 unanswerable question?): "
                             "nanoft.data.squad handles SQuAD v1.1, where every question has an answer; drop such questions")
        for ans in ex["answers"]:
            s = ans["answer_start"]
            if ex["context"][s:s + len(ans["text"])] != ans["text"]:
                raise ValueError(f"{path}: question {ex['id']!r}: answer {ans['text']!r} is not at answer_start={s} "
                                 "of its context: fix answer_start (it counts characters of the context from 0)")
    if len({ex["id"] for ex in examples}) != len(examples):
        raise ValueError(f"{path}: question ids are not unique: predictions are keyed by id, "
                         "so give each question its own")
    return examples

# ----------------------------------------------------------------------------- features


def _windows(examples, tokenizer, max_length, doc_stride):
    """Yields (example index, tokenizers.Encoding) for every window of every example, padded to max_length."""
    tok = getattr(tokenizer, "tok", tokenizer)  # nanoft's Tokenizer wraps a tokenizers.Tokenizer as .tok
    pad = tok.padding or {"pad_id": tok.token_to_id("[PAD]") or 0, "pad_token": "[PAD]"}
    # a private copy, because we switch its truncation and padding (MiniLM's tokenizer.json pads to 128 by itself)
    tok = Tokenizer.from_str(tok.to_str())
    tok.no_truncation()
    tok.no_padding()
    n_special = tok.post_processor.num_special_tokens_to_add(True) if tok.post_processor else 0
    questions = tok.encode_batch([ex["question"] for ex in examples], add_special_tokens=False)
    for ex, q in zip(examples, questions):
        room = max_length - n_special - len(q.ids)  # context tokens that fit in one window
        if room <= doc_stride:  # the windows must move forward by at least one token
            raise ValueError(f"question {ex['id']!r} ({ex['question'][:60]!r}...) is {len(q.ids)} tokens, leaving "
                             f"{room} context tokens per window of max_length={max_length}, not more than "
                             f"doc_stride={doc_stride}: raise max_length, lower doc_stride, or drop this question")
    # only_second: cut the context, never the question; stride: consecutive windows share doc_stride context tokens
    tok.enable_truncation(max_length, stride=doc_stride, strategy="only_second")
    tok.enable_padding(length=max_length, pad_id=pad["pad_id"], pad_token=pad["pad_token"])
    for i, enc in enumerate(tok.encode_batch([(ex["question"], ex["context"]) for ex in examples])):
        for window in [enc] + enc.overflowing:
            yield i, window


def _model_inputs(window) -> dict:
    return {"input_ids": torch.tensor(window.ids, dtype=torch.long),
            "attention_mask": torch.tensor(window.attention_mask, dtype=torch.long),
            "token_type_ids": torch.tensor(window.type_ids, dtype=torch.long)}


def answer_token_span(window, start_char: int, end_char: int):
    """Token positions (start, end) of the answer characters [start_char, end_char) in this window, or (0, 0),
    the [CLS] token, when the answer is not wholly inside the window's context (Hugging Face's convention)."""
    offsets = window.offsets
    context = [t for t, s in enumerate(window.sequence_ids) if s == 1]
    if not (offsets[context[0]][0] <= start_char and end_char <= offsets[context[-1]][1]):
        return 0, 0
    overlapping = [t for t in context if offsets[t][0] < end_char and offsets[t][1] > start_char]
    if not overlapping:  # an answer of only whitespace: nothing to point at
        return 0, 0
    return overlapping[0], overlapping[-1]


def prepare_train_features(examples, tokenizer, max_length=384, doc_stride=128) -> list:
    """One dict per window: input_ids, attention_mask, token_type_ids (max_length,) and start/end_positions (),
    labelled with the first gold answer (SQuAD's train set has exactly one)."""
    features = []
    for i, window in _windows(examples, tokenizer, max_length, doc_stride):
        answer = examples[i]["answers"][0]
        start_char = answer["answer_start"]
        start, end = answer_token_span(window, start_char, start_char + len(answer["text"]))
        features.append({**_model_inputs(window),
                         "start_positions": torch.tensor(start), "end_positions": torch.tensor(end)})
    return features


def prepare_eval_features(examples, tokenizer, max_length=384, doc_stride=128) -> list:
    """One dict per window: the model inputs, plus example_id and offsets, the (start, end) characters of each
    token in the context, or None for question, special and pad tokens, which can never be part of an answer."""
    features = []
    for i, window in _windows(examples, tokenizer, max_length, doc_stride):
        offsets = [o if s == 1 else None for o, s in zip(window.offsets, window.sequence_ids)]
        features.append({**_model_inputs(window), "example_id": examples[i]["id"], "offsets": offsets})
    return features


def collate(features) -> dict:
    """DataLoader collate_fn for these features: stacks the tensors to (B, T) or (B,); keeps the rest as lists."""
    return {k: torch.stack([f[k] for f in features]) if torch.is_tensor(features[0][k]) else [f[k] for f in features]
            for k in features[0]}

# ----------------------------------------------------------------------------- logits -> answers


def postprocess_predictions(examples, features, all_start_logits, all_end_logits, n_best=20,
                            max_answer_length=30) -> dict:
    """{example id: answer text}: the best-scoring valid span (start logit + end logit) over all windows of an example.
    Only the n_best highest starts and ends of each window are paired, which is all a good span needs."""
    all_start_logits = torch.as_tensor(all_start_logits).float()  # (N, T)
    all_end_logits = torch.as_tensor(all_end_logits).float()  # (N, T)
    if all_start_logits.shape[0] != len(features) or all_end_logits.shape[0] != len(features):
        raise ValueError(f"{len(features)} features but {all_start_logits.shape[0]} start and "
                         f"{all_end_logits.shape[0]} end logit rows: pass one row per feature, in the order of "
                         "prepare_eval_features")
    contexts = {ex["id"]: ex["context"] for ex in examples}
    best = {}  # example id -> (score, text)
    for feature, start_row, end_row in zip(features, all_start_logits, all_end_logits):
        offsets, qid = feature["offsets"], feature["example_id"]
        k = min(n_best, len(offsets))
        starts = start_row[:len(offsets)].topk(k).indices.tolist()
        ends = end_row[:len(offsets)].topk(k).indices.tolist()
        start_logits, end_logits = start_row.tolist(), end_row.tolist()  # Python floats: fast to index in the loop
        for s in starts:
            for e in ends:
                # a span must lie in the context, run forwards, and not be absurdly long
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = start_logits[s] + end_logits[e]
                if qid not in best or score > best[qid][0]:
                    best[qid] = (score, contexts[qid][offsets[s][0]:offsets[e][1]])
    # an example whose windows have no valid span at all gets the empty answer (it scores 0)
    return {ex["id"]: best[ex["id"]][1] if ex["id"] in best else "" for ex in examples}

# ----------------------------------------------------------------------------- official SQuAD v1.1 scores
# The rules of evaluate-v1.1.py (github.com/rajpurkar/SQuAD-explorer), step for step: any change moves the numbers.


def normalize_answer(s: str) -> str:
    """Lower case, drop ASCII punctuation, drop the words a/an/the, collapse whitespace (in this order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """F1 of the bags of normalized words."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    n_same = sum((Counter(pred) & Counter(gold)).values())
    if n_same == 0:  # also when either side is empty: the official script gives 0 there
        return 0.0
    precision, recall = n_same / len(pred), n_same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _gold_answers(examples_or_dataset) -> list:
    """[(id, [gold answer texts])] from our examples, the file's articles (json["data"]) or the whole json."""
    data = examples_or_dataset
    if isinstance(data, dict):
        data = data.get("data", [])
    data = list(data)
    if data and "paragraphs" in data[0]:  # official layout: articles -> paragraphs -> qas
        data = [qa for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    return [(qa["id"], [a["text"] for a in qa["answers"]]) for qa in data]


def squad_evaluate(examples_or_dataset, predictions: dict) -> dict:
    """{"exact_match", "f1"} in percent: each question scores its best match over the gold answers; a question
    without a prediction scores 0, as in the official script."""
    questions = _gold_answers(examples_or_dataset)
    if not questions:
        raise ValueError("no questions to score: pass load_squad_examples(path) or the SQuAD json's 'data' list")
    exact_match = f1 = 0.0
    missing = 0
    for qid, golds in questions:
        if qid not in predictions:
            missing += 1
            continue
        exact_match += max(exact_match_score(predictions[qid], g) for g in golds)
        f1 += max(f1_score(predictions[qid], g) for g in golds)
    if missing:
        print(f"squad_evaluate: {missing} of {len(questions)} questions have no prediction and score 0",
              file=sys.stderr)
    return {"exact_match": 100.0 * exact_match / len(questions), "f1": 100.0 * f1 / len(questions)}
