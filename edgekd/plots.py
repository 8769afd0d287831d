"""Figures a stage leaves in the run directory (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.rundir import atomic_path


def confusion_png(conf: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
