"""Chapter 4, exercise 5: which learning rate, and is warmup needed? GPT-2 fine-tuned alone (no LSTM) with a few
peak learning rates, and with and without the linear warmup, for 150 steps each (the length of the trial behind the
chapter's --lr help).

    python -m chapters.solutions.ch04_lr_warmup --data-dir ../shared/data
    python -m chapters.solutions.ch04_lr_warmup --data-dir ../shared/data --runs 4e-3:0,4e-3:30,4e-3:100
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from a clone, too

from chapters import ch04_finetune_vs_scratch as ch04
from chapters.solutions import CH04_SMOKE, best_and_final, print_table, save_rows, solution_parser, split_argv

DEFAULTS = ["--max-steps", "150", "--eval-every", "25"]


def build_parser():
    p = solution_parser(__doc__, "ch04_finetune_vs_scratch.py")
    p.add_argument("--runs", default="5e-5:30,1e-3:30,4e-3:30,1.6e-2:30,1.6e-2:0",
                   help="comma-separated lr:warmup-steps pairs")
    return p


def main(argv=None):
    own, chapter_argv = split_argv(build_parser(), argv, CH04_SMOKE, DEFAULTS)
    out_dir = ch04.build_parser().parse_args(chapter_argv).out_dir
    rows = []
    for run in own.runs.split(","):
        lr, warmup = run.split(":")
        print(f"\n=== GPT-2, peak lr {lr}, {warmup} warmup steps ===")
        curve = ch04.main(chapter_argv + ["--lr", lr, "--warmup-steps", warmup, "--skip-lstm"])["gpt2"]
        best, final = best_and_final(curve)
        # the first evaluation shows an early blow-up that the rest of the run may hide
        rows.append(dict(lr=float(lr), warmup=int(warmup), first_ppl=curve[1]["ppl"], first_step=curve[1]["step"],
                         best_ppl=best, final_ppl=final, curve=[(r["step"], r["ppl"]) for r in curve]))
    print_table(rows, [("peak lr", "lr", "{:g}"), ("warmup", "warmup", "{}"), ("at step", "first_step", "{}"),
                       ("val ppl then", "first_ppl", "{:.1f}"), ("best val ppl", "best_ppl", "{:.1f}"),
                       ("final val ppl", "final_ppl", "{:.1f}")])
    print(f"(before fine-tuning: perplexity {curve[0]['ppl']:.1f})")
    save_rows(rows, out_dir, "exercise_lr_warmup")
    return rows


if __name__ == "__main__":
    main()
