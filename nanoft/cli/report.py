"""What a run shows its reader: a table on the terminal, the same rows as JSON, and a bar chart of them as PNG.

    print_table(rows, [("method", "method", "{}"), ("dev acc", "acc", "{:.1f}%")])
    save_rows(rows, "runs/ch13", "results")            # runs/ch13/results.json
    plot_rows(rows, "method", "acc", "runs/ch13/results.png", title="SST-2 dev accuracy (%)")
    write_results(rows, "runs/ch13", vars(args), sample=False, label_key="method", value_key="acc")  # both, at once

matplotlib is optional: without it plot_rows says so and returns None.
"""
import json
import os


def print_table(rows, columns):
    """rows: list of dicts; columns: (title, key, format) triples. Words go left, numbers right; a missing value: -."""
    cells = [[fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in columns] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(columns)]
    text = [isinstance(rows[0].get(key), str) for _, key, _ in columns]
    line = lambda values: " | ".join(v.ljust(w) if t else v.rjust(w)  # noqa: E731
                                     for v, w, t in zip(values, widths, text)).rstrip()
    print("\n" + line([title for title, _, _ in columns]))
    print("-+-".join("-" * w for w in widths))
    for c in cells:
        print(line(c))


def save_rows(rows, out_dir, name, **extra):
    """rows (and any extra fields) as JSON in out_dir/name.json; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"rows": rows, **extra} if extra else rows, f, indent=2, default=str)
    return path


def plot_rows(rows, label_key, value_key, path, title="", group_key=None):
    """A horizontal bar per row (value_key against label_key), one panel per distinct group_key; returns the path,
    or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no window
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(no plot: matplotlib is not installed; `pip install matplotlib` draws {path})")
        return None
    groups = list(dict.fromkeys(r.get(group_key, "") for r in rows)) if group_key else [""]
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 1.2 + 0.5 * len(rows)), squeeze=False)
    for ax, group in zip(axes[:, 0], groups):
        mine = [r for r in rows if not group_key or r.get(group_key, "") == group]
        ax.barh([r[label_key] for r in mine][::-1], [r[value_key] for r in mine][::-1], color="tab:blue")
        for i, r in enumerate(mine[::-1]):
            ax.text(r[value_key], i, f" {r[value_key]:.1f}", va="center")
        ax.set_title(group, fontsize=9, loc="left")
        ax.set_xlim(0, max(r[value_key] for r in mine) * 1.15 or 1)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_results(rows, out_dir, flags, sample=False, **plot):
    """The end of a chapter run: a notice when the data was the bundled SAMPLE, out_dir/results.json (the rows and
    the run's flags) and out_dir/results.png (plot_rows(rows, **plot)), then one line naming what was written."""
    if sample:
        print("NOTE: SAMPLE data (the real data sets were not found): the numbers show that the code runs, no more.")
        plot["title"] = plot.get("title", "") + " - SAMPLE data"
    paths = [save_rows(rows, out_dir, "results", args={k: str(v) for k, v in flags.items()}),
             plot_rows(rows, path=os.path.join(out_dir, "results.png"), **plot)]
    print("Written: " + ", ".join(p for p in paths if p))
    return paths
