"""Chapter 13, exercise 3: between the frozen encoder and full fine-tuning. Train the head alone (k = 0), then the
top k encoder layers with it, then everything; SST-2 accuracy against trainable parameters and training time, every
run with the same steps, batches and head init.

    python -m chapters.solutions.ch13_unfreeze_top_k --data-dir ../shared/data --k 0,1,2,6,full
"""
import argparse
import copy

from .ch13_common import base_parser, note_sample, parse_flags, start, timed
from nanoft import seed_everything
from nanoft.recipes.classification import evaluate_accuracy, fine_tune_classifier, load_sst2, sentence_classifier
from nanoft.cli.flags import positive_float, run_main
from nanoft.training.freeze import freeze_encoder
from nanoft.cli.report import print_table, save_rows


def k_list(text):
    """Comma-separated layer counts (integers >= 0) or 'full', e.g. "0,1,2,6,full"."""
    ks = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in ks if k != "full" and not k.isdigit()]
    if not ks or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated layer counts (0, 1, ...) or 'full'")
    return ks


def build_parser():
    p = base_parser("ch13_unfreeze_top_k", __doc__, steps=100)
    p.add_argument("--k", type=k_list, default="0,1,2,6,full",
                   help="top encoder layers trained with the head; 'full' = no freezing at all (embeddings too)")
    p.add_argument("--head-lr", type=positive_float, default=1e-3,
                   help="lr of k = 0 (a lone head takes larger steps than pretrained layers); k > 0 uses --lr")
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                   help="the head's input: BERT's pooler on [CLS] (the chapter's full fine-tuning) or the masked mean "
                        "(the pooler is then unused, and stays frozen)")
    return p


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main(argv=None):
    args = parse_flags(build_parser(), argv)
    run, _, tok, encoder = start(args)
    n_layers = len(encoder.layers)
    too_deep = [k for k in args.k if k != "full" and int(k) > n_layers]
    if too_deep:
        raise ValueError(f"--k {','.join(too_deep)}: the encoder has {n_layers} layers; pick 0..{n_layers} or 'full'")
    sst2 = load_sst2(tok, args.max_len, args.sst2_train, args.sst2_val, args.sst2_dev, args.seed, args.data_dir)
    print(f"SST-2: {len(sst2['train']):,} training sentences, {len(sst2['val'])} for validation, "
          f"{len(sst2['dev'])} dev")
    rows = []
    for k in args.k:
        seed_everything(args.seed)  # the same head init and data order for every k
        model = sentence_classifier(copy.deepcopy(encoder), pooling=args.pooling)
        if k != "full":
            freeze_encoder(model, unfreeze_top_k=int(k))  # k = 0: the head alone
            if args.pooling == "mean":
                model.encoder.pooler.requires_grad_(False)  # mean pooling never calls the pooler
        lr = args.head_lr if k == "0" else args.lr
        n = trainable(model)
        print(f"\nSST-2, top k = {k} layers trained: {n:,} trainable parameters, lr {lr:g}, {args.steps} steps")
        result, seconds = timed(fine_tune_classifier, model, sst2["train"], sst2["val"],
                                       run.config(args.steps, lr, args.batch_size, group_by_length=True))
        rows.append(dict(k=k, trainable=n, lr=lr, val_acc=result.best_metric,
                         dev_acc=evaluate_accuracy(model, sst2["dev"]), seconds=seconds))
        save_rows(rows, args.out_dir, "exercise_unfreeze_top_k")  # on disk after every run: a Ctrl-C keeps them
    print_table(rows, [("top k", "k", "{}"), ("trainable", "trainable", "{:,}"), ("lr", "lr", "{:g}"),
                       ("val acc", "val_acc", "{:.1f}%"), ("dev acc", "dev_acc", "{:.1f}%"),
                       ("seconds", "seconds", "{:.0f}")])
    print(f"({sst2['label']}; {args.pooling} pooling; the encoder has {n_layers} layers and "
          f"{encoder.num_parameters():,} parameters)")
    note_sample(sst2)
    print(f"Written: {save_rows(rows, args.out_dir, 'exercise_unfreeze_top_k')}")
    return rows


if __name__ == "__main__":
    run_main(main)
