"""GPU only: model FLOPs utilisation (MFU) of nanoft's GPT-2 124M training step in bf16, with and without torch.compile.

    python bench/bench_mfu.py                        # batch 16 x 1024; the peak is looked up from the GPU's name
    python bench/bench_mfu.py --peak-tflops 312      # any other card: its dense bf16 peak, in TFLOP/s

The step is what nanoft.training.train runs: bf16 autocast, forward with the loss (model(x, targets=y)), backward,
AdamW from nanoft.training.optim.build_optimizer (the fused CUDA kernel), zero_grad.
FLOPs per token follow the PaLM paper's appendix B, as nanoGPT's estimate_mfu does: 6 N for the weight
matmuls forward and backward, where N counts every parameter but the position embedding (the tied wte
counts once, as the LM head's matmul), plus 12 L T C for attention scores and their use, T the sequence.
MFU = achieved FLOP/s / the card's peak dense bf16 FLOP/s (no sparsity).
"""
import argparse
import time

import torch

from common import machine, print_table

from nanoft import GPT2, GPT2Config
from nanoft.training.optim import build_optimizer

# dense bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s (the 2:4-sparsity figures are twice these)
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("L40S", 362.0),
                    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0)]


def peak_tflops(name: str) -> float:
    for key, tflops in PEAK_BF16_TFLOPS:  # most specific first: "H100 PCIe" before "H100"
        if key in name:
            return tflops
    raise SystemExit(f"no bf16 peak known for {name!r}: pass --peak-tflops (the card's dense bf16 TFLOP/s)")


def flops_per_token(model: GPT2, seq: int) -> float:
    cfg = model.config
    n = model.num_parameters() - model.transformer.wpe.weight.numel()
    return 6 * n + 12 * cfg.n_layer * seq * cfg.n_embd


def measure(model, runner, batch, seq, steps, warmup):
    """Seconds per training step; `runner` is the model itself or its torch.compile wrapper."""
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.1)
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq + 1), device="cuda", generator=g)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()  # inputs and next-token targets, as lm_data makes them

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = runner(x, targets=y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):  # the compiled variant compiles here
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20, help="timed steps (their mean is reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 TFLOP/s (default: from its name)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_mfu.py measures GPU utilisation and needs a CUDA device; none was found")
    peak = args.peak_tflops or peak_tflops(torch.cuda.get_device_name(0))
    torch.backends.cuda.matmul.allow_tf32 = True  # the few fp32 matmuls outside autocast, as a GPU user runs them
    print(f"machine: {machine('cuda')}")
    print(f"GPT-2 124M, batch {args.batch} x {args.seq}, bf16 autocast, peak {peak:.0f} TFLOP/s, "
          f"mean of {args.steps} steps after {args.warmup} warm-up")
    rows = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = GPT2(GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).cuda()
        runner = torch.compile(model) if compiled else model
        dt = measure(model, runner, args.batch, args.seq, args.steps, args.warmup)
        tokens_per_s = args.batch * args.seq / dt
        mfu = flops_per_token(model, args.seq) * tokens_per_s / (peak * 1e12)
        rows.append(["torch.compile" if compiled else "eager", f"{dt * 1e3:.1f}", f"{tokens_per_s:,.0f}",
                     f"{100 * mfu:.1f}%", f"{torch.cuda.max_memory_allocated() / 2**30:.1f}"])
        del model, runner
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    print_table("nanoft GPT-2 124M training step on the GPU", ["mode", "step ms", "tokens/s", "MFU", "peak GiB"], rows)


if __name__ == "__main__":
    main()
