"""The build stage: a TensorRT engine for a deployment target, or the trtexec command to build it.

Reads the exported ONNX model through the manifest (recipe.build.model, QDQ INT8 by default),
reruns the offline TensorRT lint, and always writes build/trtexec.sh. Where TensorRT and a GPU are
present it builds build/<target>/<model>.engine + build.json + layers.json and adds the engine to
the bundle; elsewhere the stage is recorded as "skipped" with the reason (an error with
require_trt). Manifest metrics: `engine`, `tensorrt_version`, `device`, `int8_layer_fraction`,
`build_seconds`, `identical` (build_twice) -- or `skipped` and `trtexec`; `target` always.

The work itself lives in edgekd.trt.bundle_build, which is torch-free: a device with a copied
bundle and no run directory uses build_bundle from there (re-exported here). Adding the engine
changes the bundle's own manifest, not the export stage's record: the run manifest records the
bundle as a directory that its own manifest verifies.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.trt.bundle_build import add_engine_to_bundle, build_bundle, build_or_skip, metrics
from edgekd.trt.targets import load_target

if TYPE_CHECKING:  # the device imports this module for `summary`: no run directory code at run time
    from edgekd.rundir import RunDir

__all__ = ["run", "build_bundle", "summary"]


def run(run: RunDir, data_root=None, resume: bool = False, progress=None, *, target: str | None = None,
              require_trt: bool | None = None, model: str | None = None, build_twice: bool | None = None,
              timing_cache_dir: Path | None = None) -> dict:
    """Build (or skip with a trtexec script) for `target` (default recipe.build.target). Keyword
    arguments override the recipe's build section; data_root/resume/progress are accepted for the
    pipeline's uniform stage call and unused (a build has no data and nothing to resume)."""
    cfg = run.recipe.build
    tgt = load_target(target or cfg.target)
    require = cfg.require_trt if require_trt is None else require_trt
    twice = cfg.build_twice if build_twice is None else build_twice
    model = model or cfg.model
    onnx_path = run.artifact("export", model)
    started = run.begin("build")
    bundle = run.path / "bundle"
    result = build_or_skip(onnx_path, tgt, run.stage_dir("build"), model, require_trt=require, twice=twice,
                           timing_cache_dir=timing_cache_dir, expect_qdq=model == "student_int8_qdq",
                           after=f"copy the bundle (../bundle) to the device and run `edgekd build BUNDLE_DIR "
                                 f"--target {tgt.name}` there: it builds the engine and adds it to the bundle")
    m = metrics(result, tgt, run.path)
    outputs = {"trtexec": result["script"], "lint": result["lint_json"]}
    extra = {"target": tgt.name}
    if result["status"] == "done":
        outputs.update(engine=result["engine"], build_json=result["build_json"], layers=result["layers_json"])
        if (bundle / "manifest.json").is_file():
            m["bundle_model"] = add_engine_to_bundle(bundle, result, model, tgt)
    run.record("build", started=started, outputs=outputs, inputs={"onnx": onnx_path}, metrics=m,
               status="done" if result["status"] == "done" else "skipped", extra=extra)
    return m


def summary(m: dict) -> str:
    if m.get("skipped"):
        return f"build ({m['target']}): skipped: {m['skipped']}; the equivalent command is in {m['trtexec']}"
    same = "" if m.get("identical") is None else f"; two builds {'identical' if m['identical'] else 'differ'}"
    return (f"build ({m['target']}): {m['engine']} with TensorRT {m['tensorrt_version']} on {m['device']}, "
            f"INT8 layers {100 * m['int8_layer_fraction']:.0f}%, {m['build_seconds']:.0f} s{same}")
