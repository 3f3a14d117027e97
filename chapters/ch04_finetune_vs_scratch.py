"""Chapter 4: fine-tuning a pretrained GPT-2 vs training an LSTM from scratch, measured on your machine.

The knights' question -- is a pretrained model worth it? -- answered with numbers. Both models learn the same
task (write Tiny Shakespeare, one speech per task example, wrapped in [TASK_START] ... [TASK_END]) from the
same token ids, with the same training loop, and are measured the same way. What you will see:

  1. the pretrained GPT-2 (by default a small one pretrained on WikiText-2 by ch04_pretrain_small_gpt2.py,
     trained first if it is not cached yet; `--model gpt2` for the real one);
  2. the two task tokens added to the tokenizer, and GPT-2's embeddings grown to hold them;
  3. one wrapped task example, and how many task tokens the training ids hold;
  4. GPT-2 fine-tuned, then a 2-layer LSTM trained from scratch, with validation perplexity every --eval-every steps;
  5. a table of perplexity against tokens seen and training wall time for both, and the answer to "how many
     tokens and seconds did each model need to reach perplexity X?" (X = the LSTM's final perplexity);
  6. a plot (with matplotlib) and a sample from each model for the same prompt.

    python chapters/ch04_finetune_vs_scratch.py --data-dir ../shared/data
    python chapters/ch04_finetune_vs_scratch.py --model gpt2    # the real GPT-2 (lr 5e-5), where the hub is reachable
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing nanoft

from nanoft.data import dataset_path, read_text
from nanoft.gpt2 import GPT2
from nanoft.lm_data import LMBlocks, split_examples, split_train_val, tokenize_corpus, wrap_with_task_tokens
from nanoft.lstm import LSTMConfig, LSTMLM
from nanoft.metrics import evaluate_lm
from nanoft.tokenizer import add_special_tokens, load_gpt2_tokenizer
from nanoft.train import TrainConfig, seed_everything, train

from chapters import ch04_pretrain_small_gpt2 as pretrain

TASK_TOKENS = ["[TASK_START]", "[TASK_END]"]
OFFLINE = "offline"  # --model value for the small GPT-2 that ch04_pretrain_small_gpt2.py trains and caches
CHAPTER_LR = 5e-5  # the chapter's fine-tuning learning rate, for GPT-2 proper
SMALL_MODEL_LR = 4e-3  # for the small offline model (see --lr's help)


def build_parser():
    p = argparse.ArgumentParser(
        description="Fine-tune a pretrained GPT-2 and train a 2-layer LSTM from scratch on the same Tiny Shakespeare "
                    "tokens with the same training loop; compare validation perplexity against tokens seen and time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=OFFLINE,
                   help="the pretrained GPT-2: 'offline' = a small GPT-2 pretrained on WikiText-2 by "
                        "ch04_pretrain_small_gpt2.py (trained first, ~7 min on 2 CPU cores, if not in the cache), or a "
                        "hub id (gpt2, distilgpt2, gpt2-medium) or a local Hugging Face GPT-2 folder; the tokenizer is "
                        "loaded from the same place")
    p.add_argument("--data-dir", default=None,
                   help="folder laid out like ../shared/data (tiny_shakespeare/input.txt, wikitext-2/...); default: "
                        "$NANOFT_DATA, the download cache, a download, or else the bundled sample (with a notice)")
    p.add_argument("--out-dir", default="runs/ch04", help="where the results JSON and the plot are written")
    p.add_argument("--block-size", type=int, default=128, help="tokens per training sequence (both models)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step (both models)")
    p.add_argument("--max-steps", type=int, default=300,
                   help="optimizer steps for each model (300 x 8 x 128 = 307k tokens, about one pass over Tiny "
                        "Shakespeare)")
    p.add_argument("--eval-every", type=int, default=50, help="optimizer steps between validation runs")
    p.add_argument("--val-fraction", type=float, default=0.05, help="tail of the corpus held out for validation")
    p.add_argument("--lr", type=float, default=None,
                   help="GPT-2's peak learning rate. Default: the chapter's 5e-5 for a hub model or folder (GPT-2 "
                        "small and up: 124M+ parameters, width 768+); 4e-3 for the small offline model, which is 6x "
                        "narrower and gets only a few hundred steps. In 150-step runs with 30 warmup steps "
                        "(chapters/solutions/ch04_lr_warmup.py), validation perplexity was 5e-5: 2221, 1e-3: 261, "
                        "2e-3: 221, 4e-3: 208, 8e-3: 203, 1.6e-2: 234: a broad best from 4e-3 to 8e-3, of which "
                        "the chapter takes the cautious end")
    p.add_argument("--lstm-lr", type=float, default=3e-3,
                   help="the LSTM's peak learning rate; in a 60-step trial 3e-3 beat 1e-3 and the chapter's 1e-2 "
                        "on validation")
    p.add_argument("--warmup-steps", type=int, default=30,
                   help="linear warmup for both (the chapter's 500 were for a much longer run)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay for both (the chapter's 0.01)")
    p.add_argument("--lstm-emb", type=int, default=128, help="the LSTM's embedding size (the chapter's 128)")
    p.add_argument("--lstm-hidden", type=int, default=128, help="the LSTM's hidden size (the chapter's 128)")
    p.add_argument("--lstm-dropout", type=float, default=0.1, help="dropout in the LSTM (GPT-2 keeps its config's)")
    p.add_argument("--lstm-layers", type=int, default=2, help="the LSTM's depth (the chapter's 2)")
    g = p.add_argument_group("exercises (chapters/ch04_exercises.md)")
    g.add_argument("--no-task-tokens", action="store_true",
                   help="no [TASK_START]/[TASK_END]: the speeches as plain text, a blank line apart, for both models")
    g.add_argument("--train-last-blocks", type=int, default=None, metavar="K",
                   help="fine-tune only GPT-2's last K blocks and its final LayerNorm; the embeddings (tied to the "
                        "output layer) and the other blocks stay frozen (None: all of GPT-2 is fine-tuned)")
    g.add_argument("--train-tokens", type=int, default=0, metavar="N",
                   help="train on only the first N training tokens (both models; validation unchanged; 0 = all)")
    g.add_argument("--skip-lstm", action="store_true",
                   help="fine-tune GPT-2 only and stop there, for exercises that change only GPT-2's side")
    p.add_argument("--gen-tokens", type=int, default=60, help="tokens to generate from each model at the end")
    p.add_argument("--prompt", default=None,
                   help="text after [TASK_START] for the samples; default: the first line (the speaker) of the last "
                        "validation speech")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu' or 'cuda'")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = torch's default, one per core); on a machine busy with other jobs "
                        "1 can be several times faster, because threads that wait for each other waste their turns")
    p.add_argument("--seed", type=int, default=1337, help="seed for the LSTM's weights, data order, dropout, sampling")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (e.g. in logs)")
    return p


def load_pretrained(args):
    """GPT2 + tokenizer from --model; for 'offline', the cached small model (pretrained here first if missing)."""
    info, folder = None, args.model
    if args.model == OFFLINE and not os.path.isdir(args.model):
        folder = pretrain.cached_model_dir(args.data_dir)
        if not pretrain.is_saved_model(folder):
            print(f"No pretrained model in {folder} yet: pretraining a small GPT-2 on WikiText-2 first "
                  "(chapters/ch04_pretrain_small_gpt2.py; about 7 minutes on 2 CPU cores, then cached)")
            pretrain.main(["--seed", str(args.seed), "--device", args.device, "--threads", str(args.threads)]
                          + (["--data-dir", args.data_dir] if args.data_dir else [])
                          + (["--no-progress"] if args.no_progress else []))
    info_file = Path(folder) / pretrain.INFO_FILE  # only the small models of ch04_pretrain_small_gpt2.py have one
    if info_file.is_file():
        info = json.loads(info_file.read_text())
    return GPT2.from_pretrained(folder), load_gpt2_tokenizer(folder), folder, info


def lm_loss(model, batch):
    return model(batch["x"], targets=batch["y"])[1]


def train_and_measure(name, model, train_blocks, val_loader, cfg):
    """Train with nanoft's loop; return one row per evaluation: step, tokens seen, training seconds, perplexity.
    The clock stops while we evaluate, so 'seconds' is the time spent learning, comparable between models."""
    tokens_per_step = cfg.batch_size * cfg.grad_accum_steps * train_blocks.block_size
    rows = [dict(step=0, tokens=0, seconds=0.0, ppl=evaluate_lm(model, val_loader, lm_loss)["perplexity"])]
    print(f"{name}: validation perplexity before training {rows[0]['ppl']:,.1f}")
    clock = {"start": 0.0, "in_eval": 0.0}
    measured = []

    def eval_fn(m):
        t = time.perf_counter()
        seconds = t - clock["start"] - clock["in_eval"]
        metrics = evaluate_lm(m, val_loader, lm_loss)
        measured.append((seconds, metrics["perplexity"]))
        clock["in_eval"] += time.perf_counter() - t
        return {"val_loss": metrics["loss"], "val_ppl": metrics["perplexity"]}

    clock["start"] = time.perf_counter()
    result = train(model, train_blocks, lm_loss, cfg, eval_fn=eval_fn)
    steps = [r["step"] for r in result.history if r["type"] == "eval"]  # one record per eval_fn call, in order
    rows += [dict(step=s, tokens=s * tokens_per_step, seconds=sec, ppl=ppl) for s, (sec, ppl) in zip(steps, measured)]
    return rows


def first_reaching(rows, target):
    """The first evaluation at or below perplexity `target` (None if never): when did the model get there?"""
    return next((r for r in rows if r["ppl"] <= target), None)


def print_table(gpt_rows, lstm_rows):
    print(f"\n{'step':>6} {'tokens seen':>12} | {'GPT-2 s':>8} {'GPT-2 ppl':>10} | {'LSTM s':>8} {'LSTM ppl':>10}")
    print("-" * 64)
    for g, l in zip(gpt_rows, lstm_rows):  # both are evaluated at the same steps
        print(f"{g['step']:>6} {g['tokens']:>12,} | {g['seconds']:>8.1f} {g['ppl']:>10.1f} | "
              f"{l['seconds']:>8.1f} {l['ppl']:>10.1f}")


def summarize(gpt_rows, lstm_rows, pretrain_info, model_name):
    target = lstm_rows[-1]["ppl"]
    lstm_at, gpt_at = first_reaching(lstm_rows, target), first_reaching(gpt_rows, target)
    print(f"\nTo reach perplexity {target:.1f} (the LSTM's final one):")
    print(f"  LSTM from scratch:  {lstm_at['tokens']:>10,} tokens, {lstm_at['seconds']:7.1f} s of training")
    if gpt_at is None:
        print(f"  fine-tuned GPT-2:   not reached in this run (final perplexity {gpt_rows[-1]['ppl']:.1f}): "
              "here the pretrained model was not worth it; try more steps or another --lr")
    elif gpt_at["step"] == 0:
        print(f"  fine-tuned GPT-2:            0 tokens,     0.0 s: the pretrained model was already there "
              f"before fine-tuning (perplexity {gpt_at['ppl']:.1f})")
    else:
        print(f"  fine-tuned GPT-2:   {gpt_at['tokens']:>10,} tokens, {gpt_at['seconds']:7.1f} s of training "
              f"(the LSTM needed {lstm_at['tokens'] / gpt_at['tokens']:.1f}x the tokens and "
              f"{lstm_at['seconds'] / max(gpt_at['seconds'], 1e-9):.1f}x the time)")
    final_gpt = gpt_rows[-1]["ppl"]
    if final_gpt < target:
        print(f"  ... and GPT-2 went on to {final_gpt:.1f}, a perplexity the LSTM never reached in this run.")
    if pretrain_info:
        print(f"The pretraining itself cost {pretrain_info['train_seconds']:.0f} s and "
              f"{pretrain_info['tokens_seen']:,} tokens when it ran, paid once and cached ({model_name}).")
    else:
        print(f"The pretraining of {model_name} was paid by whoever trained it: you only pay for the fine-tuning.")
    return {"target_ppl": target, "lstm_reached": lstm_at, "gpt2_reached": gpt_at}


def plot(gpt_rows, lstm_rows, path):
    """Perplexity against tokens seen and against training time; skipped (with a note) without matplotlib."""
    try:
        from matplotlib.figure import Figure  # Figure, not pyplot: no GUI backend needed
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot")
        return None
    fig = Figure(figsize=(10, 4))
    for ax, key, label in zip(fig.subplots(1, 2), ("tokens", "seconds"), ("tokens seen", "training wall time (s)")):
        for rows, name in ((gpt_rows, "GPT-2 fine-tuned"), (lstm_rows, "LSTM from scratch")):
            ax.plot([r[key] for r in rows], [r["ppl"] for r in rows], "o-", label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("validation perplexity")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)

    # 1. Load the pretrained GPT-2 and its tokenizer
    gpt2, tok, model_name, pretrain_info = load_pretrained(args)
    c = gpt2.config
    print(f"Pretrained GPT-2 from {model_name}: {c.n_layer} layers, {c.n_head} heads, width {c.n_embd}, "
          f"{gpt2.num_parameters():,} parameters")
    if pretrain_info and pretrain_info.get("is_sample"):
        print("  NOTE: it was pretrained on the bundled sample, not WikiText-2: the numbers below show the method, "
              "not the answer")

    # 2. Add the task tokens and grow GPT-2's embeddings to hold them
    old_vocab = c.vocab_size
    start_id = end_id = -1  # no such id: with --no-task-tokens nothing counts as one
    if not args.no_task_tokens:
        start_id, end_id = add_special_tokens(tok, TASK_TOKENS)
        gpt2.resize_token_embeddings(tok.vocab_size)  # new rows = the mean of the old ones
        wte = gpt2.transformer.wte.weight
        is_mean = torch.allclose(wte[start_id], wte[:old_vocab].mean(0), atol=1e-6)
        print(f"Added {TASK_TOKENS} as ids {start_id}, {end_id}: embeddings {old_vocab:,} -> {tok.vocab_size:,} rows "
              f"(new rows = mean of the old rows: {is_mean})")

    # 3. The task data: Tiny Shakespeare, one task example per speech, wrapped in the task tokens
    data = dataset_path("tiny_shakespeare/input.txt", args.data_dir)
    speeches = split_examples(read_text(data.path))
    if args.no_task_tokens:  # the exercise's plain text: each speech followed by a blank line, as in the file
        wrap = lambda texts: tokenize_corpus("".join(t + "\n\n" for t in texts), tok)
    else:
        wrap = lambda texts: wrap_with_task_tokens(texts, tok)
    ids = wrap(speeches)
    print(f"Task corpus: {data.path}{'  (SAMPLE: Tiny Shakespeare was not found)' if data.is_sample else ''}")
    print(f"  {len(speeches):,} speeches -> {len(ids):,} tokens. One wrapped example:")
    print("  " + tok.decode(wrap(speeches[:1])).replace("\n", "\n  "))
    val_fraction = max(args.val_fraction, (2 * args.block_size + 2) / len(ids))  # a tiny corpus still gets 2 blocks
    train_ids, val_ids = split_train_val(ids, val_fraction)
    if args.train_tokens:
        train_ids = train_ids[:args.train_tokens]
    n_task = int(((train_ids == start_id) | (train_ids == end_id)).sum())
    print(f"  training ids: {len(train_ids):,} tokens, {n_task:,} of them task tokens "
          f"({int((train_ids == start_id).sum()):,} x {TASK_TOKENS[0]}, {int((train_ids == end_id).sum()):,} x "
          f"{TASK_TOKENS[1]}); validation: the last {len(val_ids):,} tokens")
    if args.block_size > c.n_positions:
        raise ValueError(f"--block-size {args.block_size} is longer than the model's n_positions {c.n_positions}: "
                         f"pass --block-size {c.n_positions} or less")
    train_blocks, val_blocks = LMBlocks(train_ids, args.block_size), LMBlocks(val_ids, args.block_size)
    val_loader = DataLoader(val_blocks, batch_size=32)  # the same validation batches for both models

    def train_config(lr):  # one recipe for both models; only the learning rate is each model's own
        return TrainConfig(lr=lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                           max_steps=args.max_steps, decay="linear", batch_size=args.batch_size,
                           eval_every=args.eval_every, device=args.device, seed=args.seed,
                           progress=not args.no_progress)

    # 4. Fine-tune GPT-2 with nanoft's training loop
    lr = args.lr if args.lr is not None else SMALL_MODEL_LR if pretrain_info else CHAPTER_LR
    print(f"\nFine-tuning GPT-2: lr {lr:g}, warmup {args.warmup_steps}, weight decay {args.weight_decay}, "
          f"{args.max_steps} steps of {args.batch_size} x {args.block_size} tokens")
    if args.lr is None and pretrain_info:
        print(f"  (not the chapter's {CHAPTER_LR:g}: that suits a 124M-parameter GPT-2 over thousands of steps; this "
              f"small model needs larger steps, and {SMALL_MODEL_LR:g} is among the best on validation; see --help)")
    if args.train_last_blocks is not None:  # the exercise: freeze everything but the last K blocks
        if not 0 <= args.train_last_blocks <= c.n_layer:
            raise ValueError(f"--train-last-blocks {args.train_last_blocks}: the model has {c.n_layer} blocks: "
                             f"pass 0 to {c.n_layer}")
        gpt2.requires_grad_(False)
        for module in [*gpt2.transformer.h[c.n_layer - args.train_last_blocks:], gpt2.transformer.ln_f]:
            module.requires_grad_(True)
    n_trained = sum(p.numel() for p in gpt2.parameters() if p.requires_grad)
    if n_trained < gpt2.num_parameters():
        print(f"  trained: the last {args.train_last_blocks} block(s) and ln_f, {n_trained:,} of "
              f"{gpt2.num_parameters():,} parameters")
    gpt_rows = train_and_measure("GPT-2", gpt2, train_blocks, val_loader, train_config(lr))
    if args.skip_lstm:  # an exercise that changes only GPT-2's side: its curve is the result
        return {"model": str(model_name), "gpt2_lr": lr, "gpt2_trainable": n_trained, "task_tokens_in_train": n_task,
                "gpt2": gpt_rows}

    # 5. Train a 2-layer LSTM from scratch on the same tokens, with the same loop
    seed_everything(args.seed)
    lstm = LSTMLM(LSTMConfig(vocab_size=tok.vocab_size, emb_dim=args.lstm_emb, hidden_dim=args.lstm_hidden,
                             n_layers=args.lstm_layers, dropout=args.lstm_dropout))
    print(f"\nTraining an LSTM from scratch: {args.lstm_layers} layers, embedding {args.lstm_emb}, hidden "
          f"{args.lstm_hidden}, {lstm.num_parameters():,} parameters, lr {args.lstm_lr:g}")
    lstm_rows = train_and_measure("LSTM", lstm, train_blocks, val_loader, train_config(args.lstm_lr))

    # 6. Compare: perplexity against tokens seen and training time
    print_table(gpt_rows, lstm_rows)
    summary = summarize(gpt_rows, lstm_rows, pretrain_info, model_name)
    os.makedirs(args.out_dir, exist_ok=True)
    png = plot(gpt_rows, lstm_rows, os.path.join(args.out_dir, "ch04_perplexity.png"))
    if png:
        print(f"Plot: {png}")

    # 7. Samples from both models, for the same prompt after [TASK_START]
    prompt = args.prompt if args.prompt is not None else speeches[-1].splitlines()[0]  # a speaker from validation
    start = [start_id] if start_id >= 0 else []  # without task tokens: the speaker's line alone, and no stop token
    eos = end_id if end_id >= 0 else None
    prompt_ids = torch.tensor([start + tok.encode(prompt + "\n")], dtype=torch.long)
    samples = {}
    for name, model in (("GPT-2 fine-tuned", gpt2), ("LSTM from scratch", lstm)):
        device = next(model.parameters()).device
        out = model.generate(prompt_ids.to(device), max_new_tokens=args.gen_tokens, temperature=0.8, top_k=40,
                             eos_token_id=eos, generator=torch.Generator(device).manual_seed(args.seed))
        samples[name] = tok.decode(out[0].cpu())
        print(f"\n--- {name} ---\n{samples[name]}")

    results = {"model": str(model_name), "task_data": str(data.path), "task_data_is_sample": data.is_sample,
               "pretrain": pretrain_info, "gpt2_lr": lr, "lstm_lr": args.lstm_lr, "task_tokens_in_train": n_task,
               "vocab_size": tok.vocab_size, "train_tokens": len(train_ids), "gpt2_trainable": n_trained,
               "lstm_params": lstm.num_parameters(),
               "gpt2": gpt_rows, "lstm": lstm_rows, "summary": summary, "samples": samples, "plot": png}
    with open(os.path.join(args.out_dir, "ch04_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
