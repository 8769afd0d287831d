"""`edgekd bench RUN_DIR_OR_BUNDLE`: every model on every backend at every batch size, in one run.

A run directory brings its bundle (ONNX models, engines added by `edgekd build`) plus the PyTorch
models of its stages; a bare bundle (on a device, maybe without torch) brings only the former.
Each batch size is one interleaved measurement over all its targets, because the ratios that
matter (student vs teacher, INT8 vs FP32, backend vs backend) compare targets at the same batch.
"""
from __future__ import annotations

import json
import time
from functools import cache, partial
from pathlib import Path

from edgekd.benchmark import runners, sysinfo
from edgekd.benchmark.harness import Target, measure, skipped_result
from edgekd.benchmark.results import build_bench, plots, to_markdown
from edgekd.errors import DataError, EdgekdError, UsageError

MEASURE_DEFAULTS = {"warmup_count": 10, "warmup_seconds": 1.0, "min_seconds": 5.0, "max_seconds": 30.0,
                    "min_samples": 100, "ci_rel_width": 0.10, "confidence": 0.95, "block": 10}


def open_source(source) -> tuple[object | None, object | None]:
    """(RunDir or None, Bundle or None) for a run directory or a bundle directory."""
    from edgekd.runtime.bundle import load_bundle

    path = Path(source)
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(f"{path} is neither a run directory nor a bundle (no readable manifest.json); "
                         "give runs/NAME or runs/NAME/bundle") from None
    if manifest.get("format") == "edgekd.bundle":
        return None, load_bundle(path)
    from edgekd.rundir import RunDir

    run = RunDir.open(path)
    return run, (load_bundle(path / "bundle") if (path / "bundle" / "manifest.json").is_file() else None)


def _backends(requested, run, bundle) -> tuple[list[str], dict[str, str]]:
    """(backends to use, {backend: why it cannot run here}): by default the ones that can run; a
    requested one that cannot becomes a skipped row with the reason."""
    from edgekd.recipe import suggest

    for b in requested or ():
        if b not in runners.BACKENDS:
            raise UsageError(f"unknown backend '{b}'{suggest(b, runners.BACKENDS)} "
                             f"(choose from {', '.join(runners.BACKENDS)})")
    try:
        import onnxruntime as ort

        have = set(ort.get_available_providers())
    except ImportError:
        have = set()
    why = {}
    for b, providers in runners.ORT_PROVIDERS.items():
        if bundle is None:
            why[b] = "no bundle (run `edgekd export RUN_DIR`)"
        elif providers[0] not in have:
            why[b] = f"onnxruntime here has no {providers[0]}"
    if bundle is None or not any(m.get("backend") == "tensorrt" for m in bundle.models.values()):
        why["tensorrt"] = "the bundle has no TensorRT engine (run `edgekd build`)"
    for b in runners.TORCH_BACKENDS:
        why_not = "a bundle has no PyTorch models" if run is None else runners.torch_available(b)
        if why_not:
            why[b] = why_not
    return (list(requested) if requested else [b for b in runners.BACKENDS if b not in why]), why


def _testset(run, bundle, data_root):
    """(inputs, labels, where from) for accuracy, or (None, None, why not)."""
    if bundle is not None and (bundle.path / runners.TESTSET).is_file():
        return (*runners.load_testset(bundle.path / runners.TESTSET), f"bundle/{runners.TESTSET}")
    if run is not None:
        from edgekd.data import load_dataset

        try:
            test = load_dataset(run.recipe, data_root).split("test")
            return test.inputs, test.labels, "the recipe's dataset (test split)"
        except DataError as e:
            return None, None, f"no test data: {e}"
    return None, None, f"the bundle has no {runners.TESTSET}; accuracy not measured"


def _flops(run, bundle, key: str, meta: dict) -> float | None:
    """Per-sample FLOPs: the run's teacher/distill metrics, else the bundle's model entry."""
    if meta.get("flops"):
        return float(meta["flops"])
    source = meta.get("source")
    if source and bundle is not None and bundle.models.get(source, {}).get("flops"):
        return float(bundle.models[source]["flops"])
    if run is not None:
        stage = run.stage("teacher" if (meta.get("role") or key).startswith("teacher") else "distill") or {}
        value = (stage.get("metrics") or {}).get("flops")
        return float(value) if value else None
    return None


BASELINE = "baseline/"  # key prefix of the models of `--baseline BUNDLE`, measured in the same run


