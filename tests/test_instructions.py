"""Instruction and preference data: the 85/5/10 split in file order, the dropped equal pairs, the chat messages."""
import json

import pytest

from nanoft.data.datasets import dataset_path
from nanoft.data.instructions import (chat_messages, load_instructions, load_preferences, prompt_messages,
                                      read_records, split_records)


def test_split_in_file_order():
    records = read_records(dataset_path("instruction/instruction-data.json").path)
    data = load_instructions()
    n = len(records)
    assert [len(data[k]) for k in ("train", "val", "test")] == [int(n * 0.85), n - int(n * 0.85) - int(n * 0.1),
                                                                  int(n * 0.1)]
    assert data["train"] + data["val"] + data["test"] == records  # nothing reordered, nothing lost
    if not data["sample"]:
        assert [len(data[k]) for k in ("train", "val", "test")] == [935, 55, 110]
    with pytest.raises(ValueError, match="cannot be split"):
        split_records(records[:5])


def test_preferences_drop_equal_pairs(capsys):
    prefs = load_preferences()
    with open(dataset_path("instruction/instruction-data-with-preference.json").path, encoding="utf-8") as f:
        raw = split_records(json.load(f))
    for split in ("train", "val", "test"):
        assert all(r["chosen"] != r["rejected"] for r in prefs[split])
        assert len(prefs[split]) + prefs["dropped"][split] == len(raw[split])
        assert [r["instruction"] for r in prefs[split]] == [r["instruction"] for r in raw[split]
                                                            if r["chosen"] != r["rejected"]]
    if not prefs["sample"]:
        assert prefs["dropped"] == {"train": 6, "val": 0, "test": 0}
        assert "dropped 6 preference pairs" in capsys.readouterr().out
        # the preference splits hold the same instructions as the instruction splits
        assert [r["instruction"] for r in prefs["test"]] == [r["instruction"] for r in load_instructions()["test"]]


def test_chat_messages():
    with_input = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour",
                  "chosen": "Bonjour !", "rejected": "Bonjour."}
    no_input = {"instruction": "Name a colour.", "input": "", "output": "Blue"}
    assert chat_messages(with_input) == [{"role": "user", "content": "Translate to French.\n\nGood morning"},
                                         {"role": "assistant", "content": "Bonjour"}]
    assert chat_messages(with_input, with_input["chosen"])[1]["content"] == "Bonjour !"
    assert prompt_messages(no_input) == [{"role": "user", "content": "Name a colour."}]  # no system message


def test_bad_records(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "output": "y"}]))
    with pytest.raises(ValueError, match="record 0 has no string input"):
        read_records(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_records(bad)
