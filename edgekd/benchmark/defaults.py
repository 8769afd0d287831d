"""Which model a bundle serves by default on each backend: decided from a bench, not assumed.

INT8 is not always faster: on onnxruntime CPU a small student's INT8 model was measured at 0.53x
the speed of its FP32 model, and a TensorRT-only QDQ model runs on a CPU at half speed. So, per
backend, the default is the fastest student whose test accuracy stays within `budget` (accuracy as
a fraction, 0.01 = one point) of the most accurate student measured there, at the smallest
measured batch (a device answers one request at a time; larger batches are reported beside).
The decision and its reason are written into bench.json and bench.md, and (`--pick-default`, the
bench stage) into the bundle's manifest, where `predict`, `serve` and `triton` read it.
"""
from __future__ import annotations

from edgekd.benchmark.results import speedup

# a backend's candidates: the bundle models whose `target` suits it (an engine runs only on tensorrt)
TARGETS = {"onnxruntime-cpu": ("any", "cpu"), "onnxruntime-cuda": ("any", "tensorrt"),
           "onnxruntime-trt": ("any", "tensorrt"), "tensorrt": ("tensorrt",)}
DEFAULT_BUDGET = 0.01


def _candidate(meta: dict, backend: str) -> bool:
    engine = meta.get("backend") == "tensorrt"
    return (meta.get("role") == "student" and meta.get("target") in TARGETS.get(backend, ())
            and engine == (backend == "tensorrt"))


def _pct(a) -> str:
    return "not measured" if a is None else f"{100 * a:.1f}%"


def pick_defaults(bench: dict, models: dict[str, dict], budget: float = DEFAULT_BUDGET) -> dict[str, dict]:
    """{backend: {"model", "batch", "p50_ms", "accuracy", "why", "others"}} for every backend on which
    at least one of the bundle's students (`models`: the bundle manifest's models) was measured."""
    confidence = bench.get("confidence", 0.95)
    rows = [r for r in bench.get("results", []) if not r.get("skipped") and r.get("samples")
            and r["model"] in models and _candidate(models[r["model"]], r["backend"])]
    out = {}
    for backend in dict.fromkeys(r["backend"] for r in rows):
        here = [r for r in rows if r["backend"] == backend]
        batch = min(r["batch"] for r in here)
        at = {r["model"]: r for r in here if r["batch"] == batch}
        known = [r["accuracy"] for r in at.values() if r.get("accuracy") is not None]
        best = max(known) if known else None
        # without any accuracy (a device bench with no test set) the fastest ships, and says so;
        # otherwise a model whose accuracy was not measured is not trusted over one that was
        fits = {k: r for k, r in at.items() if best is None
                or (r.get("accuracy") is not None and r["accuracy"] >= best - budget - 1e-12)}
        key = min(fits, key=lambda k: fits[k]["p50_ms"])
        pick = at[key]
        others = []
        for k, r in sorted(at.items()):
            if k == key:
                continue
            if k not in fits:
                others.append(f"{k}: accuracy {_pct(r.get('accuracy'))}, " + (
                    "not measured" if r.get("accuracy") is None else
                    f"more than {100 * budget:.1f} points below the best student ({_pct(best)})"))
                continue
            # one bench times a batch size's targets in the same interleaved rounds: paired
            value, lo, hi, _ = speedup(pick["latencies_ms"], r["latencies_ms"], confidence, paired=True)
            ci = "" if lo is None else f" (CI {lo:.2f}-{hi:.2f})"
            others.append(f"{k}: {pick['model']} is {value:.2f}x faster{ci}, accuracy {_pct(r.get('accuracy'))}")
        why = (f"{key} ships on {backend}: the fastest student at batch {batch} (p50 {pick['p50_ms']:.3g} ms, "
               + (f"accuracy {_pct(pick.get('accuracy'))}) within {100 * budget:.1f} points of the best student "
                  f"({_pct(best)})" if best is not None else
                  "accuracy not measured: no test set here, so speed alone decided)"))
        if others:
            why += "; " + "; ".join(others)
        out[backend] = {"model": key, "batch": batch, "p50_ms": pick["p50_ms"], "accuracy": pick.get("accuracy"),
                        "budget": budget, "why": why}
    return out



def write_defaults(bench_json, bundle_dir) -> list[str]:
    """Record a bench's per-backend defaults in the bundle it measured; one line per backend."""
    from edgekd.benchmark.results import load_bench
    from edgekd.errors import UsageError
    from edgekd.runtime.bundle import set_default_models

    defaults = load_bench(bench_json).get("defaults") or {}
    if not defaults:
        raise UsageError(f"{bench_json} measured no student of the bundle, so there is nothing to pick: "
                         "bench the bundle's student models (drop --models, or name a student)")
    set_default_models(bundle_dir, defaults)
    return [f"default model on {backend}: {d['model']} (written to {bundle_dir}/manifest.json)"
            for backend, d in defaults.items()]
