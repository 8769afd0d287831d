"""The device bundle, its runner and predict: built on tiny hand-made ONNX models (no torch)."""
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import BLOCK_TRAINING, DEVICE_MODULES, one_line
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import BundleError, UsageError
from edgekd.runtime import preprocess as pp
from edgekd.runtime.bundle import load_bundle, model_filename, write_bundle
from edgekd.runtime.predict import predict
from edgekd.runtime.runner import OrtRunner, make_runner

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["cat", "dog", "owl"]
# parameters named exactly as edgekd.runtime.preprocess reads them
IMAGE_P = {"kind": "image", "size": 4, "mean": 0.5, "std": 0.25}
AUDIO_P = {"kind": "audio", "sample_rate": 8000, "num_samples": 32, "n_fft": 16, "hop_length": 16, "n_mels": 2,
           "fmin": 0.0, "fmax": 4000.0, "mel_floor": 1e-10, "mean": -3.0, "std": 2.0}  # -> (3 frames, 2 mels)
VECTOR_P = {"kind": "vector", "mean": [1.0, -1.0], "std": [2.0, 0.5]}
AV_INPUTS = [("image", TensorProto.FLOAT, [1, 4, 4]), ("audio", TensorProto.FLOAT, [3, 2])]
TV_INPUTS = [("text", TensorProto.INT64, [5]), ("vector", TensorProto.FLOAT, [2])]


class TinyModel:
    """Flatten every input, concat, embedding = x @ We, logits = embedding @ Wl + b; and its numpy twin."""

    def __init__(self, inputs, seed=0, embed=4):
        rng = np.random.default_rng(seed)
        self.inputs, width = inputs, sum(int(np.prod(d)) for _, _, d in inputs)
        self.we = rng.normal(size=(width, embed)).astype(np.float32)
        self.wl = rng.normal(size=(embed, len(LABELS))).astype(np.float32)
        self.b = rng.normal(size=len(LABELS)).astype(np.float32)

    def save(self, path: Path) -> Path:
        nodes, flat = [], []
        for name, elem, _ in self.inputs:
            src = name
            if elem != TensorProto.FLOAT:
                nodes.append(helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT))
                src = f"{name}_f"
            nodes.append(helper.make_node("Flatten", [src], [f"{name}_flat"], axis=1))
            flat.append(f"{name}_flat")
        nodes += [helper.make_node("Concat", flat, ["cat"], axis=1),
                  helper.make_node("MatMul", ["cat", "we"], ["embedding"]),
                  helper.make_node("MatMul", ["embedding", "wl"], ["z"]),
                  helper.make_node("Add", ["z", "b"], ["logits"])]
        graph = helper.make_graph(
            nodes, "tiny",
            [helper.make_tensor_value_info(n, e, ["batch", *d]) for n, e, d in self.inputs],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)]),
             helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", self.we.shape[1]])],
            [numpy_helper.from_array(self.we, "we"), numpy_helper.from_array(self.wl, "wl"),
             numpy_helper.from_array(self.b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8  # what every onnxruntime of the last years reads
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))
        return path

    def __call__(self, xs: dict) -> np.ndarray:
        cat = np.concatenate([xs[n].reshape(len(xs[n]), -1).astype(np.float64) for n, _, _ in self.inputs], axis=1)
        return cat @ self.we @ self.wl + self.b


def io_spec(inputs, embed=4):
    kinds = {"image": "image", "audio": "audio", "text": "text", "vector": "vector"}
    return {"inputs": [{"name": n, "kind": kinds[n], "dtype": "int64" if e == TensorProto.INT64 else "float32",
                        "shape": ["batch", *d]} for n, e, d in inputs],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(LABELS)]},
                        {"name": "embedding", "dtype": "float32", "shape": ["batch", embed]}]}


def make_bundle(tmp_path, name="bundle", keys=("student_fp32", "teacher_fp32"), labels=LABELS):
    student, teacher = TinyModel(AV_INPUTS, seed=0), TinyModel(AV_INPUTS, seed=1)
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    files = {k: (teacher if k.startswith("teacher") else student).save(src / f"{k}.onnx") for k in keys}
    models = {k: {"role": k.split("_")[0], "precision": "int8" if "int8" in k else "fp32",
                  "target": "cpu" if k.endswith("cpu") else "any", "accuracy": 0.9} for k in keys}
    dest = write_bundle(tmp_path / name, name="tiny", models=models, model_files=files, io_spec=io_spec(AV_INPUTS),
                        preprocess={"image": IMAGE_P, "audio": AUDIO_P}, labels=labels)
    return dest, student, teacher


