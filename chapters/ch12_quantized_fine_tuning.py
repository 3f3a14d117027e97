"""Chapter 12: fine-tuning quantized models (LoRA, QLoRA, int8, NF4, QAT), side by side on your machine.

Two pretrained models learn a task each, five ways, and ONE table says what each way costs and what it keeps:
  sst2         the real all-MiniLM-L6-v2 (BERT) learns SST-2 (is a movie review sentence positive?): dev accuracy;
  shakespeare  chapter 4's small GPT-2 (pretrained on WikiText-2, cached) learns to write Tiny Shakespeare:
               perplexity on the corpus' held-out tail.
The five ways:
  full   full fine-tuning: every weight trains (fp32 weights, bf16 autocast where the machine has it);
  lora   LoRA: the model frozen, low-rank adapters (A, B) beside its linear layers (--targets attention: the fused
         q/k/v projection; all: every linear layer of the blocks) train, and SST-2's fresh head with them;
  qlora  QLoRA: the same adapters on a base whose block linears are NF4 (4.127 bits a weight, double-quantized
         scales); the base stays 4-bit, only the adapters (and the head) train, in full precision;
  ptq    post-training quantization of the fully fine-tuned model, to int8 (per output channel) and to NF4, no
         training at all (runs `full` first when it has not run);
  qat    quantization-aware training: full fine-tuning with the weights fake-quantized (straight-through
         estimator), then converted to real int8 / NF4 (--qat-kind).

Columns: quality; trainable parameters; model MiB (packed weights and scales, and what stays fp32 as in QLoRA);
training state (weights, fp32 gradients, two Adam moments of what trains); peak CUDA memory (GPU only); seconds per
step, validations included. What you should see: the README's chapter 12; exercises: chapters/ch12_exercises.md.
"""
import copy
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from nanoft import BERT, TrainConfig, load_bert_tokenizer, seed_everything
from nanoft.io.assets import minilm_dir
from nanoft.recipes.causal_lm import evaluate_perplexity, fine_tune_lm, task_blocks
from nanoft.recipes.small_gpt2 import OFFLINE, PretrainConfig, load_pretrained_gpt2
from nanoft.recipes.classification import evaluate_accuracy, fine_tune_classifier, load_sst2, sentence_classifier
from nanoft.cli.flags import (BERT_HELP, ChapterParser, add_io_flags, add_run_flags, fraction, nf4_block,
                              nonneg_int, positive_float, positive_int, run_main)
from nanoft.data.datasets import dataset_path, read_text
from nanoft.data.lm_data import split_examples
from nanoft.quant.lora import add_lora, trainable_parameters
from nanoft.quant.qat import convert_qat, prepare_qat
from nanoft.quant.quantize import model_nbytes, quantize_model
from nanoft.cli.report import Results, check_out_dir

METHODS = ("full", "lora", "qlora", "ptq", "qat")
TASKS = ("sst2", "shakespeare")
RECIPES = ("quick",)
# Every size of a run: its flag, its type and help, then its value in the quick recipe and under --smoke; a flag
# given on the command line wins. quick: a few minutes per method on a 2-core CPU.
SIZES = [
    ("--train", nonneg_int, "SST-2 training sentences (a seeded subset; 0 = all 66,849)", 4000, 48),
    ("--val", positive_int, "SST-2 sentences carved out of train.tsv for validation", 500, 16),
    ("--dev", nonneg_int, "SST-2 dev sentences of the final accuracy (the first N; 0 = all 872)", 0, 24),
    ("--max-len", positive_int, "SST-2 tokens per sentence", 64, 32),
    ("--steps", positive_int, "optimizer steps of every SST-2 training run", 200, 2),
    ("--batch-size", positive_int, "SST-2 sentences per optimizer step", 32, 8),
    ("--lm-steps", positive_int, "optimizer steps of every Tiny Shakespeare training run", 150, 2),
    ("--lm-batch-size", positive_int, "Tiny Shakespeare blocks per optimizer step", 8, 2),
    ("--block-size", positive_int, "tokens per Tiny Shakespeare block", 128, 32),
    ("--lm-val", fraction, "tail of Tiny Shakespeare held out for validation", 0.05, 0.002),
    ("--evals", positive_int, "validation evaluations per run (SST-2 keeps its best weights)", 4, 1),
]


