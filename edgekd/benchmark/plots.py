"""The bench's figures: latency vs accuracy with the Pareto front, and latency distributions.

matplotlib comes through edgekd.plots, so without it (a core device install) nothing is drawn and
the caller says how to get the figures.
"""
from __future__ import annotations

from pathlib import Path

from edgekd.benchmark.results import pareto_front
from edgekd.plots import legend_axes, pyplot, save


def bench_plots(bench: dict, out_dir) -> dict[str, Path]:
    """latency_accuracy.png (p50 vs accuracy, Pareto front, one panel per batch) and
    latency_distribution.png (box plots of every call's latency); {} without matplotlib."""
    plt = pyplot()
    if plt is None:
        return {}
    out_dir = Path(out_dir)
    live = [r for r in bench["results"] if r.get("samples")]
    batches = sorted({r["batch"] for r in live}) or [1]
    backends = sorted({r["backend"] for r in live})
    colors = {b: plt.cm.tab10(i % 10) for i, b in enumerate(backends)}
    written = {}

    # one marker per model, one colour per backend, both in legends: no label is ever written beside a
    # point, so none can cover another (two students 0.002 ms apart used to print on top of each other)
    models = sorted({r["model"] for r in live})
    markers = dict(zip(models, "os^DvP*Xph<>" * 4))
    shipped = {(d["model"], b) for b, d in (bench.get("defaults") or {}).items()}
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches) + 2.2, 4), squeeze=False, dpi=100)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in live if r["batch"] == batch and r.get("accuracy") is not None]
        for r in rows:
            ax.scatter(r["p50_ms"], 100 * r["accuracy"], color=colors[r["backend"]], marker=markers[r["model"]], s=40,
                       zorder=3)
            if (r["model"], r["backend"]) in shipped:
                ax.scatter(r["p50_ms"], 100 * r["accuracy"], s=220, facecolors="none", edgecolors="tab:green",
                           linewidths=2, zorder=2)
        front = pareto_front([(r["p50_ms"], 100 * r["accuracy"]) for r in rows])
        if front:
            ax.step(*zip(*front), where="post", color="gray", linestyle="--", linewidth=1)
            ax.set_xscale("log")
        ax.set(xlabel="p50 latency (ms, log)", ylabel="test accuracy (%)", title=f"batch {batch}")
    legend_axes(axes[0][-1], markers, colors, bool(shipped))
    fig.tight_layout()
    written["latency_accuracy"] = save(fig, out_dir / "latency_accuracy.png")
    plt.close(fig)

    widest = max((sum(r["batch"] == b for r in live) for b in batches), default=1)
    fig, axes = plt.subplots(1, len(batches), figsize=(len(batches) * (1.5 + 0.8 * widest), 4.5), squeeze=False, dpi=100)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in live if r["batch"] == batch]
        if rows:
            ax.boxplot([r["latencies_ms"] for r in rows], whis=(1, 99), flierprops={"markersize": 2})
            ax.set_xticks(range(1, len(rows) + 1), [f"{r['model']}\n{r['backend']}" for r in rows],
                          fontsize=7, rotation=30, ha="right")
            ax.set_yscale("log")
        ax.set(ylabel="latency per call (ms, log; whiskers p1-p99)", title=f"batch {batch}")
    fig.tight_layout()
    written["latency_distribution"] = save(fig, out_dir / "latency_distribution.png")
    plt.close(fig)
    return written

