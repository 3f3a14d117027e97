"""SFT with a response-token-normalised loss (TrainConfig(loss_sum=True)) on examples of very uneven response
lengths, in its own process, for tests/test_instruction_tuning.py's DDP check:

    torchrun --standalone --nproc_per_node=2 tests/_sft_worker.py OUT_DIR --batch-size 2 --accum 2
    python tests/_sft_worker.py OUT_DIR --batch-size 4 --accum 2
Writes OUT_DIR/checkpoint.pt (the final weights) and OUT_DIR/log.jsonl.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanoft.models.gpt2 import GPT2, GPT2Config  # noqa: E402
from nanoft.recipes.instruction_tuning import fine_tune_sft, lm_feature  # noqa: E402
from nanoft.training.train import TrainConfig  # noqa: E402


def uneven_features():
    """Eight examples whose responses are 1 to 30 tokens long."""
    g = torch.Generator().manual_seed(0)
    lengths = [(5, 1), (3, 2), (6, 20), (4, 30), (2, 3), (7, 12), (3, 1), (5, 25)]
    return [lm_feature(torch.randint(0, 50, (p + r,), generator=g).tolist(), p) for p, r in lengths]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--accum", type=int, default=2)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=50, n_positions=64, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0))
    cfg = TrainConfig(lr=1e-2, max_steps=4, batch_size=args.batch_size, grad_accum_steps=args.accum, shuffle=False,
                      device="cpu", precision="fp32", out_dir=args.out_dir, log_every=1, progress=False)
    fine_tune_sft(model, uneven_features(), cfg)


if __name__ == "__main__":
    main()
