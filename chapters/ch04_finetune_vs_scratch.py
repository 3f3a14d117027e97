"""Chapter 4: fine-tuning a pretrained GPT-2 vs training an LSTM from scratch, measured on your machine.

The knights' question -- is a pretrained model worth it? -- answered with numbers. Both models learn the same
task (write Tiny Shakespeare, one speech per task example, wrapped in [TASK_START] ... [TASK_END]) from the
same token ids, with the same training loop, and are measured the same way. What you will see:

  1. the pretrained GPT-2 (a small one pretrained on WikiText-2 and cached; `--model gpt2` for the real one);
  2. the two task tokens added to the tokenizer, and GPT-2's embeddings grown to hold them;
  3. one wrapped task example, and how many task tokens the training ids hold;
  4. GPT-2 fine-tuned, then a 2-layer LSTM trained from scratch, with validation perplexity every --eval-every steps;
  5. perplexity against tokens seen and training time for both, and the tokens and seconds each needed to reach
     the LSTM's final perplexity;
  6. a plot and a sample from each model for the same prompt, then the files written.

The recipe (task tokens, blocks, fine_tune_lm, perplexity, samples) is nanoft/recipes/causal_lm.py; the offline
GPT-2 is nanoft/recipes/small_gpt2.py.
"""
import os
from dataclasses import replace

import torch

from nanoft.recipes.causal_lm import (TASK_TOKENS, add_task_tokens, fine_tune_lm, first_reaching, plot_curves, sample,
                                      task_blocks, task_ids)
from nanoft.recipes.small_gpt2 import (OFFLINE, SMALL_GPT2_LR, GPT2_LR, PretrainConfig, default_lr,
                                       load_pretrained_gpt2)
from nanoft.training.freeze import train_last_blocks
from nanoft.cli.flags import (ChapterParser, add_io_flags, add_run_flags, fraction, nonneg_float, nonneg_int,
                              positive_float, positive_int, run_main)
from nanoft.cli.report import check_out_dir, label, write_json
from nanoft.data.datasets import dataset_path, read_text
from nanoft.training.device import pick_device, resolve_precision
from nanoft.data.lm_data import split_examples
from nanoft.models.lstm import LSTMConfig, LSTMLM
from nanoft.training.train import TrainConfig, seed_everything

EXAMPLES = """examples:
  python chapters/ch04_finetune_vs_scratch.py --data-dir ../shared/data --smoke   # seconds: a toy pretraining, 4 steps
  python chapters/ch04_finetune_vs_scratch.py --data-dir ../shared/data           # the chapter's run
the chapter's run takes about 10 min on 2 cores once the small GPT-2 is cached; its pretraining, once, adds about 7
(README, "Chapter 4", for the machine and date). Writes OUT_DIR/ch04_results_gpt2.json when GPT-2 is done,
OUT_DIR/ch04_results_lstm.json when the LSTM is, OUT_DIR/ch04_results.json (all so far) each time, and
OUT_DIR/ch04_perplexity.png; the offline model is cached in $NANOFT_CACHE/models (default ~/.cache/nanoft/models).
Ctrl-C keeps what had finished and says where. NANOFT_DEBUG=1 shows tracebacks of user errors."""
SMOKE = dict(block_size=32, batch_size=4, max_steps=4, eval_every=2, warmup_steps=1, val_fraction=0.002,
             lstm_emb=16, lstm_hidden=16, gen_tokens=8, no_progress=True, pretrain_steps=3, pretrain_layers=1,
             pretrain_width=16, pretrain_heads=2)
MEMORY = "--batch-size or --block-size"


