"""Chapter 4, exercise 3: is the comparison fair in size? Find the LSTM depths and widths whose parameter count
matches the pretrained GPT-2's, then (with --train) train the matched LSTM against GPT-2 with the chapter's recipe.

    python -m chapters.solutions.ch04_lstm_size --data-dir ../shared/data              # sizes only: seconds
    python -m chapters.solutions.ch04_lstm_size --data-dir ../shared/data --train      # + the chapter, matched LSTM
"""
from dataclasses import replace

import torch

from .ch04_common import chapter4_args, chapter4_parser, chapter4_setup
from nanoft.cli.report import print_table, save_rows
from nanoft import LSTMConfig, LSTMLM
from nanoft.recipes.causal_lm import best_and_final, fine_tune_lm
from nanoft.cli.flags import list_of, positive_int, run_main


def build_parser():
    p = chapter4_parser("ch04_lstm_size", __doc__)
    p.add_argument("--layers", type=list_of(positive_int, "1,2"), default="1,2,3,4",
                   help="LSTM depths to size (embedding = hidden = the width found)")
    p.add_argument("--train", action="store_true",
                   help="then train the matched LSTM of depth --train-layers against GPT-2, fine-tuned again beside "
                        "it exactly as in the chapter")
    p.add_argument("--train-layers", type=positive_int, default=2, help="depth of the LSTM that --train trains")
    return p


def lstm_parameters(vocab_size, width, layers):
    """The chapter's LSTM (untied head) with embedding = hidden = width, counted without allocating it."""
    with torch.device("meta"):  # shapes only: a 50k-word LSTM of width 1,000 would take 400 MB for nothing
        lstm = LSTMLM(LSTMConfig(vocab_size=vocab_size, emb_dim=width, hidden_dim=width, n_layers=layers))
    return lstm.num_parameters()


def matching_width(vocab_size, layers, target):
    """The width whose LSTM count is closest to target (the count grows with the width: bisect)."""
    lo, hi = 1, 1
    while lstm_parameters(vocab_size, hi, layers) < target:
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if lstm_parameters(vocab_size, mid, layers) < target else (lo, mid)
    return min((lo, hi), key=lambda w: abs(lstm_parameters(vocab_size, w, layers) - target))


def main(argv=None):
    parser = build_parser()
    args = chapter4_args(parser, argv)
    if args.train and args.train_layers not in args.layers:
        parser.error(f"--train-layers {args.train_layers} is not among --layers {args.layers}: add it there")
    setup = chapter4_setup(args)
    lm, cfg = setup.gpt2()  # with the two task tokens, as in the chapter: both models see them
    target, V = lm.model.num_parameters(), lm.tokenizer.vocab_size
    print(f"GPT-2 from {lm.source}: {target:,} parameters, {lm.model.num_parameters(exclude_embeddings=True):,} of "
          f"them outside the embeddings (vocabulary {V:,})")
    chapter_lstm = lstm_parameters(V, 128, 2)
    rows = [dict(lstm="chapter's", layers=2, width=128, params=chapter_lstm, ratio=chapter_lstm / target)]
    for layers in args.layers:
        width = matching_width(V, layers, target)
        n = lstm_parameters(V, width, layers)
        rows.append(dict(lstm="matched", layers=layers, width=width, params=n, ratio=n / target))
    print_table(rows, [("LSTM", "lstm", "{}"), ("layers", "layers", "{}"), ("emb = hidden", "width", "{}"),
                       ("parameters", "params", "{:,}"), ("/ GPT-2's", "ratio", "{:.3f}")])
    print("(every LSTM width pays twice for the vocabulary: its embedding and its untied output layer)")
    if args.train:
        match = next(r for r in rows if r["lstm"] == "matched" and r["layers"] == args.train_layers)
        print(f"\n=== The chapter with the matched LSTM: {match['layers']} layers of width {match['width']} ===")
        task = setup.task(lm.tokenizer)
        curves = {"gpt2": fine_tune_lm(lm.model, task.train, task.val, cfg, name="GPT-2").curve}
        lstm = setup.new_lstm(V, emb_dim=match["width"], hidden_dim=match["width"], n_layers=match["layers"])
        curves["lstm"] = fine_tune_lm(lstm, task.train, task.val, replace(cfg, lr=setup.lstm_lr), name="LSTM").curve
        for name, curve in curves.items():
            match[f"{name}_best_ppl"], match[f"{name}_final_ppl"] = best_and_final(curve)
            match[f"{name}_seconds"] = curve[-1]["seconds"]
        print_table([match], [("layers", "layers", "{}"), ("width", "width", "{}"), ("params", "params", "{:,}"),
                              ("LSTM final ppl", "lstm_final_ppl", "{:.1f}"), ("LSTM s", "lstm_seconds", "{:.0f}"),
                              ("GPT-2 final ppl", "gpt2_final_ppl", "{:.1f}"), ("GPT-2 s", "gpt2_seconds", "{:.0f}")])
    print(f"Written: {save_rows(rows, setup.out_dir, 'exercise_lstm_size')}")
    return rows


if __name__ == "__main__":
    run_main(main)
