"""Hostile inputs: every case must end in ONE line on stderr that names the problem and the fix, a
non-zero exit code, no traceback, and nothing half-written that looks valid.

Everything is built here from scratch (tiny hand-made ONNX models, a tiny folder dataset), so the
corpus runs in a fresh clone with no run directory and no real data. Cases go through the CLI
in-process (`edgekd.cli.main`, which owns the one-line error handling) unless they exercise the
Python API, which must raise the project's own one-line error types.
"""
from __future__ import annotations

import json
import shutil
import struct
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from test_bundle import AUDIO_P, AV_INPUTS, IMAGE_P, LABELS, TV_INPUTS, VECTOR_P, TinyModel, io_spec, tokenizer

from edgekd.errors import EdgekdError
from edgekd.runtime.bundle import add_model, load_bundle, sha256_file, write_bundle

# --------------------------------------------------------------------------- helpers


def params(table) -> list:
    """Case tables are (id, *arguments) tuples, or pytest.param for a case that carries a mark."""
    return [pytest.param(*c[1:], id=c[0]) if type(c) is tuple else c for c in table]


def assert_one_line(code: int, out: str, err: str, needles, exit_code: int = 1) -> str:
    assert "Traceback" not in out + err, err
    assert code == exit_code, f"exit {code}, expected {exit_code}: {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"not one line: {err!r}"
    line = lines[0]
    assert line.startswith("edgekd: error: "), line
    for n in needles:
        assert n.lower() in line.lower(), f"{n!r} not in {line!r}"
    return line


def api_one_line(excinfo, needles) -> str:
    assert isinstance(excinfo.value, EdgekdError), type(excinfo.value)
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip(), msg
    for n in needles:
        assert n.lower() in msg.lower(), f"{n!r} not in {msg!r}"
    return msg


def write_png(path: Path, size=(8, 8), seed=0) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8), mode="L").save(path)
    return path


def write_wav(path: Path, seed=0, width=2, rate=8000, n=400) -> Path:
    x = np.sin(2 * np.pi * (300 + 150 * seed) * np.arange(n) / 8000)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(width), w.setframerate(rate)
        if width == 2:
            w.writeframes((x * 20000).astype("<i2").tobytes())
        else:  # 24-bit PCM (read through libsndfile since the audio-formats work)
            w.writeframes(b"".join(int(v * 2**22).to_bytes(3, "little", signed=True) for v in x))
    return path


def wav_with_rate(path: Path, rate: int) -> Path:
    """A PCM wav whose header claims `rate` Hz (the wave module refuses to write 0)."""
    write_wav(path)
    data = bytearray(path.read_bytes())
    data[24:28] = struct.pack("<I", rate)
    path.write_bytes(bytes(data))
    return path


def bomb_png(path: Path) -> Path:
    """A tiny PNG whose header claims 40000 x 40000 pixels: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rehash(bundle: Path, rel: str) -> None:
    """Re-sign one file in the manifest, as an attacker (or a careless edit) that also edits the manifest."""
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    m["files"][rel] = {"sha256": sha256_file(bundle / rel), "bytes": (bundle / rel).stat().st_size}
    path.write_text(json.dumps(m))


def edit_manifest(bundle: Path, fn) -> None:
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


# --------------------------------------------------------------------------- fixtures

MODEL_META = {"role": "student", "precision": "fp32", "target": "any", "accuracy": None}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Two tiny bundles (image+audio; text+vector), a png, a wav, and the folder dataset source."""
    root = tmp_path_factory.mktemp("hostile")
    src = root / "src"
    src.mkdir()
    av = write_bundle(root / "av", name="av", models={"student_fp32": MODEL_META, "teacher_fp32": {**MODEL_META, "role": "teacher"}},
                      model_files={"student_fp32": TinyModel(AV_INPUTS).save(src / "s.onnx"),
                                   "teacher_fp32": TinyModel(AV_INPUTS, seed=1).save(src / "t.onnx")},
                      io_spec=io_spec(AV_INPUTS), preprocess={"image": IMAGE_P, "audio": AUDIO_P}, labels=LABELS)
    tv = write_bundle(root / "tv", name="tv", models={"student_fp32": MODEL_META},
                      model_files={"student_fp32": TinyModel(TV_INPUTS, seed=3).save(src / "tv.onnx")},
                      io_spec=io_spec(TV_INPUTS), labels=LABELS,
                      preprocess={"text": {"kind": "text", "max_length": 5, "tokenizer_json": tokenizer().to_str()},
                                  "vector": VECTOR_P})
    return {"av": av, "tv": tv, "png": write_png(src / "x.png"), "wav": write_wav(src / "y.wav"), "root": root}


@pytest.fixture
def av(pristine, tmp_path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(pristine["av"], dest)
    return dest


@pytest.fixture
def tv(pristine, tmp_path) -> Path:
    dest = tmp_path / "tvbundle"
    shutil.copytree(pristine["tv"], dest)
    return dest


def make_folder(folder: Path, n: int = 6) -> list[dict]:
    """A tiny valid folder dataset: png + wav + text + vector per row, classes a/b."""
    (folder / "img").mkdir(parents=True)
    (folder / "snd").mkdir()
    rows = []
    for i in range(n):
        write_png(folder / "img" / f"{i}.png", seed=i)
        write_wav(folder / "snd" / f"{i}.wav", seed=i % 2)
        rows.append({"label": "ab"[i % 2], "img": f"img/{i}.png", "snd": f"snd/{i}.wav",
                     "txt": ["red dog", "blue cat"][i % 2], "vec": [float(i), 1.0 - i % 2]})
    write_rows(folder, rows)
    return rows


def write_rows(folder: Path, rows: list[dict]) -> None:
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


FOLDER_RECIPE = """name: hostile
data:
  name: folder
  path: {path}
  modalities: {{img: image, snd: audio, txt: text, vec: vector}}
  image_size: 8
  audio: {{seconds: 0.05, n_fft: 64, hop_length: 32, n_mels: 8}}
teacher: {{hidden: 8, layers: 1, heads: 2, epochs: 1, batch_size: 4, image_patch: 4}}
student: {{name: fusion_tiny}}
"""


@pytest.fixture
def folder(tmp_path):
    """(folder, rows, recipe path) for a valid tiny folder dataset; cases break one thing."""
    path = tmp_path / "ds"
    rows = make_folder(path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(FOLDER_RECIPE.format(path=path))
    return path, rows, recipe


def test_the_fixtures_are_valid(pristine, folder, capsys, tmp_path):
    """The baseline every case breaks: it must work, or the cases below prove nothing."""
    code, out, err = cli(capsys, "predict", pristine["av"], "--image", pristine["png"], "--audio", pristine["wav"],
                         "--json")
    assert code == 0 and json.loads(out)["label"] in LABELS, err
    code, out, err = cli(capsys, "predict", pristine["tv"], "--text", "hello edge", "--vector", "1,2", "--json")
    assert code == 0 and json.loads(out)["label"] in LABELS, err
    code, out, err = cli(capsys, "data", "info", folder[2], "--json")
    assert code == 0 and json.loads(out)["modalities"]["img"]["shape"] == [1, 8, 8], err
    recipe = tmp_path / "ok.yaml"
    recipe.write_text(RECIPE_BASE)
    code, out, err = cli(capsys, "data", "info", recipe, "--data-root", tmp_path / "nodata")
    assert code == 1 and "edgekd data fetch" in err  # the avdigits base parses; only its data is absent


# --------------------------------------------------------------------------- recipes

RECIPE_BASE = "name: r\ndata: {name: avdigits}\n"
LAUGHS = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else '"ha"'] * 9) + "]\n" for i in range(9))