EXAMPLES = """examples:
  python chapters/ch12_quantized_fine_tuning.py --smoke                      # tiny sizes: does it run? (seconds)
  python chapters/ch12_quantized_fine_tuning.py --data-dir ../shared/data    # five methods, two tasks, one table
  python chapters/ch12_quantized_fine_tuning.py qlora --task sst2 --targets attention --data-dir ../shared/data
writes, as each method finishes on a task, OUT_DIR/results_<task>_<method>.json and OUT_DIR/results.json (all
rows so far, the flags), then OUT_DIR/results.png. Ctrl-C keeps what finished, and says where. NANOFT_DEBUG=1
shows tracebacks."""


def build_parser():
    p = ChapterParser("ch12", __doc__.split("\n\n")[0] + " Runs full, lora, qlora, ptq and qat (or one of them) on "
                      "SST-2 and Tiny Shakespeare and prints one table.", EXAMPLES)
    p.add_argument("method", nargs="?", default="all", choices=("all",) + METHODS, help="which method to run")
    p.add_argument("--task", choices=("both",) + TASKS, default="both", help="which task(s) to run it on")
    add_io_flags(p, "runs/ch12", model_help="SST-2's " + BERT_HELP)
    p.add_argument("--lm-model", default=OFFLINE, help="Tiny Shakespeare's GPT-2: 'offline' = chapter 4's small GPT-2 "
                   "(pretrained first when not cached), a hub id (gpt2) or a local Hugging Face GPT-2 folder")
    p.add_sizes(SIZES, RECIPES, "sizes (quick: a few minutes per method on a 2-core CPU)")
    h = p.add_argument_group("hyperparameters")
    h.add_argument("--lr", type=positive_float, default=1e-4, help="SST-2: lr of full fine-tuning and QAT")
    h.add_argument("--lora-lr", type=positive_float, default=1e-3, help="SST-2: lr of LoRA and QLoRA")
    h.add_argument("--lm-lr", type=positive_float, default=4e-3, help="Tiny Shakespeare: lr of full fine-tuning and "
                   "QAT (the small GPT-2's, chapter 4; 5e-5 suits a 124M GPT-2)")
    h.add_argument("--lm-lora-lr", type=positive_float, default=1e-2, help="Tiny Shakespeare: lr of LoRA and QLoRA")
    h.add_argument("--rank", type=positive_int, default=8, help="LoRA rank r")
    h.add_argument("--alpha", type=positive_float, default=16, help="LoRA alpha (the change is scaled by alpha / r)")
    h.add_argument("--lora-dropout", type=fraction, default=0.05, help="dropout on the adapters' input")
    h.add_argument("--targets", choices=("attention", "all"), default="all",
                   help="LoRA / QLoRA on the q/k/v projection only, or on every linear layer of the blocks")
    h.add_argument("--nf4-block", type=nf4_block, default=64, help="weights per NF4 absmax block, a power of two "
                   "(QLoRA and PTQ; QAT keeps 64): smaller blocks follow the weights closer and cost more scales")
    h.add_argument("--qat-kind", choices=("int8", "nf4"), default="nf4", help="what QAT fake-quantizes and converts to")
    h.add_argument("--warmup", type=fraction, default=0.1, help="share of each run's steps spent warming up")
    add_run_flags(p)
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


@dataclass
class Task:
    """What the five methods need of a task: a fresh model, how it trains, how it is scored and shown."""
    name: str
    new_model: Callable  # () -> a fresh pretrained model
    fit: Callable  # (model, TrainConfig) -> None
    score: Callable  # model -> float
    shown: str  # the score's format in the table
    steps: int
    batch_size: int
    lr: float
    lora_lr: float
    head: str = ""  # a fresh head that trains beside the adapters ("" for none)


