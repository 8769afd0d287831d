"""`edgekd triton`: a bundle as a Triton model repository, every config.pbtxt parsed by Triton's own
ModelConfig proto (from tritonclient) and held against the ONNX graph; the stdlib example client
against a fake KServe v2 server. Tiny hand-made ONNX models, no torch, no server."""
import importlib.util
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import BLOCK_TRAINING, DEVICE_MODULES, one_line
from onnx import TensorProto, helper, numpy_helper
from test_bundle import AUDIO_P, AV_INPUTS, IMAGE_P, LABELS, TinyModel, io_spec, write_png, write_wav

from edgekd.errors import BundleError, UsageError
from edgekd.runtime.bundle import add_model, load_bundle, write_bundle
from edgekd.runtime.runner import OrtRunner
from edgekd.runtime.triton import DEFAULT_BATCH, MARKER, Enum, pbtxt, write_repository

ROOT = Path(__file__).resolve().parents[1]
ENGINE = "student_int8_qdq_x86-gpu"
TEACHER_INPUTS = [("image__teacher", TensorProto.FLOAT, [1, 6, 6]), ("audio", TensorProto.FLOAT, [3, 2])]
ENGINE_META = {"role": "student", "precision": "int8", "target": "tensorrt", "backend": "tensorrt",
               "source": "student_fp32", "engine_target": "x86-gpu", "build": "student.int8-qdq-x86-gpu.build.json",
               "accuracy": None, "tensorrt_version": "10.3.0", "device": "NVIDIA H200", "compute_capability": "9.0",
               "int8_layer_fraction": 0.5}
ONNX_TO_TRITON = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT64: "TYPE_INT64"}


def model_config_pb2():
    return pytest.importorskip("tritonclient.grpc.model_config_pb2",
                               reason='Triton\'s ModelConfig proto: pip install "tritonclient[grpc]==2.73.0"')


def parse(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2().ModelConfig())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """student_fp32, student_int8_cpu, a teacher with its own image__teacher input and a wider
    embedding than io_spec says, and a (fake) TensorRT engine built from student_fp32."""
    tmp = tmp_path_factory.mktemp("triton")
    student, teacher = TinyModel(AV_INPUTS, seed=0), TinyModel(TEACHER_INPUTS, seed=1, embed=6)
    files = {"student_fp32": student.save(tmp / "s.onnx"), "student_int8_cpu": student.save(tmp / "c.onnx"),
             "teacher_fp32": teacher.save(tmp / "t.onnx")}
    models = {k: {"role": k.split("_")[0], "precision": "int8" if "int8" in k else "fp32",
                  "target": "cpu" if k.endswith("cpu") else "any"} for k in files}
    pre = {"image": IMAGE_P, "audio": AUDIO_P, "image__teacher": {**IMAGE_P, "size": 6}}
    dest = write_bundle(tmp / "bundle", name="tiny", models=models, model_files=files, io_spec=io_spec(AV_INPUTS),
                        preprocess=pre, labels=LABELS)
    (tmp / "e.engine").write_bytes(b"not really a plan")
    (tmp / "build.json").write_text(json.dumps({"target": "x86-gpu",
                                                "target_spec": {"name": "x86-gpu", "batch": {"min": 1, "opt": 4, "max": 16}}}))
    add_model(dest, ENGINE, tmp / "e.engine", ENGINE_META, extra_files={ENGINE_META["build"]: tmp / "build.json"})
    return dest


def graph_io(path: Path) -> list[tuple[str, int, list]]:
    g = onnx.load(str(path)).graph
    return [(v.name, v.type.tensor_type.elem_type, [d.dim_value if d.HasField("dim_value") else -1
                                                    for d in v.type.tensor_type.shape.dim])
            for v in [*g.input, *g.output]]


def test_default_batch_is_the_x86_gpu_target():
    from edgekd.trt.targets import load_target

    assert load_target("x86-gpu").batch.model_dump() == DEFAULT_BATCH


