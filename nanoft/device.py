"""Where a training run executes: which device, in which precision, and on how many processes.

`torchrun --nproc_per_node=N` starts N copies of a script and tells each one its place through the
environment (WORLD_SIZE, RANK, LOCAL_RANK); a plain `python` run is simply world size 1. train.py calls
these once, before the loop.
"""
import os
from contextlib import nullcontext
from functools import partial

import torch
import torch.distributed as dist


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


def autocast_for(precision: str, device: torch.device):
    """(a context factory for the forward pass, whether fp16 needs a GradScaler)."""
    if precision == "auto":
        precision = "fp32" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return nullcontext, False
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA GPU (its loss scaling is CUDA-only here): use 'bf16' or 'fp32'")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16: use precision='fp16' (or 'fp32')")
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision={precision!r}: use 'auto', 'fp32', 'bf16' or 'fp16'")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    # bf16 has fp32's exponent range, so its gradients cannot overflow: only fp16 needs loss scaling
    return partial(torch.autocast, device.type, dtype=dtype), precision == "fp16"


def gather(obj, world: int) -> list:
    """Every process's `obj`, in rank order (a list of one without torchrun)."""
    if world == 1:
        return [obj]
    objs = [None] * world
    dist.all_gather_object(objs, obj)
    return objs
