"""TensorRT targets, trtexec scripts, the build stage and the TensorRT runner.

Always run: target YAML validation, the exact trtexec argv per target, the skip path and
--require-trt, engine/device compatibility, and the build/run plumbing against a small fake of the
TensorRT and cuda-python APIs (it runs the ONNX model through onnxruntime, so the engine path is
checked end to end without a GPU). TestRealTensorRT runs only where tensorrt and a GPU exist.
"""
import json
import os
import shlex
import subprocess
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import yaml
from conftest import BLOCK_TRAINING, one_line
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import BundleError, ExportError, RecipeError, UsageError
from edgekd.recipe import recipe_from_dict
from edgekd.rundir import RunDir
from edgekd.runtime import trt_env
from edgekd.runtime.bundle import add_model, load_bundle, write_bundle
from edgekd.runtime.runner import OrtRunner, make_runner
from edgekd.runtime.trt_runner import check_engine_compat
from edgekd.trt.builder import layer_report, parser_errors, timing_cache_path
from edgekd.trt.bundle_build import build_bundle, onnx_input_shapes
from edgekd.trt.targets import available_targets, load_target, precision_plan, target_from_dict
from edgekd.trt.trtexec import trtexec_command

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ROOT / "export" / "targets"
SHAPES = {"image": (1, 28, 28), "audio": (63, 40)}
HAVE_TRT, NO_TRT_REASON = trt_env.trt_available()


def script_argv(script: Path) -> list[str]:
    """The trtexec arguments of a written script's exec line."""
    return shlex.split(script.read_text().split('exec "$TRTEXEC" ', 1)[1].replace("\\\n", " "))


# --------------------------------------------------------------------------- tiny models