def sst2_task(args):
    tok, encoder = load_bert_tokenizer(args.model), BERT.from_pretrained(args.model)
    d = load_sst2(tok, args.max_len, args.train, args.val, args.dev, args.seed, args.data_dir, args.batch_size)
    print(f"SST-2 on a BERT from {args.model} ({encoder.num_parameters():,} parameters): {len(d['train']):,} "
          f"training sentences, {len(d['val'])} validation, {len(d['dev'])} dev ({d['label']})")
    return Task("SST-2", lambda: sentence_classifier(copy.deepcopy(encoder), pooling="mean", task="sst2"),
                lambda m, cfg: fine_tune_classifier(m, d["train"], d["val"], cfg),
                lambda m: evaluate_accuracy(m, d["dev"]), "{:.1f}% dev acc", args.steps, args.batch_size, args.lr,
                args.lora_lr, head="heads.sst2"), d["sample"]


def shakespeare_task(args):
    pretrain = PretrainConfig.tiny() if args.smoke else PretrainConfig()
    pretrain = replace(pretrain, train=replace(pretrain.train, device=args.device, precision=args.precision,
                                               progress=not args.no_progress))
    gpt2, tok, source, _ = load_pretrained_gpt2(args.lm_model, args.data_dir, pretrain)
    data = dataset_path("tiny_shakespeare/input.txt", args.data_dir)
    b = task_blocks(split_examples(read_text(data.path)), tok, args.block_size, args.lm_val, task_tokens=False)
    print(f"Tiny Shakespeare on a GPT-2 from {source} ({gpt2.num_parameters():,} parameters): "
          f"{len(b.train_ids):,} training tokens, the last {len(b.val_ids):,} for validation")
    return Task("Tiny Shakespeare", lambda: copy.deepcopy(gpt2),  # fixed-length blocks: nothing to group by length
                lambda m, cfg: fine_tune_lm(m, b.train, b.val, replace(cfg, group_by_length=False), verbose=False),
                lambda m: evaluate_perplexity(m, b.val)["perplexity"], "{:,.1f} val ppl", args.lm_steps,
                args.lm_batch_size, args.lm_lr, args.lm_lora_lr), data.is_sample


