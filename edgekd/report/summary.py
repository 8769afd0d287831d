"""The report's first block: the answer a reader came for, before any table.

What ships on each backend (the bench's pick), how accurate it is against the teacher and the best
linear baseline, how much faster than the teacher at each batch (paired, with the interval), its
size, whether INT8 paid, and the gate's verdict when a budget file was given.
"""
from __future__ import annotations

import json

from edgekd.benchmark.results import int8_verdicts, ratios
from edgekd.report.sections import _pct, _size


def _bundle(run) -> dict:
    path = run.path / "bundle" / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def model_bytes(run, key: str) -> int | None:
    """Size of model `key` as it ships: its file in the bundle, else the export stage's record."""
    bundle = _bundle(run)
    meta = (bundle.get("models") or {}).get(key)
    if meta and meta.get("file") in (bundle.get("files") or {}):
        return bundle["files"][meta["file"]]["bytes"]
    export = ((run.stage("export") or {}).get("metrics") or {}).get(key)
    return export.get("bytes") if isinstance(export, dict) else None


def shipped(run, bench: dict | None) -> dict[str, str]:
    """backend -> the model that ships there: the bench's pick, else the bundle's default on onnxruntime-cpu."""
    picked = {b: d["model"] for b, d in ((bench or {}).get("defaults") or {}).items()}
    if not picked and _bundle(run).get("default_model"):
        picked = {"onnxruntime-cpu": _bundle(run)["default_model"]}
    return picked


def summary_section(run, bench: dict | None, gate: tuple[str, int, list[str]] | None = None) -> list[str]:
    teacher = ((run.stage("teacher") or {}).get("metrics") or {})
    t_acc = teacher.get("accuracy")
    base = teacher.get("baselines") or {}
    best = max(base.items(), key=lambda kv: kv[1]["accuracy"], default=None)
    lines = ["## Summary", ""]
    ships = shipped(run, bench)
    if not ships:
        return lines + ["Nothing ships yet: run the pipeline to `export` (the bundle) and `bench`.", ""]
    qs = ratios(bench["results"], bench.get("confidence", 0.95)) if bench and all(
        r.get("latencies_ms") for r in bench["results"] if r.get("samples")) else (bench or {}).get("ratios", [])
    export = (run.stage("export") or {}).get("metrics") or {}
    for backend, model in ships.items():
        recs = sorted((r for r in (bench or {}).get("results", []) if r["model"] == model and r["backend"] == backend
                       and r.get("samples")), key=lambda r: r["batch"])
        acc = recs[0].get("accuracy") if recs else (export.get(model) or {}).get("accuracy")
        against = [f"teacher {_pct(t_acc)}, {100 * (acc - t_acc):+.1f} pt" if None not in (acc, t_acc) else ""]
        if best and acc is not None:
            against.append(f"best linear baseline ({best[0]}) {_pct(best[1]['accuracy'])}, "
                           f"{100 * (acc - best[1]['accuracy']):+.1f} pt")
        lines.append(f"- **Ships `{model}` on {backend}**: test accuracy **{_pct(acc)}** "
                     f"({'; '.join(a for a in against if a)}).")
        fast = [q for q in qs if q["kind"] == "student_vs_teacher" and q["model"] == model and q["backend"] == backend]
        if fast:
            lines.append("- **Faster than the teacher**: " + ", ".join(
                f"**{q['value']:.1f}×** at batch {q['batch']} (95% CI {q['ci'][0]:.1f}-{q['ci'][1]:.1f})"
                if None not in q["ci"] else f"**{q['value']:.1f}×** at batch {q['batch']}" for q in fast) + ".")
        size, t_size = model_bytes(run, model), model_bytes(run, "teacher_fp32")
        lines.append(f"- **Size**: {_size(size)}" + (f" ({t_size / size:.0f}× smaller than the teacher's "
                                                      f"{_size(t_size)})" if size and t_size else "") + ".")
        paid = [v for v in int8_verdicts(qs) if v.startswith(f"{model} on {backend},")]
        if paid:
            lines.append("- **INT8 against its FP32 model**: " + "; ".join(v.split(", ", 1)[1] for v in paid) + ".")
    if gate is not None:
        budget_file, code, gate_lines = gate
        verdict = {0: "passed", 1: "FAILED", 3: "inconclusive (re-run the bench)"}.get(code, f"exit {code}")
        lines.append(f"- **Gate** (`{budget_file}`): **{verdict}**: {gate_lines[-1]}.")
    from edgekd.distill.baselines import beaten_by

    first = next(iter(ships.values()))
    acc = next((r.get("accuracy") for r in (bench or {}).get("results", []) if r["model"] == first
                and r.get("accuracy") is not None), (export.get(first) or {}).get("accuracy"))
    verdict = beaten_by(base, acc, f"`{first}`")
    if verdict:
        lines.append(f"- **Note**: {verdict}.")
    return lines + [""]
