"""Chapter 4's scripts: the chapter at its smoke size (which pretrains a toy GPT-2 into a temporary cache first), on
Tiny Shakespeare (../shared/data when present) and on the bundled sample, and every numeric flag refused at parse
time with one line that names it."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from chapters import ch04_finetune_vs_scratch as ch04
from chapters import ch04_pretrain_small_gpt2 as pretrain_script
from chapters.solutions import ch04_data_size, ch04_freeze_blocks, ch04_lr_warmup, ch04_lstm_size
from nanoft.recipes.small_gpt2 import INFO_FILE, PretrainConfig, offline_model_dir, pretrain_small_gpt2
from nanoft.cli.flags import run_main
from nanoft.models.gpt2 import GPT2
from nanoft.io.tokenizer import load_gpt2_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NANOFT_OFFLINE", "1")  # never download in tests: shared data or the sample
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_chapter4_smoke_run(offline, capsys, shared_data_dir):
    data = ["--data-dir", str(shared_data_dir)] if shared_data_dir else []
    out_dir = offline / "out"
    results = ch04.main(data + ["--smoke", "--device", "cpu", "--threads", "1", "--out-dir", str(out_dir)])
    out = capsys.readouterr().out
    assert "pretraining a small GPT-2 on WikiText-2 first" in out

    # the toy pretrained model: in the cache, in a folder of its own (never the default model's), in HF format
    folder = Path(results["model"])
    tiny = PretrainConfig.tiny(n_layer=1, n_head=2, n_embd=16)  # max_steps 3
    assert folder == offline_model_dir(shared_data_dir, tiny) != offline_model_dir(shared_data_dir)
    assert str(folder).startswith(str(offline / "cache"))
    model = GPT2.from_pretrained(folder)
    assert (model.config.n_layer, model.config.n_embd, model.config.vocab_size) == (1, 16, 50257)
    assert load_gpt2_tokenizer(folder).encode("Hello world") == [15496, 995]  # GPT-2's own BPE ids
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["steps"] == 3 and info["is_sample"] == (shared_data_dir is None) and results["pretrain"] == info
    assert pretrain_small_gpt2(tiny, shared_data_dir) == folder  # a second call reuses it
    assert "reusing it" in capsys.readouterr().out

    # task tokens: added after GPT-2's vocabulary, wrapped around each speech, present in the training ids
    assert "new rows = mean of the old rows: True" in out
    assert "[TASK_START]" in out and "[TASK_END]" in out  # the printed example
    assert results["task_tokens_in_train"] > 0 and results["vocab_size"] == 50259

    # one row per evaluation (before training, steps 2 and 4) for both models, with finite perplexities
    for name in ("gpt2", "lstm"):
        rows = results[name]
        assert [r["step"] for r in rows] == [0, 2, 4]
        assert [r["tokens"] for r in rows] == [0, 2 * 4 * 32, 4 * 4 * 32]
        assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in rows)
        assert rows[0]["seconds"] == 0 and 0 < rows[1]["seconds"] < rows[2]["seconds"]
    table = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and "|" in line]
    assert [int(t[0]) for t in table] == [0, 2, 4]
    assert [float(t[4]) for t in table] == pytest.approx([r["ppl"] for r in results["gpt2"]], abs=0.06)
    assert [float(t[7]) for t in table] == pytest.approx([r["ppl"] for r in results["lstm"]], abs=0.06)
    assert "To reach perplexity" in out
    assert all(s.startswith("[TASK_START]") for s in results["samples"].values())

    # the files, and the line that says where they are
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out_dir / "ch04_perplexity.png").is_file() == has_matplotlib
    assert json.loads((out_dir / "ch04_results.json").read_text())["gpt2"] == results["gpt2"]
    written = next(line for line in out.splitlines() if line.startswith("Written:"))
    assert str(out_dir / "ch04_results.json") in written and str(folder) in written
    assert (str(out_dir / "ch04_perplexity.png") in written) == has_matplotlib

    # a block longer than the model can read: one line naming the flag and the fix, exit code 2
    with pytest.raises(SystemExit) as e:
        run_main(ch04.main, data + ["--smoke", "--model", str(folder), "--block-size", "65", "--out-dir", str(out_dir)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--block-size 65" in err[0] and "64 or less" in err[0]


def test_on_the_sample_the_plot_says_so(offline, capsys, monkeypatch):
    monkeypatch.delenv("NANOFT_DATA", raising=False)  # no data anywhere: the bundled samples
    titles = []
    monkeypatch.setattr(ch04, "plot_curves", lambda curves, path, title: titles.append(title))
    results = ch04.main(["--smoke", "--device", "cpu", "--threads", "1", "--out-dir", str(offline / "out")])
    assert results["task_data_is_sample"] and results["pretrain"]["is_sample"]
    assert len(titles) == 1 and "SAMPLE" in titles[0] and "Chapter 4" in titles[0]
    out = capsys.readouterr().out
    assert "SAMPLE: Tiny Shakespeare was not found" in out and "pretrained on the bundled SAMPLE" in out


# ---------------------------------------------------------------------------------------------------- bad flags
# (flag, 0 is allowed): every numeric flag of the chapter-4 scripts; -1 and a non-number are never allowed.
CHAPTER_FLAGS = [("--block-size", False), ("--batch-size", False), ("--max-steps", False), ("--eval-every", False),
                 ("--val-fraction", False), ("--lr", False), ("--lstm-lr", False), ("--warmup-steps", True),
                 ("--weight-decay", True), ("--lstm-emb", False), ("--lstm-hidden", False), ("--lstm-layers", False),
                 ("--lstm-dropout", True), ("--gen-tokens", False), ("--pretrain-steps", False),
                 ("--pretrain-layers", False), ("--pretrain-width", False), ("--pretrain-heads", False),
                 ("--train-last-blocks", True), ("--train-tokens", True), ("--threads", True), ("--seed", True)]
PRETRAIN_FLAGS = [("--n-layer", False), ("--n-head", False), ("--n-embd", False), ("--n-positions", False),
                  ("--block-size", False), ("--batch-size", False), ("--max-steps", False), ("--lr", False),
                  ("--warmup-steps", True), ("--weight-decay", True), ("--dropout", True), ("--val-fraction", False),
                  ("--eval-every", False), ("--gen-tokens", False), ("--threads", True), ("--seed", True)]
SHARED = [f for f in CHAPTER_FLAGS if f[0] in ("--block-size", "--batch-size", "--max-steps", "--eval-every",
                                                "--val-fraction", "--lr", "--lstm-lr", "--warmup-steps",
                                                "--weight-decay", "--lstm-emb", "--lstm-hidden", "--lstm-layers",
                                                "--lstm-dropout", "--threads", "--seed")]
SOLUTION_FLAGS = [(ch04_freeze_blocks, SHARED + [("--blocks", True)]),
                  (ch04_lr_warmup, SHARED + [("--runs", False)]),
                  (ch04_data_size, SHARED + [("--train-tokens", True)]),
                  (ch04_lstm_size, SHARED + [("--layers", False), ("--train-layers", False)])]
CASES = ([(ch04, flag, zero_ok) for flag, zero_ok in CHAPTER_FLAGS]
         + [(pretrain_script, flag, zero_ok) for flag, zero_ok in PRETRAIN_FLAGS]
         + [(module, flag, zero_ok) for module, flags in SOLUTION_FLAGS for flag, zero_ok in flags])


def parse(module, argv):
    """What the script does with argv before any model is built: its parse step (ch04_*.main calls it first)."""
    if hasattr(module, "parse_args"):
        return module.parse_args(argv)
    from chapters.solutions.ch04_common import chapter4_args
    return chapter4_args(module.build_parser(), argv)


@pytest.mark.parametrize("module,flag,zero_ok", CASES, ids=[f"{m.__name__.split('.')[-1]}{f}" for m, f, _ in CASES])
def test_every_numeric_flag_refuses_impossible_values_in_one_line(module, flag, zero_ok, capsys):
    for value in ["-1", "abc"] + ([] if zero_ok else ["0"]):
        with pytest.raises(SystemExit) as e:
            parse(module, [flag, value])
        assert e.value.code == 2, (flag, value)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f": {flag}: " in err[0] and err[0].endswith("(--help lists the flags)"), err
    if zero_ok:  # 0 means something here (none, all, torch's default): the help says what
        assert parse(module, [flag, "0"]) is not None


@pytest.mark.parametrize("argv,flag", [(["--max-steps", "-5"], "--max-steps"), (["--eval-every", "0"], "--eval-every"),
                                       (["--lr", "abc"], "--lr")])
def test_the_chapter_refuses_a_bad_flag_as_a_user_sees_it(argv, flag):
    """As run from a shell: exit code 2, the usage line and one error line naming the flag, no traceback."""
    run = subprocess.run([sys.executable, "chapters/ch04_finetune_vs_scratch.py", *argv], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ch04: {flag}: ") and "Traceback" not in run.stderr


def test_cross_flag_checks_name_both_flags(capsys):
    for module, argv, words in [(ch04, ["--pretrain-width", "100", "--pretrain-heads", "3"], ["--pretrain-width 100",
                                                                                              "--pretrain-heads 3"]),
                                (pretrain_script, ["--block-size", "512"], ["--block-size 512", "--n-positions 256"]),
                                (pretrain_script, ["--n-embd", "100", "--n-head", "3"], ["--n-embd 100", "--n-head 3"])]:
        with pytest.raises(SystemExit) as e:
            module.parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and all(w in err for w in words), err


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit):
        ch04.parse_args(["--help"])
    text = capsys.readouterr().out
    for words in ("--smoke", "--precision", "bf16", "ch04_results.json", "NANOFT_CACHE", "--pretrain-steps",
                  "(default: 300)"):
        assert words in text, words
