"""nanoft.cli.flags: the flag types refuse what cannot be meant, and run_main turns a user error into one line."""
import argparse

import pytest
import torch

from nanoft.cli.flags import (ChapterParser, add_run_flags, device_name, float_list, fraction, nf4_block, nonneg_int,
                              positive_float, positive_int, run_main)


def test_flag_types_refuse_impossible_values():
    assert positive_int("3") == 3 and nonneg_int("0") == 0 and positive_float("1e-4") == 1e-4
    assert fraction("0") == 0.0 and float_list("5e-5, 1e-4") == [5e-5, 1e-4]
    for kind, bad in ((positive_int, "0"), (positive_int, "x"), (nonneg_int, "-1"), (positive_float, "nan"),
                      (fraction, "1"), (float_list, ","), (float_list, "1e-4,abc"), (device_name, "gpu")):
        with pytest.raises(argparse.ArgumentTypeError):
            kind(bad)
    if not torch.cuda.is_available():
        with pytest.raises(argparse.ArgumentTypeError, match="no CUDA GPU"):
            device_name("cuda:0")


def test_run_flags_parse_and_run_main_prints_one_line(capsys, monkeypatch):
    p = argparse.ArgumentParser()
    add_run_flags(p)
    args = p.parse_args(["--seed", "3", "--threads", "1"])
    assert (args.device, args.precision, args.seed, args.threads, args.no_progress) == ("auto", "auto", 3, 1, False)

    def main(argv):
        raise ValueError("the file is empty:\n give one with rows")

    monkeypatch.delenv("NANOFT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        run_main(main, [])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "the file is empty: give one with rows" in err
    with pytest.raises(ValueError):  # --debug: the traceback, for the one who asks
        run_main(main, ["--debug"])
    with pytest.raises(TypeError):  # a programming error is never hidden
        run_main(lambda argv: None + 1, [])


def test_out_of_memory_names_the_flags_that_lower_it(capsys, monkeypatch):
    monkeypatch.delenv("NANOFT_DEBUG", raising=False)

    def main(argv):  # what torch raises on a CPU when an allocation fails
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 26350190592 bytes. Error code 12 (Cannot allocate memory)")

    with pytest.raises(SystemExit) as e:
        run_main(main, [], name="ch12", memory="--batch-size or --max-len")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == ("ch12: out of memory (one more tensor of 24.5 GiB did not fit): lower "
                                         "--batch-size or --max-len (NANOFT_DEBUG=1 shows the traceback)\n")


def test_chapter_parser_smoke_recipes_and_one_line_errors(capsys):
    p = ChapterParser("chX", "a test", smoke={"steps": 2})
    p.add_argument("--steps", type=positive_int, default=100)
    p.add_sizes([("--width", positive_int, "width", 64, 512, 8)], ("quick", "standard"))
    assert (p.parse_args([]).steps, p.parse_args([]).width) == (100, 64)
    assert p.parse_args(["--recipe", "standard"]).width == 512
    smoke = p.parse_args(["--smoke"])
    assert (smoke.steps, smoke.width) == (2, 8)
    assert p.parse_args(["--smoke", "--steps", "5", "--width", "9"]).steps == 5  # flags given win over --smoke
    for argv, line in ((["--stepz", "3"], "chX: --stepz is not a flag of this script; did you mean --steps?"),
                       (["--steps", "0"], "chX: --steps: 0 is not allowed: give an integer >= 1"),
                       (["--smoke", "--recipe", "quick"], "chX: --smoke and --recipe quick contradict each other")):
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(line), err
    assert nf4_block("64") == 64
    for bad in ("3", "96", "1", "0"):
        with pytest.raises(argparse.ArgumentTypeError, match="power of two >= 2"):
            nf4_block(bad)
