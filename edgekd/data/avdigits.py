"""avdigits: FSDD spoken digits paired with MNIST images of the same digit (AV-MNIST style).

Audio clips are the samples; each is paired with an MNIST image of its digit, drawn with a
seed so pairings are reproducible. Train and test draw from disjoint image pools. Images can be
degraded to a few PCA components (fitted on train images only), which makes the image alone a
weak cue so that fusing it with audio matters.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
from pathlib import Path

import numpy as np

from edgekd.data.base import ModalitySpec, Split
from edgekd.data.download import require_avdigits
from edgekd.data.features import audio_params
from edgekd.errors import DataError
from edgekd.recipe import AVDigitsData
from edgekd.runtime.preprocess import log_mel, read_audio, resample

SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
IMAGE_SIZE = 28


@functools.lru_cache(maxsize=2)
def _read_fsdd(folder: str) -> tuple[tuple[str, ...], tuple, str]:
    """(file names, (samples, rate) per clip, sha256 of all bytes) — read once per process."""
    files = sorted(Path(folder).glob("*.wav"))
    h = hashlib.sha256()
    clips = []
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
        try:
            clips.append(read_audio(f))  # (samples, rate)
        except Exception as e:  # wave.Error, EOFError, ValueError
            raise DataError(f"{f} is not a readable PCM wav ({e}); re-run `edgekd data fetch avdigits`") from e
    return tuple(f.name for f in files), tuple(clips), h.hexdigest()


@functools.lru_cache(maxsize=2)
def _read_mnist(path: str) -> tuple[np.ndarray, np.ndarray, str]:
    raw = Path(path).read_bytes()
    try:
        table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path} is not the MNIST 5k CSV ({e}); re-run `edgekd data fetch avdigits`") from e
    if table.ndim != 2 or table.shape[1] != IMAGE_SIZE * IMAGE_SIZE + 1:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape}")
    pixels = table[:, :-1].reshape(-1, IMAGE_SIZE, IMAGE_SIZE).astype(np.uint8)
    return pixels, table[:, -1], hashlib.sha256(raw).hexdigest()


def pca_degrade(train: np.ndarray, others: list[np.ndarray], variance: float) -> tuple[list[np.ndarray], int]:
    """Project uint8 images onto the top PCA components of `train` explaining `variance`.

    Returns uint8 images (so a degraded image is exactly a PNG a device could be given) and the
    number of components kept.
    """
    flat = train.reshape(len(train), -1).astype(np.float64) / 255.0
    mean = flat.mean(axis=0)
    _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
    explained = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(explained, variance) + 1)
    basis = vt[:k]  # (k, 784)

    def project(imgs: np.ndarray) -> np.ndarray:
        x = imgs.reshape(len(imgs), -1).astype(np.float64) / 255.0
        rec = (x - mean) @ basis.T @ basis + mean
        return np.clip(np.rint(rec * 255.0), 0, 255).astype(np.uint8).reshape(imgs.shape)

    return [project(train)] + [project(o) for o in others], k


class AVDigits:
    name = "avdigits"

    def __init__(self, cfg: AVDigitsData, root: Path, seed: int = 0):
        self.cfg, self.seed = cfg, seed
        require_avdigits(root)
        names, clips, wav_hash = _read_fsdd(str(root / "fsdd" / "recordings"))
        pixels, digits, mnist_hash = _read_mnist(str(root / "mnist5k" / "mnist_5k.csv.gz"))
        for field in ("test_speakers", "val_speakers"):
            unknown = sorted(set(getattr(cfg, field)) - set(SPEAKERS))
            if unknown:
                raise DataError(f"recipe.data.{field}: unknown speaker(s) {unknown}; choose from {list(SPEAKERS)}")
        if (cfg.val_speakers and cfg.split != "speaker") or set(cfg.val_speakers) & set(cfg.test_speakers):
            raise DataError("recipe.data.val_speakers must be speakers other than test_speakers, with split: speaker")

        parts = [n[:-4].split("_") for n in names]
        self._labels = np.array([int(p[0]) for p in parts], dtype=np.int64)
        speaker = np.array([p[1] for p in parts])
        take = np.array([int(p[2]) for p in parts])
        is_test = np.isin(speaker, cfg.test_speakers) if cfg.split == "speaker" else take < 5
        if is_test.all():
            raise DataError("recipe.data.test_speakers holds out every speaker; leave at least one for training")
        self._index = {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}
        self._names = names
        if cfg.val_speakers:  # settings are chosen on speakers no model trains on, like the test split's
            is_val = np.isin(speaker, cfg.val_speakers)
            if (is_val | is_test).all():
                raise DataError("recipe.data.val_speakers and test_speakers hold out every speaker; leave one to train on")
            self._index = {"train": np.flatnonzero(~is_test & ~is_val), "val": np.flatnonzero(is_val),
                           "test": np.flatnonzero(is_test)}
        elif cfg.val_fraction > 0:  # settings are chosen here, never on test: a seeded share of each digit's train clips
            rng = np.random.default_rng([seed, 23])
            train, val = [], []
            for c in range(10):
                mine = rng.permutation(self._index["train"][self._labels[self._index["train"]] == c])
                k = int(round(cfg.val_fraction * len(mine)))
                val.append(mine[:k])
                train.append(mine[k:])
            self._index["train"], self._index["val"] = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))

        # Audio: log-mel with scalar normalisation fitted on train clips only.
        params = audio_params(cfg.audio)
        rate = params["sample_rate"]
        mels = np.stack([log_mel(resample(c, r, rate), params) for c, r in clips])  # (N, T, n_mels), unnormalised
        train_mels = mels[self._index["train"]]
        params["mean"], params["std"] = float(train_mels.mean()), float(train_mels.std() + 1e-8)
        self._audio = ((mels - params["mean"]) / params["std"]).astype(np.float32)

        # Images: disjoint per-class pools for train, val and test, optionally PCA-degraded.
        rng = np.random.default_rng([seed, 17])
        pools = {"train": [], "test": [], "val": []}
        n_val = cfg.val_images_per_class if "val" in self._index else 0
        for c in range(10):
            idx = rng.permutation(np.flatnonzero(digits == c))
            held = cfg.test_images_per_class + n_val
            if len(idx) <= held:
                raise DataError(f"recipe.data.test_images_per_class={cfg.test_images_per_class} + val_images_per_class="
                                f"{n_val} leave no train images of digit {c}; lower them")
            pools["test"].append(idx[: cfg.test_images_per_class])
            pools["val"].append(idx[cfg.test_images_per_class: held])  # drawn after test: test images stay as before
            pools["train"].append(idx[held:])
        self._pool_idx = {s: [np.asarray(p) for p in v] for s, v in pools.items()}
        train_idx = np.concatenate(self._pool_idx["train"])
        held_idx = np.concatenate(self._pool_idx["test"] + self._pool_idx["val"])
        self.pca_components = None
        images = pixels.copy()
        if cfg.image_pca_variance is not None and cfg.image_pca_variance < 1:
            (tr, held), k = pca_degrade(pixels[train_idx], [pixels[held_idx]], cfg.image_pca_variance)
            images[train_idx], images[held_idx] = tr, held
            self.pca_components = k
        self._images = images  # uint8 (5000, 28, 28)
        train_px = images[train_idx].astype(np.float64) / 255.0
        img_params = {"kind": "image", "size": IMAGE_SIZE, "mean": float(train_px.mean()), "std": float(train_px.std())}

        self.classes = [str(c) for c in range(10)]
        self.preprocess = {"audio": params, "image": img_params}
        frames = self._audio.shape[1]
        self.modalities = {
            "image": ModalitySpec("image", "image", (1, IMAGE_SIZE, IMAGE_SIZE)),
            "audio": ModalitySpec("audio", "audio", (frames, cfg.audio.n_mels)),
        }
        self.num_pairings = cfg.pairings
        self._fingerprint = hashlib.sha256(
            # unset val_speakers stays out, so runs made before the field existed keep their fingerprint
            f"{wav_hash}{mnist_hash}{cfg.model_dump_json(exclude=None if cfg.val_speakers else {'val_speakers'})}"
            f"{seed}".encode()
        ).hexdigest()[:16]

    def has_split(self, name: str) -> bool:
        return name in self._index

    def fingerprint(self) -> str:
        return self._fingerprint

    def pairing(self, split: str, pairing: int = 0) -> np.ndarray:
        """MNIST row paired with each clip of `split` (val and test always use pairing 0)."""
        if split != "train":
            pairing = 0
        clips = self._index[split]
        rng = np.random.default_rng([self.seed, 1 + pairing % self.num_pairings, {"train": 0, "test": 1, "val": 2}[split]])
        out = np.empty(len(clips), dtype=np.int64)
        for c in range(10):
            mine = np.flatnonzero(self._labels[clips] == c)
            pool = self._pool_idx[split][c]
            # without replacement as far as the pool allows, then start a fresh permutation
            reps = -(-len(mine) // len(pool))
            draws = np.concatenate([rng.permutation(pool) for _ in range(reps)])[: len(mine)]
            out[mine] = draws
        return out

    def split(self, name: str, pairing: int = 0) -> Split:
        if name not in self._index:
            raise DataError(f"avdigits has no '{name}' split (it has {', '.join(self._index)})")
        clips = self._index[name]
        img_rows = self.pairing(name, pairing)
        p = self.preprocess["image"]
        images = ((self._images[img_rows].astype(np.float32) / 255.0 - p["mean"]) / p["std"])[:, None]
        ids = [f"{self._names[i][:-4]}+mnist{j}" for i, j in zip(clips, img_rows)]
        return Split({"image": images.astype(np.float32), "audio": self._audio[clips]}, self._labels[clips], ids)

    def raw_image(self, mnist_row: int) -> np.ndarray:
        """The (possibly degraded) uint8 image, as a device would receive it."""
        return self._images[mnist_row]

    def clip_path(self, root: Path, clip_index: int) -> Path:
        return root / "fsdd" / "recordings" / self._names[clip_index]
