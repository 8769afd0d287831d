"""Figures (matplotlib, headless) — optional everywhere.

matplotlib is the `[plots]` extra (the training install has it too). Without it every function
here returns None or {} and the Markdown beside the figures says how to get them, so bench,
report and gate work on a core device install.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.files import atomic_path

HOW_TO_GET = "plots need matplotlib: pip install 'edgekd[plots]'"


def pyplot():
    """matplotlib.pyplot on the headless Agg backend, or None where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(conf: list[list[int]], classes: list[str], title: str, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    m = np.asarray(conf)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(classes), 0.8 + 0.45 * len(classes)), dpi=100)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for (i, j), v in np.ndenumerate(m):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > m.max() / 2 else "black")
    fig.tight_layout()
    out = save(fig, Path(path))
    plt.close(fig)
    return out


def save(fig, path: Path) -> Path:
    """Write a figure as PNG atomically; returns the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