def tiny_model(path: Path, quantized: bool, seed: int = 0, unsupported: bool = False) -> Path:
    """image (1,28,28) + audio (63,40) -> flatten, concat -> Gemm -> embedding (8) -> Gemm -> logits (3);
    the quantized twin has TensorRT-style Q/DQ (per-tensor activations, per-channel weights)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def init(name, a):
        inits.append(numpy_helper.from_array(np.asarray(a), name))
        return name

    def qdq(x, tag, scale, axis=None):
        s, z = init(f"{tag}_s", scale), init(f"{tag}_zp", np.zeros_like(scale, np.int8))
        kw = {} if axis is None else {"axis": axis}
        nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [f"{tag}_q"], f"{tag}_Q", **kw))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", s, z], [f"{tag}_dq"], f"{tag}_DQ", **kw))
        return f"{tag}_dq"

    def gemm(x, w, b, out, name):
        if quantized:
            x = qdq(x, f"{name}_in", np.float32(0.05))
            w = qdq(w, f"{name}_w", np.full(len(inits_arr[w]), 0.01, np.float32), axis=0)
        nodes.append(helper.make_node("Gemm", [x, w, b], [out], name, transB=1))

    inits_arr = {"w1": rng.normal(size=(8, 784 + 2520)).astype(np.float32) * 0.05,
                 "w2": rng.normal(size=(3, 8)).astype(np.float32)}
    for k, v in inits_arr.items():
        init(k, v)
    init("b1", np.zeros(8, np.float32)), init("b2", rng.normal(size=3).astype(np.float32))
    nodes += [helper.make_node("Flatten", ["image"], ["fi"], "flat_image"),
              helper.make_node("Flatten", ["audio"], ["fa"], "flat_audio"),
              helper.make_node("Concat", ["fi", "fa"], ["cat"], "concat", axis=1)]
    gemm("cat", "w1", "b1", "embedding", "fc1")
    gemm("embedding", "w2", "b2", "logits", "fc2")
    if unsupported:  # an op TensorRT's parser has no importer for
        nodes.append(helper.make_node("Unique", ["logits"], ["u"], "odd_unique"))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", *SHAPES["image"]]),
         helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", *SHAPES["audio"]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(n, *s)).astype(np.float32) for k, s in SHAPES.items()}


IO_SPEC = {"inputs": [{"name": n, "kind": n, "dtype": "float32", "shape": ["batch", *s]} for n, s in SHAPES.items()],
           "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 3]},
                       {"name": "embedding", "dtype": "float32", "shape": ["batch", 8]}]}
PRE = {"image": {"kind": "image", "size": 28, "mean": 0.5, "std": 0.25},
       "audio": {"kind": "audio", "sample_rate": 8000, "num_samples": 8000, "n_fft": 256, "hop_length": 128,
                 "n_mels": 40, "fmin": 0.0, "fmax": 4000.0, "mel_floor": 1e-10, "mean": 0.0, "std": 1.0}}


def make_bundle(tmp_path: Path, dest: Path) -> Path:
    src = tmp_path / "models"
    src.mkdir(exist_ok=True)
    files = {"student_fp32": tiny_model(src / "student_fp32.onnx", False),
             "student_int8_qdq": tiny_model(src / "student_int8_qdq.onnx", True)}
    models = {"student_fp32": {"role": "student", "precision": "fp32", "target": "any", "accuracy": 0.9},
              "student_int8_qdq": {"role": "student", "precision": "int8", "target": "tensorrt", "accuracy": 0.9}}
    return write_bundle(dest, name="t", models=models, model_files=files, io_spec=IO_SPEC, preprocess=PRE,
                        labels=["a", "b", "c"])


@pytest.fixture
def run(tmp_path) -> RunDir:
    """A run directory whose export stage is recorded over real (tiny) ONNX files and a bundle."""
    r = RunDir.create(tmp_path / "run", recipe_from_dict({"name": "t", "data": {"name": "avdigits"}}))
    out = r.stage_dir("export")
    files = {"student_fp32": tiny_model(out / "student_fp32.onnx", False),
             "student_int8_qdq": tiny_model(out / "student_int8_qdq.onnx", True)}
    bundle = make_bundle(tmp_path, r.path / "bundle")
    assert bundle == r.path / "bundle"
    r.record("export", started=time.time(), outputs=files, extra={"bundle": "bundle"})  # as the export stage does
    return r


def test_tiny_models_pass_the_lint(tmp_path):
    from edgekd.trt.lint import lint_onnx

    assert lint_onnx(tiny_model(tmp_path / "f.onnx", False), expect_qdq=False)["ok"]
    report = lint_onnx(tiny_model(tmp_path / "q.onnx", True), expect_qdq=True)
    assert report["ok"], report["violations"]
    assert report["qdq"]["pairs"] == 4
    assert onnx_input_shapes(tmp_path / "q.onnx") == SHAPES


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize("name", ["x86-gpu", "jetson-orin-nano", "jetson-orin-agx"])
def test_shipped_targets_validate(name):
    t = load_target(name)
    assert t.name == name and t.builder_optimization_level == 3 and t.timing_cache == "per-device"
    assert t.batch.min == 1 <= t.batch.opt <= t.batch.max
    assert t.dla_core is None  # x86 and Nano have no DLA; AGX leaves it off by default
    assert load_target(TARGETS / f"{name}.yaml") == t  # by path too
    assert name in available_targets()


def test_target_values():
    x86, nano, agx = (load_target(n) for n in ("x86-gpu", "jetson-orin-nano", "jetson-orin-agx"))
    assert (x86.batch.max, nano.batch.max, agx.batch.max) == (32, 8, 16)
    assert not x86.fp16_fallback and nano.fp16_fallback and agx.fp16_fallback
    assert nano.workspace_mib < agx.workspace_mib < x86.workspace_mib


def _raw(name="x86-gpu") -> dict:
    return yaml.safe_load((TARGETS / f"{name}.yaml").read_text())


@pytest.mark.parametrize("change, needles", [
    ({"workspace_mb": 10}, ["target.workspace_mb: unknown key 'workspace_mb'; did you mean 'workspace_mib'?"]),
    ({"batch": {"min": 1, "opt": 2, "max": 4, "maxx": 8}}, ["target.batch.maxx: unknown key", "did you mean 'max'?"]),
    ({"batch": {"min": 4, "opt": 2, "max": 8}}, ["target.batch: need min <= opt <= max, got 4/2/8"]),
    ({"timing_cache": "per_device"}, ["target.timing_cache: 'per_device' is not allowed", "did you mean 'per-device'?"]),
    ({"platform": "jetsn"}, ["target.platform", "did you mean 'jetson'?"]),
    ({"workspace_mib": 0}, ["target.workspace_mib", "greater than 0"]),
    ({"builder_optimization_level": 7}, ["target.builder_optimization_level", "less than or equal to 5"]),
    ({"dla_core": 0}, ["DLA cores exist only on Jetson"]),
    ({"platform": "jetson", "dla_core": 0}, ["dla_core needs fp16_fallback: true"]),
    ({"name": "x86 gpu"}, ["target.name"]),
])
def test_bad_targets(change, needles):
    with pytest.raises(RecipeError) as e:
        target_from_dict({**_raw(), **change}, source="x.yaml")
    one_line(e, "x.yaml: ", *needles)


def test_missing_field_and_target_lookup(tmp_path, monkeypatch):
    raw = _raw()
    del raw["fp16_fallback"]
    with pytest.raises(RecipeError) as e:
        target_from_dict(raw)
    one_line(e, "target.fp16_fallback: missing")
    with pytest.raises(RecipeError) as e:
        load_target("jetson-orin-nan0")
    one_line(e, "unknown target 'jetson-orin-nan0'; did you mean 'jetson-orin-nano'?", "x86-gpu")
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(_raw()))
    with pytest.raises(RecipeError) as e:
        load_target(tmp_path / "other.yaml")
    one_line(e, "target.name 'x86-gpu' differs from the file name 'other'")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(RecipeError) as e:
        load_target(tmp_path / "bad.yaml")
    one_line(e, "not valid YAML")
    mine = {**_raw(), "name": "my-box", "batch": {"min": 2, "opt": 2, "max": 2}}
    (tmp_path / "my-box.yaml").write_text(yaml.safe_dump(mine))
    monkeypatch.setenv("EDGEKD_TARGETS", str(tmp_path))
    assert load_target("my-box").batch.max == 2  # $EDGEKD_TARGETS is searched first


def test_precision_plan_tensorrt_10_and_11():
    x86, nano = load_target("x86-gpu"), load_target("jetson-orin-nano")
    assert precision_plan(x86, True, 10) == {"strongly_typed": True, "flags": [], "notes": []}
    assert precision_plan(nano, True, 10) == {"strongly_typed": False, "flags": ["FP16", "INT8"], "notes": []}
    assert precision_plan(nano, False, 10)["flags"] == ["FP16"]  # no INT8 without Q/DQ: it would need scales
    p11 = precision_plan(nano, True, 11)  # TensorRT 11 has no FP16/INT8 flags: always strongly typed
    assert p11["strongly_typed"] and p11["flags"] == [] and "AutoCast" in p11["notes"][0]
    assert precision_plan(x86, True, 11) == {"strongly_typed": True, "flags": [], "notes": []}


# --------------------------------------------------------------------------- trtexec


def _shapes(lo, opt, hi):
    return [f"--minShapes=image:{lo}x1x28x28,audio:{lo}x63x40", f"--optShapes=image:{opt}x1x28x28,audio:{opt}x63x40",
            f"--maxShapes=image:{hi}x1x28x28,audio:{hi}x63x40"]


@pytest.mark.parametrize("name, expected", [
    ("x86-gpu", [*_shapes(1, 8, 32), "--stronglyTyped", "--memPoolSize=workspace:4096M",
                 "--builderOptimizationLevel=3", "--timingCacheFile=t.cache", "--skipInference"]),
    ("jetson-orin-nano", [*_shapes(1, 4, 8), "--int8", "--fp16", "--memPoolSize=workspace:1024M",
                          "--builderOptimizationLevel=3", "--timingCacheFile=t.cache", "--skipInference"]),
    ("jetson-orin-agx", [*_shapes(1, 8, 16), "--int8", "--fp16", "--memPoolSize=workspace:2048M",
                         "--builderOptimizationLevel=3", "--timingCacheFile=t.cache", "--skipInference"]),
])
def test_trtexec_command_per_target(name, expected):
    argv = trtexec_command(load_target(name), "m.onnx", "e.engine", "t.cache", SHAPES, quantized=True)
    assert argv == ["trtexec", "--onnx=m.onnx", "--saveEngine=e.engine", *expected]


def test_trtexec_variants():
    agx = load_target("jetson-orin-agx")
    dla = agx.model_copy(update={"dla_core": 1})
    argv = trtexec_command(dla, "m.onnx", "e.engine", "t.cache", SHAPES)
    assert argv[-3:] == ["--useDLACore=1", "--allowGPUFallback", "--skipInference"]
    fp32 = trtexec_command(agx, "m.onnx", "e.engine", "t.cache", SHAPES, quantized=False)
    assert "--fp16" in fp32 and "--int8" not in fp32
    no_cache = trtexec_command(agx.model_copy(update={"timing_cache": "none"}), "m.onnx", "e.engine", "t.cache", SHAPES)
    assert not any(a.startswith("--timingCacheFile") for a in no_cache)
    layers = trtexec_command(agx, "m.onnx", "e.engine", None, SHAPES, layer_info_path="l.json")
    assert layers[-3:] == ["--profilingVerbosity=detailed", "--exportLayerInfo=l.json", "--skipInference"]


# --------------------------------------------------------------------------- environment and engine compatibility


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT and a GPU are present here")
def test_trt_available_says_why_not():
    ok, reason = trt_env.trt_available()
    assert ok is False and reason and ("tensorrt" in reason or "GPU" in reason)


def test_jetson_release(tmp_path):
    f = tmp_path / "nv_tegra_release"
    f.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: x\n")
    assert trt_env.jetson_release(f) == {"l4t": "36.4.0", "jetpack": "6.1"}
    f.write_text("# R35 (release), REVISION: 9.9, GCID: 1\n")
    assert trt_env.jetson_release(f) == {"l4t": "35.9.9", "jetpack": None}
    assert trt_env.jetson_release(tmp_path / "absent") is None


BUILT = {"target": "jetson-orin-nano", "tensorrt_version": "10.3.0", "device": "Orin", "compute_capability": "8.7"}


def test_engine_compat_refusals(tmp_path):
    recorded = tmp_path / "build.json"
    recorded.write_text(json.dumps(BUILT))
    build = json.loads(recorded.read_text())
    check_engine_compat(build, dict(BUILT))  # same TensorRT, same GPU: fine
    with pytest.raises(BundleError) as e:
        check_engine_compat(build, {**BUILT, "tensorrt_version": "10.7.0"}, "student.int8-qdq.engine")
    one_line(e, "student.int8-qdq.engine was built with TensorRT 10.3.0 on Orin", "this machine has TensorRT 10.7.0",
             "only runs on the TensorRT version that built it",
             "rebuild it on the target with `edgekd build BUNDLE_DIR --target jetson-orin-nano`")
    with pytest.raises(BundleError) as e:
        check_engine_compat(build, {**BUILT, "device": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    one_line(e, "on Orin (compute capability 8.7)", "NVIDIA H100 80GB HBM3 (compute capability 9.0)",
             "only runs on the GPU that built it", "rebuild it on the target")


def test_parser_errors_name_the_node():
    def err(desc, node=-1, name="", op=""):
        return SimpleNamespace(desc=lambda: desc, node=lambda: node, node_name=lambda: name, node_operator=lambda: op)

    msg = parser_errors([err("No importer registered for op: Unique", 5, "odd_unique", "Unique")], [], "m.onnx")
    assert "rejects m.onnx: node 'odd_unique' (Unique): No importer registered for op: Unique" in msg
    old = SimpleNamespace(desc=lambda: "bad", node=lambda: 1)  # before TensorRT 10: an index only
    assert "node 'b': bad" in parser_errors([old], ["a", "b"], "m.onnx")
    assert "the graph: broken" in parser_errors([err("broken")], [], "m.onnx")


INSPECTOR = {"Layers": [
    {"Name": "fc1", "LayerType": "CaskGemm", "Inputs": [{"Format/Datatype": "Int8"}], "TacticName": "sm80_i8i8"},
    {"Name": "fc2", "LayerType": "CaskGemm", "Inputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
    {"Name": "cat", "LayerType": "Concatenation", "Inputs": [{"Format/Datatype": "Float"}]},
    {"Name": "reformat", "LayerType": "Reformat", "Inputs": [{"Format/Datatype": "Int8"}]},
    {"Name": "fc0", "LayerType": "CaskGemm", "Inputs": [{"Format/Datatype": "Float"}], "Weights": {"Type": "Int8"}}]}


def test_layer_report_and_cache_name():
    r = layer_report(json.dumps(INSPECTOR))
    assert [x["precision"] for x in r["layers"]] == ["int8", "fp16", "fp32", "int8", "int8"]
    assert r["counts"] == {"int8": 2, "fp16": 1, "fp32": 1} and r["int8_layer_fraction"] == 0.5
    assert layer_report(json.dumps({"Layers": ["a", "b"]}))["int8_layer_fraction"] is None
    path = timing_cache_path(Path("c"), load_target("x86-gpu"),
                             {"device": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt_version": "10.8.0"})
    assert path == Path("c/x86-gpu/nvidia-h100-80gb-hbm3_sm90_trt10.8.0.cache")


# --------------------------------------------------------------------------- the build stage without TensorRT


@pytest.fixture
def no_trt(monkeypatch):
    monkeypatch.setattr(trt_env, "trt_available", lambda: (False, "the tensorrt Python package is not installed"))


def test_run_build_skips_and_writes_trtexec(run, no_trt):
    from edgekd.stages.build import run as run_build

    m = run_build(run)
    assert m == {"target": "x86-gpu", "skipped": "the tensorrt Python package is not installed",
                 "trtexec": "build/trtexec.sh"}
    st = run.stage("build")
    assert st["status"] == "skipped" and st["metrics"] == m and st["target"] == "x86-gpu"
    assert set(st["outputs"]) == {"trtexec", "lint"} and "onnx" in st["inputs"]
    script = run.path / "build" / "trtexec.sh"
    assert os.access(script, os.X_OK) and json.loads((run.path / "build" / "lint.json").read_text())["ok"]
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n") and "the tensorrt Python package is not installed" in text
    assert script_argv(script) == trtexec_command(
        load_target("x86-gpu"), "../export/student_int8_qdq.onnx", "x86-gpu/student.int8-qdq.engine",
        "x86-gpu/timing.cache", SHAPES, layer_info_path="x86-gpu/trtexec-layers.json")[1:]
    assert run.is_done("export")  # nothing touched the bundle


def test_trtexec_script_runs_from_its_directory(run, no_trt, tmp_path):
    from edgekd.stages.build import run as run_build

    run_build(run, target="jetson-orin-nano")
    fake = tmp_path / "trtexec"
    fake.write_text('#!/bin/sh\npwd > "$OUT"\nfor a in "$@"; do echo "$a"; done >> "$OUT"\n')
    fake.chmod(0o755)
    out = tmp_path / "args.txt"
    subprocess.run(["sh", str(run.path / "build" / "trtexec.sh")], check=True, cwd=tmp_path,
                   env={**os.environ, "TRTEXEC": str(fake), "OUT": str(out)})
    cwd, *args = out.read_text().splitlines()
    assert Path(cwd) == (run.path / "build").resolve() and (run.path / "build" / "jetson-orin-nano").is_dir()
    assert (Path(cwd) / args[0].split("=", 1)[1]).is_file()  # --onnx resolves from the script's directory
    assert "--int8" in args and "--fp16" in args and "--optShapes=image:4x1x28x28,audio:4x63x40" in args


def test_run_build_require_trt_and_lint(run, no_trt):
    from edgekd.stages.build import run as run_build

    with pytest.raises(ExportError) as e:
        run_build(run, require_trt=True)
    one_line(e, "required (--require-trt) but the tensorrt Python package is not installed", "trtexec.sh")
    assert (run.path / "build" / "trtexec.sh").is_file()  # the command to run elsewhere is still there
    m = run_build(run, model="student_fp32", target="jetson-orin-nano")
    argv = script_argv(run.path / "build" / "trtexec.sh")
    assert m["skipped"] and "--fp16" in argv and "--int8" not in argv and "--onnx=../export/student_fp32.onnx" in argv
    # the FP32 model recorded as the QDQ one: the lint refuses it before anything is built
    entry = run.manifest["stages"]["export"]["outputs"]
    entry["student_int8_qdq"] = dict(entry["student_fp32"])
    with pytest.raises(ExportError) as e:
        run_build(run)
    one_line(e, "qdq-missing")
    with pytest.raises(RecipeError):
        run_build(run, target="nope")


def test_build_bundle_skip_path(tmp_path, no_trt):
    bundle = make_bundle(tmp_path, tmp_path / "device" / "bundle")
    m = build_bundle(bundle, "jetson-orin-agx")
    script = tmp_path / "device" / "bundle.build" / "trtexec.sh"
    assert m == {"target": "jetson-orin-agx", "skipped": "the tensorrt Python package is not installed",
                 "trtexec": str(script)}
    assert "--onnx=../bundle/student.int8-qdq.onnx" in script.read_text()
    load_bundle(bundle)  # still whole: nothing was written into it
    with pytest.raises(ExportError):
        build_bundle(bundle, "jetson-orin-agx", require_trt=True)
    with pytest.raises(UsageError) as e:
        build_bundle(bundle, "x86-gpu", model="teacher_fp32")
    one_line(e, "no ONNX model 'teacher_fp32'", "student_fp32, student_int8_qdq")


def test_add_model_replaces_and_refuses(tmp_path):
    bundle = make_bundle(tmp_path, tmp_path / "bundle")
    (tmp_path / "e.engine").write_bytes(b"engine-1")
    (tmp_path / "b.json").write_text("{}")
    meta = {"role": "student", "precision": "int8", "target": "tensorrt", "backend": "tensorrt",
            "source": "student_int8_qdq", "build": "student.int8-qdq-x.build.json"}
    add_model(bundle, "student_int8_qdq_x", tmp_path / "e.engine", meta, extra_files={meta["build"]: tmp_path / "b.json"})
    b = load_bundle(bundle)
    assert b.models["student_int8_qdq_x"]["file"] == "student.int8-qdq-x.engine" and meta["build"] in b.manifest["files"]
    assert b.default_model == "student_fp32"
    (tmp_path / "e.engine").write_bytes(b"engine-2")
    add_model(bundle, "student_int8_qdq_x", tmp_path / "e.engine", {**meta, "build": "other.json"},
              extra_files={"other.json": tmp_path / "b.json"})
    b = load_bundle(bundle)
    assert meta["build"] not in b.manifest["files"] and not (bundle / meta["build"]).exists()
    assert (bundle / "student.int8-qdq-x.engine").read_bytes() == b"engine-2"
    with pytest.raises(UsageError) as e:
        make_runner(b, "student_int8_qdq_x")
    one_line(e, "is a TensorRT engine", "--backend tensorrt")
    with pytest.raises(BundleError):
        add_model(bundle, "student_x", tmp_path / "e.engine", {**meta, "target": "gpu"})
    (bundle / "labels.json").write_text("[]")
    with pytest.raises(BundleError):  # a tampered bundle is never extended
        add_model(bundle, "student_y", tmp_path / "e.engine", meta)


def test_trt_modules_never_import_torch(tmp_path):
    bundle = make_bundle(tmp_path, tmp_path / "bundle")
    script = (BLOCK_TRAINING + "import json\n"
              "from edgekd.runtime import trt_env as env\nenv.trt_available = lambda: (False, 'no tensorrt')\n"
              "from edgekd.trt.bundle_build import build_bundle\nimport edgekd.runtime.trt_runner, edgekd.trt.builder\n"
              f"m = build_bundle({str(bundle)!r}, 'x86-gpu')\n"
              "print(json.dumps({'m': m, 'loaded': sorted(k for k in sys.modules if k.startswith('edgekd'))}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["m"]["skipped"] == "no tensorrt"
    assert not any(k.startswith(("edgekd.stages", "edgekd.models", "edgekd.quant")) for k in out["loaded"])


# --------------------------------------------------------------------------- the build and the runner on a fake TensorRT


class FakeCudart:
    """cuda-python's runtime calls the runner makes, over host bytearrays."""

    mem: dict = {}
    next_ptr = [4096]
    cudaError_t = SimpleNamespace(cudaSuccess=0)
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    @classmethod
    def cudaMalloc(cls, n):
        ptr = cls.next_ptr[0] = cls.next_ptr[0] + 4096
        cls.mem[ptr] = bytearray(n)
        return 0, ptr

    @classmethod
    def cudaFree(cls, ptr):
        cls.mem.pop(ptr)
        return (0,)

    @classmethod
    def cudaMemcpyAsync(cls, dst, src, n, kind, stream):
        if kind == 1:
            cls.mem[dst][:n] = np.ascontiguousarray(src).view(np.uint8).reshape(-1)[:n].tobytes()
        else:
            dst.reshape(-1).view(np.uint8)[:n] = np.frombuffer(bytes(cls.mem[src][:n]), np.uint8)
        return (0,)

    cudaStreamCreate = staticmethod(lambda: (0, 7))
    cudaStreamSynchronize = staticmethod(lambda s: (0,))
    cudaStreamDestroy = staticmethod(lambda s: (0,))
    cudaGetErrorName = staticmethod(lambda e: (0, b"cudaErrorFake"))