def test_every_config_parses_and_matches_the_graph(bundle, tmp_path):
    out = tmp_path / "repo"
    summary = write_repository(bundle, out)
    b = load_bundle(bundle)
    assert set(summary["models"]) == set(b.models)
    assert sorted(p.name for p in out.iterdir()) == sorted([*b.models, "README.txt", MARKER])
    for key, meta in b.models.items():
        cfg = parse(out / key / "config.pbtxt")
        engine = key == ENGINE
        onnx_file = b.models["student_fp32"]["file"] if engine else meta["file"]
        want = graph_io(bundle / onnx_file)
        assert cfg.name == key and cfg.max_batch_size == (16 if engine else 32)
        assert cfg.platform == ("tensorrt_plan" if engine else "onnxruntime_onnx")
        got = [(t.name, t.data_type, [-1, *t.dims]) for t in [*cfg.input, *cfg.output]]
        pb = model_config_pb2()
        assert got == [(n, pb.DataType.Value(ONNX_TO_TRITON[e]), d) for n, e, d in want]
        assert list(cfg.dynamic_batching.preferred_batch_size) == ([4, 16] if engine else [8, 32])
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
        kind = "KIND_CPU" if key == "student_int8_cpu" else "KIND_GPU"
        assert [pb.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group] == [kind]
        assert {o.name: o.label_filename for o in cfg.output} == {"logits": "labels.txt", "embedding": ""}
        assert (out / key / "labels.txt").read_text() == "cat\ndog\nowl\n"
        model = out / key / "1" / ("model.plan" if engine else "model.onnx")
        assert model.read_bytes() == (bundle / meta["file"]).read_bytes()
    teacher = parse(out / "teacher_fp32" / "config.pbtxt")
    assert [i.name for i in teacher.input] == ["image__teacher", "audio"]  # not io_spec's student inputs
    assert list(teacher.output[1].dims) == [6]
    readme = (out / "README.txt").read_text()
    assert "'tiny'" in readme and summary["manifest_sha256"] in readme and "tritonserver --model-repository" in readme
    assert json.loads((out / MARKER).read_text())["format"] == "edgekd.triton"
    assert not list(tmp_path.glob(".repo.*"))  # built beside and renamed in


def test_engine_config_names_its_gpu_and_tensorrt(bundle, tmp_path):
    summary = write_repository(bundle, tmp_path / "repo", models=[ENGINE], max_batch_size=64)
    text = (tmp_path / "repo" / ENGINE / "config.pbtxt").read_text()
    cfg = parse(tmp_path / "repo" / ENGINE / "config.pbtxt")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["tensorrt_version"] == "10.3.0" and params["device"] == "NVIDIA H200"
    assert params["compute_capability"] == "9.0" and params["engine_target"] == "x86-gpu"
    assert "# A TensorRT plan runs only on the GPU it was built on (NVIDIA H200" in text
    assert cfg.max_batch_size == 16  # never more than the engine's profile, whatever was asked
    assert "lowered to 16" in summary["notes"][0] and "lowered to 16" in (tmp_path / "repo" / "README.txt").read_text()
    assert summary["models"][ENGINE]["tied_to"] == {"device": "NVIDIA H200", "compute_capability": "9.0",
                                                    "tensorrt_version": "10.3.0"}
    assert json.loads((tmp_path / "repo" / ENGINE / "build.json").read_text())["target"] == "x86-gpu"


def test_models_filter_and_unknown_key(bundle, tmp_path):
    write_repository(bundle, tmp_path / "repo", models=["student_int8_cpu"])
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["README.txt", MARKER, "student_int8_cpu"]
    with pytest.raises(UsageError) as e:
        write_repository(bundle, tmp_path / "other", models=["student_fp16"])
    one_line(e, "student_fp16", "student_fp32, student_int8_cpu, teacher_fp32", ENGINE)
    assert not (tmp_path / "other").exists()


