"""Writing files so that a crash, a full disk or a second rank never leaves a half file behind.

Torch-free and used by every layer that writes: the run directory, the bundle, engine builds and
bench outputs. A file is written to a temp name beside its target and renamed over it in one
step; a directory is built beside its target and swapped in. An OSError while writing becomes a
one-line `FileWriteError` naming the path, the cause and the fix.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from edgekd import __version__
from edgekd.errors import FileWriteError

_UMASK = os.umask(0)
os.umask(_UMASK)
# the versions that matter for reproducing an artifact (recorded in manifests, bundles, benches)
VERSIONED = ("torch", "transformers", "onnx", "onnxruntime", "nvidia-modelopt", "tensorrt", "numpy")

_FIXES = {
    errno.ENOSPC: "free some space or point the output at another disk",
    errno.EDQUOT: "free some space (disk quota exceeded) or point the output at another disk",
    errno.EACCES: "make the folder writable for this user or choose another one",
    errno.EPERM: "make the folder writable for this user or choose another one",
    errno.EROFS: "the file system is read-only: choose a writable folder",
}


def is_writer() -> bool:
    """Under torchrun only rank 0 writes (torchrun sets RANK); everywhere else this process does."""
    return (os.environ.get("RANK", "0") or "0") == "0"


def os_error(e: OSError, path) -> FileWriteError:
    """The one-line user error for an OSError met while writing `path`."""
    fix = _FIXES.get(e.errno, "check the folder exists and is writable, or choose another one")
    cause = e.strerror or type(e).__name__
    return FileWriteError(f"cannot write {e.filename or path}: {cause}; {fix} (nothing was recorded half-written)")


def is_write_error(e: BaseException) -> bool:
    """The OS errors that mean "this place cannot take the output": no space, no permission, read-only."""
    return isinstance(e, OSError) and e.errno in _FIXES


@contextmanager
def writing(path):
    """Turn a write-side OSError (no space, no permission, read-only) raised inside into a
    FileWriteError naming `path`; other OSErrors (a missing input, say) pass through."""
    try:
        yield
    except OSError as e:
        if not is_write_error(e):
            raise
        raise os_error(e, path) from e


def _is_disk_error(e: BaseException, where: Path | None = None) -> OSError | None:
    """Libraries (safetensors, onnx, torch.save) wrap ENOSPC in their own exceptions, some with no
    errno at all; find the OSError, or see whether the file system at `where` is full."""
    first = e
    while e is not None:
        if is_write_error(e):
            return e
        # Rust-backed writers (safetensors) report "I/O error: ... (os error 28)" in text only
        found = re.search(r"\(os error (\d+)\)", str(e))
        if found and int(found.group(1)) in _FIXES:
            return OSError(int(found.group(1)), os.strerror(int(found.group(1))))
        e = e.__cause__ or e.__context__
    if where is not None and not isinstance(first, (ValueError, TypeError, KeyError)):
        try:
            if os.statvfs(where).f_bavail == 0:
                return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            pass
    return None


@contextmanager
def atomic_path(path):
    """Yield a temp path beside `path`; on success it replaces `path` in one rename.

    Under torchrun only rank 0 writes: the other ranks' temp files are dropped, so N processes
    never race to replace the same artifact. Any failure removes the temp file; an OSError (or a
    library error caused by one, e.g. safetensors on a full disk) becomes a FileWriteError."""
    path = Path(path)
    tmp = None
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
        try:
            yield Path(tmp)
        except (FileWriteError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 -- re-raised unless an OS write error caused it
            disk = _is_disk_error(e, path.parent)
            if disk is None:
                raise
            raise os_error(disk, path) from e
        if not is_writer():
            return
        with writing(path):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are ordinary files
            os.replace(tmp, path)
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp, writing(path):
        Path(tmp).write_bytes(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_copy(src, dest) -> Path:
    with atomic_path(dest) as tmp, writing(dest):
        shutil.copyfile(src, tmp)
    return Path(dest)


def check_writable(directory) -> Path:
    """Create `directory` and prove a file can be written there, before minutes of work whose
    output would be lost (a bench, a build); a FileWriteError otherwise."""
    directory = Path(directory)
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(probe)
    return directory


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def temp_dir_beside(dest: Path) -> Path:
    """A fresh hidden directory beside `dest` to build its replacement in (see swap_dir)."""
    dest = Path(dest)
    with writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))


def swap_dir(tmp: Path, dest: Path) -> None:
    """Replace directory `dest` by the finished `tmp` beside it: the old one is moved aside, the new
    one renamed in, the old one removed. Readers see the old directory or the new one, never a mix;
    a crash in between leaves `.NAME.old-*` for `edgekd doctor --clean`."""
    tmp, dest = Path(tmp), Path(dest)
    with writing(dest):
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rmdir(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)


@contextmanager
def building_dir(dest):
    """A fresh directory beside `dest` to build its replacement in: when the block succeeds it is
    swapped in (swap_dir); on any failure it is removed and `dest` stays as it was. Leftovers of an
    earlier, killed build are removed first; write-side OS errors become FileWriteErrors."""
    dest = Path(dest)
    remove_leftovers(dest)
    tmp = temp_dir_beside(dest)
    try:
        with writing(dest):
            yield tmp
        swap_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_leftovers(dest: Path) -> None:
    """Temp and moved-aside directories of an earlier, interrupted swap of `dest`."""
    dest = Path(dest)
    for pattern in (f".{dest.name}.tmp-*", f".{dest.name}.old-*"):
        for p in dest.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def versions(packages=VERSIONED) -> dict[str, str | None]:
    """edgekd's version and those of `packages` (None: not installed here)."""
    out = {"edgekd": __version__}
    for name in packages:
        if name == "edgekd":
            continue
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