class FakeEngine:
    """Deserialized from the fake builder's bytes; "runs" the ONNX model with onnxruntime."""

    def __init__(self, spec):
        import onnxruntime as ort

        self.spec, self.session = spec, ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
        self.ins = [i.name for i in self.session.get_inputs()]
        self.shapes = {m.name: m.shape for m in [*self.session.get_inputs(), *self.session.get_outputs()]}
        self.names = self.ins + [o.name for o in self.session.get_outputs()]
        self.num_io_tensors = len(self.names)

    get_tensor_name = lambda self, i: self.names[i]  # noqa: E731
    get_tensor_mode = lambda self, n: "input" if n in self.ins else "output"  # noqa: E731
    get_tensor_dtype = lambda self, n: "float32"  # noqa: E731
    get_tensor_shape = lambda self, n: tuple(-1 if isinstance(d, str) else d for d in self.shapes[n])  # noqa: E731
    get_tensor_profile_shape = lambda self, n, p: tuple(tuple(s) for s in self.spec["profile"][n])  # noqa: E731

    def create_engine_inspector(self):
        return SimpleNamespace(get_engine_information=lambda fmt: json.dumps(INSPECTOR))

    def create_execution_context(self):
        engine, shapes, addr = self, {}, {}

        def out_shape(n):
            return (next(iter(shapes.values()))[0], *engine.shapes[n][1:])

        def execute(stream):
            xs = {n: np.frombuffer(bytes(FakeCudart.mem[addr[n]]), np.float32, int(np.prod(s))).reshape(s)
                  for n, s in shapes.items()}
            outs = engine.session.run(engine.names[len(engine.ins):], xs)
            for n, y in zip(engine.names[len(engine.ins):], outs):
                FakeCudart.mem[addr[n]][:y.nbytes] = y.astype(np.float32).tobytes()
            return True

        return SimpleNamespace(set_input_shape=lambda n, s: shapes.__setitem__(n, tuple(s)) or True,
                               set_tensor_address=addr.__setitem__, get_tensor_shape=out_shape,
                               execute_async_v3=execute)


