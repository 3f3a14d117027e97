"""Chapter 13: fine-tuning methods for language understanding, measured on your machine.

The knights' methods on one pretrained BERT (the real all-MiniLM-L6-v2 by default), on SST-2 (is a movie review
sentence positive?) and SQuAD v1.1 (which words of a paragraph answer a question?):
  heads      task-specific layers (Sir Bedevere): a classification head for SST-2, a span head for SQuAD, the
             whole encoder fine-tuned;
  tapt       task-adaptive pre-training (Sir Lancelot) where it is known to help, few labels and plenty of task
             text: masked LM on all SST-2 sentences, then 1,000 labels, against the same without it;
  multitask  multi-task learning (Sir Galahad): one encoder, both heads, the same steps per task as `heads`;
  frozen     the baseline: the encoder frozen, only a head trained (mean-pooled for SST-2, as MiniLM was trained).
`all` (the default) runs the four and prints ONE table. Choices are made on validation data carved out of the
training data; the dev sets only make the table (Sir Gawain). `--recipe standard` runs the standard recipe (SST-2
1 epoch, SQuAD 2 epochs). What you should see, and how long it takes: the README's chapter 13 paragraph.
"""
import copy
import statistics
import time
from dataclasses import replace

import torch

from nanoft import BERT, BertForMaskedLM, TrainConfig, load_bert_tokenizer, seed_everything
from nanoft.io.assets import minilm_dir
from nanoft.training.batching import Collate
from nanoft.recipes.classification import (evaluate_accuracy, fine_tune_classifier, fine_tune_frozen, load_sst2,
                                   sentence_classifier, subset)
from nanoft.cli.flags import (ChapterParser, add_io_flags, add_run_flags, float_list, fraction, nonneg_int,
                              positive_float, positive_int, run_main)
from nanoft.recipes.extractive_qa import evaluate_qa, fine_tune_qa, load_squad, span_model
from nanoft.models.heads import ClassificationHead, MultiTaskModel, SpanHead
from nanoft.training.freeze import freeze_encoder
from nanoft.recipes.mixing import MultiTaskBatches, exact_schedule, fine_tune_multitask
from nanoft.recipes.mlm import continue_pretraining
from nanoft.cli.report import Results, check_out_dir

METHODS = ("heads", "tapt", "multitask", "frozen")
RECIPES = ("quick", "standard")
# Every size of a run: its flag, its type and help, then its value in each recipe (quick, standard) and under --smoke.
# The quick sizes come from measured curves (README, "Chapter 13"); a flag given on the command line wins.
SIZES = [
    ("--sst2-train", nonneg_int, "SST-2 training sentences (a seeded subset; 0 = all 66,849)", 0, 0, 48),
    ("--sst2-val", positive_int, "SST-2 sentences carved out of train.tsv for validation", 500, 500, 16),
    ("--sst2-dev", nonneg_int, "SST-2 dev sentences of the final accuracy (the first N; 0 = all 872)", 0, 0, 24),
    ("--max-len", positive_int, "SST-2 tokens per sentence", 64, 64, 32),
    ("--sst2-steps", positive_int, "optimizer steps of SST-2 fine-tuning (batch 32)", 600, 2089, 2),
    ("--lrs", float_list, "lr of SST-2 fine-tuning; several, comma-separated: a sweep won on validation",
     "1e-4", "5e-5", "1e-4"),
    ("--squad-questions", nonneg_int, "SQuAD training questions (0 = all)", 0, 0, 12),
    ("--squad-len", positive_int, "tokens per SQuAD window (question + context)", 256, 256, 64),
    ("--stride", positive_int, "context tokens shared by neighbouring windows (< --squad-len)", 128, 128, 16),
    ("--squad-val", nonneg_int, "SQuAD validation questions from held-out articles (0: none; every article "
     "trains and the last weights are kept, as in the standard recipe)", 300, 0, 4),
    ("--eval-questions", nonneg_int, "questions of the eval file for the final EM/F1 (0 = all)", 500, 0, 6),
    ("--squad-steps", positive_int, "optimizer steps of SQuAD fine-tuning (batch 16)", 250, 1244, 2),
    ("--tapt-labels", positive_int, "labelled SST-2 sentences of the TAPT comparison", 1000, 1000, 32),
    ("--head-steps", nonneg_int, "masked-LM steps that train the fresh MLM head alone, first", 100, 200, 1),
    ("--tapt-steps", positive_int, "masked-LM steps on all SST-2 training text (batch 32)", 300, 1000, 2),
    ("--label-steps", positive_int, "fine-tuning steps on the few labels (with TAPT or without)", 150, 150, 2),
    ("--frozen-train", nonneg_int, "SST-2 sentences whose frozen vectors train the baseline's head (0 = all)",
     20000, 0, 0),
    ("--frozen-steps", positive_int, "steps of the frozen SST-2 baseline's head (batch 256)", 2000, 4000, 2),
    ("--evals", positive_int, "validation evaluations per run (the best weights are kept)", 4, 4, 1),
]


