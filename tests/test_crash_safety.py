"""SIGKILL at several points of teacher, distill, qat and export: after every kill the manifest
points only at whole files (`edgekd doctor` exits 0), and `--resume` finishes the run without
redoing finished epochs."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, real_data_root

# tiny.yaml with a few more epochs, so every stage lives long enough to be killed inside
RUN = ["run", str(ROOT / "recipes" / "tiny.yaml"), "--until", "export", "-q",
       "--set", "teacher.epochs=3", "--set", "distill.epochs=3", "--set", "qat.epochs=2"]

# (name, condition on the run directory that triggers the kill); each becomes true only after the
# previous one, so one run is killed, resumed, killed again further on, and so on
KILL_POINTS = [
    ("teacher, after its first epoch checkpoint", lambda d: (d / "teacher" / "checkpoint.pt").is_file()),
    ("distill, once the teacher-output cache appears", lambda d: any((d / "cache").glob("teacher-*/pairing0/*.npy"))),
    ("distill, after the student's first epoch", lambda d: (d / "distill" / "student" / "checkpoint.pt").is_file()),
    ("qat, after PTQ calibration", lambda d: (d / "qat" / "ptq.pth").is_file()),
    ("export, after the first ONNX file", lambda d: any((d / "export").glob("*.onnx"))),
]


def _edgekd(args, env, **kw):
    # stderr to a file, not a pipe: nobody reads while the child runs, and a full pipe would stall it
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "edgekd", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=log, text=True, **kw)
    proc.log = log
    return proc


def _stderr(proc) -> str:
    proc.log.seek(0)
    return proc.log.read()


def _kill_when(proc, condition, run_dir: Path, timeout: float = 240) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            return False
        if condition(run_dir):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"the condition was not met within {timeout} s")


def _doctor(run_dir, env) -> tuple[int, dict]:
    p = subprocess.run([sys.executable, "-m", "edgekd", "doctor", str(run_dir), "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {"stderr": p.stderr}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    env = {**os.environ, "EDGEKD_DATA": str(real_data_root()), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run_dir = tmp_path_factory.mktemp("crash") / "tiny"
    rounds = []
    for i, (name, condition) in enumerate(KILL_POINTS):
        proc = _edgekd([*RUN, "--run-dir", run_dir, *(["--resume"] if i else [])], env)
        killed = _kill_when(proc, condition, run_dir)
        stderr = _stderr(proc)
        teacher_ck = run_dir / "teacher" / "checkpoint.pt"
        epoch = torch.load(teacher_ck, weights_only=True)["epoch"] if name.startswith("teacher") else None
        rounds.append({"name": name, "killed": killed, "returncode": proc.returncode, "stderr": stderr,
                       "doctor": _doctor(run_dir, env), "teacher_epoch_at_kill": epoch})
    final = _edgekd([*RUN, "--run-dir", run_dir, "--resume"], env)
    final.wait(timeout=600)
    return run_dir, rounds, (final.returncode, "", _stderr(final)), _doctor(run_dir, env)


def test_every_kill_point_was_reached_and_killed(killed_and_resumed):
    _, rounds, _, _ = killed_and_resumed
    for r in rounds:
        assert r["killed"] and r["returncode"] == -signal.SIGKILL, (r["name"], r["stderr"][-2000:])


def test_after_every_kill_the_manifest_points_only_at_whole_files(killed_and_resumed):
    _, rounds, _, _ = killed_and_resumed
    for r in rounds:
        code, report = r["doctor"]
        assert code == 0 and report["ok"], (r["name"], report)


def test_resume_continues_from_the_checkpoint_of_the_killed_teacher(killed_and_resumed):
    _, rounds, _, _ = killed_and_resumed
    epoch = rounds[0]["teacher_epoch_at_kill"]
    assert epoch >= 1
    # the next round (started with --resume) said where it continued; nothing finished was redone
    said = re.findall(r"teacher: resuming after epoch (\d+)/3", rounds[1]["stderr"])
    assert said == [str(epoch)]


def test_the_resumed_run_finishes_whole(killed_and_resumed):
    run_dir, _, (code, out, err), (doctor_code, report) = killed_and_resumed
    assert code == 0, err[-3000:]
    assert doctor_code == 0 and report["ok"], report
    # what is left to warn about: only the temp files the killed writers dropped
    assert all("temp file" in w for w in report["warnings"]), report["warnings"]
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert all(stages[s]["status"] == "done" for s in ("teacher", "distill", "qat", "export"))
    history = json.loads((run_dir / "teacher" / "eval.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]  # the killed epochs were neither lost nor repeated


def test_doctor_clean_removes_the_temp_files_of_killed_writers(killed_and_resumed, tmp_path):
    import shutil

    run_dir, _, _, _ = killed_and_resumed
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "qat" / ".student.pth.x1y2.tmp").write_bytes(b"half a file")
    p = subprocess.run([sys.executable, "-m", "edgekd", "doctor", str(copy), "--clean"], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0 and "removed" in p.stdout
    assert not list(copy.rglob(".*.tmp"))


def test_doctor_finds_a_truncated_artifact_and_a_corrupt_cache(killed_and_resumed, tmp_path):
    import shutil

    run_dir, _, _, _ = killed_and_resumed
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    weights = copy / "distill" / "student" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    npy = next(copy.glob("cache/teacher-*/pairing0/logits.npy"))
    npy.write_bytes(npy.read_bytes()[:200])
    code, report = _doctor(copy, env)
    assert code == 1 and not report["ok"]
    text = " ".join(report["errors"])
    assert "model.safetensors" in text and "sha256 differs" in text and "corrupt teacher-output cache" in text
