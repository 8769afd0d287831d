"""`edgekd report RUN_DIR`: one page that tells a run's story from what its stages recorded.

The answer first (what ships, how accurate, how much faster, how big, whether INT8 paid, the gate),
then the accuracy budget, the baselines, latency, search, pruning, training curves and parity, and
the recipe last with only what differs from the defaults. It reads only what the stages recorded
(manifest metrics, eval/parity JSON, the newest bench JSON), never the models, so it renders in a
second on any machine, torch or not, and whatever stages exist: a stage that did not run says so.
Written as report.md (prose wrapped at 80 columns) and report.html (one self-contained file).
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

from edgekd.benchmark.results import load_bench
from edgekd.errors import UsageError
from edgekd.files import atomic_write_text
from edgekd.plots import HOW_TO_GET, training_png
from edgekd.report import sections as s
from edgekd.report.html import to_html
from edgekd.report.summary import summary_section
from edgekd.rundir import RunDir

WIDTH = 80


def _histories(run: RunDir) -> dict[str, list[dict]]:
    """Every training run's per-epoch history the stages recorded in their eval.json."""
    found: dict[str, list[dict]] = {}
    for stage in ("teacher", "distill", "prune", "qat"):
        path = run.path / stage / "eval.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            continue
        if isinstance(data.get("history"), list):
            found[stage] = data["history"]
        for key, part in data.items():
            if isinstance(part, dict) and isinstance(part.get("history"), list):
                found[f"{stage} {key}"] = part["history"]
    return {k: v for k, v in found.items() if v and all("loss" in r and "train_accuracy" in r for r in v)}


def _training_section(run: RunDir, out_dir: Path) -> list[str]:
    curves = _histories(run)
    lines = ["## Training curves", ""]
    if curves:
        png = training_png(curves, out_dir / "training.png")
        lines += [f"Loss and accuracy per epoch of {', '.join(curves)}.", "",
                  "![training curves](training.png)" if png else f"_No plot: {HOW_TO_GET}._", ""]
    return (lines + s.tensorboard_lines(run)) if (curves or (run.path / "tb").is_dir()) else []


def _wrap(lines: list[str]) -> list[str]:
    """Prose and bullets wrapped at WIDTH columns; tables, headings, figures and code left whole."""
    out, code = [], False
    for line in lines:
        for one in line.split("\n"):
            code ^= one.startswith("```")
            if code or len(one) <= WIDTH or one.startswith(("|", "#", "![", "```", "    ")):
                out.append(one)
                continue
            lead = "  " if one.startswith("- ") else "> " if one.startswith("> ") else ""
            out += textwrap.wrap(one, WIDTH, subsequent_indent=lead, break_long_words=False, break_on_hyphens=False)
    return out


def render_report(run_dir, budget: Path | None = None) -> Path:
    """Write RUN_DIR/report/report.md and report.html (plots beside them); returns report.md's path.
    `budget`: a gate budget file, checked against the newest bench and shown in the summary."""
    run = RunDir.open(Path(run_dir), check_recipe=False)  # a report must render even an outdated recipe
    out_dir = run.path / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    bench_path = s.newest_bench(run)
    try:
        bench = load_bench(bench_path) if bench_path else None
    except UsageError:
        bench, bench_path = None, None
    gate = None
    if budget is not None:
        if bench_path is None:
            raise UsageError(f"--budget {budget}: the run has no bench to gate; run `edgekd bench {run.path}` first")
        from edgekd.benchmark.gate import gate as evaluate

        gate = (str(budget), *evaluate(bench_path, budget))
    name = run.manifest.get("name", run.path.name)
    lines = [f"# edgekd report: {name}", "",
             f"Run directory `{run.path}`, created {run.manifest.get('created', '?')} by edgekd "
             f"{run.manifest.get('edgekd_version', '?')}.", ""]
    lines += summary_section(run, bench, gate) + s.budget_section(run, bench) + s.baselines_section(run)
    lines += s.latency_section(run, bench_path, bench, out_dir) + s.search_section(run) + s.prune_section(run)
    lines += _training_section(run, out_dir) + s.parity_section(run) + s.stages_section(run)
    lines += s.sizes_section(run) + s.recipe_section(run)
    md = "\n".join(_wrap(lines))
    path = atomic_write_text(out_dir / "report.md", md)
    atomic_write_text(out_dir / "report.html", to_html(md, out_dir, f"edgekd report: {name}"))
    return path
