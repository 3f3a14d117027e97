"""Chapter 4, exercise 4: at which amount of task data does training from scratch catch up? GPT-2 and the LSTM on
the first N training tokens of Tiny Shakespeare, for several N, with the chapter's steps (a small N is repeated
over many epochs); validation is the same held-out tail every time.

    python -m chapters.solutions.ch04_data_size --data-dir ../shared/data
    python -m chapters.solutions.ch04_data_size --data-dir ../shared/data --train-tokens 5000,20000,80000,0
"""
from dataclasses import replace

from .ch04_common import chapter4_args, chapter4_parser, chapter4_setup
from nanoft.cli.report import print_table, save_rows
from nanoft.recipes.causal_lm import best_and_final, fine_tune_lm
from nanoft.cli.flags import list_of, nonneg_int, run_main


def build_parser():
    p = chapter4_parser("ch04_data_size", __doc__)
    p.add_argument("--train-tokens", type=list_of(nonneg_int, "20000,0"), default="20000,80000,0",
                   help="comma-separated training set sizes in tokens (0 = all, the chapter's own run)")
    return p


def main(argv=None):
    args = chapter4_args(build_parser(), argv)
    setup = chapter4_setup(args)
    rows = []
    for n in args.train_tokens:
        print(f"\n=== Training on {'all the' if n == 0 else f'the first {n:,}'} training tokens ===")
        lm, cfg = setup.gpt2()
        task = setup.task(lm.tokenizer, train_tokens=n)
        curves = {"gpt2": fine_tune_lm(lm.model, task.train, task.val, cfg, name="GPT-2").curve}
        lstm = setup.new_lstm(lm.tokenizer.vocab_size)
        curves["lstm"] = fine_tune_lm(lstm, task.train, task.val, replace(cfg, lr=setup.lstm_lr), name="LSTM").curve
        row = dict(train_tokens=n or "all", epochs=curves["gpt2"][-1]["tokens"] / len(task.train_ids))
        for name, curve in curves.items():
            row[f"{name}_best"], row[f"{name}_final"] = best_and_final(curve)
        # best against best: on a small N a model's last evaluation may be deep into overfitting, and the best
        # one is what early stopping would keep
        row["ratio"] = row["lstm_best"] / row["gpt2_best"]
        rows.append(row)
        save_rows(rows, setup.out_dir, "exercise_data_size")  # on disk after every run: a Ctrl-C keeps them
    print_table(rows, [("train tokens", "train_tokens", "{}"), ("epochs", "epochs", "{:.1f}"),
                       ("GPT-2 best", "gpt2_best", "{:.1f}"), ("GPT-2 final", "gpt2_final", "{:.1f}"),
                       ("LSTM best", "lstm_best", "{:.1f}"), ("LSTM final", "lstm_final", "{:.1f}"),
                       ("LSTM / GPT-2 (best)", "ratio", "{:.2f}")])
    print("(validation perplexity; 'best' is the lowest of the evaluations, 'final' the last)")
    print(f"Written: {save_rows(rows, setup.out_dir, 'exercise_data_size')}")
    return rows


if __name__ == "__main__":
    run_main(main)
