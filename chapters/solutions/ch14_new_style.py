"""Chapter 14, exercise 4: can a few dozen SFT steps teach a style the model never uses? Every training answer is
rewritten to start with a fixed prefix and end with a fixed sign-off; the share of greedy test answers in that style
is measured before and after SFT.

    python -m chapters.solutions.ch14_new_style --data-dir ../shared/data --threads 1
"""
import argparse

from .ch14_common import answer_stats, answers, base_parser, first, note_sample, perplexity, sft, start
from nanoft import sft_features
from nanoft.cli.flags import run_main


def words(text):
    """Some words, stripped: the prefix and sign-off are what the exercise measures, so blank is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a blank text is not allowed: give some words")
    return text.strip()
from nanoft.cli.report import print_table, save_rows


def build_parser():
    p = base_parser("ch14_new_style", __doc__)
    p.add_argument("--prefix", type=words, default="Answer:", help="the words every training answer starts with")
    p.add_argument("--sign-off", type=words, default="End of answer.",
                   help="the sentence every training answer ends with, after a blank line")
    return p


def restyle(record, prefix, sign_off):
    """The record with its answer in the new style: 'PREFIX answer\\n\\nSIGN-OFF'."""
    return {**record, "output": f"{prefix} {record['output'].strip()}\n\n{sign_off}"}


def style_shares(answers_, prefix, sign_off):
    """(% of answers that start with the prefix, % that end with the sign-off, % that do both)."""
    starts = [a["text"].strip().startswith(prefix) for a in answers_]
    ends = [a["text"].strip().endswith(sign_off) for a in answers_]
    n = len(answers_)
    return (100.0 * sum(starts) / n, 100.0 * sum(ends) / n, 100.0 * sum(s and e for s, e in zip(starts, ends)) / n)


def main(argv=None):
    args = build_parser().parse_args(argv)
    prefix, sign_off = args.prefix, args.sign_off
    run, setup = start(args)
    styled = [restyle(r, prefix, sign_off) for r in first(setup.data["train"], args.train_records)]
    test_records = first(setup.data["test"], args.test_records)
    test = sft_features([restyle(r, prefix, sign_off) for r in test_records], setup.tok, args.max_len)
    gen = first(test_records, args.gen_records)
    print(f"A training answer in the new style:\n  {styled[0]['output']!r}")
    rows = []
    for name in ("base", "SFT on the new style"):
        if name == "base":
            model, seconds = setup.base, 0.0
        else:
            print(f"\n# SFT on the restyled answers: {args.sft_steps} steps of {args.batch_size}")
            model, _, seconds = sft(setup, sft_features(styled, setup.tok, args.max_len).features, run,
                                    args.sft_steps, args.lr, "lora", args.rank, args.lora_alpha)
        out = answers(model, setup, gen, args.gen_tokens)
        starts, ends, both = style_shares(out, prefix, sign_off)
        row = dict(model=name, starts=starts, ends=ends, both=both, styled_ppl=perplexity(model, test.features),
                   seconds=seconds, samples=[a["text"] for a in out[:3]], **answer_stats(out, gen))
        print(f"  -> {name}: {starts:.0f}% of greedy answers start with {prefix!r}, {ends:.0f}% end with "
              f"{sign_off!r}, {both:.0f}% both; {row['stopped']:.0f}% ended their turn")
        for text in row["samples"][:2]:
            print(f"     {text!r}")
        rows.append(row)
        save_rows(rows, args.out_dir, "exercise_new_style")  # on disk after every run: a Ctrl-C keeps them
    print_table(rows, [("model", "model", "{}"), ("starts %", "starts", "{:.0f}"), ("ends %", "ends", "{:.0f}"),
                       ("both %", "both", "{:.0f}"), ("ended turn %", "stopped", "{:.0f}"),
                       ("styled test ppl", "styled_ppl", "{:.2f}"), ("seconds", "seconds", "{:.0f}")])
    print(f"(greedy answers to {len(gen)} test prompts, at most {args.gen_tokens} new tokens; styled test ppl: the "
          f"perplexity of the {len(test.features)} test answers rewritten in the new style)")
    note_sample(setup.data["sample"])
    print(f"Written: {save_rows(rows, args.out_dir, 'exercise_new_style')}")
    return rows


if __name__ == "__main__":
    run_main(main)
