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


def budget_png(rows: list[dict], front: list[str], budget_ms: float, metric: str, chosen: str | None, title: str,
               path: Path) -> Path | None:
    """Latency (with its confidence interval) against validation accuracy per pruning candidate:
    the Pareto front joined, the budget as a vertical line, the chosen candidate ringed."""
    plt = pyplot()
    timed = [r for r in rows if r.get("value") is not None]
    if plt is None or not timed:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for r in timed:
        lo, hi = r.get("lo") or r["value"], r.get("hi") or r["value"]
        ax.errorbar(r["value"], 100 * r["val_accuracy"], xerr=[[r["value"] - lo], [hi - r["value"]]], fmt="o",
                    color="tab:blue" if r["name"] in front else "tab:gray", capsize=3)
        ax.annotate(r["name"], (r["value"], 100 * r["val_accuracy"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
        if r["name"] == chosen:
            ax.plot(r["value"], 100 * r["val_accuracy"], "o", ms=14, mfc="none", mec="tab:green", mew=2)
    pts = sorted((r["value"], 100 * r["val_accuracy"]) for r in timed if r["name"] in front)
    if pts:
        ax.plot(*zip(*pts), "-", color="tab:blue", alpha=0.5, label="Pareto front")
    ax.axvline(budget_ms, color="tab:red", ls="--", label=f"budget {budget_ms:g} ms")
    ax.set_xlabel(f"{metric[:-3]} latency (ms), 95% CI")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out = save(fig, Path(path))
    plt.close(fig)
    return out
