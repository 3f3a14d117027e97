"""Shared pieces of the benchmarks: same weights in both libraries, a timer, and a table printer.

Every figure is the median of several timed repeats after warm-up. nanoft and transformers are timed in
the same process, in turns (A B, B A, A B, ...), so that a machine that speeds up or slows down while we
measure (other jobs, clock changes) affects both sides alike and the ratio stays meaningful.
"""
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from nanoft import BERT, GPT2  # noqa: E402

# The configurations the issue names. Sizes follow the public checkpoints (all-MiniLM-L6-v2, gpt2);
# gpt2-small is a 6-layer, 384-wide GPT-2 with the full 50,257-token vocabulary.
CONFIGS = {
    "bert-minilm": dict(kind="bert", hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "gpt2-124M": dict(kind="gpt2", n_embd=768, n_layer=12, n_head=12),
    "gpt2-small": dict(kind="gpt2", n_embd=384, n_layer=6, n_head=6),
}


CLOCK = time.perf_counter  # wall clock; setup() switches to CPU time for --cpu-time


def add_common_args(p) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (CPU); default: torch's choice. On a CPU shared with other jobs, "
                        "1 thread per process avoids measuring the scheduler (see bench/README.md)")
    p.add_argument("--cpu-time", action="store_true",
                   help="with --threads 1 on a CPU: time with this process's CPU time, not the wall clock, so the "
                        "time other jobs hold the core is left out (see bench/README.md)")


def setup(args) -> None:
    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        # CPU time adds up every thread's work, spinning included: it stands for elapsed time with one thread only
        if args.threads != 1 or args.device != "cpu":
            raise SystemExit("--cpu-time needs --threads 1 and --device cpu: add --threads 1, or drop --cpu-time")
        CLOCK = time.process_time


def build_pair(name: str, device: str):
    """A random transformers model and the nanoft model loaded from its save_pretrained folder (same weights).
    Dropout is off in both (it draws different random numbers in each library, and the step should be
    the same arithmetic), and transformers uses its default attention, SDPA, like nanoft."""
    import transformers

    cfg = dict(CONFIGS[name])
    kind = cfg.pop("kind")
    torch.manual_seed(0)
    if kind == "gpt2":
        hf_cfg = transformers.GPT2Config(**cfg, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        hf = transformers.GPT2LMHeadModel(hf_cfg)
    else:
        hf_cfg = transformers.BertConfig(**cfg, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        hf = transformers.BertModel(hf_cfg, add_pooling_layer=True)
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = (GPT2 if kind == "gpt2" else BERT).from_pretrained(folder)
    ours, hf = ours.to(device), hf.to(device)
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    check_same_outputs(kind, ours, hf, device)
    return kind, ours, hf


@torch.no_grad()
def check_same_outputs(kind, ours, hf, device) -> None:
    """Refuse to time two models that do not compute the same function."""
    ours.eval(), hf.eval()
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
    if kind == "gpt2":
        a, b = ours(ids), hf(input_ids=ids).logits
    else:
        a, b = ours(ids), hf(input_ids=ids).last_hidden_state
    err = (a - b).abs().max().item()
    assert err < 1e-3, f"nanoft and transformers disagree by {err:.2e} on the same weights"


def timeit(fn, device: str) -> float:
    """Seconds of one call of fn (waiting for the GPU to finish, when there is one)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = CLOCK()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return CLOCK() - t0


def interleaved(fns, repeats: int, warmup: int, device: str) -> list:
    """Median seconds of each function in fns, timed in turns (A B C, B C A, C A B, ...) after `warmup`
    untimed calls of each. Rotating the order means no side always runs right after the same other one."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for r in range(repeats):
        for i in range(len(fns)):
            j = (i + r) % len(fns)
            times[j].append(timeit(fns[j], device))
    return [statistics.median(t) for t in times]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> str:
    if device.startswith("cuda"):
        hw = torch.cuda.get_device_name(0)
    else:
        hw = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    try:
        import transformers
        versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    except ImportError:  # bench_mfu.py times nanoft alone
        versions = f"torch {torch.__version__}"
    return f"{hw}; {versions}; {datetime.date.today().isoformat()}"


def print_table(title: str, header: list, rows: list) -> None:
    """A Markdown table, so the output pastes straight into bench/README.md."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    print(f"\n{title}\n\n{line(header)}\n|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    sys.stdout.flush()