def build_parser():
    p = ChapterParser("ch04", "Fine-tune a pretrained GPT-2 and train a 2-layer LSTM from scratch on the same Tiny "
                      "Shakespeare tokens with the same training loop; compare validation perplexity against tokens "
                      "seen and training time.", EXAMPLES, smoke=SMOKE)
    add_io_flags(p, "runs/ch04", model_default=OFFLINE, out_help="where the results JSON and the plot are written",
                 model_help="the pretrained GPT-2: 'offline' = a small GPT-2 pretrained on WikiText-2 and cached "
                 "(trained first when missing, sized by the --pretrain-* flags), or a hub id (gpt2, distilgpt2, "
                 "gpt2-medium) or a local Hugging Face GPT-2 folder; the tokenizer comes from the same place")
    p.add_argument("--block-size", type=positive_int, default=128, help="tokens per training sequence (both models)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per optimizer step (both models)")
    p.add_argument("--max-steps", type=positive_int, default=300,
                   help="optimizer steps for each model (300 x 8 x 128 = 307k tokens, about one pass)")
    p.add_argument("--eval-every", type=positive_int, default=50, help="optimizer steps between validation runs")
    p.add_argument("--val-fraction", type=fraction, default=0.05,
                   help="tail of the corpus held out for validation (above 0, below 1)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help=f"GPT-2's peak learning rate. None: {GPT2_LR:g} for a hub model or folder; "
                        f"{SMALL_GPT2_LR:g} for the small offline model, 6x narrower, with a few hundred steps "
                        "(exercise 5: after 150 steps 5e-5 gave perplexity 2221, 1e-3 261, 4e-3 208, 8e-3 203, "
                        "1.6e-2 234)")
    p.add_argument("--lstm-lr", type=positive_float, default=3e-3,
                   help="the LSTM's peak learning rate; in a 60-step trial 3e-3 beat 1e-3 and 1e-2")
    p.add_argument("--warmup-steps", type=nonneg_int, default=30, help="linear warmup for both (0: none)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.01, help="AdamW weight decay for both")
    p.add_argument("--lstm-emb", type=positive_int, default=128, help="the LSTM's embedding size")
    p.add_argument("--lstm-hidden", type=positive_int, default=128, help="the LSTM's hidden size")
    p.add_argument("--lstm-layers", type=positive_int, default=2, help="the LSTM's depth")
    p.add_argument("--lstm-dropout", type=fraction, default=0.1, help="dropout in the LSTM (GPT-2 keeps its config's)")
    p.add_argument("--gen-tokens", type=positive_int, default=60, help="tokens to generate from each model at the end")
    p.add_argument("--prompt", default=None,
                   help="text after [TASK_START] for the samples; default: the speaker of the last validation speech")
    g = p.add_argument_group("the offline model's pretraining (runs once, when --model offline is not cached)")
    g.add_argument("--pretrain-steps", type=positive_int, default=600, help="optimizer steps of 8 x 128 tokens")
    g.add_argument("--pretrain-layers", type=positive_int, default=4, help="transformer blocks")
    g.add_argument("--pretrain-width", type=positive_int, default=128, help="width of the residual stream")
    g.add_argument("--pretrain-heads", type=positive_int, default=4, help="attention heads (must divide the width)")
    g = p.add_argument_group("exercises (chapters/ch04_exercises.md)")
    g.add_argument("--no-task-tokens", action="store_true",
                   help="no [TASK_START]/[TASK_END]: the speeches as plain text, a blank line apart, for both models")
    g.add_argument("--train-last-blocks", type=nonneg_int, default=None, metavar="K",
                   help="fine-tune only GPT-2's last K blocks and its final LayerNorm (0: ln_f alone); the embeddings "
                        "(tied to the output layer) and the other blocks stay frozen (None: all of GPT-2 trains)")
    g.add_argument("--train-tokens", type=nonneg_int, default=0, metavar="N",
                   help="train on only the first N training tokens (both models; validation unchanged; 0 = all)")
    g.add_argument("--skip-lstm", action="store_true", help="fine-tune GPT-2 only and stop there")
    add_run_flags(p, seed=1337)  # the seed of the chapter's measured figures
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.val_fraction == 0:
        p.error("--val-fraction: 0 leaves nothing to validate on: give a number above 0, e.g. 0.05")
    if args.pretrain_width % args.pretrain_heads:
        p.error(f"--pretrain-width {args.pretrain_width} is not a multiple of --pretrain-heads {args.pretrain_heads}")
    return args


def print_table(gpt_rows, lstm_rows, note=""):
    print(f"\n{note}" if note else "")
    print(f"{'step':>6} {'tokens seen':>12} | {'GPT-2 s':>8} {'GPT-2 ppl':>10} | {'LSTM s':>8} {'LSTM ppl':>10}")
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
        print(f"  fine-tuned GPT-2:            0 tokens,     0.0 s: already there before fine-tuning "
              f"(perplexity {gpt_at['ppl']:.1f})")
    else:
        print(f"  fine-tuned GPT-2:   {gpt_at['tokens']:>10,} tokens, {gpt_at['seconds']:7.1f} s of training "
              f"(the LSTM needed {lstm_at['tokens'] / gpt_at['tokens']:.1f}x the tokens and "
              f"{lstm_at['seconds'] / max(gpt_at['seconds'], 1e-9):.1f}x the time)")
    if gpt_rows[-1]["ppl"] < target:
        print(f"  ... and GPT-2 went on to {gpt_rows[-1]['ppl']:.1f}, a perplexity the LSTM never reached here.")
    if pretrain_info:
        print(f"The pretraining itself cost {pretrain_info['train_seconds']:.0f} s and "
              f"{pretrain_info['tokens_seen']:,} tokens when it ran, paid once and cached ({model_name}).")
    else:
        print(f"The pretraining of {model_name} was paid by whoever trained it: you only pay for the fine-tuning.")
    return {"target_ppl": target, "lstm_reached": lstm_at, "gpt2_reached": gpt_at}


def main(argv=None):
    args = parse_args(argv)
    check_out_dir(args.out_dir)  # before any work: a folder that cannot hold the results fails now, not at the end
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    data = dataset_path("tiny_shakespeare/input.txt", args.data_dir)  # found (or refused) before any pretraining

    # 1. The pretrained GPT-2 and its tokenizer
    pretrain = PretrainConfig.tiny() if args.smoke else PretrainConfig()
    pretrain = replace(pretrain, n_layer=args.pretrain_layers, n_head=args.pretrain_heads, n_embd=args.pretrain_width,
                       train=replace(pretrain.train, max_steps=args.pretrain_steps, device=args.device,
                                     precision=args.precision, progress=not args.no_progress))
    gpt2, tok, model_name, pretrain_info = load_pretrained_gpt2(args.model, args.data_dir, pretrain)
    c = gpt2.config
    print(f"Pretrained GPT-2 from {model_name}: {c.n_layer} layers, {c.n_head} heads, width {c.n_embd}, "
          f"{gpt2.num_parameters():,} parameters")
    if pretrain_info and pretrain_info.get("is_sample"):
        print("  NOTE: it was pretrained on the bundled SAMPLE, not WikiText-2: the numbers show the method only")
    if args.block_size > c.n_positions:
        raise ValueError(f"--block-size {args.block_size} is longer than the model's n_positions {c.n_positions}: "
                         f"pass --block-size {c.n_positions} or less")

    # 2. The task tokens, and GPT-2's embeddings grown to hold them
    old_vocab = c.vocab_size
    start_id = end_id = None  # with --no-task-tokens there are none: no prompt token, no stop token
    if not args.no_task_tokens:
        start_id, end_id = add_task_tokens(gpt2, tok)
        wte = gpt2.transformer.wte.weight
        is_mean = torch.allclose(wte[start_id], wte[:old_vocab].mean(0), atol=1e-6)
        print(f"Added {list(TASK_TOKENS)} as ids {start_id}, {end_id}: embeddings {old_vocab:,} -> "
              f"{tok.vocab_size:,} rows (new rows = mean of the old rows: {is_mean})")

    # 3. The task data: Tiny Shakespeare, one task example per speech, wrapped in the task tokens
    speeches = split_examples(read_text(data.path))
    task = task_blocks(speeches, tok, args.block_size, args.val_fraction, not args.no_task_tokens, args.train_tokens)
    print(f"Task corpus: {data.path}{'  (SAMPLE: Tiny Shakespeare was not found)' if data.is_sample else ''}")
    print(f"  {len(speeches):,} speeches -> {len(task.train_ids) + len(task.val_ids):,} tokens. One example:")
    print("  " + tok.decode(task_ids(speeches[:1], tok, not args.no_task_tokens)).replace("\n", "\n  "))
    counts = [int((task.train_ids == i).sum()) for i in (start_id, end_id) if i is not None]
    print(f"  training ids: {len(task.train_ids):,} tokens, {sum(counts):,} of them task tokens; validation: "
          f"the last {len(task.val_ids):,} tokens")

    # 4. Fine-tune GPT-2 with nanoft's training loop
    lr = args.lr or default_lr(pretrain_info)
    cfg = TrainConfig(lr=lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, max_steps=args.max_steps,
                      decay="linear", batch_size=args.batch_size, eval_every=args.eval_every, device=args.device,
                      precision=args.precision, seed=args.seed, progress=not args.no_progress)
    precision = resolve_precision(args.precision, pick_device(args.device))[0]  # what "auto" means here
    print(f"\nFine-tuning GPT-2: lr {lr:g}, warmup {args.warmup_steps}, weight decay {args.weight_decay}, "
          f"{args.max_steps} steps of {args.batch_size} x {args.block_size} tokens, precision {precision}")
    if args.lr is None and pretrain_info:
        print(f"  (not GPT-2's usual {GPT2_LR:g}: that suits a 124M-parameter GPT-2 over thousands of steps; this "
              f"small model needs larger steps, and {SMALL_GPT2_LR:g} is among the best on validation; see --help)")
    n_trained = gpt2.num_parameters()
    if args.train_last_blocks is not None:  # the exercise: freeze everything but the last K blocks
        n_trained = train_last_blocks(gpt2, args.train_last_blocks)
        print(f"  trained: the last {args.train_last_blocks} block(s) and ln_f, {n_trained:,} of "
              f"{gpt2.num_parameters():,} parameters")
    gpt_rows = fine_tune_lm(gpt2, task.train, task.val, cfg, name="GPT-2").curve
    results = {"model": model_name, "task_data": str(data.path), "task_data_is_sample": data.is_sample,
               "pretrain": pretrain_info, "precision": precision, "gpt2_lr": lr, "gpt2_trainable": n_trained,
               "task_tokens_in_train": sum(counts), "vocab_size": tok.vocab_size, "train_tokens": len(task.train_ids),
               "gpt2": gpt_rows, "smoke": args.smoke}

    def save(part, rows):  # the part's own file, and everything so far
        write_json(rows, os.path.join(args.out_dir, f"ch04_results_{part}.json"))
        write_json(results, os.path.join(args.out_dir, "ch04_results.json"))

    save("gpt2", gpt_rows)  # on disk now: an error or a Ctrl-C during the LSTM keeps GPT-2's curve
    if not args.skip_lstm:  # the exercises that change only GPT-2's side stop here: its curve is their result
        # 5. An LSTM from scratch on the same tokens, with the same loop
        seed_everything(args.seed)
        lstm = LSTMLM(LSTMConfig(vocab_size=tok.vocab_size, emb_dim=args.lstm_emb, hidden_dim=args.lstm_hidden,
                                 n_layers=args.lstm_layers, dropout=args.lstm_dropout))
        print(f"\nTraining an LSTM from scratch: {args.lstm_layers} layers, embedding {args.lstm_emb}, hidden "
              f"{args.lstm_hidden}, {lstm.num_parameters():,} parameters, lr {args.lstm_lr:g}")
        lstm_rows = fine_tune_lm(lstm, task.train, task.val, replace(cfg, lr=args.lstm_lr), name="LSTM").curve

        # 6. Compare: perplexity against tokens seen and training time, a plot, and a sample of each
        results.update(lstm_lr=args.lstm_lr, lstm_params=lstm.num_parameters(), lstm=lstm_rows)
        save("lstm", lstm_rows)
        tag = label(args.smoke, data.is_sample)  # SMOKE sizes / SAMPLE data: not results, and the table says so
        print_table(gpt_rows, lstm_rows, f"NOTE: {tag}: the numbers show that the code runs, no more" if tag else "")
        results["summary"] = summarize(gpt_rows, lstm_rows, pretrain_info, model_name)
        results["plot"] = plot_curves({"GPT-2 fine-tuned": gpt_rows, "LSTM from scratch": lstm_rows},
                                      os.path.join(args.out_dir, "ch04_perplexity.png"), "Chapter 4: fine-tuned GPT-2 "
                                      f"vs an LSTM from scratch, on {tag or 'Tiny Shakespeare'}")
        prompt = args.prompt if args.prompt is not None else speeches[-1].splitlines()[0]  # a validation speaker
        results["samples"] = {}
        for name, model in (("GPT-2 fine-tuned", gpt2), ("LSTM from scratch", lstm)):
            results["samples"][name] = sample(model, tok, prompt + "\n", args.gen_tokens, start_id, end_id,
                                              seed=args.seed)
            print(f"\n--- {name} ---\n{results['samples'][name]}")
    path = write_json(results, os.path.join(args.out_dir, "ch04_results.json"))
    print(f"\nWritten: {path}" + (f", {results['plot']}" if results.get("plot") else "")
          + (f"; the pretrained model is cached in {model_name}" if pretrain_info else ""))
    return results


if __name__ == "__main__":
    run_main(main, name="ch04", memory=MEMORY)
