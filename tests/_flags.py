"""What the chapter scripts' tests share: a smoke run of a chapter's main() on the shared data or, in a fresh clone,
the bundled samples; and the check of their numeric flags: 0, -1 or a non-number is refused by argparse with exit
code 2 and one line that names the flag (0 is allowed where it means something: "all", "none")."""
import pytest
import torch


def smoke_run(main, argv, shared_data_dir, tmp_path, monkeypatch):
    """main(argv + --smoke ...) on one thread, with the data of ../shared or, without it, the bundled samples."""
    monkeypatch.setenv("NANOFT_CACHE", str(tmp_path / "cache"))  # the toy GPT-2 of a smoke run: never the user's cache
    if shared_data_dir is None:  # a fresh clone: no data, no network -> the bundled samples
        monkeypatch.delenv("NANOFT_DATA", raising=False)
        monkeypatch.setenv("NANOFT_OFFLINE", "1")
        data = []
    else:
        data = ["--data-dir", str(shared_data_dir)]
    threads = torch.get_num_threads()
    try:  # one thread: on a busy CI machine two threads that wait for each other are several times slower
        return main(argv + data + ["--smoke", "--no-progress", "--out-dir", str(tmp_path / "out"), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)

ZERO_MEANS_SOMETHING = ("nonneg_int", "fraction", "nonneg_float")


def numeric_flags(parser):
    """The parser's flags whose type is one of nanoft.cli.flags's."""
    return [a for a in parser._actions if a.type is not None and a.type.__module__ == "nanoft.cli.flags" and a.option_strings]


def check_numeric_flags_refuse(parse_args, parser, bad, capsys) -> int:
    """Feed each numeric flag `bad`; returns how many flags were checked."""
    checked = 0
    for action in numeric_flags(parser):
        if bad == "0" and action.type.__name__ in ZERO_MEANS_SOMETHING:
            continue
        flag = action.option_strings[0]
        with pytest.raises(SystemExit) as e:
            parse_args([flag, bad])
        err = capsys.readouterr().err
        lines = [line for line in err.strip().splitlines() if not line.startswith(("usage", " "))]
        assert e.value.code == 2 and len(lines) == 1 and flag in lines[0], (flag, err)
        checked += 1
    return checked
