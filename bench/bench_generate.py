"""Generation speed with the KV cache: nanoft's GPT2.generate against transformers' generate, greedy.

    python bench/bench_generate.py                       # gpt2-small and gpt2-124M, batch 1 and 8, 128 new tokens
    python bench/bench_generate.py --threads 1 --cpu-time   # a CPU shared with other jobs (see bench/README.md)
    python bench/bench_generate.py --models gpt2-124M --batches 1

Both decode greedily from the same 16-token prompt for exactly --new-tokens tokens (no end-of-text stop),
each with its own KV cache (transformers: its default DynamicCache), and the script checks that both
produce the same tokens before it reports their speed. Tokens/s counts new tokens over the whole call,
prompt included, for all rows of the batch.
Ratio: nanoft tokens/s over transformers tokens/s (above 1 means nanoft is faster).

Each configuration runs in fp32 and in bf16. bf16 casts the weights of both models to bf16 (model.to(bfloat16),
what one does to serve a model: decoding one token reads every weight, so half the bytes is up to half the
time); the KV cache and the activations are then bf16 too. The row "each library's default" is nanoft in
bf16 against transformers in fp32. bf16 rounds the logits, so its greedy choice can differ from fp32's at a
near-tie, and from there on the two texts part: "agree" is the share of the new tokens equal to the same
library's fp32 tokens at the same position, and "first diff" the position of the first that is not.
Random weights give flat logits, with many near-ties, so these are a pessimistic measure; --real adds the rows
of a trained model (chapter 4's small GPT-2 from the nanoft cache, or any Hugging Face folder).

"Matmuls alone" times the weight matmuls of the same generation and nothing else: every Linear of every
block on the prompt and then on one position per new token, and the LM head on one position per step.
Both libraries must run exactly these (same shapes, same weights, same kernels), so the ceiling column,
transformers' time over this one, is the highest ratio any implementation could reach on this machine.
"""
import argparse
import copy
import glob
import os

import torch
import torch.nn.functional as F

from common import add_common_args, build_pair, interleaved, machine, print_table, setup


