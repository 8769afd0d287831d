"""`edgekd bench`: every model on every backend at every batch size, in one run. Device side:
no run directory, no recipe, no torch unless a caller hands in PyTorch models.

A bundle (ONNX models, engines added by `edgekd build`) is what is measured; the bench stage
(edgekd.stages.bench) adds a run directory's PyTorch models, its test split and its FLOPs through
`Extras`. Each batch size is one interleaved measurement over all its targets, because the ratios
that matter (student vs teacher, INT8 vs FP32, backend vs backend) compare targets at the same batch.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path

from edgekd.benchmark import runners, sysinfo
from edgekd.benchmark.defaults import DEFAULT_BUDGET, pick_defaults
from edgekd.benchmark.harness import Target, measure, skipped_result
from edgekd.benchmark.plots import bench_plots
from edgekd.benchmark.results import build_bench, to_markdown
from edgekd.errors import DataError, EdgekdError, UsageError
from edgekd.files import atomic_write_json, atomic_write_text, check_writable
from edgekd.plots import HOW_TO_GET

MEASURE_DEFAULTS = {"warmup_count": 10, "warmup_seconds": 1.0, "min_seconds": 5.0, "max_seconds": 30.0,
                    "min_samples": 100, "ci_rel_width": 0.10, "confidence": 0.95, "block": 10}


@dataclass
class Extras:
    """What a run directory adds to its bundle's bench (the bench stage fills it; a device has none).

    torch_models: model key -> a loader returning (nn.Module, note, {input: (dtype, per-sample shape)});
    testset: (inputs, labels, where from) where the bundle carries no test set; flops: role -> FLOPs."""

    torch_models: dict[str, Callable] = field(default_factory=dict)
    testset: tuple | None = None
    flops: dict[str, float] = field(default_factory=dict)


def _backends(requested, extras: Extras, bundle) -> tuple[list[str], dict[str, str]]:
    """(backends to use, {backend: why it cannot run here}): by default the ones that can run; a
    requested one that cannot becomes a skipped row with the reason."""
    from edgekd.schema import suggest

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
        why_not = "a bundle has no PyTorch models" if not extras.torch_models else runners.torch_available(b)
        if why_not:
            why[b] = why_not
    return (list(requested) if requested else [b for b in runners.BACKENDS if b not in why]), why


def _testset(extras: Extras, bundle):
    """(inputs, labels, where from) for accuracy, or (None, None, why not)."""
    if bundle is not None and (bundle.path / runners.TESTSET).is_file():
        return (*runners.load_testset(bundle.path / runners.TESTSET), f"bundle/{runners.TESTSET}")
    if extras.testset is not None:
        return extras.testset
    return None, None, f"the bundle has no {runners.TESTSET}; accuracy not measured"


def _flops(extras: Extras, bundle, key: str, meta: dict) -> float | None:
    """Per-sample FLOPs: the bundle's model entry (or its source's), else the run's metrics."""
    if meta.get("flops"):
        return float(meta["flops"])
    source = meta.get("source")
    if source and bundle is not None and bundle.models.get(source, {}).get("flops"):
        return float(bundle.models[source]["flops"])
    value = extras.flops.get("teacher" if (meta.get("role") or key).startswith("teacher") else "student")
    return float(value) if value else None


BASELINE = "baseline/"  # key prefix of the models of `--baseline BUNDLE`, measured in the same run


def _check_models(models, extras: Extras, bundle) -> None:
    """An unknown --models key would measure nothing and write an empty bench: refuse it."""
    if not models:
        return
    known = set(bundle.models) | {m.get("source") for m in bundle.models.values()} if bundle else set()
    known |= set(extras.torch_models)
    known.discard(None)
    bad = sorted(set(models) - known)
    if bad:
        from edgekd.schema import suggest

        raise UsageError(f"unknown model(s) {', '.join(bad)} (this source has {', '.join(sorted(known))})"
                         f"{suggest(bad[0], sorted(known))}; fix --models")


def _open_all(extras, bundle, backends, models, threads, baseline=None):
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
            yield from _open_torch(extras, backend, models, threads)


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


def _open_torch(extras, backend, models, threads):
    for key in [k for k in (models or extras.torch_models) if k in extras.torch_models]:
        before = sysinfo.rss_mb()
        try:
            model, note, specs = extras.torch_models[key]()
            runner = runners.TorchRunner(model, runners.device_of(backend), threads, specs)
        except EdgekdError as e:
            if not models:  # a stage this run did not have (no KD baseline, no qat): nothing to say
                continue
            runner, note = f"not available: {e}", None
        yield key, backend, runner, {"role": key.split("_")[0], "note": note,
                                     "load_rss_mb": _delta(before, sysinfo.rss_mb())}


