import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.data.base import ModalitySpec, Split

torch.set_num_threads(1)  # tests and CI use one thread (see README: threads)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Data stores built by the tests live in one folder per test session (subprocesses inherit it), not in
# the user's ~/.cache/edgekd: each dataset is decoded once per session and shared by its tests.
if "EDGEKD_CACHE" not in os.environ:
    import tempfile

    os.environ["EDGEKD_CACHE"] = tempfile.mkdtemp(prefix="edgekd-test-cache-")
ROOT = Path(__file__).resolve().parents[1]
# What a device install leaves out. A probe script starting with BLOCK_TRAINING behaves as if none of
# them were installed (`import torch` raises ImportError), the way the core-only CI job really is.
TRAINING_ONLY = ("torch", "transformers", "modelopt", "matplotlib", "safetensors")
BLOCK_TRAINING = "import sys\nfor _m in " + repr(TRAINING_ONLY) + ":\n    sys.modules[_m] = None\n"
# edgekd modules the device side may load
DEVICE_MODULES = ("edgekd", "edgekd.errors", "edgekd.files", "edgekd.contract", "edgekd.schema")


def cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `edgekd ARGS...` run in this process through its entry point."""
    from edgekd.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def real_data_root() -> Path:
    """The real datasets ($EDGEKD_DATA); tests that need them skip with a reason otherwise."""
    env = os.environ.get("EDGEKD_DATA")
    if not env:
        pytest.skip("EDGEKD_DATA is not set (CI sets it to ../shared/data)")
    path = Path(env)
    if not (path / "fsdd" / "recordings").is_dir() or not (path / "mnist5k" / "mnist_5k.csv.gz").is_file():
        pytest.skip(f"avdigits files are not under EDGEKD_DATA={path}; run `edgekd data fetch avdigits`")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return real_data_root()


class ToyData:
    """A small synthetic two-modality dataset implementing edgekd.data.base.Dataset."""

    name = "toy"
    classes = ["a", "b", "c"]
    num_pairings = 2

    def __init__(self, n: int = 48, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.modalities = {"image": ModalitySpec("image", "image", (1, 8, 8)),
                           "audio": ModalitySpec("audio", "audio", (6, 4))}
        self.preprocess = {}
        self._splits = {}
        for name, count in (("train", n), ("test", n // 2)):
            y = np.arange(count) % 3
            img = (rng.normal(size=(count, 1, 8, 8)) + 2 * y[:, None, None, None]).astype(np.float32)
            aud = (rng.normal(size=(count, 6, 4)) - 2 * y[:, None, None]).astype(np.float32)
            self._splits[name] = Split({"image": img, "audio": aud}, y.astype(np.int64), [f"{name}{i}" for i in range(count)])

    def split(self, name, pairing=0):
        s = self._splits[name]
        if name == "train" and pairing % 2:  # a different pairing: images rolled within each class
            img = np.concatenate([s.inputs["image"][3:], s.inputs["image"][:3]])
            return Split({"image": img, "audio": s.inputs["audio"]}, s.labels, s.ids)
        return s

    def has_split(self, name):
        return name in self._splits

    def fingerprint(self):
        return "toy"


@pytest.fixture
def toy() -> ToyData:
    return ToyData()


def train_until_killed(job, data, stop_after):
    """Run `train` but die (like a SIGKILL between epochs) once `stop_after` checkpoints are on disk."""
    import contextlib

    import edgekd.distill.trainer as trainer
    from edgekd.distill.trainer import train

    real = trainer.atomic_path
    calls = {"n": 0}

    @contextlib.contextmanager
    def dying_atomic_path(path):
        with real(path) as tmp:
            yield tmp
        calls["n"] += 1
        if calls["n"] == stop_after:
            raise KeyboardInterrupt

    trainer.atomic_path = dying_atomic_path
    try:
        with pytest.raises(KeyboardInterrupt):
            train(job, data)
    finally:
        trainer.atomic_path = real


def one_line(excinfo, *needles):
    """The raised error's message: a single line containing every needle."""
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


WORDS = {"cat": "a small cat sat", "dog": "the dog barked loud", "cow": "cows eat green grass"}


def four_modality_folder(folder: Path, n: int, formats=(("WAV", "PCM_16", "wav"),)) -> list[dict]:
    """A user's folder dataset: colour images (the class in the colour), audio clips written in
    `formats` in turn (the class in the pitch), a caption (WORDS) and a 4-vector; metadata.jsonl."""
    import json

    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    (folder / "wav").mkdir()
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        pixels = (rng.random((12, 12, 3)) * 80).astype(np.uint8)
        pixels[..., i % 3] += 120  # the class is in the colour, not in the brightness
        Image.fromarray(pixels).save(folder / "img" / f"{i}.png")
        t = np.arange(2000) / 8000
        fmt, subtype, ext = formats[i % len(formats)]
        sf.write(str(folder / "wav" / f"{i}.{ext}"), 0.25 * np.sin(2 * np.pi * (300 + 200 * (i % 3)) * t), 8000,
                 format=fmt, subtype=subtype)
        rows.append({"label": label, "photo": f"img/{i}.png", "clip": f"wav/{i}.{ext}", "caption": WORDS[label],
                     "feats": list(rng.normal(size=4) + i % 3)})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return rows


def four_modality_recipe(folder: Path, name: str, data_extra: str = "") -> str:
    """The head of a recipe over four_modality_folder's data (12 px colour images, 0.25 s clips, a
    caption and a vector) with a tiny teacher; the caller appends the student and later sections."""
    return f"""
name: {name}
data:
  name: folder
  path: {folder}
  modalities: {{photo: image, clip: audio, caption: text, feats: vector}}
  image_size: 12
  image_mode: rgb
  audio: {{seconds: 0.25, n_mels: 16}}{data_extra}
teacher: {{hidden: 16, layers: 1, heads: 2, epochs: 1, batch_size: 8, fusion: concat, image_patch: 4}}
"""