def matmuls_alone(model, batch, prompt_len, new_tokens, device):
    """A closure that runs only the weight matmuls of a cached greedy generation of new_tokens tokens."""
    C = model.config.n_embd
    linears = [m for b in model.transformer.h for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
    inputs = {T: (torch.zeros(batch, T, C, device=device), torch.zeros(batch, T, 4 * C, device=device))
              for T in (prompt_len, 1)}

    @torch.inference_mode()
    def run():
        for T in [prompt_len] + [1] * (new_tokens - 1):  # the prompt makes the first token, then one position a step
            x, h = inputs[T]
            for lin in linears:
                F.linear(x if lin.in_features == C else h, lin.weight, lin.bias)
            F.linear(x[:, -1:], model.lm_head.weight)  # logits of the last position only

    return run


def agreement(tokens, reference, prompt_len):
    """(share of the new tokens equal to the reference's at the same position, position of the first that is not)."""
    new, ref = tokens[:, prompt_len:], reference[:, prompt_len:]
    same = (new == ref)
    first = int((~same).any(0).nonzero()[0]) if not same.all() else new.size(1)  # over the whole batch
    return same.float().mean().item(), first


def real_pair(folder, device):
    """nanoft and transformers loaded from one trained Hugging Face folder (for --real)."""
    import transformers

    from nanoft import GPT2
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).to(device)
    return GPT2.from_pretrained(folder).to(device), hf


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["gpt2-small", "gpt2-124M"], choices=["gpt2-small", "gpt2-124M"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="batch sizes (default 1 and 8)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per library; the median is reported")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="weight precisions (default both; bf16 casts both models' weights)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the matmuls-alone timing")
    p.add_argument("--real", nargs="?", const="auto", default=None,
                   help="also a trained model: a Hugging Face GPT-2 folder; without a value chapter 4's cached one")
    add_common_args(p)
    args = p.parse_args(argv)
    setup(args)

    print(f"machine: {machine(args.device)}")
    print(f"greedy, prompt {args.prompt_len}, {args.new_tokens} new tokens, {' and '.join(args.dtypes)} weights, "
          f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up, "
          f"{'CPU time' if args.cpu_time else 'wall clock'}")
    rows = []
    pairs = [(name, None) for name in args.models]
    if args.real:
        pairs.append(("trained: " + os.path.basename(os.path.normpath(real_folder(args.real))), real_folder(args.real)))
    for name, folder in pairs:
        if folder:
            ours32, hf32 = real_pair(folder, args.device)
        else:
            _, ours32, hf32 = build_pair(name, args.device)
        models = {"fp32": (ours32, hf32)}
        # a small trained model may hold fewer positions than prompt + new tokens (chapter 4's: 64): decode what fits
        new_tokens = min(args.new_tokens, ours32.config.n_positions - args.prompt_len + 1)
        if "bf16" in args.dtypes:
            models["bf16"] = (copy.deepcopy(ours32).to(torch.bfloat16), copy.deepcopy(hf32).to(torch.bfloat16))
        for ours, hf in models.values():
            ours.eval(), hf.eval()
            hf.generation_config.eos_token_id = None  # decode exactly --new-tokens tokens, like nanoft without eos
            hf.generation_config.pad_token_id = 0
        for batch in args.batches:
            g = torch.Generator().manual_seed(0)
            prompt = torch.randint(0, 1000, (batch, args.prompt_len), generator=g).to(args.device)
            mask = torch.ones_like(prompt)

            def gen(model, is_hf):
                @torch.inference_mode()
                def run():
                    if is_hf:
                        return model.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens,
                                              min_new_tokens=new_tokens, do_sample=False, use_cache=True)
                    return model.generate(prompt, max_new_tokens=new_tokens, temperature=0.0)
                return run

            fns, labels = [], []
            for dt in args.dtypes:
                ours, hf = models[dt]
                fns += [gen(ours, False), gen(hf, True)]
                labels += [(dt, "nanoft"), (dt, "HF")]
            tokens_of = {lab: fn() for lab, fn in zip(labels, fns)}
            if not args.no_ceiling and "fp32" in args.dtypes:
                fns.append(matmuls_alone(ours32, batch, args.prompt_len, new_tokens, args.device))
            times = interleaved(fns, args.repeats, args.warmup, args.device)
            t = dict(zip(labels, times))
            n_tok = batch * new_tokens
            for dt in args.dtypes:
                # random weights give flat logits, where a 1e-6 difference can flip a near-tie: report, don't fail
                same = torch.equal(tokens_of[(dt, "nanoft")], tokens_of[(dt, "HF")])
                agree = "" if dt == "fp32" else "{:.0%} / {}".format(
                    *agreement(tokens_of[(dt, "nanoft")], tokens_of[("fp32", "nanoft")], args.prompt_len))
                agree_hf = "" if dt == "fp32" else "{:.0%} / {}".format(
                    *agreement(tokens_of[(dt, "HF")], tokens_of[("fp32", "HF")], args.prompt_len))
                ceiling = f"{t[('fp32', 'HF')] / times[-1]:.2f}" if dt == "fp32" and len(times) > len(labels) else ""
                rows.append([name, batch, dt, f"{n_tok / t[(dt, 'nanoft')]:,.1f}", f"{n_tok / t[(dt, 'HF')]:,.1f}",
                             f"**{t[(dt, 'HF')] / t[(dt, 'nanoft')]:.2f}**", ceiling, "yes" if same else "NO",
                             agree, agree_hf])
                print(f"{name} batch {batch} {dt}: {t[(dt, 'HF')] / t[(dt, 'nanoft')]:.2f}x", flush=True)
            if "bf16" in args.dtypes and "fp32" in args.dtypes:
                ratio = t[("fp32", "HF")] / t[("bf16", "nanoft")]
                rows.append([name, batch, "nanoft bf16 vs HF fp32", f"{n_tok / t[('bf16', 'nanoft')]:,.1f}",
                             f"{n_tok / t[('fp32', 'HF')]:,.1f}", f"**{ratio:.2f}**", "", "", "", ""])
                print(f"{name} batch {batch} nanoft bf16 / HF fp32: {ratio:.2f}x", flush=True)
        del models, ours32, hf32
    print_table("Greedy generation with a KV cache (ratio: nanoft tok/s / transformers tok/s, above 1 = nanoft faster; "
                "ceiling: HF fp32 over the matmuls alone; agree / first diff: bf16 tokens against the same library's "
                "fp32 tokens)", ["model", "batch", "weights", "tok/s, nanoft", "tok/s, HF", "ratio", "ceiling",
                                 "same tokens", "agree / first diff, nanoft", "agree / first diff, HF"], rows)


def real_folder(arg):
    if arg != "auto":
        return arg
    # chapter 4's pretrained small GPT-2, cached in Hugging Face format by chapters/ch04_pretrain_small_gpt2.py
    cache = os.environ.get("NANOFT_CACHE", os.path.expanduser("~/.cache/nanoft"))
    found = sorted(glob.glob(os.path.join(cache, "**", "config.json"), recursive=True))
    found = [os.path.dirname(f) for f in found if "gpt2" in f.lower() and
             os.path.exists(os.path.join(os.path.dirname(f), "model.safetensors"))]
    if not found:
        raise SystemExit(f"--real: no GPT-2 folder under {cache}: run chapters/ch04_pretrain_small_gpt2.py, "
                         "or pass a folder")
    return found[0]


if __name__ == "__main__":
    main()
