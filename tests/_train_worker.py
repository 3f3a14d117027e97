"""A tiny training run in its own process, for tests/test_train.py: SIGKILL-and-resume, and torchrun DDP.

    python tests/_train_worker.py OUT_DIR [--kill-at-call K] [--resume] [--batch-size B] ...
    torchrun --standalone --nproc_per_node=2 tests/_train_worker.py OUT_DIR --batch-size 4 --dropout 0

With --kill-at-call K the process sends itself SIGKILL inside the K-th call of the loss function,
i.e. in the middle of an optimizer step, with no chance to clean up: the real thing.
"""
import argparse
import os
import signal
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanoft.training.train import TrainConfig, seed_everything, train  # noqa: E402


class TinyNet(nn.Module):
    """Embedding -> MLP with dropout: an embedding (no decay), matrices (decay) and dropout (RNG) to restore."""

    def __init__(self, vocab=16, dim=8, seq=6, hidden=32, classes=4, dropout=0.2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(seq * dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x, y):
        h = self.emb(x).flatten(1)  # (B, seq * dim)
        return F.cross_entropy(self.out(self.drop(torch.relu(self.fc(h)))), y)


def tiny_dataset(n=40, seq=6, vocab=16, classes=4):
    g = torch.Generator().manual_seed(1234)  # the data never depends on the training seed or the global RNG
    x = torch.randint(0, vocab, (n, seq), generator=g)
    y = (x.sum(1) + torch.randint(0, 2, (n,), generator=g)) % classes
    return [{"input_ids": x[i], "y": y[i]} for i in range(n)]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--checkpoint-every", type=int, default=3)
    ap.add_argument("--kill-at-call", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--group-by-length", action="store_true")
    args = ap.parse_args(argv)

    seed_everything(0)
    model = TinyNet(dropout=args.dropout)
    calls = 0

    def loss_fn(m, batch):
        nonlocal calls
        calls += 1
        if calls == args.kill_at_call:
            os.kill(os.getpid(), signal.SIGKILL)
        return m(batch["input_ids"], batch["y"])

    cfg = TrainConfig(lr=3e-2, weight_decay=0.1, warmup_steps=2, max_steps=args.max_steps, decay="cosine",
                      min_lr_ratio=0.1, batch_size=args.batch_size, grad_accum_steps=args.accum, grad_clip=0.5,
                      device="cpu", precision="fp32", out_dir=args.out_dir, checkpoint_every=args.checkpoint_every,
                      resume=args.resume, log_every=1, progress=False, seed=7, group_by_length=args.group_by_length)
    # the examples all have 6 ids; a made-up "length" (their sum, 0..90) gives the grouping something to sort
    train(model, tiny_dataset(), loss_fn, cfg, length_fn=lambda ex: int(ex["input_ids"].sum()))


if __name__ == "__main__":
    main()
