"""Chapter 4, exercise 3: is the comparison fair in size? Find the LSTM depths and widths whose parameter count
matches the pretrained GPT-2's, then (with --train) train the matched LSTM against GPT-2 with the chapter's recipe.

    python -m chapters.solutions.ch04_lstm_size --data-dir ../shared/data              # sizes only: seconds
    python -m chapters.solutions.ch04_lstm_size --data-dir ../shared/data --train      # + the chapter, matched LSTM
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from a clone, too

from chapters import ch04_finetune_vs_scratch as ch04
from chapters.solutions import CH04_SMOKE, best_and_final, print_table, save_rows, solution_parser, split_argv
from nanoft.lstm import LSTMConfig, LSTMLM
from nanoft.tokenizer import add_special_tokens


def build_parser():
    p = solution_parser(__doc__, "ch04_finetune_vs_scratch.py")
    p.add_argument("--layers", default="1,2,3,4", help="LSTM depths to size (embedding = hidden = the width found)")
    p.add_argument("--train", action="store_true",
                   help="then run the chapter with the matched LSTM of depth --train-layers (GPT-2 is fine-tuned "
                        "again beside it, exactly as in the chapter)")
    p.add_argument("--train-layers", type=int, default=2, help="depth of the LSTM that --train trains")
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
    own, chapter_argv = split_argv(build_parser(), argv, CH04_SMOKE)
    args = ch04.build_parser().parse_args(chapter_argv)
    gpt2, tok, model_name, _ = ch04.load_pretrained(args)
    add_special_tokens(tok, ch04.TASK_TOKENS)  # as the chapter does: both models see the two task tokens
    gpt2.resize_token_embeddings(tok.vocab_size)
    target, V = gpt2.num_parameters(), tok.vocab_size
    print(f"GPT-2 from {model_name}: {target:,} parameters, {gpt2.num_parameters(exclude_embeddings=True):,} of "
          f"them outside the embeddings (vocabulary {V:,})")
    chapter_lstm = lstm_parameters(V, 128, 2)
    rows = [dict(lstm="chapter's", layers=2, width=128, params=chapter_lstm, ratio=chapter_lstm / target)]
    for layers in [int(x) for x in own.layers.split(",")]:
        width = matching_width(V, layers, target)
        n = lstm_parameters(V, width, layers)
        rows.append(dict(lstm="matched", layers=layers, width=width, params=n, ratio=n / target))
    print_table(rows, [("LSTM", "lstm", "{}"), ("layers", "layers", "{}"), ("emb = hidden", "width", "{}"),
                       ("parameters", "params", "{:,}"), ("/ GPT-2's", "ratio", "{:.3f}")])
    print("(every LSTM width pays twice for the vocabulary: its embedding and its untied output layer)")
    if own.train:
        match = next(r for r in rows if r["lstm"] == "matched" and r["layers"] == own.train_layers)
        print(f"\n=== The chapter with the matched LSTM: {match['layers']} layers of width {match['width']} ===")
        w = str(match["width"])
        result = ch04.main(chapter_argv + ["--lstm-layers", str(match["layers"]), "--lstm-emb", w, "--lstm-hidden", w])
        for name in ("gpt2", "lstm"):
            match[f"{name}_best_ppl"], match[f"{name}_final_ppl"] = best_and_final(result[name])
            match[f"{name}_seconds"] = result[name][-1]["seconds"]
        print_table([match], [("layers", "layers", "{}"), ("width", "width", "{}"), ("params", "params", "{:,}"),
                              ("LSTM final ppl", "lstm_final_ppl", "{:.1f}"), ("LSTM s", "lstm_seconds", "{:.0f}"),
                              ("GPT-2 final ppl", "gpt2_final_ppl", "{:.1f}"), ("GPT-2 s", "gpt2_seconds", "{:.0f}")])
    save_rows(rows, args.out_dir, "exercise_lstm_size")
    return rows


if __name__ == "__main__":
    main()
