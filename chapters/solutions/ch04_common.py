"""What the chapter-4 solutions share: the chapter's flags with the chapter's defaults (and --smoke's sizes), parsed
once into a Chapter4Setup of explicit settings that the runs use. Like ch13_common.py for chapter 13.

The solutions compose nanoft.recipes.causal_lm themselves, as the chapter script does; nothing here imports the
chapter script. Its flags are repeated here with the same defaults (tests/test_ch04.py checks both refuse the same
bad values); where and how a run runs (--device ... --seed) is nanoft.cli.flags.add_run_flags, the same everywhere.
"""
from dataclasses import dataclass, replace
from typing import Optional

from nanoft.cli.flags import (ChapterParser, add_io_flags, add_run_flags, fraction, nonneg_float, nonneg_int,
                              positive_float, positive_int)
from nanoft.cli.report import check_out_dir

# --smoke: tiny sizes and a toy pretrained GPT-2 (its numbers mean nothing); flags given still win
SMOKE = dict(block_size=32, batch_size=4, max_steps=4, eval_every=2, warmup_steps=1, val_fraction=0.002,
             lstm_emb=16, lstm_hidden=16, no_progress=True)
EPILOG = """The flags below the exercise's own are chapters/ch04_finetune_vs_scratch.py's, with its defaults.
The table's JSON is rewritten in OUT_DIR after every run of the exercise: a Ctrl-C keeps the runs that finished."""


def chapter4_parser(name, doc, defaults=None):
    """A chapter-4 solution's parser: its docstring's first paragraph, --smoke, and the chapter's shared flags
    with the chapter's defaults (or the exercise's own `defaults`, e.g. {"max_steps": 150})."""
    p = ChapterParser(name, doc.split("\n\n")[0], EPILOG, smoke=SMOKE)
    add_io_flags(p, "runs/ch04", model_default="offline", out_help="where the table's JSON is written",
                 model_help="the pretrained GPT-2: 'offline', a hub id or a local folder")
    p.add_argument("--block-size", type=positive_int, default=128, help="tokens per training sequence")
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per optimizer step")
    p.add_argument("--max-steps", type=positive_int, default=300, help="optimizer steps for each model")
    p.add_argument("--eval-every", type=positive_int, default=50, help="optimizer steps between validation runs")
    p.add_argument("--val-fraction", type=fraction, default=0.05, help="tail of the corpus held out (above 0)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="GPT-2's peak learning rate (default: 4e-3 for the small offline GPT-2, 5e-5 for others)")
    p.add_argument("--warmup-steps", type=nonneg_int, default=30, help="linear warmup for both (0: none)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.01, help="AdamW weight decay for both")
    p.add_argument("--lstm-lr", type=positive_float, default=3e-3, help="the LSTM's peak learning rate")
    p.add_argument("--lstm-emb", type=positive_int, default=128, help="the LSTM's embedding size")
    p.add_argument("--lstm-hidden", type=positive_int, default=128, help="the LSTM's hidden size")
    p.add_argument("--lstm-layers", type=positive_int, default=2, help="the LSTM's depth")
    p.add_argument("--lstm-dropout", type=fraction, default=0.1, help="dropout in the LSTM")
    add_run_flags(p, seed=1337)  # the chapter's seed
    if defaults:
        p.set_defaults(**defaults)
    return p


def chapter4_args(parser, argv=None):
    """parser.parse_args (with --smoke's sizes), and the cross-flag checks."""
    args = parser.parse_args(argv)
    if args.val_fraction == 0:
        parser.error("--val-fraction: 0 leaves nothing to validate on: give a number above 0, e.g. 0.05")
    return args


@dataclass
class Chapter4Setup:
    """The chapter's settings as explicit values: made once from the flags, then passed around."""
    model: str
    data_dir: Optional[str]
    out_dir: str
    pretrain: object  # nanoft.recipes.small_gpt2.PretrainConfig: the offline model's size, a toy one with --smoke
    block_size: int
    val_fraction: float
    lr: Optional[float]  # None: small_gpt2.default_lr for the model
    train: object  # nanoft.TrainConfig shared by both models; lr is set per model
    lstm: dict  # LSTMConfig's sizes, without the vocabulary
    lstm_lr: float

    def gpt2(self):
        """A fresh pretrained GPT-2 with the task tokens added: (PretrainedGPT2, its TrainConfig)."""
        from nanoft.recipes.causal_lm import add_task_tokens
        from nanoft.recipes.small_gpt2 import default_lr, load_pretrained_gpt2
        lm = load_pretrained_gpt2(self.model, self.data_dir, self.pretrain)
        add_task_tokens(lm.model, lm.tokenizer)
        return lm, replace(self.train, lr=self.lr or default_lr(lm.info))

    def task(self, tokenizer, train_tokens=0):
        """Tiny Shakespeare's speeches wrapped in the task tokens, as train and validation blocks."""
        from nanoft.recipes.causal_lm import task_blocks
        from nanoft.data.datasets import dataset_path, read_text
        from nanoft.data.lm_data import split_examples
        speeches = split_examples(read_text(dataset_path("tiny_shakespeare/input.txt", self.data_dir).path))
        return task_blocks(speeches, tokenizer, self.block_size, self.val_fraction, train_tokens=train_tokens)

    def new_lstm(self, vocab_size, **sizes):
        """An LSTM from scratch with the chapter's sizes (or `sizes`), seeded like the chapter's."""
        from nanoft import LSTMConfig, LSTMLM, seed_everything
        seed_everything(self.train.seed)
        return LSTMLM(LSTMConfig(vocab_size=vocab_size, **{**self.lstm, **sizes}))


def chapter4_setup(args) -> Chapter4Setup:
    """Threads and seed set, and the parsed flags turned into a Chapter4Setup."""
    import torch

    from nanoft import TrainConfig, seed_everything
    from nanoft.recipes.small_gpt2 import PretrainConfig
    check_out_dir(args.out_dir)  # before any work: a folder that cannot hold the table fails now
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    pretrain = PretrainConfig.tiny() if args.smoke else PretrainConfig()
    pretrain = replace(pretrain, train=replace(pretrain.train, device=args.device, progress=not args.no_progress))
    train = TrainConfig(weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, max_steps=args.max_steps,
                        decay="linear", batch_size=args.batch_size, eval_every=args.eval_every, device=args.device,
                        precision=args.precision, seed=args.seed, progress=not args.no_progress)
    lstm = dict(emb_dim=args.lstm_emb, hidden_dim=args.lstm_hidden, n_layers=args.lstm_layers,
                dropout=args.lstm_dropout)
    return Chapter4Setup(args.model, args.data_dir, args.out_dir, pretrain, args.block_size, args.val_fraction, args.lr,
                     train, lstm, args.lstm_lr)
