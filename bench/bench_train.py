"""Training-step and forward speed, and peak memory: nanoft against transformers on the same weights.

    python bench/bench_train.py                      # CPU, fp32 and bf16, all three models, batch 8 x 128
    python bench/bench_train.py --threads 1 --cpu-time --profile   # a CPU shared with other jobs (bench/README.md)
    python bench/bench_train.py --models gpt2-small --repeats 3 --dtypes bf16
    python bench/bench_train.py --device cuda --dtypes bf16 [--compile]

Each precision is timed with both libraries under the same autocast (fp32: none), and all of them in one
rotation (nanoft fp32, HF fp32, nanoft bf16, HF bf16, ...), so every ratio below comes from the same turns.
The row "each library's default" sets nanoft's precision="auto" (nanoft.training.device: bf16 autocast where the CPU
or GPU has bf16) against transformers' default, fp32 (Trainer's bf16=False).

A training step is forward + loss + backward + AdamW step, each library used the way its own training
code uses it:
  GPT-2: next-token cross-entropy over the same 8 x 127 predictions. transformers computes it inside the
         model from `labels=ids` (it shifts the labels); nanoft from `targets` (ids shifted by one, -100 last),
         as nanoft.data.lm_data feeds it. Both losses are checked to be equal before anything is timed.
  BERT:  a mean-square loss on the last hidden state and on the pooler output (the encoder and the
         pooler, as a classification fine-tune uses them), with half the batch padded.
  AdamW: nanoft.training.optim.build_optimizer (what nanoft.training.train uses) against torch.optim.AdamW(fused=True),
         which is what transformers' Trainer uses by default ("adamw_torch_fused") with torch >= 2.8.
  malloc: glibc's defaults, as a transformers run has them; --keep-freed-memory sets up, for both libraries,
         what nanoft.training.train does on a Linux CPU (nanoft.training.device.keep_freed_memory: freed blocks stay in the heap
         instead of being unmapped, so the next step's large tensors need no fresh pages).
Forward: inference_mode, the logits (GPT-2) or the hidden states (BERT) of the same batch.
Memory: measured in a child process per library (so one library's peak cannot hide the other's): the
extra memory a forward / a training step needs on top of the loaded model, i.e. activations, gradients
and AdamW state (eager, also with --compile). On a GPU that is torch.cuda.max_memory_allocated(); on the
CPU the peak resident set size (Linux's VmHWM, reset before the measurement) minus the resident size just
before, with glibc told to return freed memory at once (MALLOC_MMAP_THRESHOLD_) so that the resident size
follows the live tensors.
Ratios are nanoft / transformers: below 1 means nanoft is faster (time) or smaller (memory).
"""
import argparse
import contextlib
import gc
import json
import os
import re
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F

from common import CONFIGS, add_common_args, build_pair, interleaved, machine, print_table, setup

from nanoft.training.device import keep_freed_memory, resolve_precision
from nanoft.training.optim import build_optimizer


def make_batch(batch, seq, device):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (batch, seq), generator=g).to(device)
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    mask[: batch // 2, seq - seq // 8:] = 0  # some padding, so the attention mask is real work for BERT
    # nanoft's targets: the next token at each position, -100 (ignored) where there is none
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)
    return ids, mask, targets


def make_optimizer(model, is_hf):
    if is_hf:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    return build_optimizer(model, lr=1e-4, weight_decay=0.01)


def make_step(kind, model, is_hf, batch, autocast, opt=None):
    """One training step of one library, as a closure that returns the loss. Pass `opt` to share one optimizer
    between the steps of several precisions: one AdamW state per precision would not fit GPT-2 124M twice over."""
    ids, mask, targets = batch
    model.train()  # dropout is 0 in both, but train mode is what a training step runs in
    opt = opt or make_optimizer(model, is_hf)

    def loss_fn():
        if kind == "gpt2":
            return model(input_ids=ids, labels=ids).loss if is_hf else model(ids, targets=targets)[1]
        if is_hf:
            out = model(input_ids=ids, attention_mask=mask)
            hidden, pooled = out.last_hidden_state, out.pooler_output
        else:
            hidden = model(ids, attention_mask=mask)
            pooled = model.pool(hidden)
        return hidden.float().pow(2).mean() + pooled.float().pow(2).mean()

    def step():
        with autocast():
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def forward_fns(kind, ours, hf, batch, autocast):
    ids, mask, _ = batch

    @torch.inference_mode()
    def ours_fwd():
        with autocast():
            return ours(ids)[0] if kind == "gpt2" else ours(ids, attention_mask=mask)

    @torch.inference_mode()
    def hf_fwd():
        with autocast():
            return hf(input_ids=ids) if kind == "gpt2" else hf(input_ids=ids, attention_mask=mask)

    return ours_fwd, hf_fwd


