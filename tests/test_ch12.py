"""Chapter 12 end to end at its smoke size (the real MiniLM on SST-2 and a toy-pretrained GPT-2 on Tiny Shakespeare, a
few steps, tiny subsets: a row per method and task, finite figures, LoRA far fewer trainable parameters than full
fine-tuning, NF4 < int8 < fp32 bytes), and its numeric flags
(0, -1 and a non-number refused with one line and exit code 2)."""
import json
import math

import pytest

from _flags import check_numeric_flags_refuse, smoke_run
from chapters import ch12_quantized_fine_tuning as ch12


def run_chapter(argv, shared_data_dir, tmp_path, monkeypatch):
    return smoke_run(ch12.main, argv, shared_data_dir, tmp_path, monkeypatch)


def test_chapter_runs_every_method_on_both_tasks_and_prints_one_table(shared_data_dir, tmp_path, monkeypatch,
                                                                      capsys):
    rows = run_chapter([], shared_data_dir, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert [r["task"] for r in rows] == ["SST-2"] * 6 + ["Tiny Shakespeare"] * 6
    for task in ("SST-2", "Tiny Shakespeare"):
        these = [r for r in rows if r["task"] == task]
        by = {r["method"].split(" ")[0].rstrip(":"): r for r in these if not r["method"].startswith("PTQ")}
        ptq = {r["method"].split(" ")[1]: r for r in these if r["method"].startswith("PTQ")}
        assert set(by) == {"full", "LoRA", "QLoRA", "QAT"} and set(ptq) == {"int8", "NF4"}
        for r in these:
            assert r["bytes"] > 0 and math.isfinite(r["value"])
            assert (0.0 <= r["value"] <= 100.0) if task == "SST-2" else r["value"] > 1.0  # accuracy; perplexity
        for r in by.values():  # the trained ones
            assert math.isfinite(r["s_per_step"]) and r["s_per_step"] > 0 and r["state_mib"] > 0 and r["trainable"] > 0
        assert all(r["trainable"] == 0 and r["s_per_step"] is None for r in ptq.values())
        assert by["LoRA"]["trainable"] == by["QLoRA"]["trainable"] < by["full"]["trainable"] / 20
        assert by["QAT"]["trainable"] == by["full"]["trainable"]
        # bytes in memory: the NF4 model < the int8 one < the fp32 one; QLoRA's base is NF4, QAT (nf4) is converted
        assert ptq["NF4"]["bytes"] < ptq["int8"]["bytes"] < by["full"]["bytes"]
        assert by["QLoRA"]["bytes"] < by["full"]["bytes"] and by["QAT"]["bytes"] == ptq["NF4"]["bytes"]
        if task == "SST-2":  # MiniLM's blocks are big enough that an NF4 base and its adapters beat int8
            assert by["QLoRA"]["bytes"] < ptq["int8"]["bytes"]
        assert by["QLoRA"]["state_mib"] < by["LoRA"]["state_mib"] < by["full"]["state_mib"]
    header = next(line for line in out.splitlines() if line.startswith("task"))
    assert [c.strip() for c in header.split("|")][:4] == ["task", "method", "quality", "trainable"]
    assert all(r["metric"] in out for r in rows)
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
    rows = run_chapter(["ptq", "--task", "sst2"], shared_data_dir, tmp_path, monkeypatch)
    assert [r["method"].split(" of ")[0] for r in rows] == [
        "full fine-tuning (fp32 weights)", "PTQ int8 per channel", "PTQ NF4"]
