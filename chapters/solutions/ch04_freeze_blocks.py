"""Chapter 4, exercise 2: does fine-tuning have to touch every weight? Fine-tune all of GPT-2, then only its last
block (and the final LayerNorm), with everything else frozen; perplexity, trainable parameters and time per step.

    python -m chapters.solutions.ch04_freeze_blocks --data-dir ../shared/data
    python -m chapters.solutions.ch04_freeze_blocks --data-dir ../shared/data --blocks all,2,1,0
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from a clone, too

from chapters import ch04_finetune_vs_scratch as ch04
from chapters.solutions import CH04_SMOKE, best_and_final, print_table, save_rows, solution_parser, split_argv


def build_parser():
    p = solution_parser(__doc__, "ch04_finetune_vs_scratch.py")
    p.add_argument("--blocks", default="all,1",
                   help="comma-separated: 'all' (the chapter's full fine-tuning) or K, the last K blocks trained")
    return p


def main(argv=None):
    own, chapter_argv = split_argv(build_parser(), argv, CH04_SMOKE)
    out_dir = ch04.build_parser().parse_args(chapter_argv).out_dir
    rows = []
    for k in own.blocks.split(","):
        print(f"\n=== GPT-2 fine-tuned with {'every block' if k == 'all' else f'only the last {k} block(s)'} ===")
        flags = [] if k == "all" else ["--train-last-blocks", k]
        result = ch04.main(chapter_argv + flags + ["--skip-lstm"])
        curve = result["gpt2"]
        best, final = best_and_final(curve)
        rows.append(dict(blocks=k, trainable=result["gpt2_trainable"], best_ppl=best, final_ppl=final,
                         seconds=curve[-1]["seconds"], s_per_step=curve[-1]["seconds"] / curve[-1]["step"]))
    print_table(rows, [("blocks trained", "blocks", "{}"), ("trainable", "trainable", "{:,}"),
                       ("best val ppl", "best_ppl", "{:.1f}"), ("final val ppl", "final_ppl", "{:.1f}"),
                       ("training s", "seconds", "{:.0f}"), ("s / step", "s_per_step", "{:.2f}")])
    save_rows(rows, out_dir, "exercise_freeze_blocks")
    return rows


if __name__ == "__main__":
    main()
