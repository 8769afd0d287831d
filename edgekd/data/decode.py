"""One shard of the data store, decoded: what each build worker runs (torch-free, picklable jobs).

A job names the partial store folder, a row range and each image/audio modality's decode
parameters. The worker reads each row's file (or the bytes a Parquet/Arrow row held), hashes the
bytes it read, decodes them with the device's own numpy preprocessing (edgekd.runtime.preprocess,
before normalisation), and writes the shard's arrays, then its `.done` marker.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from edgekd.errors import DataError
from edgekd.files import os_error
from edgekd.runtime import preprocess as pp

WHAT = {"image": "image (png/jpg)", "audio": "audio file"}


def features(kind: str, src, p: dict) -> np.ndarray:
    """A file's (path or binary file object) unnormalised model features."""
    return pp.image_file_pixels(src, p) if kind == "image" else pp.audio_features(src, p)


def save_array(path: Path, arr: np.ndarray) -> None:
    """np.save to a temp name, then rename: a killed writer leaves no half .npy under `path`."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise os_error(e, path) from None


class _Inside:
    """Is a relative path's real location inside the folder? Each directory is resolved once (a
    symlinked file or directory may still point elsewhere)."""

    def __init__(self, folder: Path):
        self.folder, self.root, self.dirs = folder, folder.resolve(), {}

    def check(self, rel: str, where: str, m: str) -> None:
        path = self.folder / rel
        parent = str(path.parent)
        if parent not in self.dirs:
            self.dirs[parent] = path.parent.resolve().is_relative_to(self.root)
        if not self.dirs[parent] or (path.is_symlink() and not path.resolve().is_relative_to(self.root)):
            raise DataError(f"{where}: '{m}' path '{rel}' resolves to {path.resolve()}, outside the dataset folder: "
                            f"copy the file into {self.folder}")


def shard(job: dict) -> int:
    d, folder = Path(job["dir"]), Path(job["folder"])
    start, stop, s = int(job["start"]), int(job["stop"]), int(job["shard"])
    lines = np.load(d / "line.npy", mmap_mode="r")
    inside = _Inside(folder)
    for m, e in job["modalities"].items():
        data = np.memmap(d / f"raw.{m}.bin", dtype=np.uint8, mode="r") if (d / f"raw.{m}.bin").stat().st_size else b""
        off = np.load(d / f"raw.{m}.off.npy", mmap_mode="r")
        how = np.load(d / f"rawkind.{m}.npy", mmap_mode="r")  # 0: a path inside the folder, 1: the bytes
        out = np.empty((stop - start, *e["shape"]), dtype=np.float32)
        sha = np.zeros((stop - start, 32), dtype=np.uint8)
        stat = np.zeros((stop - start, 2), dtype=np.int64)  # (size, mtime_ns) when hashed: later runs compare
        for k, i in enumerate(range(start, stop)):
            ref = bytes(data[off[i] : off[i + 1]])
            where = f"{job['metadata']} row {i + 1} (line {int(lines[i])})"
            if how[i] == 0:
                rel = ref.decode("utf-8")
                inside.check(rel, where, m)
                try:
                    with open(folder / rel, "rb") as f:
                        st = os.fstat(f.fileno())
                        body = f.read()
                    stat[k] = st.st_size, st.st_mtime_ns
                except (FileNotFoundError, IsADirectoryError):
                    raise DataError(f"{where}: '{m}' file '{rel}' not found in {folder}: add the file or fix the "
                                    "row") from None
                except OSError as err:
                    raise DataError(f"{where}: '{m}' file '{rel}' cannot be read ({err.strerror}): restore it or "
                                    "fix the row") from None
                what = f"'{m}' file '{rel}' is"
            else:
                body, what = ref, f"the '{m}' bytes are"
            sha[k] = np.frombuffer(hashlib.sha256(body).digest(), dtype=np.uint8)
            try:
                out[k] = features(e["kind"], io.BytesIO(body), e["params"])
            except Exception as err:  # decoders raise many types (OSError, EOFError, ValueError, ...)
                raise DataError(f"{where}: {what} not a readable {WHAT[e['kind']]} ({pp.decoder_reason(err)}): replace or "
                                "remove it") from None
        save_array(d / f"{s:05d}.{m}.npy", out)
        save_array(d / f"{s:05d}.{m}.sha.npy", sha)
        save_array(d / f"{s:05d}.{m}.stat.npy", stat)
    done = d / f"{s:05d}.done"
    with open(done.with_suffix(f".tmp{os.getpid()}"), "w") as f:
        f.write(str(stop - start))
    os.replace(done.with_suffix(f".tmp{os.getpid()}"), done)
    return stop - start