RECIPE_CASES = [
    ("yaml-unclosed-bracket", "name: [unclosed\ndata: {name: avdigits}\n", ["not valid YAML", "fix the syntax"]),
    ("yaml-tab-indent", "name: r\ndata:\n\tname: avdigits\n", ["not valid YAML", "fix the syntax"]),
    ("yaml-python-tag", "name: !!python/object/apply:os.system ['echo hacked']\ndata: {name: avdigits}\n",
     ["not valid YAML"]),
    ("yaml-binary-garbage", b"\x00\x01\x02name: r\x00\n", ["not valid YAML"]),
    ("yaml-non-utf8", b"name: caf\xe9\ndata: {name: avdigits}\n", ["not UTF-8", "save it as UTF-8"]),
    ("yaml-a-list", "- name\n- data\n", ["YAML mapping", "name, data"]),
    ("yaml-empty-file", "", ["YAML mapping"]),
    ("yaml-alias-bomb", LAUGHS + RECIPE_BASE + "qat: {exclude: *l8}\n", ["recipe.qat.exclude", "string"]),
    ("unknown-top-level-key", RECIPE_BASE + "distil: {epochs: 2}\n", ["unknown key 'distil'", "did you mean 'distill'"]),
    ("unknown-nested-key", RECIPE_BASE + "distill: {temprature: 3}\n", ["recipe.distill.temprature", "'temperature'"]),
    ("unknown-data-key", "name: r\ndata: {name: avdigits, test_speaker: [theo]}\n", ["'test_speakers'"]),
    ("wrong-type-int", RECIPE_BASE + "distill: {epochs: many}\n", ["recipe.distill.epochs", "integer", "'many'"]),
    ("wrong-type-section", RECIPE_BASE + "teacher: big\n", ["recipe.teacher", "dictionary"]),
    ("wrong-type-list", RECIPE_BASE + "bench: {batches: 8}\n", ["recipe.bench.batches", "list"]),
    ("negative-batch-size", RECIPE_BASE + "distill: {batch_size: -4}\n", ["recipe.distill.batch_size", "greater than or equal to 1"]),
    ("zero-hidden", RECIPE_BASE + "teacher: {hidden: 0}\n", ["recipe.teacher.hidden", "greater than 0"]),
    ("zero-epochs", RECIPE_BASE + "qat: {epochs: 0}\n", ["recipe.qat.epochs"]),
    ("zero-bench-batch", RECIPE_BASE + "bench: {batches: [1, 0]}\n", ["recipe.bench.batches", ">= 1"]),
    ("negative-seconds", "name: r\ndata: {name: avdigits, audio: {seconds: -1}}\n", ["recipe.data.audio.seconds"]),
    ("zero-image-size", "name: r\ndata: {name: folder, path: x, modalities: {a: image}, image_size: 0}\n",
     ["recipe.data.image_size"]),
    ("nan-learning-rate", RECIPE_BASE + "distill: {lr: .nan}\n", ["recipe.distill.lr"]),
    ("infinite-temperature", RECIPE_BASE + "distill: {temperature: .inf}\n", ["recipe.distill.temperature", "finite"]),
    ("negative-seed", "name: r\nseed: -1\ndata: {name: avdigits}\n", ["recipe.seed", "greater than or equal to 0"]),
    ("huge-seed", "name: r\nseed: 1180591620717411303424\ndata: {name: avdigits}\n", ["recipe.seed", "less than"]),
    ("missing-name", "data: {name: avdigits}\n", ["recipe.name", "missing", "add this field"]),
    ("missing-data", "name: r\n", ["recipe.data", "missing", "add this field"]),
    ("missing-dataset-name", "name: r\ndata: {path: x}\n", ["recipe.data.name", "missing", "avdigits or folder"]),
    ("name-escapes-runs", "name: ../../etc\ndata: {name: avdigits}\n", ["recipe.name", "plain name"]),
    ("unknown-dataset", "name: r\ndata: {name: imagenet}\n", ["unknown dataset 'imagenet'", "set data.name to avdigits or folder"]),
    ("bad-literal", RECIPE_BASE + "student: {fusion: gatd}\n", ["recipe.student.fusion", "did you mean 'gated'"]),
    ("unknown-student", RECIPE_BASE + "student: {name: fusoin_tiny}\n", ["did you mean 'fusion_tiny'"]),
    ("unknown-modality", RECIPE_BASE + "student: {modalities: [audo]}\n", ["did you mean 'audio'"]),
    ("fraction-out-of-range", "name: r\ndata: {name: folder, path: x, modalities: {a: image}, test_fraction: 1.5}\n",
     ["recipe.data.test_fraction"]),
]


@pytest.mark.parametrize("text, needles", params(RECIPE_CASES))
def test_bad_recipe(tmp_path, capsys, text, needles):
    recipe = tmp_path / "bad.yaml"
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, out, err = cli(capsys, "teacher", recipe, "--run-dir", tmp_path / "run", "-q")
    assert_one_line(code, out, err, needles)
    assert not (tmp_path / "run").exists()  # nothing created for a recipe that does not validate


SET_CASES = [
    ("set-without-equals", ["distill.epochs"], ["KEY=VALUE"]),
    ("set-into-a-value", ["name.first=1"], ["'name' is not a section", "--set name=VALUE"]),
    ("set-unknown-key", ["distill.epoch=3"], ["recipe.distill.epoch", "did you mean 'epochs'"]),
    ("set-wrong-type", ["distill.epochs=abc"], ["recipe.distill.epochs", "integer"]),
]