def fake_tensorrt(version: str) -> types.ModuleType:
    """The slice of the TensorRT Python API edgekd uses; TensorRT 11 lacks the FP16/INT8 flags."""
    trt = types.ModuleType("tensorrt")
    trt.__version__, trt.built = version, []
    major = int(version.split(".")[0])
    trt.BuilderFlag = SimpleNamespace(**{f: f for f in ["GPU_FALLBACK", *(["FP16", "INT8"] if major < 11 else [])]})
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
    trt.ProfilingVerbosity = SimpleNamespace(DETAILED="detailed")
    trt.LayerInformationFormat = SimpleNamespace(JSON="json")
    trt.TensorIOMode = SimpleNamespace(INPUT="input")
    trt.nptype = lambda dt: np.dtype(dt).type

    class ILogger:
        INTERNAL_ERROR, ERROR = 0, 1

        def __init__(self, *a):
            pass

    class Parser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            graph = onnx.load(path).graph
            for i, node in enumerate(graph.node):
                if node.op_type == "Unique":
                    self.errors.append(SimpleNamespace(desc=lambda: "No importer registered for op: Unique",
                                                       node=lambda i=i: i, node_name=lambda n=node: n.name,
                                                       node_operator=lambda n=node: n.op_type))
            self.network.onnx = path
            self.network.inputs = [SimpleNamespace(name=i.name, shape=(-1, *[d.dim_value for d in
                                   i.type.tensor_type.shape.dim[1:]])) for i in graph.input]
            return not self.errors

        num_errors = property(lambda self: len(self.errors))
        get_error = lambda self, i: self.errors[i]  # noqa: E731

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.cache = [], [], None

        set_memory_pool_limit = lambda self, pool, size: None  # noqa: E731
        set_flag = lambda self, f: self.flags.append(f)  # noqa: E731
        add_optimization_profile = lambda self, p: self.profiles.append(p)  # noqa: E731
        create_timing_cache = lambda self, data: SimpleNamespace(serialize=lambda: bytes(data) + b"+t")  # noqa: E731
        set_timing_cache = lambda self, cache, ignore: setattr(self, "cache", cache) or True  # noqa: E731
        get_timing_cache = lambda self: self.cache  # noqa: E731

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.onnx = flags, [], None

        num_inputs = property(lambda self: len(self.inputs))
        get_input = lambda self, i: self.inputs[i]  # noqa: E731

    class Builder:
        num_DLA_cores = 0

        def __init__(self, logger):
            pass

        create_network = lambda self, flags: Network(flags)  # noqa: E731
        create_builder_config = lambda self: Config()  # noqa: E731

        def create_optimization_profile(self):
            shapes = {}
            return SimpleNamespace(shapes=shapes, set_shape=lambda n, *s: shapes.__setitem__(n, s))

        def build_serialized_network(self, network, config):
            trt.built.append({"flags": network.flags, "builder_flags": list(config.flags)})
            profile = {n: [list(s) for s in v] for n, v in config.profiles[0].shapes.items()}
            return b"ENGINE" + json.dumps({"onnx": network.onnx, "profile": profile}).encode()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return FakeEngine(json.loads(bytes(data)[6:])) if bytes(data).startswith(b"ENGINE") else None

    trt.ILogger = trt.Logger = ILogger
    trt.OnnxParser, trt.Builder, trt.Runtime = Parser, Builder, Runtime
    return trt


