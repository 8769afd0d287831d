"""The `trtexec` command equivalent to edgekd's Python build, for machines where edgekd cannot
build (no TensorRT or no GPU here): the user runs the script on the target device.

Precision flags follow edgekd.trt.targets.precision_plan for TensorRT 10 (the JetPack 6 line):
`--stronglyTyped` by default (INT8 exactly where the Q/DQ nodes are, FP32 elsewhere; also accepted,
as a no-op, by TensorRT 11, where every network is strongly typed), and `--int8 --fp16` only when
the target allows FP16 fallback: weak typing, which TensorRT 11 removed. `--int8` is never given
for a model without Q/DQ, where trtexec would invent placeholder scales instead of failing.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from edgekd import __version__
from edgekd.files import atomic_write_text
from edgekd.trt.targets import Target, precision_plan


def _shape(batch: int, dims) -> str:
    return "x".join(str(d) for d in (batch, *dims))


def _shapes(batch: int, input_shapes: dict[str, tuple]) -> str:
    return ",".join(f"{name}:{_shape(batch, dims)}" for name, dims in input_shapes.items())


def trtexec_command(target: Target, onnx_path, engine_path, timing_cache_path, input_shapes: dict[str, tuple],
                    *, quantized: bool = True, layer_info_path=None) -> list[str]:
    """argv of `trtexec` building `onnx_path` for `target`. input_shapes: input name -> shape without
    the batch axis, in the model's input order. timing_cache_path is ignored when the target's
    timing_cache policy is "none"; layer_info_path (optional) exports the per-layer report."""
    b = target.batch
    plan = precision_plan(target, quantized, trt_major=10)
    argv = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if input_shapes:
        argv += [f"--minShapes={_shapes(b.min, input_shapes)}", f"--optShapes={_shapes(b.opt, input_shapes)}",
                 f"--maxShapes={_shapes(b.max, input_shapes)}"]
    if plan["strongly_typed"]:
        argv.append("--stronglyTyped")
    else:
        argv += [f"--{flag.lower()}" for flag in sorted(plan["flags"], key=["INT8", "FP16"].index)]
    argv += [f"--memPoolSize=workspace:{target.workspace_mib}M",
             f"--builderOptimizationLevel={target.builder_optimization_level}"]
    if target.timing_cache != "none" and timing_cache_path is not None:
        argv.append(f"--timingCacheFile={timing_cache_path}")
    if target.dla_core is not None:
        argv += [f"--useDLACore={target.dla_core}", "--allowGPUFallback"]
    if layer_info_path is not None:
        argv += ["--profilingVerbosity=detailed", f"--exportLayerInfo={layer_info_path}"]
    argv.append("--skipInference")
    return argv


def write_trtexec_script(script_path: Path, argv: list[str], *, target: Target, reason: str | None = None,
                         after: str | None = None) -> Path:
    """Write an executable POSIX shell script running `argv` from the script's own directory, so
    relative paths in argv hold wherever the directory is copied. Written atomically."""
    script_path = Path(script_path)
    engine = next((a.split("=", 1)[1] for a in argv if a.startswith("--saveEngine=")), None)
    plan_note = ("--stronglyTyped: INT8 where the model has Q/DQ nodes, FP32 elsewhere (TensorRT 10 and 11)"
                 if "--stronglyTyped" in argv else
                 "--fp16 (and --int8 for a Q/DQ model): weak typing, TensorRT 10.x only; on TensorRT 11 "
                 "replace them by --stronglyTyped")
    lines = ["#!/bin/sh",
             f"# Build the TensorRT engine for target '{target.name}' ({target.description or target.platform}).",
             f"# Written by edgekd {__version__}"
             + (f" because no engine could be built there: {reason}." if reason else "."),
             "# Run it on the target device (trtexec comes with TensorRT; on JetPack it is",
             "# /usr/src/tensorrt/bin/trtexec). Precision: " + plan_note + ".",
             "# An engine only runs on the TensorRT version and GPU that built it."]
    if after:
        lines.append(f"# Alternatively: {after}")
    lines += ["set -eu", 'cd "$(dirname "$0")"',
              'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"']
    if engine and os.path.dirname(engine):
        lines.append(f"mkdir -p {shlex.quote(os.path.dirname(engine))}")
    lines.append('exec "$TRTEXEC" ' + " \\\n    ".join(shlex.quote(a) for a in argv[1:]))
    atomic_write_text(script_path, "\n".join(lines) + "\n")
    os.chmod(script_path, 0o755)
    return script_path
