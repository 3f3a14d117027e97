"""PNG plots of what a run measured: line curves (losses, perplexities) and bar charts (a table of results).

matplotlib is optional (not a runtime dependency): without it each function prints one line and returns None.
Figure, not pyplot: no GUI backend and no global state. A PNG is written to a temporary file and renamed, so an
interrupted write never leaves half an image.
"""
import os
from typing import Optional


def new_figure(path, **figure_kw):
    """A matplotlib Figure to draw `path` on, or None (said in one line) when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print(f"(no plot: matplotlib is not installed; `pip install matplotlib` draws {path})")
        return None
    return Figure(**figure_kw)


def save_figure(fig, path, dpi: int = 120) -> str:
    """fig as a PNG at path, atomically; returns path as a string."""
    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_lines(panels, path, title: str = "", log_y: bool = False) -> Optional[str]:
    """Panels side by side, each (x label, y label, {line name: (xs, ys)}), as one PNG; returns its path, or None
    without matplotlib. Lines of up to 50 points get a marker on each point."""
    fig = new_figure(path, figsize=(5 * len(panels), 4.4 if title else 4))
    if fig is None:
        return None
    for ax, (x_label, y_label, lines) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for name, (xs, ys) in lines.items():
            ax.plot(xs, ys, "o-" if len(xs) <= 50 else "-", label=name)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_bars(rows, label_key: str, value_key: str, path, title: str = "", group_key=None) -> Optional[str]:
    """A horizontal bar per row (value_key against label_key), one panel per distinct group_key, as a PNG; returns
    its path, or None without matplotlib."""
    groups = list(dict.fromkeys(r.get(group_key, "") for r in rows)) if group_key else [""]
    fig = new_figure(path, figsize=(8, 1.2 + 0.5 * len(rows)))
    if fig is None:
        return None
    for ax, group in zip(fig.subplots(len(groups), 1, squeeze=False)[:, 0], groups):
        mine = [r for r in rows if not group_key or r.get(group_key, "") == group]
        ax.barh([r[label_key] for r in mine][::-1], [r[value_key] for r in mine][::-1], color="tab:blue")
        for i, r in enumerate(mine[::-1]):
            ax.text(r[value_key], i, f" {r[value_key]:.1f}", va="center")
        ax.set_title(group, fontsize=9, loc="left")
        ax.set_xlim(0, max(r[value_key] for r in mine) * 1.15 or 1)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