HERE = {"tensorrt_version": "10.3.0", "device": "Orin", "compute_capability": "8.7", "memory_mib": 7620,
        "jetson": {"l4t": "36.4.0", "jetpack": "6.1"}}


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version="10.3.0"):
        trt = fake_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(trt_env, "trt_available", lambda: (True, ""))
        monkeypatch.setattr(trt_env, "current_env", lambda: {**HERE, "tensorrt_version": version})
        monkeypatch.setattr(trt_env, "cudart", lambda: FakeCudart)
        return trt

    return install


def test_run_build_with_tensorrt_10(run, fake_trt, tmp_path, monkeypatch):
    from edgekd.stages.build import run as run_build

    trt = fake_trt("10.3.0")
    export_before = json.dumps(run.stage("export"), sort_keys=True)
    m = run_build(run, target="jetson-orin-nano", build_twice=True, timing_cache_dir=tmp_path / "cache")
    assert m["engine"] == "build/jetson-orin-nano/student.int8-qdq.engine" and m["identical"] is True
    assert (m["tensorrt_version"], m["device"], m["int8_layer_fraction"]) == ("10.3.0", "Orin", 0.5)
    assert m["bundle_model"] == "student_int8_qdq_jetson-orin-nano"
    # fp16_fallback on TensorRT 10: weak typing with FP16 + INT8 (Q/DQ), no STRONGLY_TYPED network
    assert trt.built == [{"flags": 0, "builder_flags": ["FP16", "INT8"]}] * 2
    build = json.loads((run.path / "build" / "jetson-orin-nano" / "build.json").read_text())
    assert build["jetson"] == {"l4t": "36.4.0", "jetpack": "6.1"} and not build["strongly_typed"]
    cache = tmp_path / "cache" / "jetson-orin-nano" / "orin_sm87_trt10.3.0.cache"
    from edgekd.rundir import sha256_file
    assert build["timing_cache"]["sha256"] == sha256_file(cache) and build["timing_cache"]["policy"] == "per-device"
    assert json.loads((run.path / "build" / "jetson-orin-nano" / "layers.json").read_text())["counts"]["int8"] == 2
    st = run.stage("build")
    assert st["status"] == "done" and {"engine", "build_json", "layers", "trtexec", "lint"} <= set(st["outputs"])
    assert run.is_done("export") and run.is_done("build")  # the bundle grew an engine; export is still whole
    assert json.dumps(run.stage("export"), sort_keys=True) == export_before  # build records only its own entry
    bundle = load_bundle(run.path / "bundle")
    meta = bundle.models["student_int8_qdq_jetson-orin-nano"]
    assert (meta["backend"], meta["source"], meta["tensorrt_version"]) == ("tensorrt", "student_int8_qdq", "10.3.0")

    # the runner: the engine's outputs equal onnxruntime's on the same QDQ model
    runner = make_runner(bundle, backend="tensorrt")
    ort_runner = OrtRunner(bundle.model_path("student_int8_qdq"))
    for n in (1, 5, 8):
        xs = batch(n, seed=n)
        got, want = runner.run(xs), ort_runner.run(xs)
        for k in ("logits", "embedding"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)
    with pytest.raises(BundleError) as e:
        runner.run(batch(9))
    one_line(e, "batch 9", "built for batch 1..8")
    with pytest.raises(BundleError):
        runner.run({"image": batch(2)["image"]})
    runner.close()
    assert FakeCudart.mem == {}

    # another TensorRT version here: the engine is refused with the rebuild message
    sys.modules["tensorrt"].__version__ = "10.7.0"
    monkeypatch.setattr(trt_env, "current_env", lambda: {**HERE, "tensorrt_version": "10.7.0"})
    with pytest.raises(BundleError) as e:
        make_runner(bundle, "student_int8_qdq", backend="tensorrt")
    one_line(e, "built with TensorRT 10.3.0", "has TensorRT 10.7.0", "--target jetson-orin-nano")