@pytest.mark.parametrize("sets, needles", params(SET_CASES))
def test_bad_set_override(tmp_path, capsys, sets, needles):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text(RECIPE_BASE)
    args = [a for s in sets for a in ("--set", s)]
    code, out, err = cli(capsys, "teacher", recipe, "--run-dir", tmp_path / "run", *args)
    assert_one_line(code, out, err, needles)
    assert not (tmp_path / "run").exists()


def test_recipe_path_is_a_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, out, err = cli(capsys, "teacher", tmp_path)
    assert_one_line(code, out, err, ["not a run directory", "pass a recipe YAML"], exit_code=2)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_recipe_file_missing(tmp_path, capsys):
    code, out, err = cli(capsys, "run", tmp_path / "nope.yaml", "--run-dir", tmp_path / "run")
    assert_one_line(code, out, err, ["not found", "recipes/avdigits.yaml"])
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- folder datasets


def _rows(fn):
    def change(folder: Path, rows: list[dict], recipe: Path):
        fn(rows)
        write_rows(folder, rows)
    return change


def _recipe(old: str, new: str):
    def change(folder, rows, recipe: Path):
        recipe.write_text(recipe.read_text().replace(old, new))
    return change


def _file(rel: str, fn):
    def change(folder: Path, rows, recipe):
        fn(folder / rel)
    return change


def _meta_bytes(data: bytes, name="metadata.jsonl"):
    def change(folder: Path, rows, recipe):
        (folder / "metadata.jsonl").unlink()
        (folder / name).write_bytes(data)
    return change


def _outside_meta(folder: Path, rows, recipe: Path):
    write_rows(folder.parent, rows)  # a valid metadata file beside, not inside, the dataset
    recipe.write_text(recipe.read_text().replace("  image_size: 8", "  image_size: 8\n  metadata: ../metadata.jsonl"))


def _absolute_meta(folder: Path, rows, recipe: Path):
    write_rows(folder.parent, rows)
    recipe.write_text(recipe.read_text().replace("  image_size: 8", f"  image_size: 8\n  metadata: {folder.parent / 'metadata.jsonl'}"))


def _symlink_out(folder: Path, rows, recipe):
    outside = write_png(folder.parent / "secret.png")
    (folder / "img" / "link.png").symlink_to(outside)
    rows[1]["img"] = "img/link.png"
    write_rows(folder, rows)


def _set(i, col, value):
    return _rows(lambda rows: rows[i].__setitem__(col, value))


def _ragged(rows):
    rows[2]["vec"] = [1.0, 2.0, 3.0]


FOLDER_CASES = [
    ("folder-missing", _recipe("path: ", "path: /nonexistent/edgekd/"), ["not found", "fix data.path"]),
    ("metadata-missing", _file("metadata.jsonl", Path.unlink), ["no metadata.jsonl or metadata.csv", "add a metadata file"]),
    ("metadata-unknown-format", _recipe("  image_size: 8", "  image_size: 8\n  metadata: img/0.png"),
     ["unknown format", ".jsonl, .csv or .parquet"]),
    ("metadata-escapes-folder", _outside_meta, ["metadata", "inside the dataset folder"]),
    ("metadata-absolute-path", _absolute_meta, ["metadata", "inside the dataset folder"]),
    ("metadata-non-utf8", _meta_bytes(b'{"label": "caf\xe9"}\n'), ["line 1", "not valid UTF-8", "save the file as UTF-8"]),
    ("metadata-bad-json-line", _meta_bytes(b'{"label": "a"\n'), ["line 1", "not valid JSON", "one JSON object per line"]),
    ("metadata-json-array-line", _meta_bytes(b'["a", "img/0.png"]\n'), ["line 1", "not an object"]),
    ("metadata-empty", _meta_bytes(b"\n\n"), ["has no rows", "one row per sample"]),
    ("csv-extra-fields", _meta_bytes(b"label,img,snd,txt,vec\na,img/0.png,snd/0.wav,red,\"[1,2]\",surplus\n",
                                     "metadata.csv"), ["line 2", "more fields than the header", "quote"]),
    ("csv-non-utf8", _meta_bytes(b"label,img\n\xff\xfe,img/0.png\n", "metadata.csv"), ["line 2", "UTF-8"]),
    ("label-column-missing", _recipe("  image_size: 8", "  image_size: 8\n  label: lable"),
     ["no column 'lable'", "did you mean 'label'"]),
    ("modality-column-missing", _recipe("vec: vector", "vecs: vector"), ["no column 'vecs'", "did you mean 'vec'"]),
    ("label-also-a-modality", _recipe("vec: vector", "vec: vector, label: text"), ["both a modality and the label"]),
    ("label-value-missing", _set(3, "label", None), ["row 4", "label", "give every row a label"]),
    ("label-value-a-list", _set(3, "label", ["a"]), ["row 4", "label"]),
    ("split-value-bogus", _rows(lambda rows: [r.__setitem__("split", "train") for r in rows] and rows[0].__setitem__("split", "testing")),
     ["row 1", "'testing'", "train, val or test"]),
    ("path-dotdot", _set(0, "img", "../ds/img/0.png"), ["row 1", "leaves the dataset folder", "without '..'"]),
    ("path-absolute", _set(0, "img", "/etc/hostname"), ["row 1", "absolute", "relative to the dataset folder"]),
    ("path-windows-absolute", _set(0, "snd", "C:\\Windows\\win.ini"), ["row 1", "absolute"]),
    ("path-symlink-out", _symlink_out, ["row 2", "outside the dataset folder", "copy the file"]),
    ("path-not-a-string", _set(0, "img", 42), ["row 1", "needs a file path"]),
    ("path-is-a-directory", _set(0, "img", "img"), ["row 1", "not found", "fix the row"]),
    ("wav-missing", _file("snd/1.wav", Path.unlink), ["row 2", "snd/1.wav", "not found"]),
    ("wav-corrupt", _file("snd/1.wav", lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 10)),
     ["row 2", "not a readable audio file", "replace or remove it"]),
    ("wav-empty-file", _file("snd/2.wav", lambda p: p.write_bytes(b"")), ["row 3", "not a readable audio file"]),
    ("wav-truncated-header", _file("snd/2.wav", lambda p: p.write_bytes(p.read_bytes()[:30])),
     ["row 3", "not a readable audio file"]),
    ("wav-zero-sample-rate", _file("snd/0.wav", lambda p: wav_with_rate(p, 0)), ["row 1", "sample rate"]),
    ("png-corrupt", _file("img/4.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\nnot really")),
     ["row 5", "not a readable image", "replace or remove it"]),
    ("png-truncated", _file("img/4.png", lambda p: p.write_bytes(p.read_bytes()[:60])), ["row 5", "not a readable image"]),
    ("png-decompression-bomb", _file("img/5.png", bomb_png), ["row 6", "not a readable image"]),
    ("vector-ragged", _rows(_ragged), ["row 3", "3 numbers", "same length"]),
    ("vector-nan", _set(1, "vec", "[NaN, 1]"), ["row 2", "finite numbers"]),
    ("vector-not-a-list", _set(1, "vec", {"x": 1}), ["row 2", "list of finite numbers"]),
    ("text-not-a-string", _set(1, "txt", {"x": 1}), ["row 2", "must be a string"]),
]


