"""Chapter 13, exercise 4: how should a multi-task run mix its tasks? Temperature 1 (proportional to the number of
batches), temperature 2, and round-robin, on a small SST-2 (500 sentences) beside a SQuAD subset several times
larger, so the mixing decides how often the small task is seen. Every run: one shared encoder, both heads, the same
total steps, lr and seed; only the task sampler changes.

    python -m chapters.solutions.ch13_mixing --data-dir ../shared/data
    python -m chapters.solutions.ch13_mixing --data-dir ../shared/data --sst2-train 4000   # tasks of similar size
"""
import argparse
import copy
import math

from .ch13_common import base_parser, note_sample, parse_flags, start, timed
from nanoft import seed_everything
from nanoft.training.batching import Collate
from nanoft.recipes.classification import evaluate_accuracy, load_sst2
from nanoft.cli.flags import nonneg_int, positive_int, run_main
from nanoft.recipes.extractive_qa import evaluate_qa, load_squad
from nanoft.models.heads import ClassificationHead, MultiTaskModel, SpanHead
from nanoft.recipes.mixing import STRATEGIES, MultiTaskBatches, fine_tune_multitask, task_probabilities
from nanoft.cli.report import print_table, save_rows


def mix_list(text):
    """Comma-separated strategies, a temperature after a colon: "temperature:1,temperature:2,round_robin"
    -> [("temperature", 1.0), ("temperature", 2.0), ("round_robin", None)]."""
    mixes = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        strategy, _, t = item.partition(":")
        if strategy not in STRATEGIES:
            raise argparse.ArgumentTypeError(f"{item!r}: the strategies are {', '.join(STRATEGIES)}")
        try:
            temperature = float(t) if t else (2.0 if strategy == "temperature" else None)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: the temperature after ':' must be a number") from None
        if temperature is not None and not temperature > 0:
            raise argparse.ArgumentTypeError(f"{item!r}: the temperature must be > 0 (1 = proportional)")
        mixes.append((strategy, temperature))
    if not mixes:
        raise argparse.ArgumentTypeError(f"{text!r} names no strategy: e.g. temperature:1,round_robin")
    return mixes


def mix_name(strategy, temperature):
    return f"{strategy}:{temperature:g}" if strategy == "temperature" else strategy


def build_parser():
    # ~16 SST-2 batches against ~130 SQuAD batches; --steps: all optimizer steps of one multi-task run, both tasks
    p = base_parser("ch13_mixing", __doc__, sst2_train=500, steps=150, evals=3)
    p.add_argument("--mixes", type=mix_list, default="temperature:1,temperature:2,round_robin",
                   help="comma-separated strategies (proportional, temperature, round_robin), a temperature after ':'")
    g = p.add_argument_group("SQuAD")
    g.add_argument("--squad-questions", type=nonneg_int, default=2000,
                   help="SQuAD training questions (a seeded subset of the training articles; 0 = all)")
    g.add_argument("--squad-len", type=positive_int, default=256, help="tokens per SQuAD window (question + context)")
    g.add_argument("--stride", type=positive_int, default=128, help="context tokens shared by neighbouring windows")
    g.add_argument("--squad-val", type=positive_int, default=200, help="SQuAD validation questions (held-out articles)")
    g.add_argument("--eval-questions", type=nonneg_int, default=500,
                   help="eval questions of the final EM/F1 (0 = all)")
    g.add_argument("--squad-batch-size", type=positive_int, default=16, help="SQuAD windows per step")
    return p


def main(argv=None):
    p = build_parser()
    args = parse_flags(p, argv, smoke=dict(sst2_train=16, steps=6, evals=1, squad_questions=12, squad_len=64,
                                            stride=16, squad_val=4, eval_questions=6, squad_batch_size=4))
    if args.stride >= args.squad_len:
        p.error(f"--stride {args.stride} must be smaller than --squad-len {args.squad_len}")
    run, _, tok, encoder = start(args)
    sst2 = load_sst2(tok, args.max_len, args.sst2_train, args.sst2_val, args.sst2_dev, args.seed, args.data_dir)
    squad = load_squad(tok, args.squad_len, args.stride, args.squad_questions, args.squad_val, args.eval_questions,
                       args.seed, args.data_dir)
    datasets = {"sst2": sst2["train"], "squad": squad["train"]}
    batch_sizes = {"sst2": min(args.batch_size, len(sst2["train"])), "squad": args.squad_batch_size}
    sizes = {t: math.ceil(len(d) / batch_sizes[t]) for t, d in datasets.items()}  # as MultiTaskBatches counts
    print(f"SST-2 {len(sst2['train']):,} sentences, SQuAD {len(squad['train_examples']):,} questions -> "
          f"{len(squad['train']):,} windows: {sizes['sst2']} against {sizes['squad']} batches")

    evaluators = {"sst2": lambda m: evaluate_accuracy(m, sst2["val"], "sst2"),  # validation, in percent; their
                  "squad": lambda m: evaluate_qa(m, squad["val_examples"], squad["val"], "squad")["f1"]}  # mean wins

    rows = []
    for strategy, temperature in args.mixes:
        name = mix_name(strategy, temperature)
        batches = MultiTaskBatches(datasets, batch_sizes, strategy, temperature or 1.0, num_steps=args.steps,
                                   seed=args.seed, collate_fn=Collate())
        steps = {t: batches.schedule.count(t) for t in datasets}
        print(f"\n# {name}: {steps['sst2']} SST-2 and {steps['squad']} SQuAD steps, lr {args.lr:g}")
        seed_everything(args.seed)  # the same heads for every mix
        H = encoder.config.hidden_size
        model = MultiTaskModel(copy.deepcopy(encoder), {"sst2": ClassificationHead(H, 2), "squad": SpanHead(H)})
        _, seconds = timed(fine_tune_multitask, model, batches, evaluators,
                           run.config(args.steps, args.lr, 1))
        scores = evaluate_qa(model, squad["eval_examples"], squad["eval"], "squad")
        rows.append(dict(mix=name, sst2_batches=sizes["sst2"], squad_batches=sizes["squad"],
                         p_sst2=task_probabilities(sizes, strategy, temperature or 1.0)["sst2"],
                         sst2_steps=steps["sst2"], squad_steps=steps["squad"],
                         dev_acc=evaluate_accuracy(model, sst2["dev"], "sst2"), em=scores["exact_match"],
                         f1=scores["f1"], seconds=seconds))
        save_rows(rows, args.out_dir, "exercise_mixing")  # on disk after every run: a Ctrl-C keeps them
        print(f"  SST-2 dev accuracy {rows[-1]['dev_acc']:.1f}%, SQuAD EM {scores['exact_match']:.1f} / F1 "
              f"{scores['f1']:.1f}; {seconds:.0f} s of training")
    print_table(rows, [("mix", "mix", "{}"), ("p(sst2)", "p_sst2", "{:.2f}"), ("SST-2 steps", "sst2_steps", "{}"),
                       ("SQuAD steps", "squad_steps", "{}"), ("SST-2 dev acc", "dev_acc", "{:.1f}%"),
                       ("SQuAD EM", "em", "{:.1f}"), ("SQuAD F1", "f1", "{:.1f}"), ("seconds", "seconds", "{:.0f}")])
    print(f"(task sizes in batches: {sizes}; {sst2['label']}; {squad['label']})")
    note_sample(sst2, squad)
    print(f"Written: {save_rows(rows, args.out_dir, 'exercise_mixing')}")
    return rows


if __name__ == "__main__":
    run_main(main)