def test_build_with_tensorrt_11_is_strongly_typed(tmp_path, fake_trt):
    trt = fake_trt("11.0.0")  # its BuilderFlag has no FP16/INT8: touching them would fail
    bundle = make_bundle(tmp_path, tmp_path / "bundle")
    m = build_bundle(bundle, "jetson-orin-nano", timing_cache_dir=tmp_path / "c")
    assert trt.built == [{"flags": 0, "builder_flags": []}]  # 11: strongly typed always, no creation flag
    build = json.loads((tmp_path / "bundle.build" / "jetson-orin-nano" / "build.json").read_text())
    assert build["strongly_typed"] and "AutoCast" in build["notes"][0]
    assert m["bundle_model"] in load_bundle(bundle).models
    trt10 = fake_trt("10.8.0")
    build_bundle(bundle, "x86-gpu", timing_cache_dir=tmp_path / "c")
    assert trt10.built == [{"flags": 1, "builder_flags": []}]  # 10: the STRONGLY_TYPED creation flag


def test_parser_error_reaches_the_user(tmp_path, fake_trt):
    from edgekd.trt.builder import build_engine

    fake_trt("10.3.0")
    bad = tiny_model(tmp_path / "bad.onnx", False, unsupported=True)
    with pytest.raises(ExportError) as e:
        build_engine(bad, load_target("x86-gpu"), quantized=False)
    one_line(e, "rejects bad.onnx: node 'odd_unique' (Unique): No importer registered for op: Unique")