def run_bench(bundle, *, batches=None, threads: int = 1, backends=None, models=None, out=None,
              extras: Extras | None = None, source: dict | None = None, progress=None, baseline=None,
              default_budget: float = DEFAULT_BUDGET, **measure_opts) -> tuple[dict, dict[str, Path]]:
    """Benchmark a bundle (a path or a loaded Bundle; None with extras.torch_models alone); returns
    (bench dict, {"json", "markdown", plots...: path}).

    `baseline` (a bundle, e.g. main's) adds its models as "baseline/<key>", measured interleaved
    with the candidate's in the same run, so a regression gate compares them under the same drift.

    `default_budget`: bench["defaults"] names, per backend, the fastest bundle student within this
    accuracy (fraction) of the best one (edgekd.benchmark.defaults); nothing is written to the bundle.

    Writes bench.json, bench.md and, where matplotlib is installed, latency_accuracy.png and
    latency_distribution.png into `out` (default: <bundle parent>/bench/<timestamp>/)."""
    from edgekd.runtime.bundle import Bundle, load_bundle

    unknown = set(measure_opts) - set(MEASURE_DEFAULTS)
    if unknown:
        raise UsageError(f"unknown bench setting(s) {', '.join(sorted(unknown))}: use {', '.join(MEASURE_DEFAULTS)}")
    opts = {**MEASURE_DEFAULTS, **measure_opts}
    extras = extras or Extras()
    if bundle is not None and not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    batches = sorted({int(b) for b in (batches or (1,))})
    if not batches or batches[0] < 1:
        raise UsageError(f"batch sizes must be positive integers, got {batches}")
    if out is None:
        if bundle is None:
            raise UsageError("no bundle to write the bench beside: pass --out DIR")
        out = bundle.path.parent / "bench" / time.strftime("%Y%m%d-%H%M%S")
    names, unavailable = _backends(backends, extras, bundle)
    _check_models(models, extras, bundle)
    base = None
    if baseline is not None:
        base = baseline if isinstance(baseline, Bundle) else load_bundle(baseline)
    check_writable(out)  # before measuring, not after
    inputs, labels, test_from = _testset(extras, bundle)
    say = progress or (lambda msg: None)

    peak = {"cpu": sysinfo.machine_peak_gflops()}
    if "torch-cuda" in names and "torch-cuda" not in unavailable:
        peak["cuda"] = runners.cuda_peak_gflops()
    results = [skipped_result("*", backend, b, f"backend unavailable: {unavailable[backend]}",
                              device=runners.device_of(backend), threads=threads)
               for backend in names if backend in unavailable for b in batches]
    targets, closers, used = {b: [] for b in batches}, [], {}
    for key, backend, runner, meta in _open_all(extras, bundle, [b for b in names if b not in unavailable],
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
                                  _flops(extras, bundle, key, meta), bundle):
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
                "default_budget": default_budget,
                "unavailable_backends": unavailable,
                "test_data": test_from, "peak_method": "numpy float32 matmul 1024x1024, best of 5"
                + ("; cuda: torch float32 matmul 4096x4096" if "cuda" in peak else "")}
    src = source or {"kind": "bundle", "path": str(bundle.path), "name": bundle.manifest.get("name")}
    bench = build_bench(results, env=sysinfo.environment(threads), peak=peak, source=src, settings=settings,
                        confidence=opts["confidence"])
    if bundle is not None:
        bench["defaults"] = pick_defaults(bench, bundle.models, default_budget)
        if bundle.manifest.get("baselines"):  # the floor a `baseline_floor` budget holds students to
            bench["baselines"] = bundle.manifest["baselines"]
    files = write_outputs(bench, out)
    files["inputs"] = used
    return bench, files


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
    out_dir = Path(out_dir)
    pngs = bench_plots(bench, out_dir)  # {} where matplotlib is not installed: bench.md says how to get them
    note = "" if pngs else f"\n_No plots: {HOW_TO_GET}._\n"
    files = {"json": atomic_write_json(out_dir / "bench.json", bench),
             "markdown": atomic_write_text(out_dir / "bench.md", to_markdown(bench) + note)}
    return {**files, **pngs}


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
