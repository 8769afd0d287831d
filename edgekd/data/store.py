"""The decoded-sample store: a folder dataset decoded once, on every core, memory-mapped on disk.

    <cache>/store/<key>/           (EDGEKD_CACHE, default ~/.cache/edgekd; `key` hashes the metadata
      index.json                    and the decode settings, so runs and recipes that share them share it)
      label.npy split.npy line.npy  per row: class code, split code (-1: none), metadata line
      text.<m>.bin / .off.npy       texts as UTF-8, row i at [off[i], off[i + 1])
      raw.<m>.bin / .off.npy        image/audio files: relative paths, or the bytes a Parquet/Arrow row held
      vec.<m>.npy                   vectors as written (float64)
      <shard>.<m>.npy               decoded, unnormalised features of rows [shard * S, (shard + 1) * S)
      <shard>.<m>.sha.npy           sha256 of each file's bytes (the dataset fingerprint)
      <shard>.<m>.stat.npy          (size, mtime_ns) of each file when it was hashed
      derived/<fingerprint>.json    splits' statistics and tokenizers, per recipe data settings

The metadata scan and each shard are written under `<key>.partial/` (temp file + rename, a shard's
`.done` marker last), and the folder is renamed to `<key>` only when complete: a reader never sees
a half store, and a build killed at any point continues where it stopped. Opening a store stats
every file it decoded; a file whose size or mtime changed sends only its shard back to be decoded
(DVC's trade-off: an edit that keeps both is not seen; `edgekd data verify` re-hashes everything).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from edgekd.data import decode
from edgekd.data.decode import save_array  # noqa: F401  (scan writes through it too)
from edgekd.errors import DataError
from edgekd.files import os_error

FORMAT = 1  # bump when the same files and settings give different stored arrays
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DISK_MARGIN = 1.05  # the estimate plus 5%: .npy headers, the index, temp files of shards in flight


def span(shard: int, rows: int, shard_rows: int) -> tuple[int, int]:
    """The rows [start, stop) of shard `shard`."""
    return shard * shard_rows, min(rows, (shard + 1) * shard_rows)


def cache_root() -> Path:
    return Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd").expanduser() / "store"


def workers_default() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Store:
    """A complete store, opened read-only; arrays are memory-mapped (page cache, not process memory)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.index = json.loads((self.path / "index.json").read_text(encoding="utf-8"))
        self.rows = int(self.index["rows"])
        self.shard_rows = int(self.index["shard_rows"])
        self.classes: list[str] = self.index["classes"]
        self.labels = np.load(self.path / "label.npy", mmap_mode="r")
        self.split_codes = np.load(self.path / "split.npy", mmap_mode="r")
        self.lines = np.load(self.path / "line.npy", mmap_mode="r")
        self.shards = -(-self.rows // self.shard_rows)
        self._blobs: dict[str, tuple] = {}
        self._shards: dict[str, list[np.ndarray]] = {}
        self._rawkind: dict[str, np.ndarray] = {}
        self._vectors: dict[str, np.ndarray] = {}

    # ---------------------------------------------------------------- columns
    def _blob(self, name: str) -> tuple:
        if name not in self._blobs:
            import mmap

            with open(self.path / f"{name}.bin", "rb") as f:  # slicing an mmap gives bytes at C speed
                size = os.fstat(f.fileno()).st_size
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            self._blobs[name] = (data, np.load(self.path / f"{name}.off.npy", mmap_mode="r"))
        return self._blobs[name]

    def strings(self, name: str, rows) -> list[bytes]:
        data, off = self._blob(name)
        rows = np.asarray(rows, dtype=np.int64)
        return [data[a:b] for a, b in zip(off[rows].tolist(), off[rows + 1].tolist())]

    def texts(self, m: str, rows) -> list[str]:
        return [b.decode("utf-8") for b in self.strings(f"text.{m}", rows)]

    def files(self, m: str, rows, folder: Path) -> list:
        """Each row's image/audio source for a processor: its path, or its bytes as a file object."""
        import io

        how = self.rawkind(m)
        return [folder / ref.decode("utf-8") if how[i] == 0 else io.BytesIO(ref)
                for i, ref in zip(np.asarray(rows, dtype=np.int64), self.strings(f"raw.{m}", rows))]

    def rawkind(self, m: str) -> np.ndarray:
        """Per row of modality `m`: 0, a path inside the folder; 1, bytes the metadata held."""
        if m not in self._rawkind:
            self._rawkind[m] = np.load(self.path / f"rawkind.{m}.npy")
        return self._rawkind[m]

    def path_rows(self, m: str) -> np.ndarray:
        """The rows whose modality `m` is a file in the folder (not bytes held in the metadata)."""
        return np.flatnonzero(self.rawkind(m) == 0)

    def vectors(self, m: str) -> np.ndarray:
        if m not in self._vectors:
            self._vectors[m] = np.load(self.path / f"vec.{m}.npy", mmap_mode="r")
        return self._vectors[m]

    def feature_shape(self, m: str) -> tuple[int, ...]:
        return tuple(self.index["modalities"][m]["shape"])

    def gather(self, m: str, rows) -> np.ndarray:
        """Decoded features (len(rows), *shape) of modality `m`, rows in the order given."""
        if m not in self._shards:
            self._shards[m] = [np.load(self.path / f"{k:05d}.{m}.npy", mmap_mode="r") for k in range(self.shards)]
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.feature_shape(m)), dtype=np.float32)
        shard, offset = np.divmod(rows, self.shard_rows)
        for s in np.unique(shard):
            mine = shard == s
            out[mine] = self._shards[m][s][offset[mine]]
        return out

    def _per_shard(self, m: str, what: str) -> np.ndarray:
        return np.concatenate([np.load(self.path / f"{k:05d}.{m}.{what}.npy") for k in range(self.shards)])

    def digests(self, m: str) -> np.ndarray:
        """sha256 of each row's file (or bytes), as the decode worker read it."""
        return self._per_shard(m, "sha")

    def stats(self, m: str) -> np.ndarray:
        """(size, mtime_ns) of each row's file when it was decoded (0, 0 for bytes)."""
        return self._per_shard(m, "stat")

    def file_modalities(self) -> list[str]:
        return [m for m, e in self.index["modalities"].items() if e["kind"] in ("image", "audio")]


