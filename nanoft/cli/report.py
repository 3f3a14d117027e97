"""What a run shows its reader: a table on the terminal, the same rows as JSON, and a bar chart of them as PNG;
and the guarantees around them: the output folder is checked before any work, and each finished part of a run is
on disk at once, so that an error or a Ctrl-C later loses nothing that had finished.

    out_dir = check_out_dir(args.out_dir)              # a file, or a folder that cannot be written: one line, now
    results = Results(out_dir, vars(args))             # then, as each method finishes:
    results.add("heads", rows)                         # runs/ch13/results_heads.json and results.json (all so far)
    results.finish(print_columns, label_key="method", value_key="acc")  # the table, results.png, "Written: ..."

Every file is written atomically (a temporary file, then os.replace): an interrupted write never leaves half a
JSON. matplotlib is optional: without it plot_rows says so and returns None.
"""
import json
import os

from nanoft.training.plots import plot_bars

SMOKE_NOTE = "NOTE: SMOKE sizes (--smoke): the numbers show that the code runs, no more."
SAMPLE_NOTE = "NOTE: SAMPLE data (the real data sets were not found): the numbers show that the code runs, no more."
_saved = []  # the files this process's run has written, in order: what the line after a Ctrl-C names


def saved_so_far() -> list:
    """The result files written so far by this run (run_main clears it when a run starts)."""
    return _saved


def check_out_dir(path, flag="--out-dir"):
    """Create the output folder and write (then remove) a probe file in it, so that a folder that cannot hold the
    results is refused before any work, not after an hour of training. Returns path."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file, not a folder: give a folder (it is created when missing)")
    probe = os.path.join(path, f".nanoft-write-check-{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write there ({e.strerror or e}): give a folder you can write to") \
            from None
    return path


def write_json(obj, path):
    """obj as JSON in path, atomically; the path joins saved_so_far(). Returns path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)
    if path not in _saved:
        _saved.append(path)
    return path


def print_table(rows, columns, note=None):
    """rows: list of dicts; columns: (title, key, format) triples. Words go left, numbers right; a missing value: -.
    note: a line above the table (e.g. SMOKE_NOTE), so that a copied table carries it."""
    cells = [[fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in columns] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(columns)]
    text = [isinstance(rows[0].get(key), str) for _, key, _ in columns]
    line = lambda values: " | ".join(v.ljust(w) if t else v.rjust(w)  # noqa: E731
                                     for v, w, t in zip(values, widths, text)).rstrip()
    print("\n" + (note + "\n" if note else "") + line([title for title, _, _ in columns]))
    print("-+-".join("-" * w for w in widths))
    for c in cells:
        print(line(c))


def save_rows(rows, out_dir, name, **extra):
    """rows (and any extra fields) as JSON in out_dir/name.json, atomically; returns the path."""
    return write_json({"rows": rows, **extra} if extra else rows, os.path.join(out_dir, f"{name}.json"))


def plot_rows(rows, label_key, value_key, path, title="", group_key=None):
    """A horizontal bar per row (value_key against label_key), one panel per distinct group_key; returns the path,
    or None when matplotlib is not installed."""
    png = plot_bars(rows, label_key, value_key, path, title, group_key)
    if png and png not in _saved:
        _saved.append(png)
    return png


def label(smoke=False, sample=False) -> str:
    """What a table or a plot title must say about numbers that are not results: "" for a real run."""
    return " - ".join(w for w, on in (("SMOKE sizes", smoke), ("SAMPLE data", sample)) if on)


class Results:
    """A chapter run's rows as they come: each part's rows in out_dir/<stem>_<part>.json the moment it finishes,
    and every row so far in out_dir/<stem>.json (with the run's flags), so that an interrupted run keeps what
    finished; finish() prints the table and draws <stem>.png."""

    def __init__(self, out_dir, flags, stem="results", smoke=False):
        self.out_dir, self.stem, self.smoke, self.rows, self.sample = out_dir, stem, smoke, [], False
        self.flags = {k: str(v) for k, v in flags.items()}

    def add(self, part, rows, sample=False):
        self.rows += rows
        self.sample |= bool(sample)
        write_json({"rows": rows, "smoke": self.smoke, "sample": bool(sample)},
                   os.path.join(self.out_dir, f"{self.stem}_{part}.json"))
        write_json({"rows": self.rows, "smoke": self.smoke, "sample": self.sample, "args": self.flags},
                   os.path.join(self.out_dir, f"{self.stem}.json"))
        return rows

    def finish(self, columns, legend=None, **plot):
        """The table (with a SMOKE / SAMPLE note above it and the legend below), the plot (titled likewise), and what
        was written."""
        notes = [n for n, on in ((SMOKE_NOTE, self.smoke), (SAMPLE_NOTE, self.sample)) if on]
        print_table(self.rows, columns, note="\n".join(notes) or None)
        if legend:
            print(legend)
        if label(self.smoke, self.sample):
            plot["title"] = plot.get("title", "") + f" - {label(self.smoke, self.sample)}"
        png = plot_rows(self.rows, path=os.path.join(self.out_dir, f"{self.stem}.png"), **plot)
        parts = [p for p in _saved if os.path.basename(p).startswith(self.stem + "_")]
        print(f"Written: {os.path.join(self.out_dir, self.stem + '.json')}" + (f", {png}" if png else "")
              + f"; and one file per part: {', '.join(parts)}")
