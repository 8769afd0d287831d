"""Build a TensorRT engine from an ONNX model with the TensorRT Python API (10.x and 11.x).

Explicit quantization only: INT8 comes from the model's Q/DQ nodes, never from a calibrator (TensorRT
11 removed implicit calibration). The network is strongly typed unless the target allows FP16 fallback
and this TensorRT still has the FP16/INT8 builder flags (see edgekd.trt.targets.precision_plan).
The parser, layer-report and timing-cache helpers take plain values so they are testable offline.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from edgekd.errors import ExportError
from edgekd.trt.targets import Target, precision_plan

# layers that move or hold data rather than compute: not counted in int8_layer_fraction
NON_COMPUTE = {"Reformat", "NoOp", "Constant", "Shuffle", "Identity"}


def parser_errors(errors, node_names: list[str], model: str) -> str:
    """One line naming the failing node of each ONNX-parser error. `errors` are TensorRT ParserError
    objects (node_name/node_operator exist from TensorRT 10; older ones give a node index only)."""
    parts = []
    for e in errors:
        name = getattr(e, "node_name", lambda: "")() or ""
        idx = e.node()
        if not name and 0 <= idx < len(node_names):
            name = node_names[idx]
        op = getattr(e, "node_operator", lambda: "")() or ""
        where = f"node '{name}'" + (f" ({op})" if op else "") if name or idx >= 0 else "the graph"
        parts.append(f"{where}: {str(e.desc()).strip()}")
    return (f"TensorRT's ONNX parser rejects {model}: " + " | ".join(parts[:3])
            + (f" (+{len(parts) - 3} more)" if len(parts) > 3 else "")
            + "; run the offline lint (edgekd export) and rewrite or re-export the failing layer")


def _precision(layer: dict) -> str | None:
    """int8 / fp16 / fp32 from an inspector layer (DETAILED verbosity), None when not stated."""
    w = layer.get("Weights")
    weights = str(w.get("Type", "")).lower() if isinstance(w, dict) else ""
    tactic = str(layer.get("TacticName", "")).lower()
    formats = " ".join(str(t.get("Format/Datatype", "")) for t in layer.get("Inputs", [])
                       if isinstance(t, dict)).lower()
    if "int8" in formats or weights == "int8" or re.search(r"i8i8|int8", tactic):
        return "int8"
    if re.search(r"half|fp16", formats) or weights in ("half", "fp16"):
        return "fp16"
    if re.search(r"float|fp32", formats) or weights in ("float", "fp32"):
        return "fp32"
    return None


def layer_report(inspector_json: str) -> dict:
    """Per-layer precision from IEngineInspector's JSON, and int8_layer_fraction: the share of
    compute layers (reformat/no-op/shuffle layers left out) that run in INT8."""
    info = json.loads(inspector_json) if inspector_json else {}
    rows = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):  # names only: the engine was built without DETAILED verbosity
            rows.append({"name": layer, "type": None, "precision": None})
        else:
            rows.append({"name": layer.get("Name"), "type": layer.get("LayerType"), "precision": _precision(layer)})
    counted = [r for r in rows if r["precision"] and r["type"] not in NON_COMPUTE]
    counts = {p: sum(r["precision"] == p for r in counted) for p in ("int8", "fp16", "fp32")}
    fraction = round(counts["int8"] / len(counted), 4) if counted else None
    return {"layers": rows, "counts": counts, "int8_layer_fraction": fraction}


def timing_cache_path(cache_dir: Path, target: Target, env: dict) -> Path:
    """One cache per target and device (GPU, compute capability, TensorRT): timings measured on one
    GPU are wrong for another, and TensorRT rejects a cache from another version."""
    device = re.sub(r"[^A-Za-z0-9]+", "-", env.get("device") or "gpu").strip("-").lower()
    return Path(cache_dir) / target.name / f"{device}_sm{env.get('compute_capability', '?').replace('.', '')}" \
                                           f"_trt{env.get('tensorrt_version')}.cache"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- TensorRT calls


def _logger(trt):
    class Logger(trt.ILogger):
        """Keeps errors for the exception message; prints nothing below warnings."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(str(msg))

    return Logger()