def config(args, task, lr):
    return TrainConfig(lr=lr, max_steps=task.steps, batch_size=task.batch_size, warmup_steps=int(args.warmup *
                       task.steps), decay="linear", eval_every=max(1, -(-task.steps // args.evals)),
                       group_by_length=True, device=args.device, precision=args.precision,
                       progress=not args.no_progress, seed=args.seed)


def nbytes(model):
    b = model_nbytes(model)
    return b["quantized"] + b["full"]


def fresh(task, args):
    seed_everything(args.seed)  # the same head init and data order for every method
    return task.new_model()


def fit(task, args, model, lr):
    """Train model on the task: (seconds, peak CUDA MiB or None, trainable parameters, training state bytes: the
    weights as trained plus fp32 gradients and two Adam moments per trainable one)."""
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainable = trainable_parameters(model)[0]
    state = nbytes(model) + 3 * 4 * trainable  # counted before any conversion
    t0 = time.perf_counter()
    task.fit(model, config(args, task, lr))
    return time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**20 if cuda else None, trainable, state


def row(task, method, model, fitted=None):
    """A table row for a trained (or quantized) model: its score, sizes, and what fit() measured."""
    score, (seconds, peak, trainable, state), size = task.score(model), fitted or (None, None, 0, None), nbytes(model)
    print(f"  -> {method}: {task.shown.format(score)}, {trainable:,} trainable parameters, {size / 2**20:.1f} MiB")
    return dict(task=task.name, method=method, metric=task.shown.format(score), value=score, trainable=trainable,
                bytes=size, mib=size / 2**20, state_mib=None if state is None else state / 2**20, peak_mib=peak,
                seconds=seconds, s_per_step=None if seconds is None else seconds / task.steps)


def full(task, args, done):
    print(f"\n# {task.name}, full fine-tuning: every weight trains, {task.steps} steps of {task.batch_size}, "
          f"lr {task.lr:g}")
    done["full"] = model = fresh(task, args)
    return [row(task, "full fine-tuning (fp32 weights)", model, fit(task, args, model, task.lr))]


def adapters(task, args, quantized):
    """LoRA (quantized=False) or QLoRA: the base frozen (and for QLoRA its block linears NF4 first), adapters on it."""
    name = f"QLoRA: NF4 base + LoRA r={args.rank}, {args.targets}" if quantized else \
        f"LoRA r={args.rank}, {args.targets} (unmerged)"
    print(f"\n# {task.name}, {name.split(':')[0]}: rank-{args.rank} adapters (alpha {args.alpha:g}) on {args.targets} "
          f"linear layers{f' of an NF4 base (blocks of {args.nf4_block})' if quantized else ''}, "
          f"lr {task.lora_lr:g}")
    model = fresh(task, args)
    if quantized:  # the block linears become NF4 first; LoRA then wraps the NF4 layers
        quantize_model(model, "nf4", targets="all", block_size=args.nf4_block)
    add_lora(model, r=args.rank, alpha=args.alpha, dropout=args.lora_dropout, targets=args.targets)
    if task.head:  # a fresh head trains alongside the adapters (add_lora froze it)
        model.get_submodule(task.head).requires_grad_(True)
    return [row(task, name, model, fit(task, args, model, task.lora_lr))]


def ptq(task, args, done):
    rows = [] if "full" in done else full(task, args, done)  # alone, ptq trains the full model first, and shows it
    print(f"\n# {task.name}, post-training quantization of the fully fine-tuned model: its block linears rounded")
    for kind, what in (("int8", "int8 per channel"), ("nf4", "NF4")):
        t0 = time.perf_counter()
        blocks = {"block_size": args.nf4_block} if kind == "nf4" else {}
        model = quantize_model(copy.deepcopy(done["full"]).eval(), kind, targets="all", **blocks)
        print(f"  {what}: quantized in {time.perf_counter() - t0:.1f} s")
        rows.append(row(task, f"PTQ {what} of full fine-tuning", model))
    return rows


def qat(task, args, done):
    print(f"\n# {task.name}, QAT: full fine-tuning with the block linears fake-quantized to {args.qat_kind} "
          f"(straight-through estimator), lr {task.lr:g}, then converted to real {args.qat_kind}")
    model = prepare_qat(fresh(task, args), args.qat_kind, targets="all")
    fitted = fit(task, args, model, task.lr)  # QAT trains fp32 weights: their state is what it costs
    return [row(task, f"QAT {args.qat_kind}, converted", convert_qat(model).eval(), fitted)]


LEGEND = ("quality: SST-2 dev accuracy (higher is better), Tiny Shakespeare validation perplexity (lower is better); "
          "train state: weights + gradients + Adam moments (counted); peak CUDA: measured on a GPU only")
COLUMNS = [("task", "task", "{}"), ("method", "method", "{}"), ("quality", "metric", "{}"), ("trainable", "trainable",
           "{:,}"), ("model MiB", "mib", "{:.1f}"), ("train state MiB", "state_mib", "{:.1f}"), ("peak CUDA MiB",
           "peak_mib", "{:.0f}"), ("s / step", "s_per_step", "{:.3f}")]


def main(argv=None):
    args = parse_args(argv)
    check_out_dir(args.out_dir)  # before any work: a folder that cannot hold the results fails now, not at the end
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or minilm_dir()
    methods = METHODS if args.method == "all" else (args.method,)
    runs = {"full": full, "lora": lambda t, a, d: adapters(t, a, False), "qlora": lambda t, a, d: adapters(t, a, True),
            "ptq": ptq, "qat": qat}
    results = Results(args.out_dir, vars(args), smoke=args.smoke)
    for name in TASKS if args.task == "both" else (args.task,):
        seed_everything(args.seed)
        task, is_sample = (sst2_task if name == "sst2" else shakespeare_task)(args)
        done = {}  # the fully fine-tuned model, for PTQ
        for m in methods:  # each method's rows are on disk as soon as it finishes
            results.add(f"{name}_{m}", runs[m](task, args, done), sample=is_sample)
    results.finish(COLUMNS, LEGEND, label_key="method", value_key="value", group_key="task",
                   title="Chapter 12: SST-2 dev accuracy (%), Tiny Shakespeare validation perplexity")
    return results.rows


if __name__ == "__main__":
    run_main(main, name="ch12", memory="--batch-size, --max-len, --lm-batch-size or --block-size")
