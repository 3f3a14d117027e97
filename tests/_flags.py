"""The check both chapter scripts' tests make of their numeric flags: 0, -1 or a non-number is refused by argparse
with exit code 2 and one line that names the flag (0 is allowed where it means something: "all", "none")."""
import pytest

ZERO_MEANS_SOMETHING = ("nonneg_int", "fraction", "nonneg_float")


def numeric_flags(parser):
    """The parser's flags whose type is one of nanoft.cli's."""
    return [a for a in parser._actions if a.type is not None and a.type.__module__ == "nanoft.cli" and a.option_strings]


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