def _build_once(trt, logger, onnx_path: Path, target: Target, plan: dict, cache: bytes, node_names) -> tuple:
    builder = trt.Builder(logger)
    flags = 0
    if plan["strongly_typed"] and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") \
            and int(trt.__version__.split(".")[0]) < 11:  # 11: always strongly typed, the flag is deprecated
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ExportError(parser_errors([parser.get_error(i) for i in range(parser.num_errors)], node_names,
                                        Path(onnx_path).name))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_mib << 20)
    config.builder_optimization_level = target.builder_optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer precision for the report
    for flag in plan["flags"]:  # only on TensorRT 10 with weak typing (precision_plan decides)
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if target.dla_core is not None:
        if builder.num_DLA_cores <= target.dla_core:
            raise ExportError(f"target {target.name} asks for DLA core {target.dla_core} but this device has "
                              f"{builder.num_DLA_cores}; set dla_core: null (GPU) in the target")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = target.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile, b = builder.create_optimization_profile(), target.batch
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        dims = tuple(inp.shape)
        if dims[0] >= 0 or any(d < 0 for d in dims[1:]):
            raise ExportError(f"input '{inp.name}' has shape {dims}; edgekd engines need a dynamic batch axis "
                              "and fixed other axes: re-export with edgekd export")
        profile.set_shape(inp.name, (b.min, *dims[1:]), (b.opt, *dims[1:]), (b.max, *dims[1:]))
    config.add_optimization_profile(profile)
    timing = config.create_timing_cache(cache or b"")
    # False: timings from another device/version are refused, never silently used; then start afresh
    if timing is None or not config.set_timing_cache(timing, False):
        config.set_timing_cache(config.create_timing_cache(b""), False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise ExportError(f"TensorRT could not build {Path(onnx_path).name} for target {target.name}: "
                          + (" | ".join(logger.errors[-3:]) or "no error message") + "; check the target's "
                          "workspace_mib and batch sizes, and the layer named above")
    return bytes(serialized), bytes(config.get_timing_cache().serialize()), seconds


def build_engine(onnx_path: Path, target: Target, *, quantized: bool, cache_file: Path | None = None,
                 twice: bool = False) -> dict:
    """Build; returns {"engine": bytes, "layers": report, "plan", "build_seconds", "timing_cache",
    "identical" (twice only)}. The timing cache file is read first and written back after."""
    import onnx
    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    plan = precision_plan(target, quantized, major)
    logger = _logger(trt)
    node_names = [n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node]
    cache = cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else b""
    engine, cache, seconds = _build_once(trt, logger, onnx_path, target, plan, cache, node_names)
    result = {"plan": plan, "build_seconds": round(seconds, 2)}
    if twice:  # the second build starts from the first one's timings, as a rebuild on the device would
        again, cache, _ = _build_once(trt, logger, onnx_path, target, plan, cache, node_names)
        result["identical"] = again == engine
        result["engine_sha256"] = [_sha(engine), _sha(again)]
    if cache_file is not None:
        from edgekd.files import atomic_write_bytes

        atomic_write_bytes(cache_file, cache)
        result["timing_cache"] = {"file": str(cache_file), "sha256": _sha(cache), "bytes": len(cache)}
    runtime = trt.Runtime(logger)
    loaded = runtime.deserialize_cuda_engine(engine)
    if loaded is None:
        raise ExportError(f"TensorRT built an engine it cannot load: {' | '.join(logger.errors[-3:])}")
    raw = loaded.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    result.update(engine=engine, layers={**layer_report(raw), "inspector": json.loads(raw or "{}")})
    return result