@pytest.mark.parametrize("change, needles", params(FOLDER_CASES))
def test_bad_folder_dataset(folder, capsys, change, needles):
    path, rows, recipe = folder
    change(path, rows, recipe)
    before = snapshot(path)
    code, out, err = cli(capsys, "data", "info", recipe)
    assert_one_line(code, out, err, needles)
    assert snapshot(path) == before  # the reader never writes into the user's folder


# --------------------------------------------------------------------------- checkpoints and model directories


def _teacher_dir(tmp_path: Path) -> Path:
    """A real (tiny) saved model directory, corrupted by each case."""
    import torch

    from edgekd.data.base import ModalitySpec
    from edgekd.models import create_model
    from edgekd.models.io import save_model

    mods = {"vec": ModalitySpec("vec", "vector", (2,))}
    torch.manual_seed(0)
    model = create_model("fusion_tiny", "student", modalities=mods, num_classes=2)
    save_model(model, tmp_path / "model", role="student", name="fusion_tiny", options={}, modalities=mods,
               classes=["a", "b"])
    return tmp_path / "model"


def _torch_pickle(path: Path):
    import torch

    torch.save({"x": torch.zeros(2)}, path)  # a pickle in safetensors clothing


CHECKPOINT_CASES = [
    ("not-a-directory", lambda d: (shutil.rmtree(d), d.write_text("x")), ["not an edgekd model directory", "model.safetensors"]),
    ("empty-directory", lambda d: [p.unlink() for p in d.iterdir()], ["not an edgekd model directory"]),
    ("weights-truncated", lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
     ["not a readable safetensors file", "re-create it"]),
    ("weights-are-a-pickle", lambda d: _torch_pickle(d / "model.safetensors"), ["not a readable safetensors file"]),
    ("weights-empty-file", lambda d: (d / "model.safetensors").write_bytes(b""), ["not a readable safetensors file"]),
    ("config-corrupt", lambda d: (d / "config.json").write_text("{not json"), ["not an edgekd model config"]),
    ("config-non-utf8", lambda d: (d / "config.json").write_bytes(b'{"format": "\xff"}'), ["not an edgekd model config"]),
    ("config-wrong-format", lambda d: (d / "config.json").write_text('{"format": "hf"}'), ["not an edgekd model config"]),
    ("config-unknown-model", lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"fusion_tiny"', '"fusion_huge"')), ["cannot rebuild", "re-create"]),
    ("config-bad-options", lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"options": {}', '"options": {"colour": "blue"}')), ["cannot rebuild", "colour"]),
    ("weights-do-not-match-config", lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"shape": [\n        2\n      ]', '"shape": [\n        3\n      ]')),
     ["does not match", "re-create"]),
]


@pytest.mark.parametrize("corrupt, needles", params(CHECKPOINT_CASES))
def test_bad_model_directory_python_api(tmp_path, corrupt, needles):
    from edgekd.models.io import load_model_dir

    d = _teacher_dir(tmp_path)
    corrupt(d)
    with pytest.raises(EdgekdError) as e:
        load_model_dir(d)
    api_one_line(e, needles)


def test_teacher_checkpoint_that_is_not_a_model_directory_cli(folder, capsys, tmp_path):
    path, _, recipe = folder
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hi")
    code, out, err = cli(capsys, "teacher", recipe, "--run-dir", tmp_path / "run", "-q",
                         "--set", f"teacher.checkpoint={tmp_path / 'notamodel'}")
    assert_one_line(code, out, err, ["not an edgekd model directory", "model.safetensors"])
    assert not (tmp_path / "run").exists()  # refused before any stage began: nothing left on disk


def test_teacher_checkpoint_truncated_cli(folder, capsys, tmp_path):
    _, _, recipe = folder
    d = _teacher_dir(tmp_path)
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:64])
    code, out, err = cli(capsys, "teacher", recipe, "--run-dir", tmp_path / "run", "-q",
                         "--set", f"teacher.checkpoint={d}")
    assert_one_line(code, out, err, ["not a readable safetensors file"])
    assert not (tmp_path / "run").exists()  # refused before any stage began: nothing left on disk


def test_pretrained_encoder_directory_that_is_not_one_cli(folder, capsys, tmp_path):
    _, _, recipe = folder
    (tmp_path / "hf").mkdir()
    code, out, err = cli(capsys, "teacher", recipe, "--run-dir", tmp_path / "run", "-q",
                         "--set", f"teacher.encoders={{img: {{pretrained: {tmp_path / 'hf'}}}}}")
    assert_one_line(code, out, err, ["recipe.teacher.encoders.img.pretrained", "not a Hugging Face model directory",
                                     "save_pretrained"])
    assert not (tmp_path / "run").exists()  # refused before any stage began: nothing left on disk


@pytest.mark.parametrize("corrupt", ["truncated", "pickled-code", "empty"])
def test_bad_epoch_checkpoint(tmp_path, corrupt):
    """--resume reads the epoch checkpoint with weights_only=True: a pickle with code never runs."""
    import pickle

    import torch

    from edgekd.distill.trainer import load_checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "model": {"w": torch.zeros(3)}}, path)
    if corrupt == "truncated":
        path.write_bytes(path.read_bytes()[:50])
    elif corrupt == "empty":
        path.write_bytes(b"")
    else:
        marker = tmp_path / "pwned"

        class Evil:
            def __reduce__(self):
                return (Path.touch, (marker,))

        with open(path, "wb") as f:
            pickle.dump({"epoch": Evil()}, f, protocol=2)
    with pytest.raises(EdgekdError) as e:
        load_checkpoint(path)
    api_one_line(e, ["checkpoint", "unreadable", "without --resume"])
    if corrupt == "pickled-code":
        assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- bundles