def _check_models(models, run, bundle) -> None:
    """An unknown --models key would measure nothing and write an empty bench: refuse it."""
    if not models:
        return
    known = set(bundle.models) | {m.get("source") for m in bundle.models.values()} if bundle else set()
    if run is not None:
        known |= set(runners.TORCH_KEYS)
    known.discard(None)
    bad = sorted(set(models) - known)
    if bad:
        from edgekd.recipe import suggest

        raise UsageError(f"unknown model(s) {', '.join(bad)} (this source has {', '.join(sorted(known))})"
                         f"{suggest(bad[0], sorted(known))}; fix --models")


def _open_all(run, bundle, backends, models, threads, baseline=None):
    """Yield (key, backend, runner or the reason there is none, meta) for every model of every backend."""
    for backend in backends:
        if backend in runners.ORT_PROVIDERS or backend == "tensorrt":
            if bundle is None:
                continue
            engine = backend == "tensorrt"
            sources = [(bundle, "")] + ([(baseline, BASELINE)] if baseline is not None else [])
            for src, prefix in sources:
                yield from _open_bundle(src, prefix, backend, engine, models, threads)
        else:  # PyTorch eager, run directory only
            yield from _open_torch(run, backend, models, threads)


def _open_bundle(bundle, prefix, backend, engine, models, threads):
    for key, meta in bundle.models.items():
        if (meta.get("backend") == "tensorrt") != engine:
            continue
        if models and key not in models and meta.get("source") not in models:
            continue
        before = sysinfo.rss_mb()
        try:
            runner = (runners.open_engine(bundle, key, threads) if engine
                      else runners.open_onnx(bundle.model_path(key), backend, threads))
        except EdgekdError as e:
            runner = f"backend unavailable: {e}"
        yield prefix + key, backend, runner, {**{k: v for k, v in meta.items() if k not in ("accuracy", "extra_files")},
                                              "load_rss_mb": _delta(before, sysinfo.rss_mb())}


def _open_torch(run, backend, models, threads):
    for key in [k for k in (models or runners.TORCH_KEYS) if k in runners.TORCH_KEYS]:
        before = sysinfo.rss_mb()
        try:
            model, note, specs = runners.torch_model(run, key)
            runner = runners.TorchRunner(model, runners.device_of(backend), threads, specs)
        except EdgekdError as e:
            if not models:  # a stage this run did not have (no KD baseline, no qat): nothing to say
                continue
            runner, note = f"not available: {e}", None
        yield key, backend, runner, {"role": key.split("_")[0], "note": note,
                                     "load_rss_mb": _delta(before, sysinfo.rss_mb())}


def run_bench(source, *, batches=None, threads: int = 1, backends=None, models=None, out=None, data_root=None,
              record: bool = True, progress=None, baseline=None, **measure_opts) -> tuple[dict, Path]:
    """Benchmark a run directory or bundle; returns (bench dict, path of bench.json).

    `baseline` (a bundle, e.g. main's) adds its models as "baseline/<key>", measured interleaved
    with the candidate's in the same run, so a regression gate compares them under the same drift.

    Writes bench.json, bench.md, latency_accuracy.png and latency_distribution.png into `out`
    (default: RUN_DIR/bench/<timestamp>/, or <bundle parent>/bench/<timestamp>/), and records the
    `bench` stage in a run directory's manifest (metrics: the JSON's path and the contract keys)."""
    unknown = set(measure_opts) - set(MEASURE_DEFAULTS)
    if unknown:
        raise UsageError(f"unknown bench setting(s) {', '.join(sorted(unknown))}: use {', '.join(MEASURE_DEFAULTS)}")
    opts = {**MEASURE_DEFAULTS, **measure_opts}
    started = time.time()
    run, bundle = open_source(source)
    if batches is None:
        batches = getattr(getattr(getattr(run, "recipe", None), "bench", None), "batches", None) or (1,)
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise UsageError(f"batch sizes must be positive integers, got {batches}")
    names, unavailable = _backends(backends, run, bundle)
    _check_models(models, run, bundle)
    inputs, labels, test_from = _testset(run, bundle, data_root)
    say = progress or (lambda msg: None)

    peak = {"cpu": sysinfo.machine_peak_gflops()}
    if "torch-cuda" in names and "torch-cuda" not in unavailable:
        peak["cuda"] = runners.cuda_peak_gflops()
    results = [skipped_result("*", backend, b, f"backend unavailable: {unavailable[backend]}",
                              device=runners.device_of(backend), threads=threads)
               for backend in names if backend in unavailable for b in batches]
    targets, closers, used = {b: [] for b in batches}, [], {}
    base = None
    if baseline is not None:
        base = open_source(baseline)[1]
        if base is None:
            raise UsageError(f"--baseline {baseline}: it has no bundle; give runs/NAME/bundle or a run directory after export")
    for key, backend, runner, meta in _open_all(run, bundle, [b for b in names if b not in unavailable],
                                                 models, threads, base):
        if isinstance(runner, str):
            results += [skipped_result(key, backend, b, runner, device=runners.device_of(backend), threads=threads,
                                       meta=meta) for b in batches]
            continue
        say(f"loaded {key} on {backend}")
        closers.append(runner.close)
        if "file" in meta and bundle is not None:
            from_base = base is not None and key.startswith(BASELINE)
            used[key] = base.model_path(key[len(BASELINE):]) if from_base else bundle.model_path(key)
        for b, target in _targets(key, backend, runner, meta, batches, threads, inputs, labels,
                                  _flops(run, bundle, key, meta), bundle):
            (targets[b] if isinstance(target, Target) else results).append(target)
    try:
        for b in batches:
            if targets[b]:
                say(f"measuring {len(targets[b])} targets at batch {b}")
                results += measure(targets[b], **opts)
    finally:
        for close in closers:
            close()

    settings = {"batches": batches, "threads": threads, "backends": names, "models": models, **opts,
                "unavailable_backends": unavailable,
                "test_data": test_from, "peak_method": "numpy float32 matmul 1024x1024, best of 5"
                + ("; cuda: torch float32 matmul 4096x4096" if "cuda" in peak else "")}
    src = {"kind": "run_dir" if run is not None else "bundle", "path": str(Path(source)),
           "name": (run.manifest.get("name") if run is not None else bundle.manifest.get("name"))}
    bench = build_bench(results, env=sysinfo.environment(threads), peak=peak, source=src, settings=settings,
                        confidence=opts["confidence"])
    home = run.path if run is not None else bundle.path.parent
    out_dir = Path(out) if out else home / "bench" / time.strftime("%Y%m%d-%H%M%S")
    files = write_outputs(bench, out_dir)
    if run is not None and record:
        contract = ("model", "backend", "device", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput",
                    "accuracy", "peak_rss_mb")
        metrics = {"bench_json": str(files["json"].resolve().relative_to(run.path.resolve()))
                   if files["json"].resolve().is_relative_to(run.path.resolve()) else str(files["json"]),
                   "results": [{k: r[k] for k in contract} for r in bench["results"] if not r["skipped"]]}
        run.record("bench", started=started, outputs=files, inputs=used, metrics=metrics)
    return bench, files["json"]


