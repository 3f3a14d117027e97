"""Where a training run executes: which device, in which precision, and on how many processes.

`torchrun --nproc_per_node=N` starts N copies of a script and tells each one its place through the
environment (WORLD_SIZE, RANK, LOCAL_RANK); a plain `python` run is simply world size 1. train.py calls
setup_hardware once, before the loop, and gets back a Hardware: all it needs to know about where it runs.
"""
import ctypes
import os
import platform
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch
import torch.distributed as dist


@dataclass
class Hardware:
    rank: int  # this process's place among the torchrun processes (0 without torchrun)
    world: int  # how many processes (1 without torchrun)
    created_group: bool  # whether we created the process group, and so tear it down at the end
    device: torch.device
    autocast: Callable  # a context factory for the forward pass (nullcontext in fp32)
    use_scaler: bool  # fp16: the loss needs scaling

    @property
    def is_main(self) -> bool:
        return self.rank == 0  # the process that prints, logs and writes the files


def setup_hardware(cfg) -> Hardware:
    """Processes, device and precision from a TrainConfig's device, precision, keep_freed_memory and progress;
    prints what precision="auto" picked (once per process, on rank 0)."""
    rank, world, created = setup_distributed(cfg.device)
    device = pick_device(cfg.device)
    autocast, use_scaler = autocast_for(cfg.precision, device)
    if device.type == "cpu" and cfg.keep_freed_memory:
        keep_freed_memory()
    if rank == 0 and cfg.progress:
        said = describe_precision(cfg.precision, device)  # what "auto" picked and why
        if said:
            print(said)
    return Hardware(rank, world, created, device, autocast, use_scaler)


def setup_distributed(device_name: str):
    """(rank, world size, whether we created the process group). torchrun sets WORLD_SIZE, RANK, LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, False
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # so "cuda" below means this process's GPU
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), world, created


def pick_device(name: str) -> torch.device:
    """"auto": this process's GPU when there is one, else the CPU; otherwise the device named."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def cpu_bf16_support() -> tuple:
    """(whether this CPU computes bf16 natively, why): what precision="auto" decides on for a CPU.

    Asks torch's own CPU feature probe (cpuinfo, through torch.cpu.get_capabilities). bf16 pays only with
    instructions that multiply bf16 directly: AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake and later)
    or AMX-BF16 (Intel Sapphire Rapids and later) on x86, the BF16 extension (Apple M2 and later, Graviton 3)
    on ARM. A CPU that only has AVX-512 or AVX2 converts bf16 to fp32 and back around every product, which
    is slower than plain fp32."""
    get = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.8
    caps = dict(get()) if get else {
        "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)(),
        "amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()}
    found = [name for key, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("bf16", "ARM BF16"))
             if caps.get(key)]
    if not found:
        have = torch.backends.cpu.get_cpu_capability()  # the widest vector unit torch dispatches to, e.g. "AVX2"
        return False, f"this CPU ({have}) has no native bf16 arithmetic (AVX512-BF16, AMX or ARM BF16)"
    if not torch.backends.mkldnn.is_available():  # oneDNN is the library that runs CPU bf16 matmuls fast
        return False, f"this CPU has {found[0]} but this torch build has no oneDNN to use it"
    return True, f"this CPU has {found[0]}"


def resolve_precision(precision: str, device: torch.device) -> tuple:
    """("fp32" | "bf16" | "fp16", why): what `precision` means on `device`; "auto" picks by the hardware."""
    if precision != "auto":
        return precision, "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU has bf16"
        return "fp16", "this GPU has no bf16 (fp16 with loss scaling)"
    if device.type == "cpu":
        native, why = cpu_bf16_support()
        return ("bf16", why) if native else ("fp32", why)
    return "fp32", f"no mixed precision is set up for {device.type}"


_said = set()


def describe_precision(precision: str, device: torch.device) -> Optional[str]:
    """The line a run prints about precision="auto", once per process (None the other times, or when
    the precision was asked for by name)."""
    name, why = resolve_precision(precision, device)
    if precision != "auto" or (name, why) in _said:
        return None
    _said.add((name, why))
    if name == "fp32":
        return f"precision auto -> fp32: {why}"
    return (f"precision auto -> {name} autocast: {why}; weights, gradients and the AdamW update stay fp32 "
            "(precision='fp32' turns it off)")


def autocast_for(precision: str, device: torch.device):
    """(a context factory for the forward pass, whether fp16 needs a GradScaler)."""
    precision, _ = resolve_precision(precision, device)
    if precision == "fp32":
        return nullcontext, False
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA GPU (its loss scaling is CUDA-only here): use 'bf16' or 'fp32'")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16: use precision='fp16' (or 'fp32')")
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision={precision!r}: use 'auto', 'fp32', 'bf16' or 'fp16'")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    # bf16 has fp32's exponent range, so its gradients cannot overflow: only fp16 needs loss scaling.
    # Autocast runs matmuls in bf16 from bf16 copies of the fp32 weights; the weights and their gradients
    # (and so the optimizer) stay fp32, so small updates are not rounded away
    return partial(torch.autocast, device.type, dtype=dtype), precision == "fp16"


_kept = []  # the threshold keep_freed_memory set in this process, once


def keep_freed_memory(limit: int = 1 << 30) -> Optional[int]:
    """Tell glibc's malloc to keep freed blocks of up to `limit` bytes for reuse instead of handing them back to
    the OS; returns the limit it took (None where this is not Linux with glibc, or glibc refused).

    Why: torch's CPU allocator has no cache of its own, so each tensor is a malloc and a free. glibc serves a
    block over its mmap threshold (32 MiB at most) with a fresh mmap and unmaps it when freed, so a training
    step's large tensors (a GPT-2's logits: 8 x 128 x 50,257 floats, 206 MB) come back as new pages every step,
    and the kernel zeroes each page on first touch: a step spends much of its time in page faults (system time).
    With the blocks kept it does not; the README and bench/README.md have the figures, with their machine and date
    (transformers gains the same under the same setting). The cost: the resident size stays near the largest
    step's peak instead of falling between steps. Process-wide, so it also speeds up evaluation and anything else
    in the same process."""
    if _kept:
        return _kept[0]
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
    # an older glibc refuses an mmap threshold over 32 MiB (half its HEAP_MAX_SIZE): then 32 MiB is the best it takes
    for value in (min(limit, 2**31 - 1), 32 << 20):
        if mallopt(M_MMAP_THRESHOLD, value) == 1:
            mallopt(M_TRIM_THRESHOLD, value)  # and do not give the heap's top back after each large free either
            _kept.append(value)
            return value
    return None


def to_device(batch, device):
    """A batch (a tensor, or a dict / list / tuple of them, nested) with every tensor on `device`; everything
    else (strings, ids, None) is returned untouched. non_blocking: from pinned memory the copy overlaps compute."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        items = [to_device(v, device) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)  # namedtuple or plain
    return batch


def gather(obj, world: int) -> list:
    """Every process's `obj`, in rank order (a list of one without torchrun)."""
    if world == 1:
        return [obj]
    objs = [None] * world
    dist.all_gather_object(objs, obj)
    return objs