# --------------------------------------------------------------------------- building


@contextlib.contextmanager
def _lock(path: Path):
    """One builder per store at a time (torchrun ranks, two runs on one machine): the others wait,
    then find it complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_or_build(key: str, scan, plan: dict, folder: Path, workers: int, progress=None, label: str = "") -> Store:
    """The complete store `key`, built first where missing or resumed where a build was cut short.
    `scan(partial_dir)` writes the per-row files, scan.json last."""
    root = cache_root()
    final, partial = root / key, root / f"{key}.partial"
    with _lock(root / f"{key}.lock"):
        if (final / "index.json").is_file():
            stale = stale_shards(Store(final), folder)
            if not stale:
                return Store(final)
            os.replace(final, partial)  # back to building: only the changed files' shards are decoded again
            for s in stale:
                (partial / f"{s:05d}.done").unlink(missing_ok=True)
        try:
            return _build(final, partial, scan, plan, folder, workers, progress, label)
        except OSError as e:
            raise os_error(e, partial) from None


def _build(final: Path, partial: Path, scan, plan: dict, folder: Path, workers: int, progress, label: str) -> Store:
    partial.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (partial / "scan.json").is_file():
        scan(partial)  # writes scan.json last
    scan_seconds = round(time.perf_counter() - t0, 2)
    info = json.loads((partial / "scan.json").read_text(encoding="utf-8"))
    rows, shard_rows = int(info["rows"]), int(plan["shard_rows"])
    files = {m: e for m, e in plan["modalities"].items() if e["kind"] in ("image", "audio")}
    n_shards = -(-rows // shard_rows)
    todo = [s for s in range(n_shards) if not (partial / f"{s:05d}.done").is_file()]
    spans = {s: span(s, rows, shard_rows) for s in todo}
    _check_space(partial, files, sum(stop - start for start, stop in spans.values()))
    if todo and n_shards - len(todo):
        print(f"{label}resuming the data store: {n_shards - len(todo)}/{n_shards} shards already decoded",
              flush=True)
    jobs = [{"dir": str(partial), "folder": str(folder), "shard": s, "start": start, "stop": stop,
             "modalities": files, "metadata": info["metadata"]} for s, (start, stop) in spans.items()]
    t0 = time.perf_counter()
    _run_jobs(jobs, workers, progress, label)
    index = {**info, "format": FORMAT, "shard_rows": shard_rows, "modalities": plan["modalities"],
             "scan_seconds": scan_seconds, "decode_seconds": round(time.perf_counter() - t0, 2), "workers": workers}
    with open(partial / "index.json.tmp", "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    os.replace(partial / "index.json.tmp", partial / "index.json")
    _files_blob(Store(partial))  # readers look for the final folder only: the index may come first
    os.replace(partial, final)
    return Store(final)


def _files_blob(store: Store) -> None:
    """files.bin: every distinct file's relative path and sha256 ("rel\\0digest", sorted by path), what
    the dataset fingerprint hashes, so a run reads one file instead of a digest per row."""
    found: dict[bytes, bytes] = {}
    for m in store.file_modalities():
        rows, sha = store.path_rows(m), store.digests(m)
        found.update({rel: sha[i].tobytes() for i, rel in zip(rows.tolist(), store.strings(f"raw.{m}", rows))})
    tmp = store.path / "files.bin.tmp"
    with open(tmp, "wb") as f:
        for rel in sorted(found):
            f.write(rel + b"\0" + found[rel])
    os.replace(tmp, store.path / "files.bin")


def _check_space(partial: Path, files: dict, rows: int) -> None:
    per_row = sum(4 * int(np.prod(e["shape"])) + 32 for e in files.values())
    need = int(per_row * rows * DISK_MARGIN)
    free = shutil.disk_usage(partial).free
    if need > free:
        raise DataError(f"the data store needs about {need / 1e9:.2f} GB for {rows:,} rows ({per_row:,} bytes a row) at "
                        f"{partial.parent} but only {free / 1e9:.2f} GB are free: free space, set EDGEKD_CACHE to a "
                        "bigger disk, or lower data.image_size")


def _context():
    """forkserver: each worker is forked from a small server process that has imported the decoder
    once, so workers start in milliseconds (spawn measured 0.3-0.5 s each, a third of a 20,000-row
    build) without inheriting this process's heap, torch and its threads."""
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(["edgekd.data.decode"])
    return ctx


