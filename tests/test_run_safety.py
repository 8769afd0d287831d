"""One writer per run directory, nothing left behind by a bad recipe, OS errors as user errors.

Real processes and real file systems: two `edgekd run` on one run directory, a lock left by a
killed process, a tmpfs that fills up and one mounted read-only (tests that mount need root, as
CI and these machines have; elsewhere they skip with the reason).
"""
import errno
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli
from PIL import Image

from edgekd.errors import FileWriteError, RunLockedError
from edgekd.files import atomic_write_json
from edgekd.runlock import RunLock

EDGEKD = [sys.executable, "-m", "edgekd"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def icons(folder: Path, n: int = 24, size: int = 32) -> Path:
    """A folder dataset of n size x size RGB images in 2 classes."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = "ab"[i % 2]
        pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8) + (150 if label == "b" else 0)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / "img" / f"{i}.png")
        rows.append({"label": label, "img": f"img/{i}.png", "split": "test" if i >= n - 6 else "train"})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return folder


def recipe(tmp_path: Path, folder: Path, patch: int = 8, epochs: int = 1, name: str = "icons") -> Path:
    path = tmp_path / f"{name}-{patch}-{epochs}.yaml"
    path.write_text(f"""
name: {name}
data: {{name: folder, path: {folder}, modalities: {{img: image}}, image_size: 32}}
teacher: {{hidden: 8, layers: 1, heads: 2, epochs: {epochs}, batch_size: 8, image_patch: {patch}}}
student: {{name: fusion_tiny}}
distill: {{epochs: 1, batch_size: 8}}
""")
    return path


def one_line_error(err: str, *needles: str) -> None:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgekd: error:") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


# --------------------------------------------------------------------------- a bad recipe leaves nothing


def test_a_recipe_error_found_in_the_data_leaves_no_run_directory(tmp_path, capsys):
    folder = icons(tmp_path / "data")
    run_dir = tmp_path / "runs" / "icons"
    code, _, err = cli(capsys, "run", recipe(tmp_path, folder, patch=7), "--run-dir", run_dir, "--until", "teacher")
    assert code == 1
    one_line_error(err, "recipe.teacher.image_patch: 7 does not divide the image size 32")
    assert not run_dir.exists()  # not even the bad recipe: the corrected one must not need --force
    code, out, err = cli(capsys, "run", recipe(tmp_path, folder, patch=8), "--run-dir", run_dir, "--until", "teacher")
    assert code == 0, err
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["teacher"]["status"] == "done"


def test_an_existing_directory_with_nothing_recorded_takes_a_new_recipe(tmp_path, capsys):
    """A run directory that holds a recipe but no recorded stage has nothing to lose."""
    from edgekd.recipe import recipe_from_dict
    from edgekd.rundir import RunDir

    folder = icons(tmp_path / "data")
    run_dir = tmp_path / "run"
    RunDir.create(run_dir, recipe_from_dict({"name": "icons", "data": {"name": "avdigits"}}))
    code, _, err = cli(capsys, "run", recipe(tmp_path, folder), "--run-dir", run_dir, "--until", "teacher")
    assert code == 0, err


# --------------------------------------------------------------------------- one writer per run directory


def _wait_for_holder(lock: Path, proc, seconds: float = 120) -> dict:
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the first run ended before the second started: {proc.stderr.read()}")
        try:
            holder = json.loads(lock.read_text() or "{}")
            if holder.get("pid") == proc.pid:
                return holder
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError("the first run never took the lock")


def test_a_second_run_on_the_same_directory_is_refused_and_the_first_finishes(tmp_path):
    folder = icons(tmp_path / "data", n=48)
    slow = recipe(tmp_path, folder, epochs=40)  # long enough to still be running when the second starts
    run_dir = tmp_path / "run"
    first = subprocess.Popen([*EDGEKD, "run", str(slow), "--run-dir", str(run_dir), "--until", "teacher", "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    try:
        holder = _wait_for_holder(run_dir / ".lock", first)
        started = time.time()
        second = subprocess.run([*EDGEKD, "run", str(slow), "--run-dir", str(run_dir), "--until", "teacher", "-q"],
                                capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
        assert first.poll() is None, "the first run ended before the second was refused; make it slower"
        assert second.returncode == 75
        one_line_error(second.stderr, "is in use by another edgekd process", f"pid {first.pid}", holder["since"],
                       "--run-dir NEW_DIR")
        assert time.time() - started < 60  # refused at once, not after doing the work
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert "teacher: accuracy" in out
    doctor = subprocess.run([*EDGEKD, "doctor", str(run_dir)], capture_output=True, text=True, env=ENV, timeout=120)
    assert doctor.returncode == 0 and "errors" in doctor.stdout, doctor.stdout + doctor.stderr
    assert (run_dir / ".lock").read_text() == ""  # released


def test_lock_names_its_holder_and_frees_on_exit(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from edgekd.runlock import RunLock; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError) as e:
            RunLock(tmp_path).acquire()
        assert f"pid {holder.pid}" in str(e.value) and e.value.exit_code == 75
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path) as lock:  # the kernel dropped the dead holder's lock
        assert lock.took_over and lock.took_over["pid"] == holder.pid
        assert f"left by pid {holder.pid}" in lock.stale_warning() and "no longer running" in lock.stale_warning()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    folder = icons(tmp_path / "data")
    run_dir = tmp_path / "run"
    code, _, err = cli(capsys, "run", recipe(tmp_path, folder), "--run-dir", run_dir, "--until", "teacher")
    assert code == 0, err
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                               "since": "2026-01-01T00:00:00+0000", "command": "edgekd run x"}))
    code, out, err = cli(capsys, "run", run_dir, "--until", "teacher")
    assert code == 0, err
    assert f"took over the lock of {run_dir} left by pid {int(dead.stdout)}" in out and "no longer running" in out


def test_read_only_commands_take_no_lock(tmp_path, capsys):
    folder = icons(tmp_path / "data")
    run_dir = tmp_path / "run"
    assert cli(capsys, "run", recipe(tmp_path, folder), "--run-dir", run_dir, "--until", "teacher")[0] == 0
    with RunLock(run_dir):  # another process is running stages
        assert cli(capsys, "doctor", run_dir)[0] == 0
        assert cli(capsys, "report", run_dir)[0] == 0
        code, _, err = cli(capsys, "teacher", run_dir, "--force")
        assert code == 75 and "in use by another edgekd process" in err


# --------------------------------------------------------------------------- OS errors are user errors


@contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"mounting a tmpfs needs root (CI and these machines run as root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_disk_is_a_one_line_error_and_the_run_stays_whole(tmp_path):
    folder = icons(tmp_path / "data")
    with tmpfs(tmp_path / "small", "256k") as disk:
        (disk / "filler").write_bytes(b"\0" * (disk_free(disk) - 24 * 1024))  # room for the manifest, not the models
        proc = subprocess.run([*EDGEKD, "run", str(recipe(tmp_path, folder)), "--run-dir", str(disk / "run"),
                               "--until", "teacher", "-q"], capture_output=True, text=True, env=ENV, cwd=ROOT,
                              timeout=300)
        assert proc.returncode == 74, proc.stderr
        one_line_error(proc.stderr, "cannot write", str(disk / "run"), "No space left on device",
                       "free some space", "nothing was recorded half-written")
        (disk / "filler").unlink()
        doctor = subprocess.run([*EDGEKD, "doctor", str(disk / "run")], capture_output=True, text=True, timeout=120)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert not list((disk / "run").rglob(".*.tmp"))  # no temp file left behind either


def disk_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_an_unwritable_folder_is_a_one_line_error(tmp_path, capsys):
    from test_bundle import make_bundle

    bundle, _, _ = make_bundle(tmp_path)
    with tmpfs(tmp_path / "ro", "64k") as ro:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        code, _, err = cli(capsys, "bench", bundle, "--batch", "1", "--min-seconds", "0.05", "--max-seconds", "0.1",
                           "--out", ro / "bench")
        assert code == 74
        one_line_error(err, "cannot write", str(ro / "bench"), "Read-only file system", "choose a writable folder")
        code, _, err = cli(capsys, "run", ROOT / "recipes" / "tiny.yaml", "--run-dir", ro / "run")
        assert code == 74
        one_line_error(err, "cannot write", str(ro / "run"), "Read-only file system")
    assert cli(capsys, "doctor", bundle)[0] == 0


def test_library_errors_caused_by_a_full_disk_become_file_write_errors(tmp_path, monkeypatch):
    """safetensors reports ENOSPC in its message only; numpy and onnx chain the OSError."""
    from edgekd.files import atomic_path

    with pytest.raises(FileWriteError, match="No space left on device; free some space"):
        with atomic_path(tmp_path / "w.safetensors"):
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(FileWriteError, match="Permission denied"):
        with atomic_path(tmp_path / "x.json"):
            raise ValueError("wrapped") from PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(ValueError, match="not a disk problem"):  # anything else passes through untouched
        with atomic_path(tmp_path / "y.json"):
            raise ValueError("not a disk problem")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(FileWriteError) as e:
        atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert e.value.exit_code == 74 and str(tmp_path / "m.json") in str(e.value)
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "m.json").exists()
