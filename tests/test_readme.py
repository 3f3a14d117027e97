"""The README's own-data example runs as written (on a small CSV it writes), with nanoft alone, and repeats: run a
second time in the same folder, as a user runs it again, it prints the same figures and ends with the same weights."""
import csv
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def own_data_block():
    text = README.read_text()
    marker = text.index("<!-- own-data example")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_the_own_data_example_fine_tunes_reports_and_repeats(tmp_path, monkeypatch, capsys):
    code = own_data_block()
    assert "chapters" not in code and "import nanoft" in code.replace("from nanoft", "import nanoft")
    monkeypatch.chdir(tmp_path)
    with open("my_reviews.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(20):
            w.writerow([f"a wonderful, moving film number {i}", 1])
            w.writerow([f"a dull and tiresome mess, take {i}", 0])
    runs = []
    for _ in range(2):  # the same folder both times: nothing of the first run may leak into the second
        namespace = {"__name__": "readme"}
        exec(compile(code, "README.md", "exec"), namespace)
        out = capsys.readouterr().out
        best = float(re.search(r"best validation accuracy ([\d.]+)%", out).group(1))
        check = float(re.search(r"check: ([\d.]+)%", out).group(1))
        runs.append((best, check, namespace["model"].state_dict()))
    (best, check, weights), (best2, check2, weights2) = runs
    assert best == check  # the model holds the best evaluation's weights, evaluated the same way (fp32) in the loop
    assert best >= 75.0  # two easy classes: the real MiniLM separates them within a few steps
    assert (best2, check2) == (best, check) and all(torch.equal(weights[k], weights2[k]) for k in weights)
    files = sorted(p.name for p in (tmp_path / "runs" / "my_reviews").iterdir())
    assert files == ["best.pt", "classifier.pt", "log.jsonl"]  # what the README says the folder holds


def chat_block():
    text = README.read_text()
    marker = text.index("<!-- chat example")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_the_chat_example_answers(capsys):
    # the five lines of the README, on the real SmolLM2-135M-Instruct GGUF: greedy, so the answer is fixed
    exec(compile(chat_block(), "README.md", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip() == "The capital of France is Paris."
