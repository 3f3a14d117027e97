"""Chapter 13, exercise 1: how much task-adaptive pre-training pays? 0, 1 and 3 epochs of masked LM on SST-2's
training sentences, each followed by exactly the same fine-tuning (lr, steps, batches, head init).

    python -m chapters.solutions.ch13_tapt_epochs --data-dir ../shared/data
    python -m chapters.solutions.ch13_tapt_epochs --data-dir ../shared/data --tapt-epochs 0,1,3 --lr 1e-4
"""
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from a clone, too

from chapters import ch13_language_understanding as ch13
from chapters.solutions import CH13_SMOKE, ch13_sst2_setup, print_table, save_rows, solution_parser, split_argv


def build_parser():
    p = solution_parser(__doc__, "ch13_language_understanding.py")
    p.add_argument("--tapt-epochs", default="0,1,3", help="masked-LM passes over the SST-2 training sentences")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="fine-tuning lr for every run (the middle of the chapter's sweep; pass its winner)")
    return p


def main(argv=None):
    own, chapter_argv = split_argv(build_parser(), argv, CH13_SMOKE)
    args, tok, encoder, sst2, steps = ch13_sst2_setup(chapter_argv)
    steps_per_epoch = max(1, len(sst2["train"]) // args.batch_size)
    rows = []
    for epochs in [int(e) for e in own.tapt_epochs.split(",")]:
        if epochs == 0:
            adapted, mlm_seconds = encoder, 0.0  # the pretrained encoder as it is: the chapter's "no TAPT"
        else:
            args.tapt_steps = epochs * steps_per_epoch
            adapted, mlm_seconds = ch13.task_adaptive_pretraining(args, tok, sst2)
        print(f"Fine-tuning after {epochs} epoch(s) of TAPT: lr {own.lr:g}, {steps} steps")
        ch13.seed_everything(args.seed)  # the same head init and data order for every run
        model = ch13.sst2_model(copy.deepcopy(adapted), args)
        seconds, result = ch13.fine_tune_on_sst2(model, sst2, args, own.lr, steps)
        rows.append(dict(tapt_epochs=epochs, mlm_steps=epochs * steps_per_epoch, val_acc=result.best_metric,
                         dev_acc=ch13.sst2_accuracy(model, sst2["dev"]), mlm_seconds=mlm_seconds,
                         finetune_seconds=seconds))
    print_table(rows, [("TAPT epochs", "tapt_epochs", "{}"), ("MLM steps", "mlm_steps", "{}"),
                       ("val acc", "val_acc", "{:.1%}"), ("dev acc", "dev_acc", "{:.1%}"),
                       ("MLM s", "mlm_seconds", "{:.0f}"), ("fine-tune s", "finetune_seconds", "{:.0f}")])
    print(f"({sst2['label']}; the masked-LM loss before and after each TAPT run is printed above)")
    save_rows(rows, args.out_dir, "exercise_tapt_epochs")
    return rows


if __name__ == "__main__":
    main()
