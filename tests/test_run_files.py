"""The files of a run: atomic checkpoint writes, the RNG round trip that exact resume needs, the JSONL log."""
import argparse
import json
import random

import numpy as np
import pytest
import torch

from nanoft.training.run_files import load_checkpoint, open_log, plain, read_log, rng_state, save_checkpoint, set_rng_state


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(str(path), {"step": 1, "w": torch.ones(3)})

    def dies_mid_write(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is gone before the rename
    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(str(path), {"step": 2, "w": torch.zeros(3)})
    ckpt = load_checkpoint(str(path))  # the previous checkpoint, whole
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.ones(3))


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    # an arbitrary object could run code when unpickled: weights_only refuses anything but tensors and containers
    torch.save({"step": 1, "obj": argparse.Namespace(lr=1.0)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(str(tmp_path / "evil.pt"))


def test_rng_state_round_trip_repeats_every_stream(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    np.random.standard_normal()  # numpy caches the second gaussian of a pair: the state must carry it
    state = rng_state(torch.device("cpu"))
    save_checkpoint(str(tmp_path / "c.pt"), {"rng": state})  # through the file, as resume does
    first = (torch.rand(3), random.random(), np.random.standard_normal())
    set_rng_state(load_checkpoint(str(tmp_path / "c.pt"))["rng"], torch.device("cpu"))
    again = (torch.rand(3), random.random(), np.random.standard_normal())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]


def test_plain_makes_a_config_loadable(tmp_path):
    from pathlib import Path
    cfg = plain({"out_dir": Path("runs/x"), "betas": (0.9, 0.999), "lr": 1e-3, "patience": None})
    assert cfg == {"out_dir": "runs/x", "betas": [0.9, 0.999], "lr": 1e-3, "patience": None}
    save_checkpoint(str(tmp_path / "c.pt"), {"config": cfg})
    assert load_checkpoint(str(tmp_path / "c.pt"))["config"] == cfg


def test_log_skips_a_torn_line_and_resume_keeps_records_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "log.jsonl"
    records = [{"type": "train", "step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"type": "train", "st')  # killed mid-write
    assert read_log(path) == records
    f, kept = open_log(str(tmp_path), resume_step=2)  # steps 3 and 4 will be redone after the resume
    f.close()
    assert kept == records[:2] and read_log(path) == records[:2]
    f, kept = open_log(str(tmp_path), resume_step=0)  # a fresh run starts a fresh log
    f.close()
    assert kept == [] and read_log(path) == []
