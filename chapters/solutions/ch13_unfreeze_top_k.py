"""Chapter 13, exercise 3: between the frozen encoder and full fine-tuning. Train the head alone (k = 0), then the
top k encoder layers with it, then everything; SST-2 accuracy against trainable parameters and training time.

    python -m chapters.solutions.ch13_unfreeze_top_k --data-dir ../shared/data --k 0,1,2,6,full
"""
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from a clone, too

from chapters import ch13_language_understanding as ch13
from chapters.solutions import CH13_SMOKE, ch13_sst2_setup, print_table, save_rows, solution_parser, split_argv
from nanoft.heads import freeze_encoder


def build_parser():
    p = solution_parser(__doc__, "ch13_language_understanding.py", "e.g. --head-lr, the lr of k = 0")
    p.add_argument("--k", default="0,1,2,6,full",
                   help="top encoder layers trained with the head; 'full' = no freezing at all (embeddings too)")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="lr of every run with k > 0 (the middle of the chapter's sweep); k = 0 uses --head-lr")
    return p


def main(argv=None):
    own, chapter_argv = split_argv(build_parser(), argv, CH13_SMOKE)
    args, tok, encoder, sst2, steps = ch13_sst2_setup(chapter_argv)
    rows = []
    for k in own.k.split(","):
        ch13.seed_everything(args.seed)  # the same head init and data order for every k
        model = ch13.sst2_model(copy.deepcopy(encoder), args)
        if k != "full":
            freeze_encoder(model, unfreeze_top_k=int(k))  # k = 0: the chapter's frozen baseline
        lr = args.head_lr if k == "0" else own.lr  # a lone linear head takes larger steps than pretrained layers
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"\nSST-2, top k = {k} layers trained: {trainable:,} trainable parameters, lr {lr:g}, {steps} steps")
        seconds, result = ch13.fine_tune_on_sst2(model, sst2, args, lr, steps)
        rows.append(dict(k=k, trainable=trainable, lr=lr, val_acc=result.best_metric,
                         dev_acc=ch13.sst2_accuracy(model, sst2["dev"]), seconds=seconds))
    print_table(rows, [("top k", "k", "{}"), ("trainable", "trainable", "{:,}"), ("lr", "lr", "{:g}"),
                       ("val acc", "val_acc", "{:.1%}"), ("dev acc", "dev_acc", "{:.1%}"),
                       ("seconds", "seconds", "{:.0f}")])
    print(f"({sst2['label']}; the encoder has {len(encoder.layers)} layers and "
          f"{encoder.num_parameters():,} parameters)")
    save_rows(rows, args.out_dir, "exercise_unfreeze_top_k")
    return rows


if __name__ == "__main__":
    main()
