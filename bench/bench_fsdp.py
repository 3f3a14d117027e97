"""Peak memory per process of DDP against FSDP2: SmolLM2-135M full fine-tuning on 2 CPU processes (gloo).

    python bench/bench_fsdp.py          # 1 process, then DDP and FSDP2 on 2: 3 steps of 2 x 256 tokens each
    python bench/bench_fsdp.py --steps 2 --seq 128 --runs fsdp
    python bench/bench_fsdp.py --method qlora     # adapters on an NF4 base: the peaks only (the formula is for full)

Each process loads SmolLM2-135M-Instruct (Llama.from_gguf(smollm2_gguf()), fp32), resets the kernel's peak-RSS
counter (/proc/self/clear_refs), trains `steps` AdamW steps through nanoft.train with TrainConfig(parallel=...),
and reads its peak resident memory (VmHWM). What each should need, with P parameters and N processes:

    1 process  runtime + 16 P                 weights 4 bytes, gradients 4, AdamW's two moments 8   + activations
    DDP        runtime + 16 P + 4 P           the same, and DDP's gradient buckets (a copy it all-reduces)
    FSDP2      runtime + 16 P / N + gathered  each process 1/N of all four, and one group's full weights and
                                              gradients while it computes (the root's: the 28M-parameter embedding)

runtime is a process's resident memory before loading the model (Python, torch, gloo); activations are the
1-process run's peak minus runtime and 16 P (the same batch per process in every run, so the same activations).
The table puts the measured peak beside (16 P) / N + activations, the figure FSDP2 should come near.
Linux only (/proc). One thread per process; malloc returns freed memory (keep_freed_memory=False), so the peak is
what was live, not what glibc kept.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a clone without installing

from nanoft import Llama, TrainConfig, prepare_for_tuning, smollm2_gguf, train  # noqa: E402

MB = 2 ** 20


def rss(field="VmRSS") -> int:
    """This process's resident memory (VmRSS) or its peak since the last reset (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status: this benchmark needs Linux")


def worker(args):
    """One process of one run: load, reset the peak, train, write what it measured to args.out/rank{R}.json."""
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    runtime = rss()
    model = Llama.from_gguf(smollm2_gguf())
    n_params = model.num_parameters()
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    root = n_params - block * model.config.num_hidden_layers  # the embedding (tied head) and the final norm
    prepare_for_tuning(model, args.method)  # "full": everything trains; "lora" / "qlora": adapters (r 16, every linear)
    g = torch.Generator().manual_seed(rank)
    data = []
    for _ in range(args.batch_size * args.steps * int(os.environ.get("WORLD_SIZE", "1"))):
        ids = torch.randint(0, model.config.vocab_size, (args.seq + 1,), generator=g)
        labels = ids[1:].clone()
        labels[: args.seq // 2] = -100  # SFT: the first half is the prompt
        data.append({"input_ids": ids[:-1], "labels": labels})
    cfg = TrainConfig(lr=1e-5, max_steps=args.steps, batch_size=args.batch_size, device="cpu", precision="fp32",
                      keep_freed_memory=False, progress=False, parallel=args.parallel, shuffle=False, log_every=1)
    loaded = rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak from here on: loading the GGUF (file, dequantized copies) is not training
    result = train(model, data, lambda m, b: m(b["input_ids"], targets=b["labels"])[1], cfg)
    record = {"rank": rank, "params": n_params, "root": root, "block": block, "runtime": runtime, "loaded": loaded,
              "peak": rss("VmHWM"),
              "loss": result.history[-1]["loss"]}
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(record))


def run(kind, args, out):
    """kind: "one" (a plain process), "ddp" or "fsdp" (2 processes under torchrun). -> the records of its ranks."""
    cmd = [__file__, "--worker", "--out", str(out), "--parallel", "ddp" if kind == "one" else kind,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq", str(args.seq),
           "--method", args.method]
    launcher = [sys.executable] if kind == "one" else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    # glibc serves every block of 64 KiB or more with its own mmap and unmaps it when freed (a fixed threshold also
    # stops glibc from raising it as blocks are freed): the resident size then follows what is live, not what
    # the heap kept after fragmenting (FSDP2's many shard-sized blocks would otherwise count twice)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MALLOC_MMAP_THRESHOLD_": str(64 << 10)}
    subprocess.run([*launcher, *cmd], check=True, env=env)
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2, help="sequences per process per step")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--runs", default="one,ddp,fsdp")
    ap.add_argument("--method", default="full", choices=["full", "lora", "qlora"])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--parallel", default="ddp", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.runs.split(","):
            out = Path(tmp, kind)
            out.mkdir()
            results[kind] = run(kind, args, out)
    if args.method != "full":
        print(f"\nSmolLM2-135M, {args.method} (r 16 on every block linear); {args.batch_size} x {args.seq} tokens per "
              f"process per step, {args.steps} steps, fp32, 1 thread each. Peak resident MiB over the runtime:")
        for kind, records in results.items():
            print(f"{kind:<6}" + "".join(f"  rank {r['rank']}: {(r['peak'] - r['runtime']) / MB:,.0f}"
                                         for r in records))
        return
    first = results[next(iter(results))][0]
    P = first["params"]
    state = 16 * P  # fp32 weights + gradients + AdamW's two moments
    # FSDP2 also holds whole, while they compute: the root group (embedding, tied head, final norm) for the whole
    # step, and a block or two; each as its weights, its gradient and the gradient's reduce-scatter buffer
    gathered = 3 * 4 * (first["root"] + 2 * first["block"])
    print(f"\nSmolLM2-135M full fine-tuning, P = {P / 1e6:.1f}M parameters, 16 P = {state / MB:,.0f} MiB; "
          f"{args.batch_size} x {args.seq} tokens per process per step, {args.steps} steps, fp32, 1 thread each")
    one = results.get("one")
    activations = one[0]["peak"] - one[0]["runtime"] - state if one else None
    if activations is not None:
        print(f"activations (1 process: peak - runtime - 16 P): {activations / MB:,.0f} MiB")
    print(f"FSDP2's gathered groups (3 x 4 bytes x (root {first['root'] / 1e6:.1f}M + 2 blocks of "
          f"{first['block'] / 1e6:.1f}M)): {gathered / MB:,.0f} MiB")
    print(f"{'run':<6}{'rank':>5}{'runtime':>9}{'loaded':>8}{'peak':>8}{'peak - runtime':>16}"
          f"{'expected':>10}{'ratio':>7}{'+ gathered':>12}{'ratio':>7}   (MiB)")
    for kind, records in results.items():
        world = 1 if kind == "one" else args.nproc
        expected = state * (1.25 if kind == "ddp" else 1.0 / world) + (activations or 0)
        fuller = expected + (gathered if kind == "fsdp" else 0)
        for r in records:
            used = r["peak"] - r["runtime"]
            print(f"{kind:<6}{r['rank']:>5}{r['runtime'] / MB:>9,.0f}{r['loaded'] / MB:>8,.0f}{r['peak'] / MB:>8,.0f}"
                  f"{used / MB:>16,.0f}{expected / MB:>10,.0f}{used / expected:>7.2f}{fuller / MB:>12,.0f}"
                  f"{used / fuller:>7.2f}")
    print("expected: 1 process 16 P, DDP 16 P + 4 P (its gradient buckets), FSDP2 16 P / N; each + activations. "
          "loaded: after loading the model, before training")


if __name__ == "__main__":
    main()
