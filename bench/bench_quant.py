"""Quantization's two goals, measured: int8 weight-only generation speed, and QLoRA's peak training memory.

    python bench/bench_quant.py --threads 1 --cpu-time        # a CPU shared with other jobs (see bench/README.md)
    python bench/bench_quant.py --skip-memory --repeats 5     # the speed table only

Speed. Greedy generation on GPT-2 124M (random weights, as bench/common.py builds them: no checkpoint can be
downloaded here) at batch 1, 128 new tokens after a 16-token prompt, KV cache on. transformers' fp32 generate is
the baseline; nanoft runs fp32 and int8 weight-only (every linear layer of the blocks and the LM head in int8 with
one scale per output channel; embeddings and norms stay fp32), with each matmul kernel torch offers:
  int8pack fp32   torch._weight_int8pack_mm on fp32 activations
  int8pack bf16   the same kernel on activations cast to bf16 (and the result cast back to fp32)
  dequantize      the layer's weight dequantized to fp32 at every call, then F.linear
  fbgemm W8A8     for comparison, not weight-only: torch.ops.quantized.linear_dynamic also rounds every call's
                  activations to int8 (one scale per call) and multiplies int8 by int8
Goal: at least 2.5x transformers' fp32 tokens/s. Agreement: the share of the 128 greedy tokens equal to
transformers' fp32 ones, position by position (after a first difference the two continuations part ways, so
the first differing position is shown too), and, free of that cascade, the share of positions where the int8
model's next-token argmax, fed the fp32 continuation, equals fp32's ("teacher-forced").

Memory. One training step after another (AdamW, batch --batch x --seq, next-token loss) on GPT-2 124M: full
fine-tuning in fp32 against QLoRA (NF4 base with double quantization loaded straight from the checkpoint, LoRA
r=8 on every linear layer of the blocks, fp32 adapters). Each runs in its own child process and reports its peak
resident memory while training above the resident memory it had before building the model: weights, gradients,
AdamW state and activations, all of it, but not the transient of reading the checkpoint (measured on a CPU as
bench/bench_train.py does). Goal: QLoRA at most 0.4 of full fine-tuning.
"""
import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

from common import add_common_args, build_pair, interleaved, machine, print_table, setup

from nanoft import GPT2
from nanoft.quant.lora import add_lora, trainable_parameters
from nanoft.quant.quantize import load_quantized, model_nbytes, quantize_model

KERNELS = {"int8pack fp32": dict(kernel="int8pack"),
           "int8pack bf16": dict(kernel="int8pack", activation_dtype=torch.bfloat16),
           "dequantize": dict(kernel="dequantize"),
           "fbgemm W8A8 (not weight-only)": dict(kernel="fbgemm")}


def agreement(a, b, prompt_len):
    """(share of equal new tokens, first differing new position or None) of two (1, T) greedy outputs."""
    same = (a[0, prompt_len:] == b[0, prompt_len:])
    first = None if bool(same.all()) else int((~same).nonzero()[0])
    return same.float().mean().item(), first


@torch.inference_mode()
def teacher_forced_agreement(model, reference, seq, prompt_len):
    """Share of positions where model's argmax next token on the reference's own sequence equals reference's."""
    a = model(seq[:, :-1])[0][:, prompt_len - 1:].argmax(-1)
    b = reference(input_ids=seq[:, :-1]).logits[:, prompt_len - 1:].argmax(-1)
    return (a == b).float().mean().item()