def autocast_for(dtype_name, device):
    """A context-manager factory: autocast to bf16/fp16, or nothing for fp32. Weights stay fp32 either way."""
    if dtype_name == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float16
    return lambda: torch.autocast(device.split(":")[0], dtype=dtype)


# ----------------------------------------------------------------------------- where the time goes

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def profile_step(step) -> tuple:
    """(ms in matmul kernels, ms in every other op) of one call, from torch.profiler's self CPU times."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / 1e3
    rest = {e.key: e.self_cpu_time_total / 1e3 for e in events if e.key not in MATMULS}
    return matmul, sum(rest.values()), rest


def top_ops(rest: dict, n=6) -> str:
    """The n ops outside the matmuls with the most self time: "aten::copy_ 91, aten::gelu 49, ..." (ms)."""
    return ", ".join(f"{k.replace('aten::', '')} {v:,.0f}" for k, v in sorted(rest.items(), key=lambda kv: -kv[1])[:n])


# ----------------------------------------------------------------------------- memory, in a child process


def _rss_kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))


def _extra_memory_mib(fn, device):
    """Peak memory fn() needs above what is allocated before it."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the peak resident set size (VmHWM) to the current one
    base = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - base) / 1024


def peak_memory_mib(args, name, which):
    cmd = [sys.executable, __file__, "--child", name, which, "--device", args.device, "--dtypes", args.dtypes[0],
           "--batch", str(args.batch), "--seq", str(args.seq)] + (["--threads", str(args.threads)] if args.threads else [])
    # glibc keeps freed blocks of up to 32 MiB in its heap (its mmap threshold grows as big blocks are freed),
    # hiding them from the resident size; serving every block over 64 KiB by mmap, returned to the system at
    # free, makes VmRSS follow the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {name} / {which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(args):
    name, which = args.child
    kind, ours, hf = build_pair(name, args.device)
    model = ours if which == "nanoft" else hf
    del ours, hf  # only the measured library's model stays alive
    batch = make_batch(args.batch, args.seq, args.device)
    ac = autocast_for(args.dtypes[0], args.device)
    model.eval()
    fwd = forward_fns(kind, model, model, batch, ac)[which == "transformers"]
    fwd_mib = _extra_memory_mib(fwd, args.device)
    step = make_step(kind, model, which == "transformers", batch, ac)
    train_mib = _extra_memory_mib(lambda: [step() for _ in range(2)], args.device)  # step 2 holds AdamW's state too
    print(json.dumps({"forward": fwd_mib, "train": train_mib}))