def _tamper_same_size(b: Path):
    data = bytearray((b / "student.fp32.onnx").read_bytes())
    data[-1] ^= 1
    (b / "student.fp32.onnx").write_bytes(bytes(data))


BUNDLE_CASES = [
    ("model-tampered-same-size", _tamper_same_size, ["student.fp32.onnx", "sha256", "edgekd export"]),
    ("model-truncated", lambda b: (b / "student.fp32.onnx").write_bytes((b / "student.fp32.onnx").read_bytes()[:40]),
     ["student.fp32.onnx", "changed since export", "size"]),
    ("labels-tampered", lambda b: (b / "labels.json").write_text('["cat", "dog", "wolf"]'), ["labels.json", "changed"]),
    ("file-missing", lambda b: (b / "teacher.fp32.onnx").unlink(), ["teacher.fp32.onnx", "missing", "copy the whole bundle"]),
    ("unlisted-model-file", lambda b: shutil.copy(b / "student.fp32.onnx", b / "extra.onnx"),
     ["extra.onnx", "does not list", "remove it"]),
    ("manifest-missing", lambda b: (b / "manifest.json").unlink(), ["no manifest.json", "edgekd export"]),
    ("manifest-not-json", lambda b: (b / "manifest.json").write_text("{nope"), ["manifest.json", "unreadable"]),
    ("manifest-non-utf8", lambda b: (b / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}'), ["manifest.json", "unreadable"]),
    ("manifest-a-list", lambda b: (b / "manifest.json").write_text("[1, 2]"), ["manifest.json", "corrupt"]),
    ("manifest-wrong-format", lambda b: edit_manifest(b, lambda m: m.update(format="onnx.zip")), ["expected 'edgekd.bundle'"]),
    ("manifest-future-version", lambda b: edit_manifest(b, lambda m: m.update(version=99)), ["version 99", "edgekd export"]),
    ("manifest-no-files", lambda b: edit_manifest(b, lambda m: m.pop("files")), ["corrupt", "'files'"]),
    ("manifest-path-dotdot", lambda b: edit_manifest(b, lambda m: m["files"].update({"../x.onnx": {"sha256": "0", "bytes": 1}})),
     ["'../x.onnx'", "leaves the bundle"]),
    ("manifest-path-absolute", lambda b: edit_manifest(b, lambda m: m["files"].update({"/etc/passwd": {"sha256": "0", "bytes": 1}})),
     ["'/etc/passwd'", "leaves the bundle"]),
    ("manifest-entry-not-an-object", lambda b: edit_manifest(b, lambda m: m["files"].update({"labels.json": "abc"})),
     ["labels.json", "sha256"]),
    ("manifest-bytes-a-string", lambda b: edit_manifest(b, lambda m: m["files"]["labels.json"].update(bytes="12")),
     ["labels.json", "bytes"]),
    ("manifest-model-file-unlisted", lambda b: edit_manifest(b, lambda m: m["models"]["student_fp32"].update(file="x.onnx")),
     ["student_fp32", "does not list"]),
    ("manifest-default-unknown", lambda b: edit_manifest(b, lambda m: m.update(default_model="nope")), ["default_model 'nope'"]),
    ("manifest-meta-unlisted", lambda b: edit_manifest(b, lambda m: m["files"].pop("io_spec.json")), ["io_spec.json is not listed"]),
    ("labels-not-strings-resigned", lambda b: ((b / "labels.json").write_text("[1, 2, 3]"), rehash(b, "labels.json")),
     ["labels.json", "list of strings"]),
    ("io-spec-not-json-resigned", lambda b: ((b / "io_spec.json").write_text("{"), rehash(b, "io_spec.json")),
     ["io_spec.json", "not valid JSON"]),
    ("preprocess-missing-key-resigned", lambda b: ((b / "preprocess.json").write_text(json.dumps(
        {"image": {k: v for k, v in IMAGE_P.items() if k != "size"}, "audio": AUDIO_P})), rehash(b, "preprocess.json")),
     ["preprocess.json lacks 'size'", "image"]),
    ("preprocess-unknown-kind-resigned", lambda b: ((b / "preprocess.json").write_text(json.dumps(
        {"image": {**IMAGE_P, "kind": "video"}, "audio": AUDIO_P})), rehash(b, "preprocess.json")),
     ["kind 'video'", "image, audio, text or vector"]),
    ("preprocess-not-an-object-resigned", lambda b: ((b / "preprocess.json").write_text("[1]"), rehash(b, "preprocess.json")),
     ["preprocess.json", "object"]),
    ("onnx-corrupt-resigned", lambda b: ((b / "student.fp32.onnx").write_bytes(b"\x08\x07garbage-not-onnx"),
                                         rehash(b, "student.fp32.onnx")),
     ["onnxruntime cannot load student.fp32.onnx", "re-export"]),
    ("onnx-truncated-resigned", lambda b: ((b / "student.fp32.onnx").write_bytes((b / "student.fp32.onnx").read_bytes()[:200]),
                                           rehash(b, "student.fp32.onnx")),
     ["onnxruntime cannot load student.fp32.onnx"]),
    ("onnx-is-the-wrong-model-resigned", lambda b: (TinyModel(TV_INPUTS).save(b / "student.fp32.onnx"),
                                                     rehash(b, "student.fp32.onnx")),
     ["missing --text", "takes text and vector"]),
]


@pytest.mark.parametrize("tamper, needles", params(BUNDLE_CASES))
def test_bad_bundle_at_predict(av, pristine, capsys, tamper, needles):
    tamper(av)
    before = snapshot(av)
    code, out, err = cli(capsys, "predict", av, "--image", pristine["png"], "--audio", pristine["wav"])
    exit_code = 2 if needles[0].startswith("missing --") else 1
    assert_one_line(code, out, err, needles, exit_code=exit_code)
    assert snapshot(av) == before


def test_bundle_path_missing(tmp_path, capsys, pristine):
    code, out, err = cli(capsys, "predict", tmp_path / "nowhere", "--image", pristine["png"])
    assert_one_line(code, out, err, ["no bundle at", "edgekd export"])


def test_bundle_path_is_a_file(tmp_path, capsys, pristine):
    code, out, err = cli(capsys, "predict", pristine["png"], "--image", pristine["png"])
    assert_one_line(code, out, err, ["no bundle at"])


def test_tampered_bundle_is_not_extended_by_build(av, capsys):
    _tamper_same_size(av)
    before = snapshot(av)
    code, out, err = cli(capsys, "build", av, "--target", "x86-gpu", "--model", "student_fp32")
    assert_one_line(code, out, err, ["sha256", "edgekd export"])
    assert snapshot(av) == before and not (av.parent / "bundle.build").exists()


# --------------------------------------------------------------------------- ONNX files and the lint


@pytest.mark.parametrize("content", ["truncated", "garbage", "empty"])
def test_corrupt_onnx_at_lint(tmp_path, content):
    from edgekd.trt.lint import lint_onnx

    good = TinyModel(AV_INPUTS).save(tmp_path / "m.onnx").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes({"truncated": good[: len(good) // 2], "garbage": b"\xff" * 64, "empty": b""}[content])
    with pytest.raises(EdgekdError) as e:
        report = lint_onnx(bad)
        from edgekd.trt.lint import check

        check(report)
    api_one_line(e, ["TensorRT lint", "bad.onnx", "export"])


def test_corrupt_onnx_resigned_at_build(av, capsys):
    (av / "student.fp32.onnx").write_bytes(b"\x08\x07garbage-not-onnx")
    rehash(av, "student.fp32.onnx")
    before = snapshot(av)
    code, out, err = cli(capsys, "build", av, "--target", "x86-gpu", "--model", "student_fp32")
    assert_one_line(code, out, err, ["cannot read ONNX model", "student.fp32.onnx", "re-run the export"])
    assert snapshot(av) == before


# --------------------------------------------------------------------------- TensorRT engine files


@pytest.fixture
def with_engine(av, tmp_path):
    """The bundle plus a (fake) engine entry, as `edgekd build` would add it on a device."""
    engine = tmp_path / "fake.engine"
    engine.write_bytes(b"ftrt" + bytes(range(256)) * 4)
    build = tmp_path / "build.json"
    build.write_text(json.dumps({"tensorrt_version": "10.0.0", "device": "none", "compute_capability": "0.0"}))
    meta = {"role": "student", "precision": "fp32", "target": "tensorrt", "backend": "tensorrt",
            "source": "student_fp32", "build": "student.fp32-x86-gpu.build.json", "accuracy": None}
    add_model(av, "student_fp32_x86-gpu", engine, meta, extra_files={meta["build"]: build})
    assert load_bundle(av).models["student_fp32_x86-gpu"]["file"] == "student.fp32-x86-gpu.engine"
    return av


ENGINE_CASES = [
    ("engine-truncated", lambda b: (b / "student.fp32-x86-gpu.engine").write_bytes(b"ftrt"),
     ["student.fp32-x86-gpu.engine", "changed since export"]),
    ("engine-tampered", lambda b: (b / "student.fp32-x86-gpu.engine").write_bytes(b"xxxx" + bytes(range(256)) * 4),
     ["student.fp32-x86-gpu.engine", "sha256"]),
    ("engine-unlisted", lambda b: shutil.copy(b / "student.fp32-x86-gpu.engine", b / "other.plan"),
     ["other.plan", "does not list"]),
    ("engine-corrupt-resigned", lambda b: ((b / "student.fp32-x86-gpu.engine").write_bytes(b"garbage"),
                                           rehash(b, "student.fp32-x86-gpu.engine")),
     ["TensorRT"]),  # no TensorRT here: "needs the tensorrt package"; on a GPU: "cannot load"
    ("engine-build-json-corrupt-resigned", lambda b: ((b / "student.fp32-x86-gpu.build.json").write_text("{"),
                                                      rehash(b, "student.fp32-x86-gpu.build.json")),
     ["TensorRT"]),
]


@pytest.mark.parametrize("tamper, needles", params(ENGINE_CASES))
def test_bad_engine_at_predict(with_engine, pristine, capsys, tamper, needles):
    tamper(with_engine)
    before = snapshot(with_engine)
    code, out, err = cli(capsys, "predict", with_engine, "--image", pristine["png"], "--audio", pristine["wav"],
                         "--backend", "tensorrt")
    assert_one_line(code, out, err, needles)
    assert snapshot(with_engine) == before


def test_corrupt_engine_build_json_python_api(with_engine):
    from edgekd.runtime.trt_runner import _build_json

    (with_engine / "student.fp32-x86-gpu.build.json").write_text("{not json")
    rehash(with_engine, "student.fp32-x86-gpu.build.json")
    with pytest.raises(EdgekdError) as e:
        _build_json(load_bundle(with_engine), "student_fp32_x86-gpu")
    api_one_line(e, ["build.json", "not valid JSON", "edgekd build"])


def test_engine_build_info_outside_the_manifest_python_api(with_engine):
    from edgekd.runtime.trt_runner import _build_json

    edit_manifest(with_engine, lambda m: m["models"]["student_fp32_x86-gpu"].update(build="../../etc/passwd"))
    with pytest.raises(EdgekdError) as e:
        _build_json(load_bundle(with_engine), "student_fp32_x86-gpu")
    api_one_line(e, ["'../../etc/passwd'", "does not list", "edgekd build"])


# --------------------------------------------------------------------------- predict inputs (CLI)


def _p(key):
    return lambda pr, tmp: pr[key]


def _bytes(name: str, data):
    """A file `name` in tmp with `data` (bytes, or a function of the fixtures giving them)."""
    def make(pr, tmp):
        (tmp / name).write_bytes(data(pr) if callable(data) else data)
        return tmp / name
    return make


PREDICT_AV_CASES = [
    ("missing-audio", ["--image", _p("png")], ["missing --audio", "image and audio"], 2),
    ("image-file-missing", ["--image", lambda pr, tmp: tmp / "nope.png", "--audio", _p("wav")], ["nope.png", "no such file"], 2),
    ("image-is-a-wav", ["--image", _p("wav"), "--audio", _p("wav")], ["--image", "not a readable png or jpg", "give a valid file"], 2),
    ("image-empty-file", ["--image", _bytes("e.png", b""), "--audio", _p("wav")],
     ["--image", "not a readable png or jpg"], 2),
    ("image-decompression-bomb", ["--image", lambda pr, tmp: bomb_png(tmp / "bomb.png"), "--audio", _p("wav")],
     ["--image", "not a readable png or jpg"], 2),
    ("image-is-a-directory", ["--image", lambda pr, tmp: tmp, "--audio", _p("wav")], ["--image", "no such file"], 2),
    ("audio-is-a-png", ["--image", _p("png"), "--audio", _p("png")], ["--audio", "not a readable audio file"], 2),
    ("audio-zero-sample-rate", ["--image", _p("png"), "--audio", lambda pr, tmp: wav_with_rate(tmp / "z.wav", 0)],
     ["--audio", "sample rate"], 2),
    ("audio-truncated", ["--image", _p("png"), "--audio", _bytes("t.wav", lambda pr: pr["wav"].read_bytes()[:20])],
     ["--audio", "not a readable audio file"], 2),
    ("text-on-an-av-bundle", ["--image", _p("png"), "--audio", _p("wav"), "--text", "hi"], ["no text inputs", "--input NAME=VALUE"], 2),
    ("input-without-equals", ["--input", "image"], ["--input 'image'", "NAME=VALUE"], 2),
    ("input-unknown-name", ["--image", _p("png"), "--audio", _p("wav"), "--input", "depth=x.png"],
     ["unknown input --depth", "image and audio"], 2),
    ("unknown-model", ["--image", _p("png"), "--audio", _p("wav"), "--model", "student_int9"],
     ["unknown model 'student_int9'", "student_fp32"], 2),
    ("unknown-backend", ["--image", _p("png"), "--audio", _p("wav"), "--backend", "tflite"],
     ["unknown backend 'tflite'", "onnxruntime"], 2),
]


@pytest.mark.parametrize("args, needles, exit_code", params(PREDICT_AV_CASES))
def test_bad_predict_input_cli(pristine, tmp_path, capsys, args, needles, exit_code):
    args = [a(pristine, tmp_path) if callable(a) else a for a in args]
    code, out, err = cli(capsys, "predict", pristine["av"], *args)
    assert_one_line(code, out, err, needles, exit_code=exit_code)


PREDICT_TV_CASES = [
    ("vector-not-numbers", ["--text", "hi", "--vector", "abc"], ["--vector", "comma-separated numbers"]),
    ("vector-wrong-length", ["--text", "hi", "--vector", "1"], ["--vector", "2 numbers"]),
    ("vector-nan", ["--text", "hi", "--vector", "nan,1"], ["--vector", "finite"]),
    ("vector-infinite", ["--text", "hi", "--vector", "1,inf"], ["--vector", "finite"]),
    ("text-missing", ["--vector", "1,2"], ["missing --text"]),
    ("image-on-a-tv-bundle", ["--text", "hi", "--vector", "1,2", "--image", "x.png"], ["no image inputs"]),
]


@pytest.mark.parametrize("args, needles", params(PREDICT_TV_CASES))
def test_bad_predict_input_text_vector_cli(pristine, capsys, args, needles):
    code, out, err = cli(capsys, "predict", pristine["tv"], *args)
    assert_one_line(code, out, err, needles, exit_code=2)


def test_corrupt_tokenizer_resigned(tv, capsys):
    (tv / "tokenizer" / "text.json").write_text('{"version": "1.0", "model": 5}')
    rehash(tv, "tokenizer/text.json")
    code, out, err = cli(capsys, "predict", tv, "--text", "hi", "--vector", "1,2")
    assert_one_line(code, out, err, ["tokenizer/text.json", "not a tokenizer", "edgekd export"])


# --------------------------------------------------------------------------- predict and the runner (Python API)


def _run(runner_change):
    def call(bundle):
        from edgekd.runtime.runner import make_runner

        runner = make_runner(bundle)
        rng = np.random.default_rng(0)
        xs = {"image": rng.normal(size=(2, 1, 4, 4)).astype(np.float32),
              "audio": rng.normal(size=(2, 3, 2)).astype(np.float32)}
        runner_change(xs)
        try:
            return runner.run(xs)
        finally:
            runner.close()
    return call


def _predict(**kwargs):
    def call(bundle):
        from edgekd.runtime.predict import predict

        return predict(bundle, **kwargs)
    return call


API_CASES = [
    ("run-wrong-dtype", _run(lambda x: x.update(image=x["image"].astype(np.float64))), ["'image'", "float32", "float64"]),
    ("run-int-dtype", _run(lambda x: x.update(audio=x["audio"].astype(np.int64))), ["'audio'", "float32", "int64"]),
    ("run-wrong-rank", _run(lambda x: x.update(image=x["image"][:, 0])), ["'image'", "(batch, 1, 4, 4)", "(2, 4, 4)"]),
    ("run-wrong-size", _run(lambda x: x.update(audio=np.zeros((2, 3, 5), np.float32))), ["'audio'", "(batch, 3, 2)"]),
    ("run-batch-mismatch", _run(lambda x: x.update(audio=x["audio"][:1])), ["batch=1", "batch=2", "same batch"]),
    ("run-a-list", _run(lambda x: x.update(image=x["image"].tolist())), ["numpy array"]),
    ("run-missing-input", _run(lambda x: x.pop("audio")), ["missing input 'audio'"]),
    ("run-extra-input", _run(lambda x: x.update(depth=np.zeros((2, 1), np.float32))), ["unexpected input 'depth'"]),
    ("predict-path-not-a-string", _predict(files={"image": 42, "audio": 42}), ["--image", "file path"]),
    ("predict-vector-for-a-file", _predict(vectors={"image": [1.0]}), ["--image is an image input", "png/jpg"]),
    ("predict-unknown-backend", _predict(files={}, backend="tflite"), ["unknown backend 'tflite'"]),
    ("predict-unknown-model", _predict(model="nope"), ["unknown model 'nope'"]),
]


@pytest.mark.parametrize("call, needles", params(API_CASES))
def test_bad_input_python_api(pristine, call, needles):
    with pytest.raises(EdgekdError) as e:
        call(pristine["av"])
    api_one_line(e, needles)


TV_API_CASES = [
    ("vector-wrong-shape", dict(texts={"text": "hi"}, vectors={"vector": [[1.0, 2.0], [3.0, 4.0]]}), ["--vector", "2 numbers"]),
    ("vector-a-string", dict(texts={"text": "hi"}, vectors={"vector": "abc"}), ["--vector", "give a list of numbers"]),
    ("vector-nan", dict(texts={"text": "hi"}, vectors={"vector": [float("nan"), 1.0]}), ["--vector", "finite"]),
    ("text-for-a-vector", dict(texts={"text": "hi", "vector": "1,2"}), ["--vector is a vector input", "list of numbers"]),
]


@pytest.mark.parametrize("kwargs, needles", params(TV_API_CASES))
def test_bad_text_vector_input_python_api(pristine, kwargs, needles):
    from edgekd.runtime.predict import predict

    with pytest.raises(EdgekdError) as e:
        predict(pristine["tv"], **kwargs)
    api_one_line(e, needles)


# --------------------------------------------------------------------------- other CLI arguments


def _bench(*extra):
    return lambda pr, tmp: ["bench", pr["av"], "--out", tmp / "out", "--min-seconds", "0.05", "--max-seconds", "0.1",
                            *extra]


BUDGET = "budgets:\n  - {name: a, model: m, backend: onnxruntime-cpu, batch: 1, metric: p50_ms, max: 1}\n"


def _gate_files(tmp: Path, bench_text: str | None = '{"results": []}', budget_text: str | None = BUDGET):
    if bench_text is not None:
        (tmp / "bench.json").write_text(bench_text)
    if budget_text is not None:
        (tmp / "budget.yaml").write_text(budget_text)
    return ["gate", tmp / "bench.json", "--budget", tmp / "budget.yaml"]


CLI_CASES = [
    ("bench-batch-zero", _bench("--batch", "0"), ["batch sizes must be positive", "[0]"], 2),
    ("bench-batch-negative", _bench("--batch", "1,-8"), ["batch sizes must be positive"], 2),
    ("bench-batch-not-a-number", _bench("--batch", "1,abc"), ["--batch '1,abc'", "comma-separated list"], 2),
    ("bench-batch-fraction", _bench("--batch", "1.5"), ["--batch '1.5'", "comma-separated"], 2),
    ("bench-unknown-backend", _bench("--backends", "tflite"), ["unknown backend 'tflite'"], 2),
    ("bench-unknown-model", _bench("--models", "student_int9"), ["student_int9", "student_fp32"], 2),
    ("bench-source-missing", lambda pr, tmp: ["bench", tmp / "nowhere", "--out", tmp / "out"],
     ["neither a run directory nor a bundle"], 2),
    ("bench-source-tampered", lambda pr, tmp: (_tamper_same_size(shutil.copytree(pr["av"], tmp / "b")) and None)
     or ["bench", tmp / "b", "--out", tmp / "out"], ["sha256", "edgekd export"], 1),
    ("gate-bench-missing", lambda pr, tmp: _gate_files(tmp, bench_text=None), ["bench.json"], 2),
    ("gate-bench-not-json", lambda pr, tmp: _gate_files(tmp, bench_text="{oops"), ["bench.json"], 2),
    ("gate-budget-not-yaml", lambda pr, tmp: _gate_files(tmp, budget_text="budgets: [unclosed\n"), ["budget.yaml"], 2),
    ("gate-budget-unknown-key", lambda pr, tmp: _gate_files(tmp, budget_text=(
        "budgets:\n  - {name: a, model: m, backend: b, batch: 1, metric: p50_ms, max: 1, maximum: 2}\n")),
     ["maximum"], 2),
    ("build-unknown-target", lambda pr, tmp: ["build", pr["av"], "--target", "jetson-orin-nan", "--model", "student_fp32"],
     ["unknown target", "did you mean 'jetson-orin-nano'"], 1),
    ("build-target-yaml-malformed", lambda pr, tmp: ["build", pr["av"], "--target", _bytes("t.yaml", b"name: [t\n")(pr, tmp),
                                                     "--model", "student_fp32"], ["not valid YAML", "fix the syntax"], 1),
    ("build-unknown-model", lambda pr, tmp: ["build", pr["av"], "--target", "x86-gpu", "--model", "student_int9"],
     ["no ONNX model 'student_int9'", "--model KEY"], 2),
    ("run-unknown-until", lambda pr, tmp: ["run", "recipes/tiny.yaml", "--until", "deploy", "--run-dir", tmp / "r"],
     ["--until"], 2),
    ("eval-not-a-run-dir", lambda pr, tmp: ["eval", tmp / "nope"], ["not a run directory"], 2),
    ("report-not-a-run-dir", lambda pr, tmp: ["report", tmp], ["not a run directory"], 1),
    ("data-fetch-unknown-dataset", lambda pr, tmp: ["data", "fetch", "imagenet", "--data-root", tmp / "d"],
     ["unknown dataset 'imagenet'", "avdigits"], 2),
    ("data-info-missing-recipe", lambda pr, tmp: ["data", "info", tmp / "nope.yaml"], ["not found"], 1),
]


@pytest.mark.parametrize("make_args, needles, exit_code", params(CLI_CASES))
def test_bad_cli_arguments(pristine, tmp_path, capsys, monkeypatch, make_args, needles, exit_code):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    args = make_args(pristine, tmp_path)
    before = snapshot(pristine["av"])
    code, out, err = cli(capsys, *args)
    assert_one_line(code, out, err, needles, exit_code=exit_code)
    assert not (tmp_path / "out").exists()  # no bench output for a refused bench
    assert not (tmp_path / "r").exists()
    assert snapshot(pristine["av"]) == before


USAGE_CASES = [
    ("threads-zero", ["predict", "BUNDLE", "--threads", "0"], ["--threads"]),
    ("threads-not-a-number", ["predict", "BUNDLE", "--threads", "many"], ["--threads"]),
    ("unknown-option", ["predict", "BUNDLE", "--imag", "x.png"], ["--imag"]),
    ("unknown-command", ["deploy", "BUNDLE"], ["deploy"]),
    ("missing-argument", ["predict"], ["BUNDLE"]),
]


@pytest.mark.parametrize("args, needles", params(USAGE_CASES))
def test_usage_errors_are_one_line(pristine, capsys, args, needles):
    code, out, err = cli(capsys, *[pristine["av"] if a == "BUNDLE" else a for a in args])
    assert_one_line(code, out, err, needles, exit_code=2)


@pytest.mark.parametrize("args, needles", params(USAGE_CASES))
def test_usage_errors_exit_2_without_traceback(pristine, capsys, args, needles):
    """What holds today for click's usage errors: exit 2, the option named, no traceback."""
    code, out, err = cli(capsys, *[pristine["av"] if a == "BUNDLE" else a for a in args])
    assert code == 2 and "Traceback" not in out + err
    assert any(n.lower() in err.lower() for n in needles), err


def test_debug_env_shows_the_traceback_for_a_hostile_input(tmp_path):
    """EDGEKD_DEBUG=1 is the one way to get a traceback for a user error."""
    import os
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    quiet = subprocess.run([sys.executable, "-m", "edgekd", "teacher", str(bad)], capture_output=True, text=True,
                           env=env, timeout=120)
    loud = subprocess.run([sys.executable, "-m", "edgekd", "teacher", str(bad)], capture_output=True, text=True,
                          env={**env, "EDGEKD_DEBUG": "1"}, timeout=120)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr and len(quiet.stderr.strip().splitlines()) == 1
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "RecipeError" in loud.stderr