def speed(args):
    _, ours, hf = build_pair("gpt2-124M", args.device)
    ours.eval(), hf.eval()
    hf.generation_config.eos_token_id = None  # exactly --new-tokens tokens, as nanoft decodes without eos
    hf.generation_config.pad_token_id = 0
    models = {"nanoft fp32": ours}
    for label, kw in KERNELS.items():
        models[f"nanoft int8, {label}"] = quantize_model(copy.deepcopy(ours), "int8", head=True, **kw).eval()
    bytes_int8 = model_nbytes(models["nanoft int8, int8pack fp32"])
    prompt = torch.randint(0, 1000, (1, args.prompt_len), generator=torch.Generator().manual_seed(0)).to(args.device)
    mask = torch.ones_like(prompt)

    def gen(model):
        @torch.inference_mode()
        def run():
            return model.generate(prompt, max_new_tokens=args.new_tokens, temperature=0.0)
        return run

    @torch.inference_mode()
    def hf_gen():
        return hf.generate(prompt, attention_mask=mask, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, do_sample=False, use_cache=True)

    reference = hf_gen()
    fns = [hf_gen] + [gen(m) for m in models.values()]
    times = interleaved(fns, args.repeats, args.warmup, args.device)
    tokens = args.new_tokens
    rows = [["transformers fp32", f"{tokens / times[0]:.1f}", "1.00", "-", "-", "-"]]
    for (label, model), t in zip(models.items(), times[1:]):
        share, first = agreement(gen(model)(), reference, args.prompt_len)
        forced = teacher_forced_agreement(model, hf, reference, args.prompt_len)
        rows.append([label, f"{tokens / t:.1f}", f"**{times[0] / t:.2f}**", f"{100 * share:.1f}%",
                     "none" if first is None else str(first), f"{100 * forced:.1f}%"])
        print(f"{label}: {times[0] / t:.2f}x transformers fp32", flush=True)
    print_table(f"Greedy generation, GPT-2 124M, batch 1, prompt {args.prompt_len}, {tokens} new tokens "
                "(ratio: tok/s over transformers fp32's; agreement with transformers fp32's tokens)",
                ["model", "tok/s", "ratio", "same tokens", "first difference", "teacher-forced same"], rows)
    full = sum(p.numel() * p.element_size() for p in ours.parameters())
    print(f"\nweights: fp32 {full / 2**20:.0f} MiB; int8 model {bytes_int8['quantized'] / 2**20:.0f} MiB of int8 "
          f"weights and scales + {bytes_int8['full'] / 2**20:.0f} MiB kept in fp32 (embeddings, norms, biases)")


# ----------------------------------------------------------------------------- memory


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (the memory measurement needs Linux)")


def child(args):
    """Run in a fresh process: build one model, train it for --steps steps, print its peak memory as JSON."""
    which, folder = args.child
    torch.manual_seed(0)
    base = _rss_kib("VmRSS")
    if which == "full":
        model = GPT2.from_pretrained(folder)
    else:
        model = add_lora(load_quantized(GPT2, folder, "nf4"), r=8, alpha=16, targets="all")
    gc.collect()
    # reset the peak resident size (VmHWM) to the current one: the peak below is the model plus training, without
    # the loading (the memory-mapped checkpoint is resident while it is read, and released afterwards)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    model.gradient_checkpointing = args.checkpointing
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (args.batch, args.seq), generator=g)
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)
    for _ in range(args.steps):  # the second step holds AdamW's state too
        loss = model(ids, targets=targets)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    trainable, total = trainable_parameters(model)
    nbytes = model_nbytes(model)
    bits = 8 * nbytes["quantized"] / nbytes["quantized_params"] if nbytes["quantized_params"] else None
    print(json.dumps({"peak_mib": (_rss_kib("VmHWM") - base) / 1024, "trainable": trainable, "total": total,
                      "bits_per_quantized_param": bits}))


def run_child(args, which, folder):
    cmd = [sys.executable, __file__, "--child", which, folder, "--batch", str(args.batch), "--seq", str(args.seq),
           "--steps", str(args.steps)] + (["--threads", str(args.threads)] if args.threads else []) + (
           ["--checkpointing"] if args.checkpointing else [])
    # glibc would keep freed blocks in its heap, hiding them from the resident size: serve blocks over 64 KiB by
    # mmap, returned at free, so that the resident size follows the live tensors (as in bench_train.py)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory child {which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(args):
    import transformers
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=768, n_layer=12, n_head=12))
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        del hf
        full, qlora = run_child(args, "full", folder), run_child(args, "qlora", folder)
    rows = [["full fine-tuning, fp32", f"{full['trainable']:,}", f"{full['peak_mib']:.0f}", "1.00", "-"],
            ["QLoRA (NF4 + LoRA r=8, all linear)", f"{qlora['trainable']:,}", f"{qlora['peak_mib']:.0f}",
             f"**{qlora['peak_mib'] / full['peak_mib']:.2f}**", f"{qlora['bits_per_quantized_param']:.3f}"]]
    print_table(f"Peak training memory, GPT-2 124M, batch {args.batch} x {args.seq}, AdamW, {args.steps} steps"
                f"{', gradient checkpointing' if args.checkpointing else ''} (ratio: over full fine-tuning)",
                ["method", "trainable params", "peak MiB", "ratio", "bits per NF4 weight"], rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per model; the median is reported")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8, help="training batch for the memory measurement (default 8)")
    p.add_argument("--seq", type=int, default=128, help="training sequence length (default 128)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in both (as QLoRA trains)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    add_common_args(p)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        if args.threads:
            torch.set_num_threads(args.threads)
        return child(args)
    setup(args)
    print(f"machine: {machine(args.device)}")
    if not args.skip_speed:
        speed(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
