"""Extractive question answering (SQuAD) with a BERT encoder and a span head: data, evaluation, fine-tuning.

    data = load_squad(tok, max_length=256, doc_stride=128)     # train windows, val and eval questions + windows
    model = span_model(encoder)                                # encoder + a fresh span head
    fine_tune_qa(model, data["train"], data["val_examples"], data["val"], TrainConfig(lr=1e-4, max_steps=500))
    evaluate_qa(model, data["eval_examples"], data["eval"])    # {"exact_match": ..., "f1": ...}, official rules

nanoft.data.squad holds the SQuAD format, the windows and the official metric; this file is the recipe around them.
"""
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nanoft.data import squad
from nanoft.training.batching import Collate, eval_order, real_length
from nanoft.recipes.classification import subset, terminal
from nanoft.data.datasets import dataset_path
from nanoft.training.device import to_device
from nanoft.models.heads import MultiTaskModel, SpanHead
from nanoft.training.train import TrainConfig, train


def split_by_article(examples, val_fraction=0.1):
    """(train, val) SQuAD examples; the last articles go to val, so no paragraph is in both (no answer leaks).
    val_fraction 0: no validation split, every article trains."""
    if val_fraction == 0:
        return list(examples), []
    titles = list(dict.fromkeys(ex["title"] for ex in examples))
    if len(titles) < 2:
        raise ValueError(f"the SQuAD training file has {len(titles)} article: at least 2 are needed to carve a "
                         "validation split by article; give a bigger SQuAD training file")
    val_titles = set(titles[-max(1, round(len(titles) * val_fraction)):])
    return ([ex for ex in examples if ex["title"] not in val_titles],
            [ex for ex in examples if ex["title"] in val_titles])


def load_squad(tokenizer, max_length=256, doc_stride=128, n_train=0, n_val=0, n_eval=0, seed=0, data_dir=None,
               train_file=None, eval_file=None, val_fraction=0.1):
    """SQuAD windows: train (a seeded subset of n_train questions of the training articles; 0 = all), val (questions
    of held-out articles) and eval (for the final figure), with the examples behind val and eval. Default files:
    squad_v1.1_devsplit/{train,eval}.json, the official dev set cut by article (the official train file is large).
    val_fraction: the share of training articles held out for validation (0: none, as the standard recipe)."""
    if doc_stride >= max_length:
        raise ValueError(f"doc_stride={doc_stride} must be smaller than max_length={max_length}: neighbouring windows "
                         "share doc_stride tokens, so a window must hold more than that")
    train_path, train_sample = (Path(train_file), False) if train_file else \
        dataset_path("squad_v1.1_devsplit/train.json", data_dir)
    eval_path, eval_sample = (Path(eval_file), False) if eval_file else \
        dataset_path("squad_v1.1_devsplit/eval.json", data_dir)
    train_ex, val_ex = split_by_article(squad.load_squad_examples(train_path), val_fraction)
    train_ex, val_ex = subset(train_ex, n_train, seed), subset(val_ex, n_val, seed)
    all_eval = squad.load_squad_examples(eval_path)
    eval_ex = subset(all_eval, n_eval, seed)
    sample = train_sample or eval_sample
    label = "SAMPLE SQuAD" if sample else (eval_path.name if eval_file else "SQuAD v1.1 dev, article split: eval.json")
    if len(eval_ex) < len(all_eval):
        label += f" ({len(eval_ex):,} of {len(all_eval):,} q)"
    L, S = max_length, doc_stride
    return dict(train=squad.prepare_train_features(train_ex, tokenizer, L, S),
                val=squad.prepare_eval_features(val_ex, tokenizer, L, S),
                eval=squad.prepare_eval_features(eval_ex, tokenizer, L, S),
                train_examples=train_ex, val_examples=val_ex, eval_examples=eval_ex, label=label, sample=sample,
                files=(train_path, eval_path))


def span_model(encoder, task="qa"):
    """The encoder + a fresh span head: one start and one end logit per token, named `task` in the
    MultiTaskModel."""
    return MultiTaskModel(encoder, {task: SpanHead(encoder.config.hidden_size)})


@torch.no_grad()
def predict_answers(model, examples, features, task=None, batch_size=32, n_best=20, max_answer_length=30,
                    progress=False) -> dict:
    """{question id: answer text}: logits for every window, then the best valid span over each question's windows.
    task: the head to use (None: the model's only head)."""
    task = model.task_name(task)
    if not features:
        raise ValueError("no SQuAD windows to predict: pass prepare_eval_features(examples, tokenizer)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    N, T = len(features), len(features[0]["input_ids"])
    start_logits, end_logits = torch.full((N, T), -1e4), torch.full((N, T), -1e4)  # (N, T); a pad never wins
    order, collate = eval_order(features), Collate()
    for i in tqdm(range(0, N, batch_size), desc="eval", leave=False, disable=not (progress and terminal())):
        idx = order[i:i + batch_size]
        batch = collate([features[j] for j in idx])
        start, end = model(task, to_device({k: v for k, v in batch.items() if torch.is_tensor(v)}, device))["logits"]
        start_logits[idx, :start.size(1)] = start.float().cpu()  # the batch was cut to its longest window
        end_logits[idx, :end.size(1)] = end.float().cpu()
    model.train(was_training)
    return squad.postprocess_predictions(examples, features, start_logits, end_logits, n_best=n_best,
                                         max_answer_length=max_answer_length)


def evaluate_qa(model, examples, features, task=None, batch_size=32, n_best=20, max_answer_length=30,
                progress=False) -> dict:
    """Official SQuAD v1.1 exact match and F1, in percent."""
    predictions = predict_answers(model, examples, features, task, batch_size, n_best, max_answer_length, progress)
    return squad.squad_evaluate(examples, predictions)


def fine_tune_qa(model, train_features, val_examples, val_features, cfg: TrainConfig, task=None):
    """nanoft's training loop on the windows, evaluated by validation F1 ("val_f1") every cfg.eval_every steps; the
    model ends with the weights of its best evaluation. Returns the loop's TrainResult."""
    task = model.task_name(task)
    loss = lambda m, b: m(task, b)["loss"]  # noqa: E731
    if not val_features:  # no validation split (the standard recipe): train the whole schedule, keep the last weights
        return train(model, train_features, loss, cfg, collate_fn=Collate(), length_fn=real_length)
    cfg = replace(cfg, metric="val_f1", mode="max", restore_best=True)
    evaluate = lambda m: {"val_f1": evaluate_qa(m, val_examples, val_features, task,  # noqa: E731
                                                progress=cfg.progress)["f1"]}
    return train(model, train_features, loss, cfg, eval_fn=evaluate, collate_fn=Collate(), length_fn=real_length)