EXAMPLES = """examples:
  python chapters/ch13_language_understanding.py --smoke                      # tiny sizes: does it run? (a minute)
  python chapters/ch13_language_understanding.py --data-dir ../shared/data    # all four methods, one table
  python chapters/ch13_language_understanding.py heads --recipe standard --data-dir ../shared/data
writes, as each method finishes, OUT_DIR/results_<method>.json and OUT_DIR/results.json (all rows so far, the
flags), then OUT_DIR/results.png. Ctrl-C keeps what finished and says where. NANOFT_DEBUG=1: tracebacks."""


def build_parser():
    p = ChapterParser("ch13", __doc__.split("\n\n")[0] + " Runs heads, tapt, multitask and frozen (or one of them) "
                      "and prints one table.", EXAMPLES)
    p.add_argument("method", nargs="?", default="all", choices=("all",) + METHODS, help="which method to run")
    add_io_flags(p, "runs/ch13")
    p.add_argument("--squad-train", help="a SQuAD v1.1 JSON to train on; default: squad_v1.1_devsplit/train.json")
    p.add_argument("--squad-eval", help="a SQuAD v1.1 JSON for the final EM/F1; default: squad_v1.1_devsplit/eval.json")
    p.add_sizes(SIZES, RECIPES, "sizes, steps and lr (quick: a few minutes per method on a 2-core CPU; standard, with "
                "`heads`: SST-2 1 epoch at lr 5e-5, SQuAD 2 epochs, about an hour)")
    h = p.add_argument_group("hyperparameters")
    h.add_argument("--squad-lr", type=positive_float, default=1e-4, help="lr of SQuAD and multi-task fine-tuning")
    h.add_argument("--head-lr", type=positive_float, default=1e-3, help="lr of the frozen baselines' heads")
    h.add_argument("--tapt-lr", type=positive_float, default=1e-4, help="masked-LM lr of TAPT")
    h.add_argument("--warmup", type=fraction, default=0.06,
                   help="share of each run's steps spent warming up (6%%, as in the standard SST-2 recipe)")
    h.add_argument("--seeds", type=positive_int, default=3, help="seeds of the TAPT comparison (mean ± std)")
    add_run_flags(p)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.stride >= args.squad_len:
        p.error(f"--stride {args.stride} must be smaller than --squad-len {args.squad_len}: neighbouring windows "
                "share --stride tokens, so each window must hold more")
    if args.squad_val == 0 and args.method in ("all", "multitask"):
        p.error("--squad-val 0 (no validation split; the standard recipe) leaves multi-task learning nothing to pick "
                "its best weights on: run `heads` or `frozen` with it, or give --squad-val N")
    return args


