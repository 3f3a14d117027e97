"""Chapter 13, exercise 2: [CLS] pooling or mean pooling? Each pooling with the whole encoder fine-tuned, and with
the encoder frozen (only the head trained), on the same SST-2 sentences, steps and head init.

    python -m chapters.solutions.ch13_pooling --data-dir ../shared/data
"""
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from a clone, too

from chapters import ch13_language_understanding as ch13
from chapters.solutions import CH13_SMOKE, ch13_sst2_setup, print_table, save_rows, solution_parser, split_argv
from nanoft.heads import freeze_encoder


def build_parser():
    p = solution_parser(__doc__, "ch13_language_understanding.py", "e.g. --head-lr, the frozen runs' lr")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="lr of full fine-tuning (the middle of the chapter's sweep; pass its winner)")
    return p


def main(argv=None):
    own, chapter_argv = split_argv(build_parser(), argv, CH13_SMOKE)
    args, tok, encoder, sst2, steps = ch13_sst2_setup(chapter_argv)
    rows = []
    for frozen in (False, True):
        for pooling in ("cls", "mean"):
            lr = args.head_lr if frozen else own.lr
            what = "encoder frozen, head only" if frozen else "full fine-tuning"
            print(f"\nSST-2, {pooling} pooling, {what}: lr {lr:g}, {steps} steps")
            args.pooling = pooling  # read by ch13.sst2_model when it builds the head
            ch13.seed_everything(args.seed)
            model = ch13.sst2_model(copy.deepcopy(encoder), args)
            if frozen:
                freeze_encoder(model)
            seconds, result = ch13.fine_tune_on_sst2(model, sst2, args, lr, steps)
            rows.append(dict(training=what, pooling=pooling, lr=lr, val_acc=result.best_metric,
                             dev_acc=ch13.sst2_accuracy(model, sst2["dev"]), seconds=seconds))
    print_table(rows, [("training", "training", "{}"), ("pooling", "pooling", "{}"), ("lr", "lr", "{:g}"),
                       ("val acc", "val_acc", "{:.1%}"), ("dev acc", "dev_acc", "{:.1%}"),
                       ("seconds", "seconds", "{:.0f}")])
    print(f"({sst2['label']})")
    save_rows(rows, args.out_dir, "exercise_pooling")
    return rows


if __name__ == "__main__":
    main()