def _run_jobs(jobs: list[dict], workers: int, progress, label: str) -> None:
    task = progress.add_task(f"{label}decoding", total=sum(j["stop"] - j["start"] for j in jobs)) if progress else None
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            decode.shard(j)
            if progress:
                progress.update(task, advance=j["stop"] - j["start"])
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as pool:
            pending = {pool.submit(decode.shard, j): j for j in jobs}
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    j = pending.pop(f)
                    if f.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise f.exception()
                    if progress:
                        progress.update(task, advance=j["stop"] - j["start"])
    if progress:
        progress.remove_task(task)


def stale_shards(store: Store, folder: Path) -> list[int]:
    """Shards holding a file whose size or mtime differs from when it was hashed (or that is gone)."""
    stale: set[int] = set()
    base = os.fsencode(folder) + b"/"
    for m in store.file_modalities():
        stat = store.stats(m)
        rows = store.path_rows(m)
        for i, rel in zip(rows.tolist(), store.strings(f"raw.{m}", rows)):
            try:
                st = os.stat(base + rel)
                same = st.st_size == stat[i, 0] and st.st_mtime_ns == stat[i, 1]
            except OSError:
                same = False
            if not same:
                stale.add(i // store.shard_rows)
    return sorted(stale)


def check(path: Path) -> list[str]:
    """What is wrong with a store's files (missing, another row count, shape or dtype), else []."""
    try:
        s = Store(path)
        for name, arr in (("label", s.labels), ("split", s.split_codes), ("line", s.lines)):
            if arr.shape[0] != s.rows:
                return [f"{name}.npy does not hold {s.rows} rows"]
        for m in s.file_modalities():
            for k in range(s.shards):
                start, stop = span(k, s.rows, s.shard_rows)
                want = (stop - start, *s.feature_shape(m))
                arr = np.load(path / f"{k:05d}.{m}.npy", mmap_mode="r")
                if arr.shape != want or arr.dtype != np.float32:
                    return [f"{k:05d}.{m}.npy holds {arr.shape} {arr.dtype}, expected {want} float32"]
    except (OSError, ValueError, KeyError) as e:
        return [f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"]
    return []


def verify(store: Store, folder: Path) -> list[str]:
    """Re-hash every file the store decoded; the relative paths whose bytes differ (or are gone)."""
    bad = []
    for m in store.file_modalities():
        sha = store.digests(m)
        rows = store.path_rows(m)
        for i, rel in zip(rows, store.strings(f"raw.{m}", rows)):
            try:
                ok = hashlib.sha256((folder / rel.decode("utf-8")).read_bytes()).digest() == bytes(sha[i])
            except OSError:
                ok = False
            if not ok:
                bad.append(rel.decode("utf-8"))
    return bad