def config(args, steps, lr, batch_size, **kw):
    """One fine-tuning run's TrainConfig: warmup then linear decay, --evals validations, plain weights kept."""
    return TrainConfig(lr=lr, max_steps=steps, batch_size=batch_size, warmup_steps=int(args.warmup * steps),
                       decay="linear", eval_every=max(1, -(-steps // args.evals)), device=args.device,
                       precision=args.precision, progress=not args.no_progress, seed=args.seed, **kw)


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    return fn(*a, **kw), time.perf_counter() - t0


def row(method, task, value, seconds, std=None, note=""):
    """A table row: an accuracy (a number) or SQuAD scores (a dict); value is what the plot draws."""
    text = f"{value:.1f}%" if not isinstance(value, dict) else f"EM {value['exact_match']:.1f} / F1 {value['f1']:.1f}"
    text += f" ± {std:.1f}" if std is not None else ""
    print(f"  -> {task}: {text}")
    return dict(method=method, task=task, metric=text, value=value if not isinstance(value, dict) else value["f1"],
                seconds=seconds, time=f"{seconds / 60:.1f} min{note}")


def heads(d, args):
    sst2, squad = d["sst2"], d["squad"]
    print(f"\n# Task-specific layers: full fine-tuning, SST-2 {args.sst2_steps} steps of 32 (lr "
          f"{', '.join(f'{x:g}' for x in args.lrs)}), SQuAD {args.squad_steps} steps of 16 windows")
    runs = []
    for lr in args.lrs:  # one lr, or a sweep whose winner is picked on validation accuracy
        seed_everything(args.seed)
        model = sentence_classifier(copy.deepcopy(d["encoder"]))
        result, seconds = timed(fine_tune_classifier, model, sst2["train"], sst2["val"],
                                config(args, args.sst2_steps, lr, 32, group_by_length=True))
        print(f"  SST-2 lr {lr:g}: best validation accuracy {result.best_metric:.1f}% at step {result.best_step}")
        runs.append((result.best_metric, lr, seconds, model))
    _, lr, seconds, model = max(runs, key=lambda r: r[0])
    rows = [row(f"full fine-tuning, classification head (lr {lr:g})", sst2["label"],
                evaluate_accuracy(model, sst2["dev"]), seconds)]
    seed_everything(args.seed)
    model = span_model(copy.deepcopy(d["encoder"]))
    _, seconds = timed(fine_tune_qa, model, squad["train"], squad["val_examples"], squad["val"],
                       config(args, args.squad_steps, args.squad_lr, 16, group_by_length=True))
    return rows + [row("full fine-tuning, span head", squad["label"],
                       evaluate_qa(model, squad["eval_examples"], squad["eval"]), seconds)]


def tapt(d, args):
    sst2 = d["sst2"]
    print(f"\n# Task-adaptive pre-training: masked LM on all {len(sst2['train']):,} SST-2 training sentences (labels "
          f"unused; {args.head_steps} steps for the fresh MLM head alone, then {args.tapt_steps} with the encoder), "
          f"then fine-tuning on {args.tapt_labels:,} labelled sentences, with and without it, {args.seeds} seed(s)")
    seed_everything(args.seed)
    mlm = BertForMaskedLM.from_pretrained(args.model, notice=False)  # MiniLM has no MLM head: trained first
    out, mlm_seconds = timed(continue_pretraining, mlm, [f["input_ids"] for f in sst2["train"]],
                             [f["input_ids"] for f in sst2["val"]], d["tok"],
                             config(args, args.tapt_steps, args.tapt_lr, 32, group_by_length=True),
                             head_steps=args.head_steps, seed=args.seed)
    print(f"  masked-LM validation loss {out.curve[0]['val_loss']:.2f} -> {out.curve[-1]['val_loss']:.2f}")
    rows = []
    for name, encoder, extra in (("no TAPT", d["encoder"], 0.0), ("TAPT", mlm.bert.cpu(), mlm_seconds)):
        accs, seconds = [], extra
        for seed in range(args.seed, args.seed + args.seeds):  # another labelled subset and head init per seed
            seed_everything(seed)
            model = sentence_classifier(copy.deepcopy(encoder))
            cfg = replace(config(args, args.label_steps, args.lrs[0], 32, group_by_length=True), seed=seed)
            _, t = timed(fine_tune_classifier, model, subset(sst2["train"], args.tapt_labels, seed), sst2["val"], cfg)
            accs.append(evaluate_accuracy(model, sst2["dev"]))
            seconds += t
        rows.append(row(f"{name}, {args.tapt_labels:,} labels, mean of {len(accs)} seed(s)", sst2["label"],
                        statistics.mean(accs), seconds, std=statistics.stdev(accs) if len(accs) > 1 else None,
                        note=f" ({mlm_seconds / 60:.1f} MLM + fine-tuning)" if extra else ""))
    return rows


def multitask(d, args):
    sst2, squad = d["sst2"], d["squad"]
    steps = {"sst2": args.sst2_steps, "squad": args.squad_steps}
    print(f"\n# Multi-task learning: one encoder, two heads, the same steps per task as single-task ({steps}), "
          f"interleaved at random, one warmup and decay over all {sum(steps.values())} steps, lr {args.squad_lr:g}")
    seed_everything(args.seed)
    H = d["encoder"].config.hidden_size
    model = MultiTaskModel(copy.deepcopy(d["encoder"]), {"sst2": ClassificationHead(H, 2), "squad": SpanHead(H)})
    batches = MultiTaskBatches({"sst2": sst2["train"], "squad": squad["train"]}, {"sst2": 32, "squad": 16},
                               collate_fn=Collate(), schedule=exact_schedule(steps, args.seed), seed=args.seed)
    evaluators = {"sst2": lambda m: evaluate_accuracy(m, sst2["val"], "sst2"),  # both in %; their mean picks
                  "squad": lambda m: evaluate_qa(m, squad["val_examples"], squad["val"], "squad")["f1"]}  # the best
    _, seconds = timed(fine_tune_multitask, model, batches, evaluators, config(args, sum(steps.values()),
                                                                                 args.squad_lr, 1))
    return [row("multi-task, shared encoder", sst2["label"], evaluate_accuracy(model, sst2["dev"], "sst2"), seconds,
                note=" (both tasks)"),
            row("multi-task, shared encoder", squad["label"], evaluate_qa(model, squad["eval_examples"],
                                                                          squad["eval"], "squad"), seconds,
                note=" (both tasks)")]


def frozen(d, args):
    sst2, squad = d["sst2"], d["squad"]
    print(f"\n# Baseline: the encoder frozen, only a head trained (lr {args.head_lr:g}; SST-2: {args.frozen_steps} "
          f"steps on the vectors of {args.frozen_train or len(sst2['train']):,} sentences, computed once; SQuAD: "
          f"{args.squad_steps} steps)")
    seed_everything(args.seed)
    model = sentence_classifier(copy.deepcopy(d["encoder"]), pooling="mean")
    train_set = subset(sst2["train"], args.frozen_train, args.seed)  # a frozen encoder needs fewer sentences
    _, seconds = timed(fine_tune_frozen, model, train_set, sst2["val"],
                       config(args, args.frozen_steps, args.head_lr, min(256, len(train_set))))
    rows = [row("frozen encoder, mean-pooled, head only", sst2["label"], evaluate_accuracy(model, sst2["dev"]),
                seconds)]
    seed_everything(args.seed)
    model = freeze_encoder(span_model(copy.deepcopy(d["encoder"])))
    _, seconds = timed(fine_tune_qa, model, squad["train"], squad["val_examples"], squad["val"],
                       config(args, args.squad_steps, args.head_lr, 16, group_by_length=True))
    return rows + [row("frozen encoder, span head only", squad["label"],
                       evaluate_qa(model, squad["eval_examples"], squad["eval"]), seconds)]


def main(argv=None):
    args = parse_args(argv)
    check_out_dir(args.out_dir)  # before any work: a folder that cannot hold the results fails now, not in an hour
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or minilm_dir()
    seed_everything(args.seed)
    d = dict(tok=load_bert_tokenizer(args.model), encoder=BERT.from_pretrained(args.model), squad=None)
    c = d["encoder"].config
    print(f"BERT from {args.model}: {c.num_hidden_layers} layers, width {c.hidden_size}, "
          f"{d['encoder'].num_parameters():,} parameters")
    d["sst2"] = sst2 = load_sst2(d["tok"], args.max_len, args.sst2_train, args.sst2_val, args.sst2_dev, args.seed,
                                 args.data_dir, batch_size=32)  # SST-2 trains in batches of 32
    print(f"SST-2: {len(sst2['train']):,} training sentences, {len(sst2['val'])} validation, {len(sst2['dev'])} dev")
    methods = METHODS if args.method == "all" else (args.method,)
    if methods != ("tapt",):
        try:
            d["squad"] = load_squad(d["tok"], args.squad_len, args.stride, args.squad_questions, args.squad_val,
                                    args.eval_questions, args.seed, args.data_dir, args.squad_train, args.squad_eval,
                                    val_fraction=0.1 if args.squad_val else 0)
        except ValueError as e:  # name the flags, not the library's arguments
            raise ValueError(f"{e} (flags: --squad-len {args.squad_len}, --stride {args.stride})") from None
        q = d["squad"]
        print(f"SQuAD: {len(q['train_examples']):,} training questions -> {len(q['train']):,} windows of "
              f"{args.squad_len} tokens; {len(q['val_examples'])} validation, {len(q['eval_examples'])} eval")
    results = Results(args.out_dir, vars(args), smoke=args.smoke)
    for m in methods:  # each method's rows are on disk as soon as it finishes
        results.add(m, {"heads": heads, "tapt": tapt, "multitask": multitask, "frozen": frozen}[m](d, args),
                    sample=sst2["sample"] or (d["squad"] or {}).get("sample"))
    results.finish([("method", "method", "{}"), ("task", "task", "{}"), ("metric", "metric", "{}"),
                    ("training time", "time", "{}")], label_key="method", value_key="value", group_key="task",
                   title="Chapter 13: SST-2 accuracy, SQuAD F1 (%)")
    return results.rows


if __name__ == "__main__":
    run_main(main, name="ch13", memory="--max-len or --squad-len (the batches are 32 sentences, 16 windows)")
