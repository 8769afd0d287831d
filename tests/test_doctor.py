"""`edgekd doctor` on hand-made run directories: whole, tampered, malformed, interrupted."""
import json

import numpy as np
import torch

from edgekd.cli import main
from edgekd.recipe import recipe_from_dict, recipe_hash
from edgekd.rundir import RunDir, atomic_write_json, atomic_write_text


def _run(tmp_path):
    recipe = recipe_from_dict({"name": "r", "data": {"name": "avdigits"}})
    run = RunDir.create(tmp_path / "run", recipe)
    weights = atomic_write_text(run.stage_dir("teacher") / "model.safetensors", "w" * 100)
    run.record("teacher", started=0.0, outputs={"weights": weights}, metrics={"accuracy": 0.9})
    return run, recipe


def _doctor(capsys, *args):
    try:
        main(["doctor", *map(str, args)])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_whole_run_directory_passes(tmp_path, capsys):
    run, _ = _run(tmp_path)
    code, out, _ = _doctor(capsys, run.path)
    assert code == 0 and "teacher: done, 1 outputs verified" in out and "0 errors, 0 warnings" in out


def test_a_changed_file_and_a_malformed_entry_are_errors_not_tracebacks(tmp_path, capsys):
    run, _ = _run(tmp_path)
    (run.path / "teacher" / "model.safetensors").write_text("x" * 100)  # same size, other bytes
    run.manifest["stages"]["distill"] = {"status": "done", "outputs": {"weights": {"sha256": "0"}}}
    run.manifest["stages"]["qat"] = ["not", "a", "dict"]
    run.save()
    code, out, err = _doctor(capsys, run.path, "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"] and "Traceback" not in err
    text = " ".join(report["errors"])
    assert "sha256 differs" in text and "distill.weights: the manifest entry is malformed" in text
    assert "stage 'qat' is malformed" in text


def test_unfinished_checkpoints_say_where_resume_continues_or_that_it_will_refuse(tmp_path, capsys):
    run, recipe = _run(tmp_path)
    ck = run.stage_dir("distill") / "student" / "checkpoint.pt"
    ck.parent.mkdir(parents=True)
    torch.save({"epoch": 2, "fingerprint": f"{recipe_hash(recipe)}:data:teacher"}, ck)
    old = run.stage_dir("qat") / "qad" / "checkpoint.pt"
    old.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "fingerprint": "another-recipe:data"}, old)
    code, out, _ = _doctor(capsys, run.path)
    assert code == 0
    assert f"holds epoch 2/{recipe.distill.epochs}" in out and "--resume` continues" in out
    assert "written for another recipe; --resume will refuse it" in out


def test_a_truncated_checkpoint_and_a_corrupt_cache_are_errors(tmp_path, capsys):
    run, _ = _run(tmp_path)
    ck = run.stage_dir("distill") / "checkpoint.pt"
    ck.write_bytes(b"PK\x03\x04 truncated")
    pairing = run.path / "cache" / "teacher-abc-def" / "pairing0"
    pairing.mkdir(parents=True)
    np.save(pairing / "logits.npy", np.zeros((5, 3), np.float32))
    (pairing / "features.npy").write_bytes(b"")  # zero bytes: np.load raises EOFError
    atomic_write_json(pairing / "meta.json", {"pairing": 0, "files": ["features", "logits"], "rows": 5})
    (run.path / "cache" / "teacher-abc-def" / "pairing1").mkdir()  # interrupted: no meta.json
    code, out, err = _doctor(capsys, run.path)
    assert code == 1 and "Traceback" not in err
    assert "checkpoint.pt is unreadable" in out and "corrupt teacher-output cache" in out
    assert "pairing1: incomplete teacher-output cache" in out


def test_clean_removes_temp_files_and_a_bundle_is_checked_alone(tmp_path, capsys):
    run, _ = _run(tmp_path)
    (run.path / "teacher" / ".model.safetensors.abc.tmp").write_text("half")
    code, out, _ = _doctor(capsys, run.path)
    assert code == 0 and "1 temp file(s)" in out
    code, out, _ = _doctor(capsys, run.path, "--clean")
    assert code == 0 and "removed 1 temp file(s)" in out and not list(run.path.rglob(".*.tmp"))
    code, _, err = _doctor(capsys, tmp_path)
    assert code == 1 and "neither a run directory nor a bundle" in err
