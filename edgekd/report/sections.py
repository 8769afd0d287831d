"""The report's sections, each from what the stages recorded (manifest metrics, export/parity.json,
the newest bench JSON): a stage that did not run says so instead of failing the report."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from edgekd.benchmark.plots import bench_plots
from edgekd.benchmark.results import ratios, to_markdown
from edgekd.plots import HOW_TO_GET
from edgekd.rundir import RunDir

NOT_RUN = "not run"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _size(n) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _metrics(run: RunDir, stage: str) -> dict | None:
    st = run.stage(stage)
    return None if st is None else (st.get("metrics") or {})


def _defaults(raw: dict) -> dict:
    """The recipe every field of which is its default, for the same dataset kind and required fields."""
    from edgekd.recipe import Recipe, recipe_from_dict
    from edgekd.recipe_data import AVDigitsData, FolderData

    data = raw.get("data") or {}
    kind = FolderData if data.get("name") == "folder" else AVDigitsData
    needed = {k: data[k] for k, f in kind.model_fields.items() if (f.is_required() or k == "name") and k in data}
    top = {k: raw[k] for k, f in Recipe.model_fields.items() if f.is_required() and k in raw and k != "data"}
    dump = recipe_from_dict({**top, "data": needed}).model_dump(mode="json")
    for k in needed:  # what a recipe must say is shown, not hidden as "equal to itself"
        dump["data"][k] = object()
    return dump


def _changed(raw, default, prefix=""):
    """`a.b=value` for every leaf of `raw` that differs from `default`."""
    for k, v in raw.items():
        d = default.get(k) if isinstance(default, dict) else None
        if isinstance(v, dict) and isinstance(d, dict) and v:
            yield from _changed(v, d, f"{prefix}{k}.")
        elif v != d:
            text = json.dumps(v) if isinstance(v, dict | list) else str(v)
            short = re.sub(r"([0-9a-f]{12})[0-9a-f]{52}", r"\1…", text)  # sha256 pins, shortened
            yield f"{prefix}{k}={short}"


def recipe_section(run: RunDir) -> list[str]:
    """Only the settings that differ from edgekd's defaults; the whole recipe is recipe.yaml."""
    try:
        raw = yaml.safe_load((run.path / "recipe.yaml").read_text(encoding="utf-8")) or {}
        default = _defaults(raw)
    except Exception as e:  # an unreadable or outdated recipe.yaml must not stop the report
        return ["## Recipe", "", f"recipe.yaml could not be read against this edgekd ({type(e).__name__}); "
                "[the recipe file](../recipe.yaml) is as the run froze it.", ""]
    lines = ["## Recipe", "", "Settings that differ from edgekd's defaults; the whole resolved recipe is "
             "[recipe.yaml](../recipe.yaml).", "", "| section | settings |", "|---|---|"]
    for section, body in raw.items():
        items = list(_changed(body, default.get(section), "")) if isinstance(body, dict) else \
            ([f"{body}"] if body != default.get(section) else [])
        if items:
            lines.append(f"| {section} | {', '.join(items)} |")
    return lines + [""]


def stages_section(run: RunDir) -> list[str]:
    lines = ["## Stages", "", "| stage | status | finished | seconds |", "|---|---|---|---|"]
    for name, st in run.manifest["stages"].items():
        lines.append(f"| {name} | {st.get('status')} | {st.get('finished', '–')} | {st.get('seconds', '–')} |")
    return lines + ([""] if run.manifest["stages"] else ["", "No stage has run yet.", ""])


