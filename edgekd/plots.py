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


def text_overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts of `fig` (titles, axis and tick labels, legends, annotations)
    whose drawn bounding boxes intersect: a figure meant to be read has none."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip() and t.figure is fig:
            bb = t.get_window_extent(renderer)
            if bb.width > 0 and bb.height > 0:
                boxes.append((t.get_text(), bb))
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:]
            if ba.overlaps(bb) and ba.intersection(ba, bb).width > 0.5 and ba.intersection(ba, bb).height > 0.5]


def training_png(curves: dict[str, list[dict]], path: Path) -> Path | None:
    """Loss (left) and accuracy (right: train solid, validation dashed where recorded) per epoch for each
    training run {label: history rows}; the legend sits outside the panels, so no label covers a curve."""
    plt = pyplot()
    curves = {k: v for k, v in curves.items() if v}
    if plt is None or not curves:
        return None
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for i, (label, rows) in enumerate(curves.items()):
        color = plt.cm.tab10(i % 10)
        epochs = [r["epoch"] for r in rows]
        loss_ax.plot(epochs, [r["loss"] for r in rows], color=color, label=label)
        acc_ax.plot(epochs, [100 * r["train_accuracy"] for r in rows], color=color)
        val = [(r["epoch"], 100 * r["val_accuracy"]) for r in rows if r.get("val_accuracy") is not None]
        if val:
            acc_ax.plot(*zip(*val), color=color, linestyle="--")
    loss_ax.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="train (solid), validation (dashed)")
    fig.legend(*loss_ax.get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(0.86, 0.5))
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    out = save(fig, Path(path))
    plt.close(fig)
    return out


def legend_axes(ax, markers: dict, colors: dict, shipped: bool) -> None:
    """Legends outside the last panel: models by marker, backends by colour, the Pareto front, the shipped model."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], marker=m, color="black", linestyle="", label=name) for name, m in markers.items()]
    handles += [Patch(color=c, label=b) for b, c in colors.items()]  # a swatch: no marker to mistake for a model
    handles.append(Line2D([], [], color="gray", linestyle="--", label="Pareto front"))
    if shipped:
        handles.append(Line2D([], [], marker="o", markersize=12, markerfacecolor="none", markeredgecolor="tab:green",
                              linestyle="", label="shipped"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