def test_overrides(bundle, tmp_path):
    write_repository(bundle, tmp_path / "repo", models=["student_fp32"], max_batch_size=0)
    cfg = parse(tmp_path / "repo" / "student_fp32" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [-1, 1, 4, 4]  # the batch axis is then the model's own
    write_repository(bundle, tmp_path / "repo", models=["student_fp32"], max_queue_delay_us=2500,
                     target={"name": "orin", "batch": {"min": 1, "opt": 2, "max": 4}})
    cfg = parse(tmp_path / "repo" / "student_fp32" / "config.pbtxt")
    assert cfg.max_batch_size == 4 and list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2500


def test_refuses_a_folder_it_did_not_write(bundle, tmp_path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    with pytest.raises(UsageError) as e:
        write_repository(bundle, out)
    one_line(e, str(out), "--force")
    assert (out / "precious.txt").read_text() == "mine"
    write_repository(bundle, out, models=["student_fp32"], force=True)
    assert not (out / "precious.txt").exists()
    write_repository(bundle, out, models=["teacher_fp32"])  # its own earlier output: replaced without --force
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", MARKER, "teacher_fp32"]
    for inside in (bundle, bundle / "triton", bundle.parent):  # --force must never delete the bundle
        with pytest.raises(UsageError) as e:
            write_repository(bundle, inside, force=True)
        one_line(e, "overlaps the bundle")
    load_bundle(bundle)


def test_bad_bundles_refused(bundle, tmp_path):
    import shutil

    copy = shutil.copytree(bundle, tmp_path / "b")
    (copy / "labels.json").write_text('["a", "b", "c"]\n')
    with pytest.raises(BundleError) as e:
        write_repository(copy, tmp_path / "repo")
    one_line(e, "labels.json changed since export")
    # an io_spec whose dtype the model does not take: clients would send the wrong type
    spec = io_spec(AV_INPUTS)
    spec["inputs"][0]["dtype"] = "int64"
    dest = write_bundle(tmp_path / "wrong", name="w", models={"student_fp32": {"role": "student", "precision": "fp32",
                                                                                "target": "any"}},
                        model_files={"student_fp32": TinyModel(AV_INPUTS).save(tmp_path / "m.onnx")},
                        io_spec=spec, preprocess={"image": IMAGE_P, "audio": AUDIO_P}, labels=LABELS)
    with pytest.raises(BundleError) as e:
        write_repository(dest, tmp_path / "repo")
    one_line(e, "input 'image' is float32[?, 1, 4, 4] in the model but int64", "io_spec.json")
    assert not (tmp_path / "repo").exists()


def seq_bundle(tmp_path, batch="batch", external=False) -> Path:
    """A text model: int64 ids with a free sequence axis -> logits and a one-number embedding."""
    nodes = [helper.make_node("Cast", ["text"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["embedding"], axes=[1], keepdims=0),
             helper.make_node("ReduceMean", ["f"], ["mean"], axes=[1], keepdims=1),
             helper.make_node("MatMul", ["mean", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("text", TensorProto.INT64, [batch, "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3]),
                               helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch])],
                              [numpy_helper.from_array(np.ones((1, 3), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=external, location="m.weights", size_threshold=0)
    spec = {"inputs": [{"name": "text", "kind": "text", "dtype": "int64", "shape": ["batch", "seq"]}], "outputs": []}
    return write_bundle(tmp_path / "b", name="seq", models={"student_fp32": {"role": "student", "precision": "fp32",
                                                                              "target": "any"}},
                        model_files={"student_fp32": tmp_path / "m.onnx"}, io_spec=spec,
                        preprocess={"text": {"kind": "text", "max_length": 5}}, labels=LABELS,
                        extra_files={"m.weights": tmp_path / "m.weights"} if external else None)


def test_dynamic_axis_int64_scalar_output_and_external_weights(tmp_path):
    """dims -1 on a free axis, TYPE_INT64, one number per sample as dims [1] reshaped to the scalar,
    and weights kept beside the model copied with it."""
    repo = tmp_path / "repo"
    write_repository(seq_bundle(tmp_path, external=True), repo)
    cfg = parse(repo / "student_fp32" / "config.pbtxt")
    pb = model_config_pb2()
    assert (cfg.input[0].data_type, list(cfg.input[0].dims)) == (pb.TYPE_INT64, [-1])
    assert (list(cfg.output[1].dims), list(cfg.output[1].reshape.shape)) == ([1], [])
    assert cfg.output[1].HasField("reshape")
    assert (repo / "student_fp32" / "1" / "m.weights").read_bytes() == (tmp_path / "m.weights").read_bytes()
    out = OrtRunner(repo / "student_fp32" / "1" / "model.onnx").run({"text": np.ones((2, 4), np.int64)})
    assert out["logits"].shape == (2, 3)


def test_fixed_batch_axis_means_no_batching(tmp_path):
    summary = write_repository(seq_bundle(tmp_path, batch=1), tmp_path / "repo", max_batch_size=8)
    cfg = parse(tmp_path / "repo" / "student_fp32" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [1, -1] and list(cfg.output[0].dims) == [1, 3]
    assert "fixed batch axis" in summary["notes"][0]


def test_formatter_escapes_strings():
    text = pbtxt({"#": "two\nlines", "name": 'a "quoted" \\ name', "platform": "x", "max_batch_size": 0,
                  "input": [{"name": "in", "data_type": Enum("TYPE_FP32"), "dims": [1, -1]}]})
    cfg = parse_text(text)
    assert cfg.name == 'a "quoted" \\ name' and list(cfg.input[0].dims) == [1, -1]


def parse_text(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2().ModelConfig())


def test_writer_is_torch_free(bundle, tmp_path):
    script = (BLOCK_TRAINING + "import json\nfrom edgekd.runtime.triton import write_repository\n"
              f"write_repository({str(bundle)!r}, {str(tmp_path / 'repo')!r})\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.startswith('edgekd'))))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert all(m in DEVICE_MODULES or m.startswith("edgekd.runtime") for m in loaded), loaded


# --------------------------------------------------------------------------- the example client


def client():
    spec = importlib.util.spec_from_file_location("triton_client", ROOT / "examples" / "triton_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeTriton(BaseHTTPRequestHandler):
    """Just enough of Triton's KServe v2 HTTP endpoint: runs the repository's ONNX with onnxruntime."""
    repo: Path
    requests: list = []

    def do_POST(self):  # noqa: N802 -- http.server's naming
        name = self.path.split("/")[3]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, body))
        types = {"FP32": np.float32, "INT64": np.int64}
        feeds = {i["name"]: np.asarray(i["data"], types[i["datatype"]]).reshape(i["shape"]) for i in body["inputs"]}
        runner = OrtRunner(self.repo / name / "1" / "model.onnx")
        outs = runner.run(feeds)
        reply = {"model_name": name, "outputs": [{"name": o["name"], "datatype": "FP32", "shape": list(outs[o["name"]].shape),
                                                  "data": outs[o["name"]].ravel().tolist()} for o in body["outputs"]]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_client_request_is_kserve_v2(bundle, tmp_path):
    tc = client()
    png, wav = write_png(tmp_path / "x.png"), write_wav(tmp_path / "y.wav")
    model, body = tc.build_request(bundle, {"image": str(png), "audio": str(wav)}, "student_int8_cpu")
    assert model == "student_int8_cpu"
    json.dumps(body)  # plain JSON
    assert [i["name"] for i in body["inputs"]] == ["image", "audio"] and body["outputs"] == [{"name": "logits"}]
    for item, (_, _, dims) in zip(body["inputs"], AV_INPUTS):
        assert item["datatype"] == "FP32" and item["shape"] == [1, *dims]
        assert len(item["data"]) == int(np.prod(item["shape"])) and all(isinstance(v, float) for v in item["data"])
    with pytest.raises(SystemExit, match="takes image=... audio=..."):
        tc.build_request(bundle, {"image": str(png)}, "student_fp32")
    _, teacher = tc.build_request(bundle, {"image__teacher": str(png), "audio": str(wav)}, "teacher_fp32")
    assert teacher["inputs"][0]["shape"] == [1, 1, 6, 6]


def test_client_against_a_fake_server(bundle, tmp_path, capsys):
    from edgekd.runtime.predict import predict

    tc = client()
    write_repository(bundle, tmp_path / "repo")
    png, wav = write_png(tmp_path / "x.png"), write_wav(tmp_path / "y.wav")
    handler = type("Handler", (FakeTriton,), {"repo": tmp_path / "repo", "requests": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert tc.main([str(bundle), f"image={png}", f"audio={wav}", "--url", url, "--model", "student_fp32"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    want = predict(bundle, files={"image": str(png), "audio": str(wav)}, model="student_fp32")
    printed = capsys.readouterr().out
    assert printed.startswith(f"{want['label']}\t(p={want['probabilities'][want['label']]:.3f}, model student_fp32)")
    assert handler.requests[0][0] == "/v2/models/student_fp32/infer"
