"""Solutions to the exercises of chapters/ch04_exercises.md and chapters/ch13_exercises.md.

One script per exercise that needs more than a flag of the chapter script. Each one reuses the chapter's own
functions (it imports the chapter script), runs the experiment the exercise asks for, and prints a small table.
Every script takes --smoke (tiny sizes: it checks that the code runs, in seconds, not what the answer is) and
passes any flag it does not know to the chapter script, so `--data-dir ../shared/data` and the chapter's size
flags work as they do there:

    python -m chapters.solutions.ch13_pooling --data-dir ../shared/data
    python -m chapters.solutions.ch13_pooling --data-dir ../shared/data --smoke
"""
import argparse
import json
import os


def solution_parser(doc, chapter_script, example=""):
    """The parser every solution starts from: the first paragraph of its docstring as the description, each flag's
    default in --help, --smoke, and an epilog saying that any other flag goes to the chapter script (`example`: a
    flag worth naming there)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog=f"Any other flag goes to chapters/{chapter_script}"
                                       + (f" ({example})." if example else "."))
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs, not the answer")
    return p


def print_table(rows, columns):
    """rows: list of dicts; columns: (title, key, format) triples, e.g. ("dev acc", "dev_acc", "{:.1%}")."""
    cells = [[fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in columns] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(columns)]
    text = [isinstance(rows[0].get(key), str) for _, key, _ in columns]  # words to the left, numbers to the right
    line = lambda values: " | ".join(v.ljust(w) if t else v.rjust(w) for v, w, t in zip(values, widths, text))
    print("\n" + line([title for title, _, _ in columns]))
    print("-+-".join("-" * w for w in widths))
    for c in cells:
        print(line(c))


def save_rows(rows, out_dir, name):
    """The table as JSON in out_dir/name.json, for the exercise's "Measured" line; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=2, default=str)
    print(f"Results: {path}")
    return path


def split_argv(parser, argv, smoke, defaults=()):
    """(the solution's own args, the chapter script's argv). Flags the solution does not know go to the chapter;
    the exercise's defaults come first, then --smoke's sizes, then the reader's flags: the last one given wins."""
    own, rest = parser.parse_known_args(argv)
    return own, [*defaults, *(smoke if own.smoke else ()), *rest]


# Chapter 13 at a smoke size: a few sentences and windows, a few steps (the chapter's own test uses the same idea)
CH13_SMOKE = ["--sst2-train", "32", "--sst2-val", "16", "--sst2-dev", "16", "--max-len", "32", "--batch-size", "8",
              "--sst2-steps", "4", "--tapt-steps", "2", "--squad-train-questions", "12", "--squad-val-questions", "4",
              "--squad-eval-questions", "6", "--squad-max-len", "64", "--doc-stride", "16", "--squad-batch-size", "4",
              "--squad-steps", "2", "--evals", "2", "--no-progress"]


def ch13_setup(chapter_argv):
    """The chapter's arguments, tokenizer and pretrained encoder, as ch13's main() makes them."""
    import torch

    from chapters import ch13_language_understanding as ch13
    args = ch13.parse_args(chapter_argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ch13.seed_everything(args.seed)
    return args, ch13.load_bert_tokenizer(args.model), ch13.BERT.from_pretrained(args.model)


def ch13_sst2_setup(chapter_argv):
    """ch13_setup, plus SST-2's splits and the chapter's number of fine-tuning steps for them."""
    from chapters import ch13_language_understanding as ch13
    args, tok, encoder = ch13_setup(chapter_argv)
    sst2 = ch13.load_sst2(args, tok)
    steps = ch13.steps_for(args, args.sst2_steps, len(sst2["train"]), args.batch_size)
    return args, tok, encoder, sst2, steps


# Chapter 4 at a smoke size: short blocks, a few steps, a tiny LSTM (the chapter's own test uses the same sizes).
# The pretrained GPT-2 is the chapter's: pass --model with a folder, or let the chapter train and cache its own.
CH04_SMOKE = ["--block-size", "32", "--batch-size", "4", "--max-steps", "4", "--eval-every", "2", "--warmup-steps",
              "1", "--val-fraction", "0.002", "--lstm-emb", "16", "--lstm-hidden", "16", "--gen-tokens", "8",
              "--no-progress"]


def best_and_final(rows):
    """(lowest, last) validation perplexity of a chapter-4 curve."""
    return min(r["ppl"] for r in rows), rows[-1]["ppl"]
