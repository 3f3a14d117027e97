"""Chapter 12 end to end at its smoke size (the real MiniLM, a few steps, tiny subsets: a row per method, finite
figures, LoRA far fewer trainable parameters than full fine-tuning, NF4 < int8 < fp32 bytes), and its numeric flags
(0, -1 and a non-number refused with one line and exit code 2)."""
import json
import math

import pytest
import torch

from _flags import check_numeric_flags_refuse
from chapters import ch12_quantized_fine_tuning as ch12


def run_chapter(argv, shared_data_dir, tmp_path, monkeypatch):
    if shared_data_dir is None:  # a fresh clone: no data, no network -> the bundled samples
        monkeypatch.delenv("NANOFT_DATA", raising=False)
        monkeypatch.setenv("NANOFT_OFFLINE", "1")
        monkeypatch.setenv("NANOFT_CACHE", str(tmp_path / "cache"))
        data = []
    else:
        data = ["--data-dir", str(shared_data_dir)]
    threads = torch.get_num_threads()
    try:  # one thread: on a busy CI machine two threads that wait for each other are several times slower
        return ch12.main(argv + data + ["--smoke", "--no-progress", "--out-dir", str(tmp_path / "out"),
                                        "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


def test_chapter_runs_every_method_and_prints_one_table(shared_data_dir, tmp_path, monkeypatch, capsys):
    rows = run_chapter([], shared_data_dir, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    by = {r["method"].split(" ")[0].rstrip(":"): r for r in rows if not r["method"].startswith("PTQ")}
    ptq = {r["method"].split(" ")[1]: r for r in rows if r["method"].startswith("PTQ")}
    assert len(rows) == 6 and set(by) == {"full", "LoRA", "QLoRA", "QAT"} and set(ptq) == {"int8", "NF4"}
    for r in rows:
        assert 0.0 <= r["acc"] <= 100.0 and r["bytes"] > 0
    for r in by.values():  # the trained ones
        assert math.isfinite(r["s_per_step"]) and r["s_per_step"] > 0 and r["state_mib"] > 0 and r["trainable"] > 0
    assert all(r["trainable"] == 0 and r["s_per_step"] is None for r in ptq.values())
    assert by["LoRA"]["trainable"] == by["QLoRA"]["trainable"] < by["full"]["trainable"] / 20
    assert by["QAT"]["trainable"] == by["full"]["trainable"]
    # bytes in memory: the NF4 model < the int8 one < the fp32 one; QLoRA's base is NF4, QAT (nf4) is converted
    assert ptq["NF4"]["bytes"] < ptq["int8"]["bytes"] < by["full"]["bytes"]
    assert by["QLoRA"]["bytes"] < ptq["int8"]["bytes"] and by["QAT"]["bytes"] == ptq["NF4"]["bytes"]
    assert by["QLoRA"]["state_mib"] < by["LoRA"]["state_mib"] < by["full"]["state_mib"]
    header = next(line for line in out.splitlines() if line.startswith("method"))
    assert [c.strip() for c in header.split("|")][:3] == ["method", "dev acc", "trainable"]
    assert all(f"{r['acc']:.1f}%" in out for r in rows)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["method"] for r in saved["rows"]] == [r["method"] for r in rows]


@pytest.mark.parametrize("bad", ["0", "-1", "abc"])
def test_every_numeric_flag_refuses_impossible_values_in_one_line(bad, capsys):
    assert check_numeric_flags_refuse(ch12.parse_args, ch12.build_parser(), bad, capsys) >= 6


def test_an_unknown_method_is_refused():
    with pytest.raises(SystemExit) as e:
        ch12.parse_args(["dora"])
    assert e.value.code == 2


def test_ptq_alone_trains_the_full_model_first_and_shows_it(shared_data_dir, tmp_path, monkeypatch):
    rows = run_chapter(["ptq"], shared_data_dir, tmp_path, monkeypatch)
    assert [r["method"].split(" of ")[0] for r in rows] == [
        "full fine-tuning (fp32 weights)", "PTQ int8 per channel", "PTQ NF4"]
