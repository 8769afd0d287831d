"""The bench JSON (schema "edgekd.bench", version 1), its Markdown table and its plots.

The JSON keeps every timed call's latency (`latencies_ms`, rounded to 0.1 us) next to the summary,
so a gate can recompute any interval at any confidence from the file alone, and a later bench can
be compared against this one sample by sample rather than through a few rounded percentiles.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgekd.benchmark.harness import Result
from edgekd.benchmark.stats import PAIRED, all_cis, quantile_ratio, summarize
from edgekd.errors import UsageError

SCHEMA, VERSION = "edgekd.bench", 1
# the order backends are compared against: the first one present is the reference
BACKEND_ORDER = ("onnxruntime-cpu", "torch-cpu", "onnxruntime-cuda", "torch-cuda", "onnxruntime-trt", "tensorrt")


def result_record(r: Result, peak: dict, confidence: float = 0.95) -> dict:
    """One `results[]` entry: the DESIGN.md contract keys plus intervals, FLOPs and raw latencies."""
    rec = {"model": r.model, "backend": r.backend, "device": r.device, "batch": r.batch, "threads": r.threads}
    if r.skipped or r.latencies_ms.size == 0:
        rec.update({k: None for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "throughput")})
        rec.update(samples=0, ci=None)
    else:
        rec.update(summarize(r.latencies_ms, r.batch))
        rec["ci"] = all_cis(r.latencies_ms, confidence)
    # achieved rate over the whole run (FLOPs per call / mean latency), beside this machine's peak
    gflops = r.flops / (rec["mean_ms"] / 1000) / 1e9 if r.flops and rec["mean_ms"] else None
    device_peak = peak.get(r.device)
    rec.update(accuracy=r.accuracy, flops=r.flops, gflops_per_s=gflops,
               peak_fraction=gflops / device_peak if gflops and device_peak else None,
               peak_rss_mb=None if r.peak_rss_mb is None else round(r.peak_rss_mb, 1), gpu_mem_mb=r.gpu_mem_mb,
               converged=r.converged, stop=r.stop, skipped=r.skipped, meta=r.meta,
               latencies_ms=[round(float(x), 4) for x in r.latencies_ms])
    return rec


def speedup(model_ms, baseline_ms, confidence: float = 0.95,
            paired: bool = False) -> tuple[float, float | None, float | None, str]:
    """How many times faster `model` is than `baseline` at the median, and how it was computed:
    `paired` (both timed in the same rounds) as `edgekd gate` decides it, else p50(baseline) / p50(model)."""
    return quantile_ratio(baseline_ms, model_ms, 0.5, confidence, paired)


def _source(rec: dict) -> str:
    return rec["meta"].get("source") or rec["model"]  # an engine compares as the ONNX model it was built from


def ratios(records: list[dict], confidence: float = 0.95) -> list[dict]:
    """Speedups within this run: student vs teacher and INT8 vs FP32 on each backend and batch, and
    each backend vs the reference backend for the same model and batch."""
    live = [r for r in records if r["samples"]]
    find = {(r["model"], r["backend"], r["batch"]): r for r in live}
    pairs = []
    for r in live:
        if r["model"].startswith(("student", "baseline")):
            pairs.append(("student_vs_teacher", r, find.get(("teacher_fp32", r["backend"], r["batch"]))))
        if r["model"] in ("student_int8_cpu", "student_int8_qdq"):
            pairs.append(("int8_vs_fp32", r, find.get(("student_fp32", r["backend"], r["batch"]))))
    for (model, batch) in dict.fromkeys((_source(r), r["batch"]) for r in live):
        same = sorted((r for r in live if _source(r) == model and r["batch"] == batch),
                      key=lambda r: BACKEND_ORDER.index(r["backend"]) if r["backend"] in BACKEND_ORDER else 99)
        pairs += [("backend_vs_backend", r, same[0]) for r in same[1:]]
    out = []
    for kind, a, b in pairs:
        if b is None:
            continue
        # one bench times a batch size's targets in the same interleaved rounds; paired on one backend
        value, lo, hi, how = speedup(a["latencies_ms"], b["latencies_ms"], confidence, a["backend"] == b["backend"])
        paired = how == PAIRED
        where = (f"{a['backend']}, batch {a['batch']}" if a["backend"] == b["backend"]
                 else f"{a['backend']} vs {b['backend']}, batch {a['batch']}")
        out.append({"name": f"{a['model']} vs {b['model']} ({where})", "kind": kind, "model": a["model"],
                    "backend": a["backend"], "baseline_model": b["model"], "baseline_backend": b["backend"],
                    "batch": a["batch"], "value": value,
                    "metric": "p50 speedup (median of per-round baseline/model ratios)" if paired
                    else "p50 speedup (baseline p50 / model p50)",
                    "ci": [lo, hi]})
    return out


def build_bench(results: list[Result], *, env: dict, peak: dict, source: dict, settings: dict,
                confidence: float = 0.95) -> dict:
    records = [result_record(r, peak, confidence) for r in results]
    return {"schema": SCHEMA, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": source, "settings": settings, "confidence": confidence, "env": env,
            "machine_peak_gflops": peak, "results": records, "ratios": ratios(records, confidence)}


def load_bench(path) -> dict:
    """A bench JSON written by `edgekd bench`, its schema and version checked."""
    try:
        bench = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read bench JSON {path} ({e}); give a file written by `edgekd bench`") from None
    if not isinstance(bench, dict) or bench.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not an edgekd bench JSON (schema {SCHEMA!r} expected)")
    if bench.get("version") != VERSION:
        raise UsageError(f"{path} is bench JSON version {bench.get('version')!r}; this edgekd reads version {VERSION}")
    return bench


# --------------------------------------------------------------------------- Markdown and plots


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"
    return str(v)


COLUMNS = ("model", "backend", "device", "batch", "threads", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms",
           "std_ms", "throughput", "accuracy", "peak_rss_mb", "gflops_per_s")


def to_markdown(bench: dict) -> str:
    env, peak = bench.get("env") or {}, bench.get("machine_peak_gflops") or {}
    lines = [f"# Benchmark: {bench.get('source', {}).get('name', '')}".rstrip(), "",
             f"{bench['created']} · {env.get('cpu_model') or 'unknown CPU'} ({env.get('cpu_cores_usable')} usable cores, "
             f"threads {env.get('threads')}) · GPU: {(env.get('gpu') or {}).get('name', 'none')} · "
             f"peak " + ", ".join(f"{k} {_f(v)} GFLOP/s" for k, v in peak.items() if v) + " · load "
             f"{env.get('load_average')}", "",
             "Latencies in ms per call (one call = one batch); throughput in samples/s; "
             f"intervals at {bench.get('confidence', 0.95):.0%} confidence.", "",
             "| " + " | ".join(COLUMNS) + " | p99 CI | % of peak | samples |",
             "|" + "---|" * (len(COLUMNS) + 3)]
    for r in bench["results"]:
        if r.get("skipped"):
            continue
        ci = (r.get("ci") or {}).get("p99") or [None, None]
        frac = r.get("peak_fraction")
        flag = "" if r.get("converged") else " (time cap)"
        pct = _f(None if frac is None else 100 * frac, 2)
        lines.append("| " + " | ".join(_f(r.get(c)) for c in COLUMNS) +
                     f" | [{_f(ci[0])}, {_f(ci[1])}] | {pct} | {r['samples']}{flag} |")
    if bench.get("ratios"):
        lines += ["", "| comparison | p50 speedup | CI | how |", "|---|---|---|---|"]
        lines += [f"| {q['name']} | {q['value']:.2f}x | [{_f(q['ci'][0])}, {_f(q['ci'][1])}] | "
                  f"{'paired rounds' if 'per-round' in q.get('metric', '') else 'ratio of p50s'} |"
                  for q in bench["ratios"]]
    verdicts = int8_verdicts(bench.get("ratios") or [])
    if verdicts:
        lines += ["", "Does INT8 pay? (against the FP32 student, same backend and batch, paired rounds)", ""]
        lines += [f"- {v}" for v in verdicts]
    if bench.get("defaults"):
        lines += ["", "Which model ships (the fastest student within the accuracy budget, at the smallest batch):", ""]
        lines += [f"- {d['why']}" for d in bench["defaults"].values()]
    skipped = [r for r in bench["results"] if r.get("skipped")]
    if skipped:
        lines += ["", "Not measured:", ""] + [f"- {r['model']} on {r['backend']} (batch {r['batch']}): {r['skipped']}"
                                             for r in skipped]
    return "\n".join(lines) + "\n"


def int8_verdicts(ratios: list[dict]) -> list[str]:
    """One plain sentence per INT8 model, backend and batch: faster than FP32, slower, or no
    difference the interval can tell."""
    out = []
    for q in ratios:
        if q.get("kind") != "int8_vs_fp32":
            continue
        lo, hi = q["ci"]
        where = f"{q['model']} on {q['backend']}, batch {q['batch']}"
        if q["model"] == "student_int8_qdq" and "tensorrt" not in q["backend"] and "trt" not in q["backend"]:
            where += " (the QDQ model is built for TensorRT; student_int8_cpu is the CPU's)"
        if lo is not None and lo > 1:
            out.append(f"{where}: INT8 pays, {q['value']:.2f}x faster than FP32 (CI {lo:.2f}-{hi:.2f})")
        elif hi is not None and hi < 1:
            out.append(f"{where}: INT8 does not pay, FP32 is {1 / q['value']:.2f}x faster (CI {1 / hi:.2f}-{1 / lo:.2f})")
        else:
            out.append(f"{where}: no difference the interval can tell ({q['value']:.2f}x, CI {_f(lo)}-{_f(hi)})")
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(latency, accuracy) points no other point beats on both: lower latency and higher accuracy."""
    front, best = [], -np.inf
    for lat, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((lat, acc))
            best = acc
    return front
