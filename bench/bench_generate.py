"""Generation speed with the KV cache: nanoft's GPT2.generate against transformers' generate, greedy.

    python bench/bench_generate.py                       # gpt2-small and gpt2-124M, batch 1 and 8, 128 new tokens
    python bench/bench_generate.py --threads 1 --cpu-time   # a CPU shared with other jobs (see bench/README.md)
    python bench/bench_generate.py --models gpt2-124M --batches 1

Both decode greedily from the same 16-token prompt for exactly --new-tokens tokens (no end-of-text stop),
each with its own KV cache (transformers: its default DynamicCache), and the script checks that both
produce the same tokens before it reports their speed. Tokens/s counts new tokens over the whole call,
prompt included, for all rows of the batch.
Ratio: nanoft tokens/s over transformers tokens/s (above 1 means nanoft is faster).

"Matmuls alone" times the weight matmuls of the same generation and nothing else: every Linear of every
block on the prompt and then on one position per new token, and the LM head on one position per step.
Both libraries must run exactly these (same shapes, same weights, same kernels), so the ceiling column,
transformers' time over this one, is the highest ratio any implementation could reach on this machine.
"""
import argparse

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["gpt2-small", "gpt2-124M"], choices=["gpt2-small", "gpt2-124M"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="batch sizes (default 1 and 8)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per library; the median is reported")
    p.add_argument("--warmup", type=int, default=1)
    add_common_args(p)
    args = p.parse_args(argv)
    setup(args)

    print(f"machine: {machine(args.device)}")
    print(f"greedy, prompt {args.prompt_len}, {args.new_tokens} new tokens, fp32, "
          f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up, "
          f"{'CPU time' if args.cpu_time else 'wall clock'}")
    rows = []
    for name in args.models:
        _, ours, hf = build_pair(name, args.device)
        ours.eval(), hf.eval()
        hf.generation_config.eos_token_id = None  # decode exactly --new-tokens tokens, like nanoft without eos
        hf.generation_config.pad_token_id = 0
        for batch in args.batches:
            g = torch.Generator().manual_seed(0)
            prompt = torch.randint(0, 1000, (batch, args.prompt_len), generator=g).to(args.device)
            mask = torch.ones_like(prompt)

            @torch.inference_mode()
            def ours_gen():
                return ours.generate(prompt, max_new_tokens=args.new_tokens, temperature=0.0)

            @torch.inference_mode()
            def hf_gen():
                return hf.generate(prompt, attention_mask=mask, max_new_tokens=args.new_tokens,
                                   min_new_tokens=args.new_tokens, do_sample=False, use_cache=True)

            # random weights give flat logits, where a 1e-6 difference can flip a near-tie: report, don't fail
            same = torch.equal(ours_gen(), hf_gen())
            floor = matmuls_alone(ours, batch, args.prompt_len, args.new_tokens, args.device)
            t_ours, t_hf, t_mm = interleaved([ours_gen, hf_gen, floor], args.repeats, args.warmup, args.device)
            tokens = batch * args.new_tokens
            rows.append([name, batch, f"{tokens / t_ours:,.1f}", f"{tokens / t_hf:,.1f}", f"**{t_hf / t_ours:.2f}**",
                         f"{tokens / t_mm:,.1f}", f"{t_hf / t_mm:.2f}", "yes" if same else "NO"])
            print(f"{name} batch {batch}: {t_hf / t_ours:.2f}x (ceiling {t_hf / t_mm:.2f}x)", flush=True)
        del ours, hf
    print_table("Greedy generation with a KV cache (ratio: nanoft tok/s / transformers tok/s, above 1 = nanoft faster)",
                ["model", "batch", "tok/s, nanoft", "tok/s, HF", "ratio", "tok/s, matmuls alone", "ceiling",
                 "same tokens"], rows)


if __name__ == "__main__":
    main()
