"""Chapter 4, exercise 5: which learning rate, and is warmup needed? GPT-2 fine-tuned alone (no LSTM) with a few
peak learning rates, and with and without the linear warmup, for 150 steps each (the length of the trial behind the
chapter's --lr help).

    python -m chapters.solutions.ch04_lr_warmup --data-dir ../shared/data
    python -m chapters.solutions.ch04_lr_warmup --data-dir ../shared/data --runs 4e-3:0,4e-3:30,4e-3:100
"""
import argparse
from dataclasses import replace

from .ch04_common import chapter4_args, chapter4_parser, chapter4_setup
from nanoft.cli.report import print_table, save_rows
from nanoft.recipes.causal_lm import best_and_final, fine_tune_lm
from nanoft.cli.flags import nonneg_int, positive_float, run_main


def lr_warmup_pairs(text):
    """ "5e-5:30,1e-3:0" -> [(5e-5, 30), (1e-3, 0)]: peak learning rates > 0 and warmup steps >= 0."""
    pairs = []
    for item in text.split(","):
        lr, sep, warmup = item.strip().partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not lr:warmup-steps, e.g. 4e-3:30")
        pairs.append((positive_float(lr), nonneg_int(warmup)))
    return pairs


def build_parser():
    p = chapter4_parser("ch04_lr_warmup", __doc__, defaults={"max_steps": 150, "eval_every": 25})
    p.add_argument("--runs", type=lr_warmup_pairs, default="5e-5:30,1e-3:30,4e-3:30,1.6e-2:30,1.6e-2:0",
                   help="comma-separated lr:warmup-steps pairs")
    return p


def main(argv=None):
    args = chapter4_args(build_parser(), argv)
    setup = chapter4_setup(args)
    rows = []
    for lr, warmup in args.runs:
        print(f"\n=== GPT-2, peak lr {lr:g}, {warmup} warmup steps ===")
        lm, cfg = setup.gpt2()
        task = setup.task(lm.tokenizer)
        curve = fine_tune_lm(lm.model, task.train, task.val, replace(cfg, lr=lr, warmup_steps=warmup),
                             name="GPT-2").curve
        best, final = best_and_final(curve)
        # the first evaluation shows an early blow-up that the rest of the run may hide
        rows.append(dict(lr=lr, warmup=warmup, first_ppl=curve[1]["ppl"], first_step=curve[1]["step"],
                         best_ppl=best, final_ppl=final, curve=[(r["step"], r["ppl"]) for r in curve]))
        save_rows(rows, setup.out_dir, "exercise_lr_warmup")  # on disk after every run: a Ctrl-C keeps them
    print_table(rows, [("peak lr", "lr", "{:g}"), ("warmup", "warmup", "{}"), ("at step", "first_step", "{}"),
                       ("val ppl then", "first_ppl", "{:.1f}"), ("best val ppl", "best_ppl", "{:.1f}"),
                       ("final val ppl", "final_ppl", "{:.1f}")])
    print(f"(before fine-tuning: perplexity {curve[0]['ppl']:.1f})")
    print(f"Written: {save_rows(rows, setup.out_dir, 'exercise_lr_warmup')}")
    return rows


if __name__ == "__main__":
    run_main(main)