def write_png(path: Path, seed=0) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(path)
    return path


def write_wav(path: Path, seed=0) -> Path:
    t = np.arange(40) / 8000
    x = 0.5 * np.sin(2 * np.pi * (300 + 400 * seed) * t) + 0.1 * np.random.default_rng(seed).normal(size=40)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


# --------------------------------------------------------------------------- bundle


def test_model_filenames():
    assert model_filename("student_int8_cpu") == "student.int8-cpu.onnx"
    assert model_filename("student_fp32") == "student.fp32.onnx"
    assert model_filename("student_int8_qdq", ".engine") == "student.int8-qdq.engine"
    with pytest.raises(BundleError):
        model_filename("../evil")


def test_round_trip(tmp_path):
    dest, _, _ = make_bundle(tmp_path)
    b = load_bundle(dest)
    m = b.manifest
    assert (m["format"], m["version"], m["name"]) == ("edgekd.bundle", 1, "tiny")
    assert m["models"]["student_fp32"] == {"file": "student.fp32.onnx", "role": "student", "precision": "fp32",
                                           "target": "any", "accuracy": 0.9}
    assert m["default_model"] == "student_fp32"
    on_disk = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"manifest.json"}
    assert m["files"]["student.fp32.onnx"]["bytes"] == (dest / "student.fp32.onnx").stat().st_size
    assert b.labels == LABELS and b.io_spec == io_spec(AV_INPUTS)
    assert b.preprocess == {"image": IMAGE_P, "audio": AUDIO_P}
    assert b.model_path() == dest / "student.fp32.onnx" and b.model_path("teacher_fp32") == dest / "teacher.fp32.onnx"
    assert not list(tmp_path.glob(".bundle.*"))  # no temp directories left behind


def test_default_model_prefers_cpu_int8(tmp_path):
    dest, _, _ = make_bundle(tmp_path, keys=("student_fp32", "student_int8_cpu"))
    assert load_bundle(dest).default_model == "student_int8_cpu"
    dest, _, _ = make_bundle(tmp_path, name="t", keys=("teacher_fp32",))
    assert load_bundle(dest).default_model == "teacher_fp32"


def test_text_tokenizer_written_as_file(tmp_path):
    tok = tokenizer()
    pre = {"text": {"kind": "text", "max_length": 5, "tokenizer_json": tok.to_str()}, "vector": VECTOR_P}
    dest = write_bundle(tmp_path / "b", name="tv", models={"student_fp32": {"role": "student", "precision": "fp32",
                                                                               "target": "any", "accuracy": None}},
                        model_files={"student_fp32": TinyModel(TV_INPUTS).save(tmp_path / "m.onnx")},
                        io_spec=io_spec(TV_INPUTS), preprocess=pre, labels=LABELS)
    b = load_bundle(dest)
    assert b.preprocess["text"] == {"kind": "text", "max_length": 5, "tokenizer_file": "tokenizer/text.json"}
    assert "tokenizer/text.json" in b.manifest["files"]
    assert json.loads((dest / "tokenizer/text.json").read_text()) == json.loads(tok.to_str())
    assert "tokenizer_json" in pre["text"]  # the caller's (the dataset's) parameters are untouched


