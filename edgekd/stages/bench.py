"""The bench stage, and `edgekd bench RUN_DIR`: the run's bundle measured by edgekd.benchmark,
plus what only a run directory has (its PyTorch models, its dataset's test split, its FLOPs).

The pipeline's stage records itself in the manifest (`bench_json` and the contract columns of
every measured row); an ad-hoc `edgekd bench RUN_DIR` writes its own RUN_DIR/bench/<time>/ and
leaves the recorded bench alone unless asked (`--record`).
"""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from edgekd.benchmark.bench import Extras, run_bench
from edgekd.errors import DataError, RunDirError
from edgekd.rundir import RunDir
from edgekd.runtime.bundle import set_default_models

# the PyTorch eager models a run directory can bench: key -> (model role, note)
TORCH_MODELS = {"teacher_fp32": ("teacher", None), "student_fp32": ("student", None),
                "baseline_fp32": ("baseline", "the same student trained without KD"),
                "student_int8_qdq": ("qat", "ModelOpt fake-quant: INT8 simulated in FP32 kernels")}
CONTRACT = ("model", "backend", "device", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput",
            "accuracy", "peak_rss_mb")


def _torch_model(run: RunDir, key: str):
    """(model, note, input specs) for a bench key; EdgekdError when its stage did not run."""
    from edgekd.stages.common import load_model

    role, note = TORCH_MODELS[key]
    model, config = load_model(run, role)
    specs = {n: (m.get("dtype", "float32"), tuple(m["shape"])) for n, m in config["modalities"].items()}
    if role in ("student", "baseline"):
        from edgekd.models.student import inference_form

        model = inference_form(model)  # the form the ONNX export runs: same outputs, fewer kernels
    return model, note, specs


def _testset(run: RunDir, data_root):
    try:
        from edgekd.data import load_dataset
        from edgekd.stages.common import student_data, teacher_data

        data = load_dataset(run.recipe, data_root)
        test = student_data(run, data).split("test")  # each model on its own inputs, as the bundle's test set has them
        inputs = {**teacher_data(run, data, embeddings=False).split("test").inputs, **test.inputs}
        return inputs, test.labels, "the recipe's dataset (test split)"
    except (DataError, RunDirError, ImportError) as e:
        return None, None, f"no test data: {e}"


def settings(run: RunDir | None, **given) -> dict:
    """The bench settings: each given option, else the run's recipe (bench section), else the harness default."""
    cfg = run.recipe.bench if run is not None else None
    out = {}
    for name, value in given.items():
        if value is None and cfg is not None and hasattr(cfg, name):
            value = getattr(cfg, name)
        if value is not None:
            out[name] = value
    out.setdefault("threads", 1)
    return out


def bench_run_dir(run: RunDir, *, record: bool, data_root=None, out=None, progress=None, baseline=None,
                  **options) -> tuple[dict, Path]:
    """Bench a run directory's bundle and PyTorch models; returns (bench, path of bench.json)."""
    started = time.time()
    bundle = run.path / "bundle" if (run.path / "bundle" / "manifest.json").is_file() else None
    extras = Extras(torch_models={k: partial(_torch_model, run, k) for k in TORCH_MODELS},
                    flops={"teacher": (run.stage("teacher") or {}).get("metrics", {}).get("flops"),
                           "student": (run.stage("distill") or {}).get("metrics", {}).get("flops")})
    if bundle is None or not (bundle / "testset.npz").is_file():
        extras.testset = _testset(run, data_root)
    source = {"kind": "run_dir", "path": str(run.path), "name": run.manifest.get("name")}
    bench, files = run_bench(bundle, extras=extras, source=source, progress=progress, baseline=baseline,
                             out=out or run.path / "bench" / time.strftime("%Y%m%d-%H%M%S"), **options)
    if record:
        json_path = files["json"].resolve()
        metrics = {"bench_json": str(json_path.relative_to(run.path.resolve()))
                   if json_path.is_relative_to(run.path.resolve()) else str(files["json"]),
                   "results": [{k: r[k] for k in CONTRACT} for r in bench["results"] if not r["skipped"]]}
        outputs = {k: v for k, v in files.items() if k != "inputs"}
        if bench.get("defaults") and bundle is not None:  # the bundle serves what was measured fastest here
            set_default_models(bundle, bench["defaults"])
            metrics["default_models"] = {b: d["model"] for b, d in bench["defaults"].items()}
        run.record("bench", started=started, outputs=outputs, inputs=files["inputs"], metrics=metrics)
    return bench, files["json"]


def run(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    b = run.recipe.bench
    run.begin("bench")
    bench_run_dir(run, record=True, data_root=data_root, batches=b.batches, threads=b.threads,
                  backends=b.backends, min_seconds=b.min_seconds, max_seconds=b.max_seconds, block=b.block,
                  default_budget=b.default_budget)
    metrics = run.stage("bench")["metrics"]
    if b.baseline_floor:
        _baseline_floor(run, metrics)
    return metrics


def _baseline_floor(run: RunDir, metrics: dict) -> None:
    """bench.baseline_floor: the gate's baseline_floor budget on each shipped model at the smallest batch."""
    import json

    from edgekd.benchmark.gate import BaselineFloor, baseline_floor
    from edgekd.errors import GateError

    bench = json.loads((run.path / metrics["bench_json"]).read_text(encoding="utf-8"))
    shipped = metrics.get("default_models") or {}
    for backend, model in shipped.items():
        recs = sorted((r for r in metrics["results"] if r["model"] == model and r["backend"] == backend),
                      key=lambda r: r["batch"])
        if not recs:
            continue
        b = BaselineFloor(kind="baseline_floor", name="baseline floor", model=model, backend=backend, batch=recs[0]["batch"])
        verdict, line = baseline_floor(b, recs[0], bench.get("baselines"), f"{model} on {backend}")
        metrics.setdefault("baseline_floor", {})[backend] = {"verdict": verdict, "line": line}
        if verdict != "PASS":
            raise GateError(f"bench.baseline_floor: {line}")


def summary(m: dict) -> str:
    ships = ", ".join(f"{model} on {b}" for b, model in (m.get("default_models") or {}).items())
    return f"bench: {m.get('bench_json')} (table: bench.md beside it)" + (f"; ships {ships}" if ships else "")