# --------------------------------------------------------------------------- real TensorRT on a GPU


@pytest.mark.skipif(not HAVE_TRT, reason=f"needs TensorRT and a CUDA GPU: {NO_TRT_REASON}")
class TestRealTensorRT:
    @pytest.mark.parametrize("quantized, tol", [(False, 1e-3), (True, 0.1)])
    def test_engine_matches_onnxruntime(self, tmp_path, quantized, tol):
        from edgekd.runtime.trt_runner import TrtRunner
        from edgekd.trt.bundle_build import build_or_skip

        onnx_path = tiny_model(tmp_path / "m.onnx", quantized)
        target = load_target("x86-gpu")
        result = build_or_skip(onnx_path, target, tmp_path / "build", "student_int8_qdq" if quantized else "student_fp32",
                               require_trt=True, timing_cache_dir=tmp_path / "cache")
        assert result["status"] == "done"
        runner = TrtRunner(result["engine"], result["build"])
        ort_runner = OrtRunner(onnx_path)
        try:
            for n in (1, 8, 32):
                xs = batch(n, seed=n)
                got, want = runner.run(xs), ort_runner.run(xs)
                np.testing.assert_allclose(got["logits"], want["logits"], atol=tol, rtol=tol)
        finally:
            runner.close()
        if quantized:
            assert result["build"]["int8_layer_fraction"] > 0