def _targets(key, backend, runner, meta, batches, threads, inputs, labels, per_sample, bundle):
    """Yield (batch, Target or a skipped Result) for one opened runner at every batch size."""
    device, names_in = runners.device_of(backend), list(runner.input_names)
    acc = None
    if inputs is not None and all(n in inputs for n in names_in):
        # scored once per model and backend (cached), in chunks an engine's profile accepts
        chunk = batches[-1] if backend == "tensorrt" else max(batches[-1], 64)
        acc = cache(partial(runners.accuracy, runner.run, {n: inputs[n] for n in names_in}, labels, chunk))
    for b in batches:
        before = sysinfo.rss_mb()
        try:
            feeds = (runners.batch_of(inputs, names_in, b) if acc is not None
                     else runners.synthetic(_specs(bundle, runner), b))
            call = runners.fast_call(runner, feeds)
        except Exception as e:  # noqa: BLE001 -- e.g. a batch outside an engine's profile
            yield b, skipped_result(key, backend, b, f"failed: {str(e).splitlines()[0][:300]}", device=device,
                                    threads=threads, meta=meta)
            continue
        yield b, Target(key, backend, b, call, device=device, threads=threads, sync=getattr(runner, "sync", None),
                        flops=per_sample * b if per_sample else None, accuracy=acc,
                        meta={**meta, "first_call_rss_mb": _delta(before, sysinfo.rss_mb())})


def write_outputs(bench: dict, out_dir) -> dict[str, Path]:
    from edgekd.rundir import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    files = {"json": atomic_write_json(out_dir / "bench.json", bench),
             "markdown": atomic_write_text(out_dir / "bench.md", to_markdown(bench))}
    accuracy_png, distribution_png = plots(bench, out_dir)
    return {**files, "latency_accuracy": accuracy_png, "latency_distribution": distribution_png}


def _specs(bundle, runner) -> dict:
    """Input dtypes and per-sample shapes from the bundle's io_spec (or the model, for PyTorch)."""
    if bundle is not None:
        spec = {s["name"]: (s["dtype"], tuple(s["shape"][1:])) for s in bundle.io_spec.get("inputs", [])}
        if all(n in spec for n in runner.input_names):
            return {n: spec[n] for n in runner.input_names}
    if getattr(runner, "specs", None):
        return runner.specs
    raise DataError("no test data and no input spec to make stand-in inputs from; give a bundle with io_spec.json")


def _delta(before, after):
    return None if before is None or after is None else round(after - before, 1)