def budget_section(run: RunDir, bench: dict | None) -> list[str]:
    teacher, distill, qat = (_metrics(run, s) for s in ("teacher", "distill", "qat"))
    export, build = _metrics(run, "export"), run.stage("build")
    rows: list[tuple[str, float | None, str]] = []  # (stage, accuracy, compared with)
    if qat and qat.get("budget"):
        for row in qat["budget"]:
            rows.append((row["stage"], row["accuracy"], row.get("against") or ""))
    else:
        rows.append(("teacher (FP32)", (teacher or {}).get("accuracy"), ""))
        rows.append(("student FP32", (distill or {}).get("accuracy"), "teacher (FP32)"))
        rows.append(("student INT8 PTQ → QAT/QAD", None, NOT_RUN))
    acc = {label: a for label, a, _ in rows}
    fp32 = (qat or {}).get("fp32_accuracy", (distill or {}).get("accuracy"))
    refs = {"student_fp32": ("student FP32", fp32), "student_int8_cpu": ("student FP32", fp32),
            "teacher_fp32": ("teacher (FP32)", (teacher or {}).get("accuracy")),
            "student_int8_qdq": (f"student INT8 {(qat or {}).get('method', 'QAT').upper()}", (qat or {}).get("accuracy"))}
    if export:
        for key in ("student_fp32", "student_int8_qdq", "student_int8_cpu", "teacher_fp32"):
            if isinstance(export.get(key), dict):
                rows.append((f"ONNX {key} (onnxruntime)", export[key].get("accuracy"), refs[key][0]))
                acc.setdefault(refs[key][0], refs[key][1])
                acc[rows[-1][0]] = rows[-1][1]
    else:
        rows.append(("ONNX models", None, NOT_RUN))
    if build is None:
        rows.append(("TensorRT engine", None, NOT_RUN))
    elif build.get("status") != "done" or (build.get("metrics") or {}).get("skipped"):
        why = (build.get("metrics") or {}).get("skipped", build.get("status"))
        rows.append(("TensorRT engine", None, f"not built: {why}"))
    else:
        engine = [r for r in (bench or {}).get("results", []) if r["backend"] == "tensorrt" and r.get("accuracy") is not None]
        rows.append((f"TensorRT engine ({build['metrics'].get('device')})", engine[0]["accuracy"] if engine else None,
                     "ONNX student_int8_qdq (onnxruntime)" if engine else "not measured: run `edgekd bench` on the GPU"))
    lines = ["## Accuracy budget (test split)", "", "| stage | accuracy | change | compared with |", "|---|---|---|---|"]
    for label, a, ref in rows:
        base = acc.get(ref)
        delta = f"{100 * (a - base):+.1f} pt" if a is not None and base is not None else ""
        lines.append(f"| {label} | {_pct(a) if a is not None else '–'} | {delta} | {ref} |")
    return lines + [""]


def prune_section(run: RunDir) -> list[str]:
    """The prune stage's figures, and under a latency budget its candidate table and plot."""
    m = _metrics(run, "prune")
    if not m or m.get("skipped"):
        return []
    lines = ["## Pruning", "", f"Constraint `{json.dumps(m['constraint'])}`, channels in multiples of "
             f"{m.get('channel_divisor', '?')} ({m.get('channel_divisor_from', '')}).", "",
             "| | FLOPs | params | val | test |", "|---|---|---|---|---|",
             f"| distilled | {m['flops_before']:,} | {m['params_before']:,} | {_pct(m['val_accuracy_before'])} | "
             f"{_pct(m['accuracy_before'])} |",
             f"| pruned | {m['flops']:,} ({m['flops_ratio']:.0%}) | {m['params']:,} | {_pct(m['val_accuracy_pruned'])} | "
             f"{_pct(m['accuracy_pruned'])} |",
             f"| recovered | | | {_pct(m['val_accuracy'])} | {_pct(m['accuracy'])} |", ""]
    table = run.path / "prune" / "candidates.md"
    if table.is_file():  # its own title becomes a sub-heading; the plot is linked from here
        body = table.read_text().replace("](candidates.png)", "](../prune/candidates.png)").splitlines()
        lines += ["### Latency budget: " + body[0].lstrip("# "), *body[1:], ""]
    return lines


def parity_section(run: RunDir) -> list[str]:
    entry = ((run.stage("export") or {}).get("outputs") or {}).get("parity")
    path = run.path / entry["path"] if entry else run.path / "export" / "parity.json"
    if not path.is_file():
        return ["## Parity ladder", "", f"Export {NOT_RUN} (no export/parity.json).", ""]
    ladder = json.loads(path.read_text(encoding="utf-8"))
    lines = ["## Parity ladder", "", "Max abs diff and bound are both absolute logit differences (a relative "
             "tolerance is shown as the bound it gave on the batch's largest logit).", "",
             "| model | reference | batches | max abs diff (logits) | bound | "
             "top-1 agreement | test-split agreement | accuracy (onnxruntime) |", "|---|---|---|---|---|---|---|---|"]
    for key, r in ladder.items():
        lines.append(f"| {key} | {r.get('reference')} | {', '.join(map(str, r.get('batches', {})))} | "
                     f"{r.get('max_abs_diff', float('nan')):.3g} | {_bound(r)} | "
                     f"{_pct(r.get('top1_agreement'))} | {_pct(r.get('test_top1_agreement'))} | {_pct(r.get('accuracy'))} |")
    return lines + [""]


def _bound(r: dict) -> str:
    """The absolute logit bound a rung was held to, on the batch with its largest diff (parity.json
    files written before bounds were recorded: derived from the tolerance and the batch's scale)."""
    tol = r.get("tolerance")
    if tol in (None, float("inf")):
        return "– (agreement only)"
    relative = r.get("relative", r.get("reference") == "pytorch fake-quant")
    batches = [b for b in (r.get("batches") or {}).values() if isinstance(b, dict)]
    worst = max(batches, key=lambda b: b.get("max_abs_diff", {}).get("logits", 0.0), default={})
    bound = r.get("bound", worst.get("bound"))
    if bound is None:
        bound = tol * max(1.0, worst.get("scale", {}).get("logits", 1.0)) if relative else tol
    return f"{bound:.3g}" + (f" ({tol:g} × max abs logit)" if relative else "")