def test_tampered_file_refused(tmp_path):
    dest, _, _ = make_bundle(tmp_path)
    data = bytearray((dest / "student.fp32.onnx").read_bytes())
    data[-1] ^= 1  # same size, other bytes
    (dest / "student.fp32.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        load_bundle(dest)
    one_line(e, "student.fp32.onnx", "sha256", "edgekd export")
    (dest / "labels.json").write_text('["x"]')
    (dest / "student.fp32.onnx").write_bytes(bytes(data[:-1]))
    with pytest.raises(BundleError) as e:
        load_bundle(dest)
    one_line(e, "labels.json", "size")


def test_missing_file_refused(tmp_path):
    dest, _, _ = make_bundle(tmp_path)
    (dest / "teacher.fp32.onnx").unlink()
    with pytest.raises(BundleError) as e:
        load_bundle(dest)
    one_line(e, "teacher.fp32.onnx", "missing")


def test_unlisted_model_refused(tmp_path):
    dest, _, _ = make_bundle(tmp_path)
    (dest / "sub").mkdir()
    (dest / "sub" / "other.onnx").write_bytes((dest / "student.fp32.onnx").read_bytes())
    with pytest.raises(BundleError) as e:
        load_bundle(dest)
    one_line(e, "sub/other.onnx", "does not list")


@pytest.mark.parametrize("change, needle", [
    (None, "no manifest.json"),
    ("{not json", "unreadable"),
    ({"format": "something.else"}, "expected 'edgekd.bundle'"),
    ({"version": 2}, "version 2"),
    ({"default_model": "nope"}, "default_model"),
    ({"files": {"../labels.json": {"sha256": "0", "bytes": 1}}}, "leaves the bundle"),
])
def test_bad_manifest_refused(tmp_path, change, needle):
    dest, _, _ = make_bundle(tmp_path)
    path = dest / "manifest.json"
    if change is None:
        path.unlink()
    elif isinstance(change, str):
        path.write_text(change)
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(BundleError) as e:
        load_bundle(dest)
    one_line(e, needle)


def test_rewrite_is_atomic(tmp_path):
    dest, _, _ = make_bundle(tmp_path)
    before = load_bundle(dest).manifest
    with pytest.raises(FileNotFoundError):  # dies after copying some files: the old bundle stays whole
        write_bundle(dest, name="tiny", models={"student_fp32": before["models"]["student_fp32"],
                                                "teacher_fp32": before["models"]["teacher_fp32"]},
                     model_files={"student_fp32": dest / "student.fp32.onnx", "teacher_fp32": tmp_path / "gone.onnx"},
                     io_spec=io_spec(AV_INPUTS), preprocess={"image": IMAGE_P, "audio": AUDIO_P}, labels=LABELS)
    assert load_bundle(dest).manifest == before
    assert not list(tmp_path.glob(".bundle.*"))
    make_bundle(tmp_path, labels=["x", "y", "z"])
    assert load_bundle(dest).labels == ["x", "y", "z"]


def test_write_refuses_foreign_directory(tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError) as e:
        make_bundle(tmp_path)
    one_line(e, "not an edgekd bundle")
    assert (tmp_path / "bundle" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- runner


def av_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(n, 1, 4, 4)).astype(np.float32),
            "audio": rng.normal(size=(n, 3, 2)).astype(np.float32)}


@pytest.mark.parametrize("batch", [1, 5])
def test_ort_runner(tmp_path, batch):
    model = TinyModel(AV_INPUTS)
    runner = OrtRunner(model.save(tmp_path / "m.onnx"), threads=1)
    assert runner.input_names == ["image", "audio"] and runner.output_names == ["logits", "embedding"]
    xs = av_batch(batch)
    out = runner.run(xs)
    assert out["logits"].shape == (batch, 3) and out["embedding"].shape == (batch, 4)
    np.testing.assert_allclose(out["logits"], model(xs), rtol=1e-4, atol=1e-4)
    runner.close()


@pytest.mark.parametrize("change, needles", [
    (lambda x: x.pop("audio"), ["missing input 'audio'", "image, audio"]),
    (lambda x: x.update(text=np.zeros((1, 5), np.int64)), ["unexpected input 'text'"]),
    (lambda x: x.update(image=x["image"].astype(np.float64)), ["'image'", "float32", "float64"]),
    (lambda x: x.update(image=x["image"][:, 0]), ["'image'", "(batch, 1, 4, 4)", "(2, 4, 4)"]),
    (lambda x: x.update(audio=np.zeros((2, 3, 5), np.float32)), ["'audio'", "(batch, 3, 2)", "(2, 3, 5)"]),
    (lambda x: x.update(audio=x["audio"][:1]), ["batch=1", "batch=2"]),
    (lambda x: x.update(image=x["image"].tolist()), ["numpy array"]),
])
def test_runner_rejects_bad_inputs(tmp_path, change, needles):
    runner = OrtRunner(TinyModel(AV_INPUTS).save(tmp_path / "m.onnx"))
    xs = av_batch(2)
    change(xs)
    with pytest.raises(BundleError) as e:
        runner.run(xs)
    one_line(e, *needles)


def test_make_runner(tmp_path):
    dest, _, teacher = make_bundle(tmp_path)
    runner = make_runner(dest, "teacher_fp32")
    np.testing.assert_allclose(runner.run(av_batch(3))["logits"], teacher(av_batch(3)), rtol=1e-4, atol=1e-4)
    with pytest.raises(UsageError) as e:
        make_runner(load_bundle(dest), "student_int8_cpu")
    one_line(e, "student_int8_cpu", "student_fp32, teacher_fp32")
    with pytest.raises(BundleError) as e:
        make_runner(dest, backend="tensorrt")
    one_line(e, "TensorRT runner needs the tensorrt package and a GPU")
    with pytest.raises(UsageError):
        make_runner(dest, backend="tflite")


