"""Device and precision choice: what "auto" means on this machine, and the errors that name the fix."""
import os
import platform
import subprocess
import sys
from collections import namedtuple
from contextlib import nullcontext

import pytest
import torch

import nanoft.training.device  # noqa: F401  (the module, for monkeypatching)
from nanoft.training.device import (autocast_for, cpu_bf16_support, describe_precision, gather, pick_device,
                           resolve_precision, setup_distributed, to_device)

D = sys.modules["nanoft.training.device"]


def test_auto_picks_the_cpu_without_a_gpu_and_cuda_gets_an_index():
    if torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cuda", torch.cuda.current_device())
    else:
        assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")


def test_precision_choices_on_cpu():
    cpu = torch.device("cpu")
    assert autocast_for("fp32", cpu) == (nullcontext, False)
    ctx, needs_scaler = autocast_for("bf16", cpu)
    with ctx():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert needs_scaler is False  # bf16 has fp32's exponent range: nothing to scale
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        autocast_for("fp16", cpu)
    with pytest.raises(ValueError, match="use 'auto', 'fp32', 'bf16' or 'fp16'"):
        autocast_for("float32", cpu)


def fake_caps(monkeypatch, **caps):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"architecture": "x86_64", **caps})


@pytest.mark.parametrize("caps,native,named", [
    ({"avx512_bf16": True}, True, "AVX512-BF16"),  # AMD Zen 4/5, Intel Cooper Lake
    ({"amx_bf16": True, "avx512_bf16": True}, True, "AMX-BF16"),  # Intel Sapphire Rapids: the faster unit is named
    ({"bf16": True, "architecture": "arm64"}, True, "ARM BF16"),  # Apple M2, Graviton 3
    ({"avx512_f": True, "avx2": True}, False, "no native bf16"),  # AVX-512 without BF16 only emulates it
    ({}, False, "no native bf16"),
])
def test_cpu_bf16_check_reads_torchs_capabilities(monkeypatch, caps, native, named):
    fake_caps(monkeypatch, **caps)
    ok, why = cpu_bf16_support()
    assert ok is native and named in why


def test_auto_follows_the_bf16_check_mocked_both_ways(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(D, "cpu_bf16_support", lambda: (True, "mocked bf16"))
    assert resolve_precision("auto", cpu) == ("bf16", "mocked bf16")
    ctx, needs_scaler = autocast_for("auto", cpu)
    with ctx():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert needs_scaler is False
    assert resolve_precision("fp32", cpu) == ("fp32", "asked for")  # a name always wins over the hardware
    monkeypatch.setattr(D, "cpu_bf16_support", lambda: (False, "mocked none"))
    assert resolve_precision("auto", cpu) == ("fp32", "mocked none")
    assert autocast_for("auto", cpu) == (nullcontext, False)


def test_auto_without_onednn_stays_fp32(monkeypatch):
    fake_caps(monkeypatch, avx512_bf16=True)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    ok, why = cpu_bf16_support()
    assert not ok and "no oneDNN" in why


def test_the_choice_is_said_once(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(D, "_said", set())
    monkeypatch.setattr(D, "cpu_bf16_support", lambda: (True, "this CPU has X"))
    line = describe_precision("auto", cpu)
    assert line.startswith("precision auto -> bf16 autocast: this CPU has X") and "stay fp32" in line
    assert describe_precision("auto", cpu) is None
    assert describe_precision("fp32", cpu) is None  # asked for by name: nothing to explain


def test_to_device_keeps_the_structure():
    Pair = namedtuple("Pair", "a b")
    batch = {"x": torch.ones(2), "nested": [torch.zeros(1), ("id-7", 3)], "pair": Pair(torch.ones(1), None)}
    moved = to_device(batch, torch.device("meta"))  # "meta": a device every machine has, unlike cuda
    assert moved["x"].device.type == "meta" and moved["nested"][0].device.type == "meta"
    assert moved["nested"][1] == ("id-7", 3) and isinstance(moved["nested"], list)
    assert isinstance(moved["pair"], Pair) and moved["pair"].a.device.type == "meta" and moved["pair"].b is None
    assert batch["x"].device.type == "cpu"  # the input is not changed in place


def test_one_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup_distributed("cpu") == (0, 1, False)
    assert gather({"a": 1}, world=1) == [{"a": 1}]


KEEP_FREED = """
import resource, torch
from nanoft.training.device import keep_freed_memory
def page_faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.ones(64 << 20)  # 256 MB written and freed at once, as a training step's logits are
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
plain = page_faults()
print(keep_freed_memory(), keep_freed_memory())
page_faults()  # the heap grows to hold the block once
print(plain, page_faults())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_keep_freed_memory_stops_page_faulting_large_tensors_back():
    # a child process: the setting is process-wide and cannot be undone
    out = subprocess.run([sys.executable, "-c", KEEP_FREED], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    took, plain, kept = out.stdout.split()[:2], *map(int, out.stdout.split()[2:])
    assert took == [str(1 << 30)] * 2  # glibc took the 1 GiB threshold, once
    assert kept * 10 < plain, (plain, kept)  # 4 x 65,536 faults of 4 KiB pages without it, next to none with it
