"""nanoft.cli.flags: the flag types refuse what cannot be meant, and run_main turns a user error into one line."""
import argparse

import pytest
import torch

from nanoft.cli.flags import add_run_flags, device_name, float_list, fraction, nonneg_int, positive_float, positive_int, run_main


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
