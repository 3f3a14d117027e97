"""What every chapter script and solution does with a user's mistakes and a Ctrl-C, as a user sees it: an unknown
flag is named as unknown with the closest real flag, an --out-dir that is a file is refused before any work, a
contradiction (--smoke with --recipe) is refused, each with ONE line on stderr and exit code 2; a Ctrl-C in the middle
of a run ends with one line naming the result files already written, exit code 130, and those files complete."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chapters import ch04_finetune_vs_scratch as ch04
from chapters import ch04_pretrain_small_gpt2 as ch04_pretrain
from chapters import ch12_quantized_fine_tuning as ch12
from chapters import ch13_language_understanding as ch13
from chapters.solutions import (ch04_data_size, ch04_freeze_blocks, ch04_lr_warmup, ch04_lstm_size, ch12_codebooks,
                                ch12_merge_speed, ch13_mixing, ch13_overfitting, ch13_pooling, ch13_tapt_epochs,
                                ch13_unfreeze_top_k)
from nanoft.cli.flags import run_main

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = [(ch04, "ch04", "--max-step", "--max-steps"), (ch04_pretrain, "ch04_pretrain", "--n-layers", "--n-layer"),
            (ch12, "ch12", "--batch-sise", "--batch-size"), (ch13, "ch13", "--squad-max-len", "--squad-len")]
SOLUTIONS = [ch04_data_size, ch04_freeze_blocks, ch04_lr_warmup, ch04_lstm_size, ch12_codebooks, ch12_merge_speed,
             ch13_mixing, ch13_overfitting, ch13_pooling, ch13_tapt_epochs, ch13_unfreeze_top_k]


def one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("module,name,typo,flag", CHAPTERS, ids=[c[1] for c in CHAPTERS])
def test_an_unknown_flag_is_named_with_the_closest_real_one(module, name, typo, flag, capsys):
    with pytest.raises(SystemExit) as e:
        module.main([typo, "8"])  # "8" must not be read as a positional (chapter 13's method)
    assert e.value.code == 2
    assert one_line(capsys) == f"{name}: {typo} is not a flag of this script; did you mean {flag}? " \
        "(--help lists the flags)"


@pytest.mark.parametrize("module", SOLUTIONS, ids=[m.__name__.split(".")[-1] for m in SOLUTIONS])
def test_solutions_name_an_unknown_flag_too(module, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(["--no-such-flag", "3"])
    assert e.value.code == 2 and "--no-such-flag is not a flag of this script" in one_line(capsys)


def test_smoke_and_a_recipe_contradict_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        ch13.parse_args(["--smoke", "--recipe", "standard"])
    assert e.value.code == 2 and "--smoke and --recipe standard contradict each other" in one_line(capsys)


@pytest.mark.parametrize("module,name", [(ch04, "ch04"), (ch12, "ch12"), (ch13, "ch13")] +
                         [(m, m.__name__.split(".")[-1]) for m in SOLUTIONS], ids=lambda x: getattr(x, "__name__", x))
def test_an_out_dir_that_is_a_file_is_refused_before_any_work(module, name, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NANOFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NANOFT_OFFLINE", "1")
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit) as e:
        run_main(module.main, ["--smoke", "--out-dir", str(tmp_path / "taken")], name=name)
    out = capsys.readouterr()
    assert e.value.code == 2 and out.out == ""  # nothing loaded, nothing trained
    err = out.err.strip().splitlines()
    assert err == [f"{name}: --out-dir {tmp_path / 'taken'} is a file, not a folder: give a folder (it is created when "
                   "missing) (NANOFT_DEBUG=1 shows the traceback)"]
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_out_dir_is_refused_before_any_work(tmp_path, capsys):
    for module, name, flag in ((ch04_pretrain, "ch04_pretrain", "--out"), (ch13, "ch13", "--out-dir")):
        with pytest.raises(SystemExit) as e:
            run_main(module.main, ["--smoke", flag, "/proc/nanoft-x"], name=name)
        out = capsys.readouterr()
        assert e.value.code == 2 and out.out == "" and len(out.err.strip().splitlines()) == 1
        assert out.err.startswith(f"{name}: {flag} /proc/nanoft-x: cannot write there ("), out.err


# ---------------------------------------------------------------------------------------------------- Ctrl-C
# Each chapter script at its smoke size in a process of its own, with a later part made long, so that the SIGINT lands
# in the middle of the run: (script, argv, the file whose appearance says the first part is done, files kept).
INTERRUPTED = [
    ("ch13_language_understanding.py", ["--tapt-steps", "100000"], "results_heads.json",
     ["results_heads.json", "results.json"]),
    ("ch12_quantized_fine_tuning.py", ["full", "--lm-steps", "100000"], "results_sst2_full.json",
     ["results_sst2_full.json", "results.json"]),
    ("ch04_pretrain_small_gpt2.py", ["--max-steps", "100000"], None, []),
]


@pytest.mark.parametrize("script,argv,first,kept", INTERRUPTED, ids=[s[:4] for s, *_ in INTERRUPTED])
def test_ctrl_c_keeps_what_finished_and_says_where(script, argv, first, kept, tmp_path, shared_data_dir):
    out = tmp_path / "out"
    env = dict(os.environ, NANOFT_CACHE=str(tmp_path / "cache"), NANOFT_OFFLINE="1", HF_HUB_OFFLINE="1",
               NANOFT_DEBUG="")
    data = ["--data-dir", str(shared_data_dir)] if shared_data_dir else []
    if shared_data_dir is None:
        env.pop("NANOFT_DATA", None)
    outdir = ["--out", str(out)] if "pretrain" in script else ["--out-dir", str(out)]
    cmd = [sys.executable, str(REPO / "chapters" / script), "--smoke", "--no-progress", "--threads", "1",
           *outdir, *data, *argv]
    # SIGINT at its default (a KeyboardInterrupt), even where this test runs with it ignored (a background job)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started, deadline = None, time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if first is None:  # nothing finishes before the long part: interrupt a few seconds after main() began
            started = started or (time.monotonic() if out.exists() else None)  # main() checks --out first
            if started and time.monotonic() - started > 4:
                break
        elif (out / first).is_file():
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"the run ended before the Ctrl-C: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    lines = stderr.strip().splitlines()
    assert proc.returncode == 130 and "Traceback" not in stderr and len(lines) == 1, stderr
    name = {"ch13_l": "ch13", "ch12_q": "ch12", "ch04_p": "ch04_pretrain"}[script[:6]]
    if kept:
        assert lines[0] == f"{name}: interrupted (Ctrl-C): kept " + ", ".join(str(out / f) for f in kept)
        for f in kept:  # complete JSON, with the rows of what finished
            assert json.loads((out / f).read_text())["rows"]
    else:
        assert lines[0] == f"{name}: interrupted (Ctrl-C): nothing was saved (no part of the run had finished)"


def test_ctrl_c_during_chapter4s_lstm_keeps_gpt2s_curve(tmp_path, monkeypatch, capsys, shared_data_dir):
    """A real SIGINT to this process at a known point (as the LSTM is built, after GPT-2's curve was written)."""
    class InterruptedLSTM(ch04.LSTMLM):
        def __init__(self, *a, **kw):
            os.kill(os.getpid(), signal.SIGINT)
            super().__init__(*a, **kw)

    monkeypatch.setattr(ch04, "LSTMLM", InterruptedLSTM)
    monkeypatch.setenv("NANOFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NANOFT_OFFLINE", "1")
    monkeypatch.delenv("NANOFT_DEBUG", raising=False)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a script, even in a background job
    data = ["--data-dir", str(shared_data_dir)] if shared_data_dir else []
    out = tmp_path / "out"
    try:
        with pytest.raises(SystemExit) as e:
            run_main(ch04.main, ["--smoke", "--threads", "1", "--out-dir", str(out), *data], name="ch04")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert e.value.code == 130
    kept = [out / "ch04_results_gpt2.json", out / "ch04_results.json"]
    assert one_line(capsys) == "ch04: interrupted (Ctrl-C): kept " + ", ".join(map(str, kept))
    assert json.loads(kept[1].read_text())["gpt2"] == json.loads(kept[0].read_text())
    assert not (out / "ch04_results_lstm.json").exists()
