"""Chapter 4, exercise 2: does fine-tuning have to touch every weight? Fine-tune all of GPT-2, then only its last
block (and the final LayerNorm), with everything else frozen; perplexity, trainable parameters and time per step.

    python -m chapters.solutions.ch04_freeze_blocks --data-dir ../shared/data
    python -m chapters.solutions.ch04_freeze_blocks --data-dir ../shared/data --blocks all,2,1,0
"""
from .ch04_common import chapter4_args, chapter4_parser, chapter4_setup
from nanoft.cli.report import print_table, save_rows
from nanoft.recipes.causal_lm import best_and_final, fine_tune_lm
from nanoft.training.freeze import train_last_blocks
from nanoft.cli.flags import nonneg_int, run_main


def block_settings(text):
    """ "all,1,0" -> ["all", 1, 0]: 'all' or a count of last blocks >= 0."""
    return [k.strip() if k.strip() == "all" else nonneg_int(k) for k in text.split(",")]


def build_parser():
    p = chapter4_parser("ch04_freeze_blocks", __doc__)
    p.add_argument("--blocks", type=block_settings, default="all,1",
                   help="comma-separated: 'all' (the chapter's full fine-tuning) or K, the last K blocks trained "
                        "(0: the final LayerNorm alone)")
    return p


def main(argv=None):
    args = chapter4_args(build_parser(), argv)
    setup = chapter4_setup(args)
    rows = []
    for k in args.blocks:
        print(f"\n=== GPT-2 fine-tuned with {'every block' if k == 'all' else f'only the last {k} block(s)'} ===")
        lm, cfg = setup.gpt2()
        trainable = lm.model.num_parameters() if k == "all" else train_last_blocks(lm.model, k)
        task = setup.task(lm.tokenizer)
        curve = fine_tune_lm(lm.model, task.train, task.val, cfg, name="GPT-2").curve
        best, final = best_and_final(curve)
        rows.append(dict(blocks=k, trainable=trainable, best_ppl=best, final_ppl=final,
                         seconds=curve[-1]["seconds"], s_per_step=curve[-1]["seconds"] / curve[-1]["step"]))
        save_rows(rows, setup.out_dir, "exercise_freeze_blocks")  # on disk after every run: a Ctrl-C keeps them
    print_table(rows, [("blocks trained", "blocks", "{}"), ("trainable", "trainable", "{:,}"),
                       ("best val ppl", "best_ppl", "{:.1f}"), ("final val ppl", "final_ppl", "{:.1f}"),
                       ("training s", "seconds", "{:.0f}"), ("s / step", "s_per_step", "{:.2f}")])
    print(f"Written: {save_rows(rows, setup.out_dir, 'exercise_freeze_blocks')}")
    return rows


if __name__ == "__main__":
    run_main(main)