# ----------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="which configurations to time")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per library; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (torch.compile compiles here)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"],
                   help="autocast precisions to time, both libraries under the same one (fp32: none); "
                        "default fp32 and bf16")
    p.add_argument("--compile", action="store_true", help="wrap both models in torch.compile")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="CPU, Linux: glibc keeps freed blocks for reuse in this process, both libraries, as nanoft.training.train "
                        "sets it up (nanoft.training.device.keep_freed_memory); default: glibc's own setting, as transformers has")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument("--profile", action="store_true",
                   help="CPU: also split one training step of each library into matmuls and the rest (torch.profiler)")
    add_common_args(p)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup(args)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (optimizer, loss) as a GPU user runs them
    if args.child:
        return child(args)

    auto, why = resolve_precision("auto", torch.device(args.device))
    kept = keep_freed_memory() if args.keep_freed_memory and args.device == "cpu" else None
    print(f"machine: {machine(args.device)}")
    print(f"glibc malloc: {f'freed blocks up to {kept >> 20} MiB kept for reuse' if kept else 'its defaults'}")
    print(f"nanoft precision='auto' here: {auto} ({why})")
    print(f"batch {args.batch} x seq {args.seq}, {' and '.join(args.dtypes)}{', torch.compile' if args.compile else ''}, "
          f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up, "
          f"{'CPU time' if args.cpu_time else 'wall clock'}")
    speed, memory, profile = [], [], []
    for name in args.models:
        kind, ours, hf = build_pair(name, args.device)
        batch = make_batch(args.batch, args.seq, args.device)
        steps, fwds = [], []  # per precision: (nanoft, transformers)
        opt_ours, opt_hf = make_optimizer(ours, False), make_optimizer(hf, True)
        for dt in args.dtypes:
            ac = autocast_for(dt, args.device)
            steps.append((make_step(kind, ours, False, batch, ac, opt_ours), make_step(kind, hf, True, batch, ac, opt_hf)))
            fwds.append(forward_fns(kind, ours, hf, batch, ac))
        if args.compile:  # compile the modules in place, so the optimizers above keep the same parameters
            ours.compile(), hf.compile()
        for dt, (step_ours, step_hf) in zip(args.dtypes, steps):
            # the first step doubles as the check that both do the same work (bf16 rounds differently in each)
            loss_ours, loss_hf = step_ours(), step_hf()
            rtol = 1e-3 if dt == "fp32" else 3e-2
            assert torch.allclose(loss_ours.float(), loss_hf.float(), rtol=rtol), (name, dt, loss_ours.item(), loss_hf.item())
        ours.train(), hf.train()
        t_steps = interleaved([f for pair in steps for f in pair], args.repeats, args.warmup, args.device)
        ours.eval(), hf.eval()
        t_fwds = interleaved([f for pair in fwds for f in pair], args.repeats, args.warmup, args.device)
        tokens = args.batch * args.seq
        by_dtype = {}
        for i, dt in enumerate(args.dtypes):
            t_ours, t_hf, f_ours, f_hf = t_steps[2 * i], t_steps[2 * i + 1], t_fwds[2 * i], t_fwds[2 * i + 1]
            by_dtype[dt] = (t_ours, t_hf, f_ours, f_hf)
            speed.append([name, f"{dt}, both", f"{t_ours * 1e3:,.0f}", f"{t_hf * 1e3:,.0f}", f"**{t_ours / t_hf:.2f}**",
                          f"{tokens / f_ours:,.0f}", f"{tokens / f_hf:,.0f}", f"**{f_ours / f_hf:.2f}**"])
            print(f"{name} {dt}: train step {t_ours / t_hf:.2f}x, forward {f_ours / f_hf:.2f}x", flush=True)
        if auto in by_dtype and "fp32" in by_dtype:
            (t_ours, _, f_ours, _), (_, t_hf, _, f_hf) = by_dtype[auto], by_dtype["fp32"]
            speed.append([name, f"defaults: nanoft auto ({auto}), HF fp32", f"{t_ours * 1e3:,.0f}", f"{t_hf * 1e3:,.0f}",
                          f"**{t_ours / t_hf:.2f}**", f"{tokens / f_ours:,.0f}", f"{tokens / f_hf:,.0f}",
                          f"**{f_ours / f_hf:.2f}**"])
            print(f"{name} defaults (nanoft {auto}, HF fp32): train step {t_ours / t_hf:.2f}x", flush=True)
        if args.profile:
            ours.train(), hf.train()
            for dt, (step_ours, step_hf) in zip(args.dtypes, steps):
                # the profiler's op times are wall-clock: take the median of three steps each, in turns
                runs = [(profile_step(step_ours), profile_step(step_hf)) for _ in range(3)]
                (mm_ours, rest_ours), (mm_hf, rest_hf) = [[statistics.median(r[lib][part] for r in runs)
                                                           for part in (0, 1)] for lib in (0, 1)]
                # if nanoft spent no time at all outside the matmuls (which both libraries share), its ratio would be:
                floor = mm_ours / (mm_hf + rest_hf)
                profile.append([name, dt, f"{mm_ours:,.0f}", f"{rest_ours:,.0f}", f"{mm_hf:,.0f}", f"{rest_hf:,.0f}",
                                f"{mm_hf / (mm_hf + rest_hf):.0%}", f"**{floor:.2f}**",
                                top_ops(runs[1][0][2]), top_ops(runs[1][1][2])])
        del ours, hf, steps, fwds, opt_ours, opt_hf
        gc.collect()
        if not args.no_memory:
            m_ours, m_hf = peak_memory_mib(args, name, "nanoft"), peak_memory_mib(args, name, "transformers")
            memory.append([name, f"{m_ours['forward']:,.0f}", f"{m_hf['forward']:,.0f}",
                           f"**{m_ours['forward'] / m_hf['forward']:.2f}**",
                           f"{m_ours['train']:,.0f}", f"{m_hf['train']:,.0f}", f"**{m_ours['train'] / m_hf['train']:.2f}**"])
    print_table("Speed (time ratios: nanoft / transformers, below 1 = nanoft faster)",
                ["model", "precision", "train step ms, nanoft", "train step ms, HF", "step time ratio",
                 "forward tok/s, nanoft", "forward tok/s, HF", "forward time ratio"], speed)
    if profile:
        print_table("One training step, profiled: ms in matmuls (mm/addmm/bmm) and in everything else; the floor is "
                    "the ratio nanoft would reach with nothing but its matmuls; the largest other ops (ms)",
                    ["model", "precision", "matmuls, nanoft", "rest, nanoft", "matmuls, HF", "rest, HF",
                     "matmul share of HF's step", "floor ratio", "largest other ops, nanoft",
                     "largest other ops, HF"], profile)
    if memory:
        print_table(f"Peak memory above the loaded model, MiB, {args.dtypes[0]} (ratios: nanoft / transformers)",
                    ["model", "forward, nanoft", "forward, HF", "ratio", "train step, nanoft", "train step, HF", "ratio"],
                    memory)


if __name__ == "__main__":
    main()