def newest_bench(run: RunDir) -> Path | None:
    """The bench JSON the manifest's bench stage points at, else the newest under RUN_DIR/bench/."""
    rel = (_metrics(run, "bench") or {}).get("bench_json")
    if rel and (run.path / rel).is_file():
        return run.path / rel
    found = sorted((run.path / "bench").glob("**/bench.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def latency_section(run: RunDir, bench_path: Path | None, bench: dict | None, out_dir: Path) -> list[str]:
    if bench is None:
        return ["## Latency", "", f"Bench {NOT_RUN}: `edgekd bench {run.path}` measures every model.", ""]
    if all(r.get("latencies_ms") for r in bench["results"] if r.get("samples")):
        # recomputed from every recorded call, so a bench written before the paired ratios reads like a new one
        bench = {**bench, "ratios": ratios(bench["results"], bench.get("confidence", 0.95))}
    table = to_markdown(bench).split("\n", 2)[2]  # its own title would be a second H1
    pngs = [bench_path.parent / n for n in ("latency_accuracy.png", "latency_distribution.png")]
    if not all(p.is_file() for p in pngs):
        pngs = list(bench_plots(bench, out_dir).values())
    rel = os.path.relpath(bench_path, out_dir)
    figures = [f"![{p.stem}]({os.path.relpath(p, out_dir)})" for p in pngs] or [f"_No plots: {HOW_TO_GET}._"]
    return ["## Latency", "", f"From `{rel}`.", "", table, *figures, ""]


def shipped_accuracy(run: RunDir) -> tuple[str, float | None]:
    """(what, test accuracy) of the student as it ships: the CPU INT8 ONNX model, else the newest student."""
    export, qat, distill = (_metrics(run, s) or {} for s in ("export", "qat", "distill"))
    for what, acc in (("the CPU INT8 student", (export.get("student_int8_cpu") or {}).get("accuracy")),
                      ("the INT8 student", qat.get("accuracy")), ("the FP32 student", distill.get("accuracy"))):
        if acc is not None:
            return what, acc
    return "the student", None


def baselines_section(run: RunDir) -> list[str]:
    from edgekd.distill.baselines import beaten_by

    base = (_metrics(run, "teacher") or {}).get("baselines")
    if not base:
        return []
    what, acc = shipped_accuracy(run)
    lines = ["## Baselines", "", "Linear models fitted on the same train split (teacher stage, "
             "teacher/baselines.json): what a student has to beat to be worth shipping.", "",
             "| baseline | val | test |", "|---|---|---|"]
    lines += [f"| {k} | {_pct(b['val_accuracy'])} | {_pct(b['accuracy'])} |" for k, b in base.items()]
    if acc is not None:  # its validation figure: the search's held-out rows, else the distill stage's val split
        val = (_metrics(run, "search") or {}).get("val_accuracy") or (_metrics(run, "distill") or {}).get("val_accuracy")
        lines += [f"| **{what}** | {_pct(val) if val is not None else ''} | **{_pct(acc)}** |"]
    verdict = beaten_by(base, acc, what)
    return lines + ["", f"**{verdict[0].upper() + verdict[1:]}.**" if verdict else
                    f"{what[0].upper() + what[1:]} beats every baseline on test." if acc is not None else "", ""]


def search_section(run: RunDir) -> list[str]:
    m = _metrics(run, "search")
    table = run.path / "search" / "trials.md"
    if not m or m.get("skipped") or not table.is_file():
        return []
    body = table.read_text(encoding="utf-8").split("\n", 1)[1].replace("](trials.png)", "](../search/trials.png)")
    return ["## Student search (student: auto)", "", f"Chosen: **{m['student']}** (trial {m['trial']}), "
            f"validation {_pct(m['val_accuracy'])}; the distill stage trained it on every train row.", body, ""]


def tensorboard_lines(run: RunDir) -> list[str]:
    if not (run.path / "tb").is_dir():
        return []
    stages = sorted(p.name for p in (run.path / "tb").iterdir() if p.is_dir())
    return [f"TensorBoard event files for {', '.join(stages)}: `tensorboard --logdir {run.path / 'tb'}`.", ""]


def sizes_section(run: RunDir) -> list[str]:
    lines = ["## Artifacts", "", "| stage | output | path | size |", "|---|---|---|---|"]
    for name, st in run.manifest["stages"].items():
        for key, e in (st.get("outputs") or {}).items():
            lines.append(f"| {name} | {key} | {e.get('path')} | {_size(e.get('bytes'))} |")
    bundle = run.path / "bundle" / "manifest.json"
    if bundle.is_file():
        files = json.loads(bundle.read_text(encoding="utf-8")).get("files", {})
        lines.append(f"| bundle | all {len(files)} files | bundle/ | {_size(sum(f['bytes'] for f in files.values()))} |")
    return lines + [""]
