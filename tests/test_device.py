"""Device and precision choice: what "auto" means on this machine, and the errors that name the fix."""
from contextlib import nullcontext

import pytest
import torch

from nanoft.device import autocast_for, gather, pick_device, setup_distributed


def test_auto_picks_the_cpu_without_a_gpu_and_cuda_gets_an_index():
    if torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cuda", torch.cuda.current_device())
    else:
        assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")


def test_precision_choices_on_cpu():
    cpu = torch.device("cpu")
    assert autocast_for("auto", cpu) == (nullcontext, False)  # fp32: autocast would only slow a CPU down
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


def test_one_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup_distributed("cpu") == (0, 1, False)
    assert gather({"a": 1}, world=1) == [{"a": 1}]
