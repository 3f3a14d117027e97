"""What the chapter-13 solutions share: their common flags, the pretrained BERT, and one run's TrainConfig.

Nothing here imports the chapter script: each solution composes nanoft's library (nanoft.recipes.classification,
nanoft.recipes.extractive_qa, nanoft.recipes.mlm, nanoft.recipes.mixing) itself. The flags are parsed once; what the runs need from them is
passed on as explicit arguments or as a `Run` (a dataclass), never as the argparse namespace.
"""
import time
from dataclasses import dataclass

import torch

from nanoft import BERT, TrainConfig, load_bert_tokenizer, seed_everything
from nanoft.io.assets import minilm_dir
from nanoft.cli.flags import (ChapterParser, add_io_flags, add_run_flags, fraction, nonneg_float, nonneg_int,
                              positive_float, positive_int)
from nanoft.cli.report import check_out_dir

# --smoke: tiny sizes that check the code runs in seconds (its numbers mean nothing); flags given still win
SMOKE = dict(sst2_train=48, sst2_val=16, sst2_dev=24, max_len=32, batch_size=8, steps=4, evals=2, no_progress=True)


def base_parser(name, doc, **defaults):
    """A solution's parser: its docstring's first paragraph, --smoke, and the flags every chapter-13 solution has,
    with the exercise's own defaults (e.g. steps=100). The solution adds its own flags to what this returns."""
    p = ChapterParser(name, doc.split("\n\n")[0], "The exercise's table is rewritten in OUT_DIR after every run of "
                      "it, so that a Ctrl-C keeps the runs that had finished.", smoke=SMOKE)
    add_io_flags(p, "runs/ch13", out_help="where the exercise's JSON (and a plot) go")
    g = p.add_argument_group("SST-2")
    g.add_argument("--sst2-train", type=nonneg_int, default=4000,
                   help="SST-2 training sentences (a seeded subset; 0 = all 66,849)")
    g.add_argument("--sst2-val", type=positive_int, default=500,
                   help="SST-2 sentences carved out of train.tsv for validation (best weights)")
    g.add_argument("--sst2-dev", type=nonneg_int, default=0,
                   help="SST-2 dev sentences of the final accuracy (first N; 0 = all 872)")
    g.add_argument("--max-len", type=positive_int, default=64, help="SST-2 tokens per sentence")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=positive_int, default=100, help="optimizer steps of each fine-tuning run")
    g.add_argument("--lr", type=positive_float, default=1e-4, help="lr of fine-tuning the encoder")
    g.add_argument("--batch-size", type=positive_int, default=32, help="SST-2 sentences per step")
    g.add_argument("--evals", type=positive_int, default=4,
                   help="validation evaluations per run (the weights of the best one are kept)")
    g.add_argument("--warmup", type=fraction, default=0.1, help="share of each run's steps spent warming up")
    g.add_argument("--weight-decay", type=nonneg_float, default=0.01, help="AdamW weight decay (matrices only)")
    add_run_flags(p)
    p.set_defaults(**defaults)
    return p


def parse_flags(p, argv=None, smoke=None):
    """p.parse_args, with the smoke sizes (SMOKE, then the solution's own `smoke`) under --smoke."""
    p.smoke.update(smoke or {})
    return p.parse_args(argv)


@dataclass
class Run:
    """How every training run of a solution is run, made once from the flags and then passed around."""
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    progress: bool = True
    warmup: float = 0.1
    evals: int = 4
    weight_decay: float = 0.01

    def config(self, steps, lr, batch_size, **kw) -> TrainConfig:
        """One run's TrainConfig: warmup then linear decay, `evals` validations over the run."""
        return TrainConfig(**{**dict(lr=lr, max_steps=steps, batch_size=batch_size, weight_decay=self.weight_decay,
                                     warmup_steps=int(self.warmup * steps), decay="linear",
                                     eval_every=max(1, -(-steps // self.evals)), device=self.device,
                                     precision=self.precision, progress=self.progress, seed=self.seed), **kw})


def start(args):
    """Threads and seed set, the model folder resolved, the tokenizer and pretrained encoder loaded:
    (Run, model folder, tokenizer, encoder)."""
    check_out_dir(args.out_dir)  # before any work: a folder that cannot hold the table fails now
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model or minilm_dir()
    seed_everything(args.seed)
    tok, encoder = load_bert_tokenizer(model_dir), BERT.from_pretrained(model_dir)
    c = encoder.config
    print(f"BERT from {model_dir}: {c.num_hidden_layers} layers, width {c.hidden_size}, "
          f"{encoder.num_parameters():,} parameters")
    run = Run(args.device, args.precision, args.seed, not args.no_progress, args.warmup, args.evals,
              args.weight_decay)
    return run, model_dir, tok, encoder


def timed(fn, *a, **kw):
    """(fn's result, seconds it took)."""
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def note_sample(*datasets):
    """A warning line when any data set is nanoft's bundled sample (its numbers only show that the code runs)."""
    if any(d.get("sample") for d in datasets if d):
        print("NOTE: SAMPLE data (the real data sets were not found): the numbers show that the code runs, no more.")
