"""Chapter 14, exercise 3: LoRA rank against QLoRA. SFT runs of the same records, order and steps with LoRA of rank
4, 16 and 64 on the fp32 base, and rank 16 on the base quantized to NF4 (QLoRA): trainable parameters, the bytes of
the model in memory, test response perplexity and seconds per step.

    python -m chapters.solutions.ch14_lora_rank --data-dir ../shared/data --threads 1
"""
import argparse

from .ch14_common import base_parser, first, note_sample, perplexity, sft, start
from nanoft import model_nbytes, sft_features, trainable_parameters
from nanoft.cli.flags import list_of, positive_float, positive_int, run_main
from nanoft.cli.report import print_table, save_rows


def setting(text):
    """lora:R or qlora:R -> ("lora" | "qlora", R)."""
    method, _, rank = text.partition(":")
    if method not in ("lora", "qlora") or not rank:
        raise argparse.ArgumentTypeError(f"{text!r} is not a setting: give lora:RANK or qlora:RANK, e.g. qlora:16")
    return method, positive_int(rank)


def build_parser():
    p = base_parser("ch14_lora_rank", __doc__, sft_steps=15)
    p.add_argument("--settings", type=list_of(setting, "lora:4,lora:16,lora:64,qlora:16"),
                   default="lora:4,lora:16,lora:64,qlora:16",
                   help="what trains, comma-separated: lora:RANK (fp32 base) or qlora:RANK (NF4 base); --rank and "
                   "--lora-alpha are not used")
    p.add_argument("--alpha-per-rank", type=positive_float, default=2.0,
                   help="LoRA alpha = this x rank, so that the scale alpha / rank stays the chapter's 32 / 16")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    run, setup = start(args)
    train = sft_features(first(setup.data["train"], args.train_records), setup.tok, args.max_len).features
    test = sft_features(first(setup.data["test"], args.test_records), setup.tok, args.max_len).features
    base_bytes = model_nbytes(setup.base)
    rows = [dict(setting="base (fp32, no training)", method="base", rank=None, trainable=0,
                 mbytes=(base_bytes["quantized"] + base_bytes["full"]) / 1e6, test_ppl=perplexity(setup.base, test),
                 s_per_step=None)]
    for method, rank in args.settings:
        alpha = args.alpha_per_rank * rank
        print(f"\n# SFT, {method} rank {rank} (alpha {alpha:g}): {args.sft_steps} steps of {args.batch_size}")
        model, result, seconds = sft(setup, train, run, args.sft_steps, args.lr, method, rank, alpha)
        nbytes = model_nbytes(model)
        row = dict(setting=f"{'QLoRA' if method == 'qlora' else 'LoRA'} r {rank}", method=method, rank=rank,
                   trainable=trainable_parameters(model)[0], mbytes=(nbytes["quantized"] + nbytes["full"]) / 1e6,
                   test_ppl=perplexity(model, test), s_per_step=seconds / args.sft_steps, seconds=seconds)
        print(f"  -> {row['trainable']:,} trainable parameters, {row['mbytes']:.1f} MB, test perplexity "
              f"{row['test_ppl']:.2f}, {row['s_per_step']:.2f} s/step")
        rows.append(row)
        save_rows(rows, args.out_dir, "exercise_lora_rank")  # on disk after every run: a Ctrl-C keeps them
    print_table(rows, [("setting", "setting", "{}"), ("trainable", "trainable", "{:,}"), ("MB", "mbytes", "{:.1f}"),
                       ("test ppl", "test_ppl", "{:.2f}"), ("s/step", "s_per_step", "{:.2f}")])
    print(f"(MB: the model's weights, buffers and adapters in memory, NF4 codes and scales included; test perplexity "
          f"of the {len(test)} test responses; {args.sft_steps} SFT steps of {args.batch_size}, lr {args.lr:g})")
    note_sample(setup.data["sample"])
    print(f"Written: {save_rows(rows, args.out_dir, 'exercise_lora_rank')}")
    return rows


if __name__ == "__main__":
    run_main(main)
