"""The README's own-data example runs as written (on a small CSV it writes), with nanoft alone."""
import csv
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def own_data_block():
    text = README.read_text()
    marker = text.index("<!-- own-data example")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_the_own_data_example_fine_tunes_and_reports(tmp_path, monkeypatch, capsys):
    code = own_data_block()
    assert "chapters" not in code and "import nanoft" in code.replace("from nanoft", "import nanoft")
    monkeypatch.chdir(tmp_path)
    with open("my_reviews.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(20):
            w.writerow([f"a wonderful, moving film number {i}", 1])
            w.writerow([f"a dull and tiresome mess, take {i}", 0])
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    best = float(re.search(r"best validation accuracy ([\d.]+)%", out).group(1))
    check = float(re.search(r"check: ([\d.]+)%", out).group(1))
    assert best == pytest.approx(check)  # the model holds the best evaluation's weights
    assert best >= 75.0  # two easy classes: the real MiniLM separates them within a few steps
    assert (tmp_path / "runs" / "my_reviews" / "classifier.pt").is_file()
