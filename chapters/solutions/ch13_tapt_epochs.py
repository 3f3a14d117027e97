"""Chapter 13, exercise 1: how much task-adaptive pre-training is enough? 0, 1 and 3 epochs of masked LM on a pool
of unlabelled SST-2 training sentences, each followed by exactly the same fine-tuning on a few labelled sentences of
that pool (lr, steps, batches, head init), as in the chapter's TAPT comparison.

    python -m chapters.solutions.ch13_tapt_epochs --data-dir ../shared/data
    python -m chapters.solutions.ch13_tapt_epochs --data-dir ../shared/data --tapt-epochs 0,1,3 --seeds 3
"""
import copy
import statistics

from .ch13_common import base_parser, note_sample, parse_flags, start, timed
from nanoft import BertForMaskedLM, seed_everything
from nanoft.recipes.classification import evaluate_accuracy, fine_tune_classifier, load_sst2, sentence_classifier, subset
from nanoft.cli.flags import list_of, nonneg_int, positive_float, positive_int, run_main
from nanoft.recipes.mlm import continue_pretraining
from nanoft.cli.report import print_table, save_rows


def build_parser():
    p = base_parser("ch13_tapt_epochs", __doc__, steps=150)
    p.add_argument("--tapt-epochs", type=list_of(nonneg_int, "0,1,3"), default="0,1,3",
                   help="masked-LM passes over the unlabelled pool (--sst2-train sentences, labels unused)")
    p.add_argument("--tapt-labels", type=positive_int, default=1000,
                   help="labelled sentences of the pool that the fine-tuning sees (TAPT helps where labels are few)")
    p.add_argument("--head-steps", type=nonneg_int, default=100,
                   help="masked-LM steps that train the fresh MLM head alone, encoder frozen, before each TAPT run")
    p.add_argument("--tapt-lr", type=positive_float, default=1e-4, help="masked-LM lr")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="fine-tuning seeds (labelled subset, head init, data order) per TAPT setting: mean ± std")
    return p


def main(argv=None):
    args = parse_flags(build_parser(), argv, smoke=dict(tapt_labels=16, head_steps=2))
    run, model_dir, tok, encoder = start(args)
    sst2 = load_sst2(tok, args.max_len, args.sst2_train, args.sst2_val, args.sst2_dev, args.seed, args.data_dir)
    pool, val_ids = [f["input_ids"] for f in sst2["train"]], [f["input_ids"] for f in sst2["val"]]
    steps_per_epoch = max(1, len(pool) // args.batch_size)
    print(f"SST-2: an unlabelled pool of {len(pool):,} training sentences ({steps_per_epoch} masked-LM steps of "
          f"{args.batch_size} per epoch), {min(args.tapt_labels, len(pool)):,} of them labelled for fine-tuning, "
          f"{len(sst2['val'])} for validation, {len(sst2['dev'])} dev")
    rows = []
    for epochs in args.tapt_epochs:
        mlm_steps, before, after, mlm_seconds = epochs * steps_per_epoch, None, None, 0.0
        if epochs == 0:
            adapted = encoder  # the pretrained encoder as it is: "no TAPT"
        else:
            seed_everything(args.seed)  # the same fresh MLM head for every TAPT run
            mlm = BertForMaskedLM.from_pretrained(model_dir, notice=False)  # no MLM head in MiniLM: trained first
            out, mlm_seconds = timed(continue_pretraining, mlm, pool, val_ids, tok,
                                            run.config(mlm_steps, args.tapt_lr, args.batch_size,
                                                       group_by_length=True, eval_every=0),
                                            head_steps=args.head_steps, seed=args.seed)
            before, after, adapted = out.curve[0]["val_loss"], out.curve[-1]["val_loss"], mlm.bert.cpu()
            print(f"TAPT {epochs} epoch(s): {args.head_steps} head-only + {mlm_steps} masked-LM steps; validation "
                  f"masked-LM loss {before:.2f} -> {after:.2f}; {mlm_seconds:.0f} s")
        val_accs, dev_accs, seconds = [], [], 0.0
        for s in range(args.seeds):
            labelled = subset(sst2["train"], args.tapt_labels, seed=args.seed + s)
            seed_everything(args.seed + s)  # the same head init and data order for every TAPT setting
            model = sentence_classifier(copy.deepcopy(adapted))
            cfg = run.config(args.steps, args.lr, min(args.batch_size, len(labelled)), seed=args.seed + s)
            result, t = timed(fine_tune_classifier, model, labelled, sst2["val"], cfg)
            val_accs.append(result.best_metric)
            dev_accs.append(evaluate_accuracy(model, sst2["dev"]))
            seconds += t
        print(f"  fine-tuned on {len(labelled):,} labels, {args.steps} steps, lr {args.lr:g}: dev accuracy "
              + ", ".join(f"{a:.1f}%" for a in dev_accs))
        rows.append(dict(tapt_epochs=epochs, mlm_steps=mlm_steps, head_steps=args.head_steps if epochs else 0,
                         mlm_loss_before=before, mlm_loss_after=after, val_acc=statistics.mean(val_accs),
                         dev_acc=statistics.mean(dev_accs),
                         dev_std=statistics.stdev(dev_accs) if len(dev_accs) > 1 else None, dev_accs=dev_accs,
                         mlm_seconds=mlm_seconds, finetune_seconds=seconds))
        save_rows(rows, args.out_dir, "exercise_tapt_epochs")  # on disk after every run: a Ctrl-C keeps them
    print_table(rows, [("TAPT epochs", "tapt_epochs", "{}"), ("MLM steps", "mlm_steps", "{}"),
                       ("MLM loss before", "mlm_loss_before", "{:.2f}"), ("after", "mlm_loss_after", "{:.2f}"),
                       ("val acc", "val_acc", "{:.1f}%"), ("dev acc", "dev_acc", "{:.1f}%"),
                       ("± std", "dev_std", "{:.1f}"), ("MLM s", "mlm_seconds", "{:.0f}"),
                       ("fine-tune s", "finetune_seconds", "{:.0f}")])
    print(f"({sst2['label']}; accuracies are means over {args.seeds} fine-tuning seed(s); masked-LM losses on the "
          "validation sentences, with masks drawn once)")
    note_sample(sst2)
    print(f"Written: {save_rows(rows, args.out_dir, 'exercise_tapt_epochs')}")
    return rows


if __name__ == "__main__":
    run_main(main)
