"""Chapter 13, exercise 5: Sir Kay's advice, dropout and weight decay, put to the test. Fine-tune on a small SST-2
subset for many epochs with no regularization, with the chapter's, and with strong regularization, and follow the
loss on the training sentences and on the validation sentences: where they part, the model is overfitting.

    python -m chapters.solutions.ch13_overfitting --data-dir ../shared/data
"""
import copy
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from a clone, too

from chapters import ch13_language_understanding as ch13
from chapters.solutions import CH13_SMOKE, ch13_sst2_setup, print_table, save_rows, solution_parser, split_argv
from nanoft.sst2 import Collate, eval_batches

# 256 sentences = 8 batches, so 120 steps are 15 epochs; 12 evaluations draw the curves; no early stopping
DEFAULTS = ["--sst2-train", "256", "--sst2-steps", "120", "--evals", "12", "--patience", "1000"]
SMOKE = CH13_SMOKE + ["--sst2-train", "16", "--sst2-steps", "30", "--evals", "5"]


def build_parser():
    p = solution_parser(__doc__, "ch13_language_understanding.py")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning lr (the middle of the chapter's sweep)")
    p.add_argument("--strong-dropout", type=float, default=0.3,
                   help="'strong': dropout everywhere (encoder hidden states, attention, head)")
    p.add_argument("--strong-weight-decay", type=float, default=0.1, help="'strong': AdamW weight decay")
    return p


def set_dropout(model, p):
    """Every dropout of the model to p: nn.Dropout modules (hidden states, the head) and BERT's attention dropout."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        if hasattr(m, "attn_dropout"):  # nanoft.bert.SelfAttention passes it to scaled_dot_product_attention
            m.attn_dropout = p
    return model


@torch.no_grad()
def mean_loss(model, features):
    """Cross-entropy averaged over sentences, in eval mode (no dropout): train and val measured the same way."""
    total, n = 0.0, 0
    for batch in eval_batches(features):
        batch = {k: v.to(ch13.device_of(model)) for k, v in batch.items()}
        total += model("sst2", batch)["loss"].item() * len(batch["labels"])
        n += len(batch["labels"])
    return total / n


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
    ax.set_ylabel("cross-entropy")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"Plot: {path}")
    return path


def main(argv=None):
    own, chapter_argv = split_argv(build_parser(), argv, SMOKE, DEFAULTS)
    args, tok, encoder, sst2, steps = ch13_sst2_setup(chapter_argv)
    settings = [("none", 0.0, 0.0), ("chapter", args.dropout, args.weight_decay),
                ("strong", own.strong_dropout, own.strong_weight_decay)]

    def eval_fn(model):
        return {"val_acc": ch13.sst2_accuracy(model, sst2["val"]), "val_loss": mean_loss(model, sst2["val"]),
                "train_loss": mean_loss(model, sst2["train"])}

    rows, curves = [], {}
    for name, dropout, weight_decay in settings:
        print(f"\nSST-2, regularization '{name}': dropout {dropout:g}, weight decay {weight_decay:g}, "
              f"{steps} steps on {len(sst2['train'])} sentences, lr {own.lr:g}")
        args.weight_decay = weight_decay  # read by ch13.fine_tune
        ch13.seed_everything(args.seed)
        model = set_dropout(ch13.sst2_model(copy.deepcopy(encoder), args), dropout)
        seconds, result = ch13.fine_tune(model, sst2["train"], ch13.task_loss("sst2"), eval_fn, args, own.lr, steps,
                                         args.batch_size, Collate(), "val_acc")
        curves[name] = [r for r in result.history if r["type"] == "eval"]
        last, lowest = curves[name][-1], min(curves[name], key=lambda r: r["val_loss"])
        rows.append(dict(setting=name, dropout=dropout, weight_decay=weight_decay, train_loss=last["train_loss"],
                         val_loss=last["val_loss"], min_val_loss=lowest["val_loss"], min_val_step=lowest["step"],
                         best_val_acc=result.best_metric, dev_acc=ch13.sst2_accuracy(model, sst2["dev"]),
                         seconds=seconds, curve=curves[name]))
        print_table(curves[name], [("step", "step", "{}"), ("train loss", "train_loss", "{:.3f}"),
                                   ("val loss", "val_loss", "{:.3f}"), ("val acc", "val_acc", "{:.1%}")])
    print_table(rows, [("regularization", "setting", "{}"), ("dropout", "dropout", "{:g}"),
                       ("wd", "weight_decay", "{:g}"), ("final train loss", "train_loss", "{:.3f}"),
                       ("final val loss", "val_loss", "{:.3f}"), ("lowest val loss", "min_val_loss", "{:.3f}"),
                       ("at step", "min_val_step", "{}"), ("best val acc", "best_val_acc", "{:.1%}"),
                       ("dev acc", "dev_acc", "{:.1%}"), ("seconds", "seconds", "{:.0f}")])
    print(f"(losses in eval mode, so dropout does not inflate the training loss; dev acc: the weights of the best "
          f"validation accuracy, as in the chapter; {sst2['label']})")
    save_rows(rows, args.out_dir, "exercise_overfitting")
    plot(curves, str(Path(args.out_dir) / "exercise_overfitting.png"))
    return rows


if __name__ == "__main__":
    main()