# --------------------------------------------------------------------------- predict


def test_predict_image_audio(tmp_path):
    dest, student, teacher = make_bundle(tmp_path)
    png, wav = write_png(tmp_path / "x.png"), write_wav(tmp_path / "y.wav")
    xs = {"image": pp.image_from_file(png, IMAGE_P)[None], "audio": pp.audio_from_file(wav, AUDIO_P)[None]}
    for key, model in (("student_fp32", student), ("teacher_fp32", teacher)):
        r = predict(dest, files={"image": str(png), "audio": str(wav)}, model=None if key == "student_fp32" else key)
        ref = softmax(model(xs)[0])
        assert r["model"] == key and list(r["probabilities"]) == LABELS
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-9
        np.testing.assert_allclose(list(r["probabilities"].values()), ref, atol=1e-5)
        assert r["index"] == int(ref.argmax()) and r["label"] == LABELS[r["index"]]


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "hello": 2, "edge": 3, "world": 4}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_predict_text_vector(tmp_path):
    model, tok = TinyModel(TV_INPUTS, seed=3), tokenizer()
    pre = {"text": {"kind": "text", "max_length": 5, "tokenizer_json": tok.to_str()}, "vector": VECTOR_P}
    dest = write_bundle(tmp_path / "b", name="tv", models={"student_fp32": {"role": "student", "precision": "fp32",
                                                                               "target": "any", "accuracy": None}},
                        model_files={"student_fp32": model.save(tmp_path / "m.onnx")},
                        io_spec=io_spec(TV_INPUTS), preprocess=pre, labels=LABELS)
    r = predict(dest, texts={"text": "hello edge zzz"}, vectors={"vector": [3.0, 0.0]})
    xs = {"text": np.array([[2, 3, 1, 0, 0]]), "vector": np.array([[1.0, 2.0]])}
    np.testing.assert_allclose(list(r["probabilities"].values()), softmax(model(xs)[0]), atol=1e-5)
    with pytest.raises(UsageError) as e:
        predict(dest, texts={"text": "hi"}, vectors={"vector": [1.0]})
    one_line(e, "--vector", "2 numbers")


def test_predict_errors(tmp_path):
    dest, _, _ = make_bundle(tmp_path)
    png, wav = write_png(tmp_path / "x.png"), write_wav(tmp_path / "y.wav")
    cases = [
        (dict(files={"image": str(png)}), UsageError, ["missing --audio", "takes image and audio"]),
        (dict(files={"image": str(png), "audio": str(wav), "depth": str(png)}), UsageError,
         ["unknown input --depth", "image and audio"]),
        (dict(files={"image": str(png)}, texts={"audio": "hi"}), UsageError, ["--audio is an audio input", "wav"]),
        (dict(files={"image": str(png), "audio": str(wav)}, model="student_int8"), UsageError,
         ["unknown model 'student_int8'", "student_fp32, teacher_fp32"]),
        (dict(files={"image": str(tmp_path / "no.png"), "audio": str(wav)}), UsageError, ["no.png", "no such file"]),
        (dict(files={"image": str(wav), "audio": str(wav)}), UsageError, ["--image", "png or jpg"]),
        (dict(files={"image": str(png), "audio": str(png)}), UsageError, ["--audio", "wav"]),
    ]
    for kwargs, err, needles in cases:
        with pytest.raises(err) as e:
            predict(dest, **kwargs)
        one_line(e, *needles)


def test_predict_without_torch(tmp_path):
    """The device path runs where torch cannot be imported, and pulls in no torch-importing module."""
    dest, student, _ = make_bundle(tmp_path)
    png, wav = write_png(tmp_path / "x.png"), write_wav(tmp_path / "y.wav")
    script = (
        BLOCK_TRAINING + "import json\n"  # any `import torch` (transformers, ...) now raises ImportError
        "from edgekd.runtime.predict import predict\n"
        f"r = predict({str(dest)!r}, files={{'image': {str(png)!r}, 'audio': {str(wav)!r}}})\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('edgekd'))\n"
        "print(json.dumps({'result': r, 'loaded': loaded}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["result"] == predict(dest, files={"image": str(png), "audio": str(wav)})
    assert all(m in DEVICE_MODULES or m.startswith("edgekd.runtime") for m in out["loaded"]), out["loaded"]
