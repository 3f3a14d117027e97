"""Chapter 13 end to end at its smoke size (the real MiniLM, a few steps, tiny subsets), its flags (every numeric
flag refuses 0, -1 and a non-number with one line and exit code 2), and the samples of a fresh clone."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _flags import check_numeric_flags_refuse, smoke_run
from chapters import ch13_language_understanding as ch13

SCRIPT = Path(ch13.__file__)


def run_chapter(argv, shared_data_dir, tmp_path, monkeypatch):
    return smoke_run(ch13.main, argv + ["--seeds", "2"], shared_data_dir, tmp_path, monkeypatch)


def test_chapter_runs_end_to_end_and_prints_one_table(shared_data_dir, tmp_path, monkeypatch, capsys):
    rows = run_chapter([], shared_data_dir, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert [r["method"].split(",")[0] for r in rows] == [
        "full fine-tuning", "full fine-tuning", "no TAPT", "TAPT", "multi-task", "multi-task", "frozen encoder",
        "frozen encoder"]
    for r in rows:
        assert 0.0 <= r["value"] <= 100.0 and math.isfinite(r["seconds"]) and r["seconds"] > 0
    assert "± " in rows[2]["metric"] and "mean of 2 seed(s)" in rows[3]["method"]
    if shared_data_dir is None:
        assert all("SAMPLE" in r["task"] for r in rows) and "SAMPLE data" in out
    else:
        assert rows[0]["task"] == "SST-2 dev, first 24 of 872"
        assert rows[1]["task"] == "SQuAD v1.1 dev, article split: eval.json (6 of 1,988 q)"
    header = next(line for line in out.splitlines() if line.startswith("method"))
    assert [c.strip() for c in header.split("|")] == ["method", "task", "metric", "training time"]
    assert all(r["metric"] in out for r in rows)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["metric"] for r in saved["rows"]] == [r["metric"] for r in rows]
    assert f"Written: {tmp_path / 'out' / 'results.json'}" in out


def test_one_method_alone(shared_data_dir, tmp_path, monkeypatch, capsys):
    rows = run_chapter(["frozen"], shared_data_dir, tmp_path, monkeypatch)
    assert [r["method"] for r in rows] == ["frozen encoder, mean-pooled, head only", "frozen encoder, span head only"]
    assert "Task-specific layers" not in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["0", "-1", "abc"])
def test_every_numeric_flag_refuses_impossible_values_in_one_line(bad, capsys):
    assert check_numeric_flags_refuse(ch13.parse_args, ch13.build_parser(), bad, capsys) >= 10


def test_the_script_answers_a_bad_flag_and_a_user_error_with_one_line_and_no_traceback(tmp_path):
    env = dict(os.environ, NANOFT_DEBUG="")
    for argv, words in ((["--sst2-steps", "-5"], "--sst2-steps"),
                        (["--data-dir", str(tmp_path / "missing"), "--smoke"], str(tmp_path / "missing"))):
        p = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 2 and "Traceback" not in p.stderr and words in p.stderr.strip().splitlines()[-1], p.stderr
        assert len([line for line in p.stderr.strip().splitlines() if not line.startswith(("usage", " "))]) == 1


def test_cross_flag_checks_name_the_flags(capsys):
    for argv, words in ((["--stride", "64", "--squad-len", "40"], "--stride 64 must be smaller than --squad-len 40"),
                        (["--lrs", "1e-4,abc"], "--lrs")):
        with pytest.raises(SystemExit) as e:
            ch13.parse_args(argv)
        assert e.value.code == 2 and words in capsys.readouterr().err


def test_every_flag_is_explained_and_the_recipes_change_the_sizes():
    for action in ch13.build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"
    quick, standard = ch13.parse_args([]), ch13.parse_args(["heads", "--recipe", "standard"])
    assert (quick.squad_len, quick.stride, standard.squad_len, standard.stride) == (256, 128, 256, 128)
    assert standard.lrs == [5e-5] and standard.sst2_steps == 2089  # 1 epoch of 66,849 sentences in batches of 32
    assert ch13.parse_args(["--sst2-steps", "7"]).sst2_steps == 7
