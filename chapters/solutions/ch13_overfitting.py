"""Chapter 13, exercise 5: Sir Kay's advice, dropout and weight decay, put to the test. Fine-tune on a small SST-2
subset for many epochs with no regularization, with the chapter's, and with strong regularization, and follow the
loss on the training sentences and on the validation sentences: where they part, the model is overfitting.

    python -m chapters.solutions.ch13_overfitting --data-dir ../shared/data
"""
import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ch13_common import base_parser, note_sample, parse_flags, start, timed
from nanoft import seed_everything
from nanoft.training.batching import Collate
from nanoft.recipes.classification import evaluate_accuracy, load_sst2, predict_logits, sentence_classifier
from nanoft.cli.flags import fraction, nonneg_float, run_main
from nanoft.cli.report import print_table, save_rows
from nanoft.training.train import train


def build_parser():
    # 256 sentences = 8 batches of 32, so 120 steps are 15 epochs; 12 evaluations draw the curves
    p = base_parser("ch13_overfitting", __doc__, sst2_train=256, steps=120, evals=12)
    p.add_argument("--dropout", type=fraction, default=0.1,
                   help="'chapter': the head's dropout (the encoder keeps its checkpoint's 0.1)")
    p.add_argument("--strong-dropout", type=fraction, default=0.3,
                   help="'strong': dropout everywhere (encoder hidden states, attention, head)")
    p.add_argument("--strong-weight-decay", type=nonneg_float, default=0.1, help="'strong': AdamW weight decay")
    return p


def set_dropout(model, p):
    """Every dropout of the model to p: nn.Dropout modules (hidden states, the head) and BERT's attention dropout."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        if hasattr(m, "attn_dropout"):  # nanoft.models.bert.SelfAttention passes it to the attention kernel
            m.attn_dropout = p
    return model


def mean_loss(model, features):
    """Cross-entropy averaged over sentences, in eval mode (no dropout): train and val measured the same way."""
    logits = predict_logits(model, features)  # (N, 2), in the features' order
    return F.cross_entropy(logits, torch.tensor([f["labels"] for f in features])).item()


def plot(curves, path):
    try:
        from matplotlib.figure import Figure  # Figure, not pyplot: no GUI backend needed
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot")
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for (name, points), color in zip(curves.items(), ("C0", "C1", "C2", "C3")):
        steps = [p["step"] for p in points]
        ax.plot(steps, [p["train_loss"] for p in points], "--", color=color, label=f"{name}: train")
        ax.plot(steps, [p["val_loss"] for p in points], "o-", color=color, label=f"{name}: validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (eval mode)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def main(argv=None):
    args = parse_flags(build_parser(), argv, smoke=dict(sst2_train=16, steps=30, evals=5))
    run, _, tok, encoder = start(args)
    sst2 = load_sst2(tok, args.max_len, args.sst2_train, args.sst2_val, args.sst2_dev, args.seed, args.data_dir)
    batch_size = min(args.batch_size, len(sst2["train"]))
    settings = [("none", 0.0, 0.0), ("chapter", args.dropout, args.weight_decay),
                ("strong", args.strong_dropout, args.strong_weight_decay)]

    def evaluate(model):  # both losses and the accuracy, every --steps/--evals steps
        return {"val_acc": evaluate_accuracy(model, sst2["val"]), "val_loss": mean_loss(model, sst2["val"]),
                "train_loss": mean_loss(model, sst2["train"])}

    rows, curves = [], {}
    for name, dropout, weight_decay in settings:
        print(f"\nSST-2, regularization '{name}': dropout {dropout:g}, weight decay {weight_decay:g}, "
              f"{args.steps} steps on {len(sst2['train'])} sentences, lr {args.lr:g}")
        seed_everything(args.seed)  # the same head init and data order for every setting
        model = sentence_classifier(copy.deepcopy(encoder), task="sst2")
        if name != "chapter":
            set_dropout(model, dropout)  # everywhere; "chapter" keeps the checkpoint's encoder dropout
        else:
            model.heads["sst2"].dropout.p = dropout
        # no early stopping (patience None): the curves run to the end; the weights of the best val_acc are kept
        cfg = run.config(args.steps, args.lr, batch_size, weight_decay=weight_decay, metric="val_acc", mode="max",
                         restore_best=True)
        result, seconds = timed(train, model, sst2["train"], lambda m, b: m("sst2", b)["loss"], cfg,
                                       eval_fn=evaluate, collate_fn=Collate())
        curves[name] = [{k: r[k] for k in ("step", "train_loss", "val_loss", "val_acc")}
                        for r in result.history if r["type"] == "eval"]
        last, lowest = curves[name][-1], min(curves[name], key=lambda r: r["val_loss"])
        rows.append(dict(setting=name, dropout=dropout, weight_decay=weight_decay, train_loss=last["train_loss"],
                         val_loss=last["val_loss"], min_val_loss=lowest["val_loss"], min_val_step=lowest["step"],
                         best_val_acc=result.best_metric, dev_acc=evaluate_accuracy(model, sst2["dev"]),
                         seconds=seconds, curve=curves[name]))
        save_rows(rows, args.out_dir, "exercise_overfitting")  # on disk after every run: a Ctrl-C keeps them
        print_table(curves[name], [("step", "step", "{}"), ("train loss", "train_loss", "{:.3f}"),
                                   ("val loss", "val_loss", "{:.3f}"), ("val acc", "val_acc", "{:.1f}%")])
    print_table(rows, [("regularization", "setting", "{}"), ("dropout", "dropout", "{:g}"),
                       ("wd", "weight_decay", "{:g}"), ("final train loss", "train_loss", "{:.3f}"),
                       ("final val loss", "val_loss", "{:.3f}"), ("lowest val loss", "min_val_loss", "{:.3f}"),
                       ("at step", "min_val_step", "{}"), ("best val acc", "best_val_acc", "{:.1f}%"),
                       ("dev acc", "dev_acc", "{:.1f}%"), ("seconds", "seconds", "{:.0f}")])
    print(f"(losses in eval mode, so dropout does not inflate the training loss; dev acc: the weights of the best "
          f"validation accuracy, as in the chapter; {sst2['label']})")
    note_sample(sst2)
    paths = [save_rows(rows, args.out_dir, "exercise_overfitting"),
             plot(curves, os.path.join(args.out_dir, "exercise_overfitting.png"))]
    print("Written: " + ", ".join(p for p in paths if p))
    return rows


if __name__ == "__main__":
    run_main(main)
