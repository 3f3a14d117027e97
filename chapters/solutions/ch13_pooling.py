"""Chapter 13, exercise 2: [CLS] pooling or mean pooling? Each pooling with the whole encoder fine-tuned, and with
the encoder frozen (only the head trained, on sentence vectors computed once), on the same SST-2 sentences and
head init.

    python -m chapters.solutions.ch13_pooling --data-dir ../shared/data
    python -m chapters.solutions.ch13_pooling --data-dir ../shared/data --steps 600 --sst2-train 0   # the chapter's
"""
import copy

from .ch13_common import base_parser, note_sample, parse_flags, start, timed
from nanoft import seed_everything
from nanoft.recipes.classification import (evaluate_accuracy, fine_tune_classifier, fine_tune_frozen, load_sst2,
                                   sentence_classifier)
from nanoft.cli.flags import positive_float, positive_int, run_main
from nanoft.cli.report import print_table, save_rows


def build_parser():
    p = base_parser("ch13_pooling", __doc__, steps=200)
    p.add_argument("--head-lr", type=positive_float, default=1e-3, help="lr of the frozen runs (only a head learns)")
    p.add_argument("--frozen-steps", type=positive_int, default=2000,
                   help="steps of the frozen runs' head, on the cached sentence vectors")
    p.add_argument("--frozen-batch-size", type=positive_int, default=256, help="sentence vectors per frozen step")
    return p


def main(argv=None):
    args = parse_flags(build_parser(), argv, smoke=dict(frozen_steps=4, frozen_batch_size=16))
    run, _, tok, encoder = start(args)
    sst2 = load_sst2(tok, args.max_len, args.sst2_train, args.sst2_val, args.sst2_dev, args.seed, args.data_dir)
    print(f"SST-2: {len(sst2['train']):,} training sentences, {len(sst2['val'])} for validation, "
          f"{len(sst2['dev'])} dev")
    rows = []
    for frozen in (False, True):
        for pooling in ("cls", "mean"):
            seed_everything(args.seed)  # the same head init for every run
            model = sentence_classifier(copy.deepcopy(encoder), pooling=pooling)
            if frozen:
                what, lr, steps = "encoder frozen, head only", args.head_lr, args.frozen_steps
                cfg = run.config(steps, lr, min(args.frozen_batch_size, len(sst2["train"])))
                result, seconds = timed(fine_tune_frozen, model, sst2["train"], sst2["val"], cfg)
            else:
                what, lr, steps = "full fine-tuning", args.lr, args.steps
                cfg = run.config(steps, lr, args.batch_size, group_by_length=True)
                result, seconds = timed(fine_tune_classifier, model, sst2["train"], sst2["val"], cfg)
            print(f"SST-2, {pooling} pooling, {what}: lr {lr:g}, {steps} steps -> best validation accuracy "
                  f"{result.best_metric:.1f}% at step {result.best_step}; {seconds:.0f} s")
            rows.append(dict(training=what, pooling=pooling, lr=lr, steps=steps, val_acc=result.best_metric,
                             dev_acc=evaluate_accuracy(model, sst2["dev"]), seconds=seconds))
            save_rows(rows, args.out_dir, "exercise_pooling")  # on disk after every run: a Ctrl-C keeps them
    print_table(rows, [("training", "training", "{}"), ("pooling", "pooling", "{}"), ("lr", "lr", "{:g}"),
                       ("steps", "steps", "{}"), ("val acc", "val_acc", "{:.1f}%"), ("dev acc", "dev_acc", "{:.1f}%"),
                       ("seconds", "seconds", "{:.0f}")])
    print(f"({sst2['label']}; frozen: each sentence's vector is computed once, then only the head trains on them)")
    note_sample(sst2)
    print(f"Written: {save_rows(rows, args.out_dir, 'exercise_pooling')}")
    return rows


if __name__ == "__main__":
    run_main(main)
