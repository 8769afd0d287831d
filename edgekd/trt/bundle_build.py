"""Build-or-skip for one ONNX model and one target, shared by the run-directory stage
(edgekd.stages.build) and by `edgekd build BUNDLE_DIR` on a device. Torch-free.

Layout under a build directory (runs/<name>/build/, or <bundle>.build/ beside a copied bundle):
    lint.json              the offline TensorRT lint, rerun on the model being built
    trtexec.sh             the equivalent trtexec command (always written; run it on the target)
    <target>/<model>.engine, build.json, layers.json     only where an engine was built here
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from edgekd import __version__
from edgekd.errors import ExportError, UsageError
from edgekd.files import atomic_write_bytes, atomic_write_json, sha256_file
from edgekd.runtime import trt_env
from edgekd.runtime.bundle import add_model, load_bundle, model_filename
from edgekd.trt.lint import check, lint_onnx
from edgekd.trt.targets import Target, load_target
from edgekd.trt.trtexec import trtexec_command, write_trtexec_script

CACHE_ENV = "EDGEKD_TIMING_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgekd" / "trt-timing")


def onnx_input_shapes(path) -> dict[str, tuple[int, ...]]:
    """Graph input name -> shape without the batch axis (all fixed; the lint enforces it)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    shapes = {}
    for inp in (i for i in graph.input if i.name not in inits):
        dims = list(inp.type.tensor_type.shape.dim)[1:]
        if any(not d.HasField("dim_value") for d in dims):
            raise ExportError(f"input '{inp.name}' of {Path(path).name} has a dynamic non-batch axis; re-export")
        shapes[inp.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def build_or_skip(onnx_path: Path, target: Target, build_dir: Path, model_key: str, *, require_trt: bool = False,
                  twice: bool = False, timing_cache_dir: Path | None = None, after: str | None = None,
                  expect_qdq: bool | None = None) -> dict:
    """Lint, write trtexec.sh, then build where TensorRT and a GPU are present. Returns {"status":
    "done"|"skipped", "reason", "script", "lint_json", "quantized"} (+ "engine", "build_json",
    "layers_json", "build" when built). Raises ExportError on lint violations, build errors, and
    when require_trt is set but no engine can be built here."""
    onnx_path, build_dir = Path(onnx_path), Path(build_dir)
    report = lint_onnx(onnx_path, expect_qdq=expect_qdq)
    quantized = report["qdq"]["pairs"] > 0
    lint_json = atomic_write_json(build_dir / "lint.json", report)
    check(report)
    engine_file = model_filename(model_key, ".engine")
    ok, reason = trt_env.trt_available()
    argv = trtexec_command(target, os.path.relpath(onnx_path, build_dir), f"{target.name}/{engine_file}",
                           f"{target.name}/timing.cache", onnx_input_shapes(onnx_path), quantized=quantized,
                           layer_info_path=f"{target.name}/trtexec-layers.json")
    script = write_trtexec_script(build_dir / "trtexec.sh", argv, target=target, reason=None if ok else reason,
                                  after=after)
    result = {"status": "skipped", "reason": reason, "script": script, "lint_json": lint_json, "quantized": quantized}
    if not ok:
        if require_trt:
            raise ExportError(f"a TensorRT engine was required (--require-trt) but {reason}; build on the target "
                              f"with {script} or `edgekd build` there")
        return result
    env = trt_env.current_env()
    from edgekd.trt.builder import build_engine, timing_cache_path

    cache_file = (timing_cache_path(timing_cache_dir or default_cache_dir(), target, env)
                  if target.timing_cache == "per-device" else None)
    built = build_engine(onnx_path, target, quantized=quantized, cache_file=cache_file, twice=twice)
    tdir = build_dir / target.name
    engine = atomic_write_bytes(tdir / engine_file, built["engine"])
    layers_json = atomic_write_json(tdir / "layers.json", built["layers"])
    build = {"target": target.name, "target_spec": target.model_dump(mode="json"), "model": model_key,
             "onnx": {"file": onnx_path.name, "sha256": sha256_file(onnx_path)},
             "engine": {"file": engine_file, "sha256": sha256_file(engine), "bytes": engine.stat().st_size},
             **{k: env[k] for k in ("tensorrt_version", "device", "compute_capability", "memory_mib", "jetson")},
             "strongly_typed": built["plan"]["strongly_typed"], "builder_flags": built["plan"]["flags"],
             "notes": built["plan"]["notes"], "build_seconds": built["build_seconds"],
             "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "edgekd_version": __version__,
             "timing_cache": {"policy": target.timing_cache, **built.get("timing_cache", {})},
             "int8_layer_fraction": built["layers"]["int8_layer_fraction"], "layer_counts": built["layers"]["counts"]}
    if twice:
        build.update(identical=built["identical"], engine_sha256=built["engine_sha256"])
    build_json = atomic_write_json(tdir / "build.json", build)
    return {**result, "status": "done", "reason": "", "engine": engine, "build_json": build_json,
            "layers_json": layers_json, "build": build}


def metrics(result: dict, target: Target, root: Path | None = None) -> dict:
    """The manifest metrics of a build (DESIGN.md: engine, tensorrt_version, device,
    int8_layer_fraction, or skipped with the reason); paths relative to `root` when given."""
    rel = lambda p: os.path.relpath(p, root) if root is not None else str(p)  # noqa: E731
    if result["status"] != "done":
        return {"target": target.name, "skipped": result["reason"], "trtexec": rel(result["script"])}
    b = result["build"]
    out = {"target": target.name, "engine": rel(result["engine"]), "tensorrt_version": b["tensorrt_version"],
           "device": b["device"], "compute_capability": b["compute_capability"],
           "int8_layer_fraction": b["int8_layer_fraction"], "build_seconds": b["build_seconds"],
           "trtexec": rel(result["script"])}
    if "identical" in b:
        out["identical"] = b["identical"]
    return out


def add_engine_to_bundle(bundle_dir: Path, result: dict, model_key: str, target: Target) -> str:
    """Add the built engine and its build.json to the bundle; returns the engine's model key."""
    bundle = load_bundle(bundle_dir)
    key, b = f"{model_key}_{target.name}", result["build"]
    source = bundle.models.get(model_key, {})
    meta = {"role": source.get("role", model_key.split("_")[0]),
            "precision": source.get("precision", "int8" if result["quantized"] else "fp32"),
            "target": "tensorrt", "backend": "tensorrt", "source": model_key, "engine_target": target.name,
            "build": model_filename(key, ".build.json"), "accuracy": None,
            **{k: b[k] for k in ("tensorrt_version", "device", "compute_capability", "int8_layer_fraction")}}
    add_model(bundle_dir, key, result["engine"], meta, extra_files={meta["build"]: result["build_json"]})
    return key


def build_bundle(bundle_dir, target: str | Target, *, model: str = "student_int8_qdq", require_trt: bool = False,
                 build_twice: bool = False, timing_cache_dir: Path | None = None, out_dir: Path | None = None) -> dict:
    """`edgekd build BUNDLE_DIR --target NAME` on a copied bundle (no run directory): build from the
    bundle's ONNX model and add the engine to the bundle, or write trtexec.sh beside the bundle
    (in <bundle>.build/) and report skipped. Returns the same metrics as the build stage."""
    bundle = load_bundle(bundle_dir)
    target = target if isinstance(target, Target) else load_target(target)
    if model not in bundle.models or not bundle.models[model]["file"].endswith(".onnx"):
        onnx_keys = [k for k, m in bundle.models.items() if m["file"].endswith(".onnx")]
        raise UsageError(f"this bundle has no ONNX model '{model}' (it has {', '.join(onnx_keys)}); pass --model KEY")
    build_dir = Path(out_dir) if out_dir else bundle.path.parent / f"{bundle.path.name}.build"
    result = build_or_skip(bundle.path / bundle.models[model]["file"], target, build_dir, model,
                           require_trt=require_trt, twice=build_twice, timing_cache_dir=timing_cache_dir,
                           expect_qdq=bundle.models[model].get("target") == "tensorrt" or None,
                           after=f"where edgekd and TensorRT are installed, `edgekd build {bundle.path} --target "
                                 f"{target.name}` builds the engine and adds it to the bundle (an engine this "
                                 "script writes stays outside the bundle)")
    out = metrics(result, target)
    if result["status"] == "done":
        out["bundle_model"] = add_engine_to_bundle(bundle.path, result, model, target)
    return out
