"""Chapter 4, exercise 4: at which amount of task data does training from scratch catch up? GPT-2 and the LSTM on
the first N training tokens of Tiny Shakespeare, for several N, with the chapter's steps (a small N is repeated
over many epochs); validation is the same held-out tail every time.

    python -m chapters.solutions.ch04_data_size --data-dir ../shared/data
    python -m chapters.solutions.ch04_data_size --data-dir ../shared/data --train-tokens 5000,20000,80000,0
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from a clone, too

from chapters import ch04_finetune_vs_scratch as ch04
from chapters.solutions import CH04_SMOKE, best_and_final, print_table, save_rows, solution_parser, split_argv


def build_parser():
    p = solution_parser(__doc__, "ch04_finetune_vs_scratch.py")
    p.add_argument("--train-tokens", default="20000,80000,0",
                   help="comma-separated training set sizes in tokens (0 = all, the chapter's own run)")
    return p


def main(argv=None):
    own, chapter_argv = split_argv(build_parser(), argv, CH04_SMOKE)
    args = ch04.build_parser().parse_args(chapter_argv)
    rows = []
    for n in [int(x) for x in own.train_tokens.split(",")]:
        print(f"\n=== Training on {'all the' if n == 0 else f'the first {n:,}'} training tokens ===")
        out = str(Path(args.out_dir) / f"data-{n or 'all'}")
        result = ch04.main(chapter_argv + ["--train-tokens", str(n), "--out-dir", out])
        row = dict(train_tokens=n or "all", epochs=result["gpt2"][-1]["tokens"] / result["train_tokens"])
        for name in ("gpt2", "lstm"):
            row[f"{name}_best"], row[f"{name}_final"] = best_and_final(result[name])
        # best against best: on a small N a model's last evaluation may be deep into overfitting, and the best
        # one is what early stopping would keep
        row["ratio"] = row["lstm_best"] / row["gpt2_best"]
        rows.append(row)
    print_table(rows, [("train tokens", "train_tokens", "{}"), ("epochs", "epochs", "{:.1f}"),
                       ("GPT-2 best", "gpt2_best", "{:.1f}"), ("GPT-2 final", "gpt2_final", "{:.1f}"),
                       ("LSTM best", "lstm_best", "{:.1f}"), ("LSTM final", "lstm_final", "{:.1f}"),
                       ("LSTM / GPT-2 (best)", "ratio", "{:.2f}")])
    print("(validation perplexity; 'best' is the lowest of the evaluations, 'final' the last)")
    save_rows(rows, args.out_dir, "exercise_data_size")
    return rows


if __name__ == "__main__":
    main()
