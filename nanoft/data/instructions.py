"""Instruction and preference data: Alpaca-style records -> train / validation / test splits -> chat messages.

    data = load_instructions()              # {"train": 935 records, "val": 55, "test": 110, "sample": False}
    prefs = load_preferences()              # the same splits with "chosen" / "rejected"; 6 equal pairs dropped
    chat_messages(data["test"][0])          # [{"role": "user", ...}, {"role": "assistant", ...}]

The data are those of rasbt/LLMs-from-scratch chapter 7 (Apache-2.0): 1,100 records {instruction, input, output},
`input` possibly empty, and the same records with a polite ("chosen") and an impolite ("rejected") rewording of the
response for preference tuning. Where the files come from (a --data-dir, the download cache, the official raw files,
or a bundled 40-record sample with a notice) is nanoft.data.datasets.dataset_path's job.

The split is in file order, 85% / 5% / 10%: the first 935 records train, the next 55 validate, the last 110 test
(the test figures of issue 23 were measured on these last 110). LLMs-from-scratch's own code cuts the same 935 for
training but takes its test records from the middle block (records 935-1044) and its validation records from the
end; we keep the order train, validation, test.
"""
import json
from typing import Optional

from nanoft.data.datasets import dataset_path

INSTRUCTIONS = "instruction/instruction-data.json"
PREFERENCES = "instruction/instruction-data-with-preference.json"
TRAIN_FRACTION, TEST_FRACTION = 0.85, 0.10  # validation is what is left between them: 5%


def read_records(path, keys=("instruction", "input", "output")) -> list:
    """A JSON list of dicts, each with string values for `keys`; one clear error naming the file and the record."""
    with open(path, encoding="utf-8") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}): pass the instruction-data JSON file") from None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path} holds {type(records).__name__}, not a non-empty JSON list of records: pass the "
                         "instruction-data JSON file (a list of {instruction, input, output} objects)")
    for i, r in enumerate(records):
        missing = [k for k in keys if not isinstance(r, dict) or not isinstance(r.get(k), str)]
        if missing:
            raise ValueError(f"{path}: record {i} has no string {', '.join(missing)}: every record needs "
                             f"{', '.join(keys)} (input may be an empty string)")
    return records


def split_records(records) -> dict:
    """{"train", "val", "test"} in file order: the first 85%, the next 5% (what is left), the last 10%."""
    n = len(records)
    n_train, n_test = int(n * TRAIN_FRACTION), int(n * TEST_FRACTION)
    if min(n_train, n_test, n - n_train - n_test) < 1:
        raise ValueError(f"{n} records cannot be split 85/5/10 with at least one in each split: pass 20 or more")
    return {"train": records[:n_train], "val": records[n_train:n - n_test], "test": records[n - n_test:]}


def load_instructions(data_dir=None) -> dict:
    """instruction-data.json split 85/5/10: {"train", "val", "test": lists of records, "sample": True when the
    bundled 40-record sample stood in for the real file}."""
    file = dataset_path(INSTRUCTIONS, data_dir)
    return {**split_records(read_records(file.path)), "sample": file.is_sample}


def load_preferences(data_dir=None, verbose: bool = True) -> dict:
    """instruction-data-with-preference.json split 85/5/10 as load_instructions (so the splits hold the same
    instructions), then without the pairs whose chosen and rejected responses are equal: they carry no preference,
    and DPO's loss on them is a constant log 2 that only dilutes the batch. Adds "dropped": how many per split."""
    file = dataset_path(PREFERENCES, data_dir)
    splits = split_records(read_records(file.path, ("instruction", "input", "output", "chosen", "rejected")))
    dropped = {}
    for name, records in splits.items():
        kept = [r for r in records if r["chosen"] != r["rejected"]]
        dropped[name] = len(records) - len(kept)
        splits[name] = kept
    if verbose and sum(dropped.values()):
        where = ", ".join(f"{n} from {split}" for split, n in dropped.items() if n)
        print(f"nanoft: dropped {sum(dropped.values())} preference pairs whose chosen and rejected responses are "
              f"equal ({where}): they carry no preference")
    return {**splits, "sample": file.is_sample, "dropped": dropped}


def user_message(record) -> str:
    """The user's turn: the instruction, then a blank line and the input when there is one."""
    return record["instruction"] + ("\n\n" + record["input"] if record["input"].strip() else "")


def prompt_messages(record) -> list:
    """The conversation up to the answer: one user turn, no system message (the chat template's default applies)."""
    return [{"role": "user", "content": user_message(record)}]


def chat_messages(record, response: Optional[str] = None) -> list:
    """The whole conversation: the user's turn, then the assistant's (record["output"] unless `response` is given,
    e.g. record["chosen"])."""
    answer = record["output"] if response is None else response
    return prompt_messages(record) + [{"role": "assistant", "content": answer}]
