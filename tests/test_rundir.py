"""Run directory contract: atomic files, hashes, versions, stale marking, tamper detection."""
import json
import time

import pytest

from edgekd.errors import RunDirError
from edgekd.recipe import recipe_from_dict
from edgekd.rundir import RunDir, atomic_path, atomic_write_text, sha256_file

RECIPE = recipe_from_dict({"name": "r", "data": {"name": "avdigits"}})


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]  # no temp file left behind


def test_record_writes_hashes_versions_and_marks_downstream_stale(tmp_path):
    run = RunDir.create(tmp_path / "run", RECIPE)
    a = atomic_write_text(run.stage_dir("teacher") / "model.txt", "teacher v1")
    run.record("teacher", started=0.0, outputs={"weights": a}, metrics={"accuracy": 0.9, "params": 10})
    b = atomic_write_text(run.stage_dir("distill") / "student.txt", "student")
    run.record("distill", started=0.0, outputs={"weights": b}, inputs={"teacher": a}, metrics={"accuracy": 0.8})

    manifest = json.loads((run.path / "manifest.json").read_text())
    entry = manifest["stages"]["teacher"]["outputs"]["weights"]
    assert entry == {"path": "teacher/model.txt", "sha256": sha256_file(a), "bytes": len("teacher v1")}
    assert manifest["stages"]["distill"]["inputs"]["teacher"]["sha256"] == sha256_file(a)
    assert manifest["stages"]["teacher"]["versions"]["torch"]
    assert {"status", "started", "finished", "inputs", "outputs", "versions", "metrics"} <= set(manifest["stages"]["distill"])

    run.record("teacher", started=0.0, outputs={"weights": a}, metrics={"accuracy": 0.91, "params": 10})
    again = RunDir.open(run.path)
    assert again.stage("distill")["status"] == "stale"
    with pytest.raises(RunDirError, match="stale"):
        again.require("distill")


def test_artifact_refuses_changed_or_missing_file(tmp_path):
    run = RunDir.create(tmp_path / "run", RECIPE)
    a = atomic_write_text(run.stage_dir("teacher") / "model.txt", "teacher")
    run.record("teacher", started=0.0, outputs={"weights": a})
    assert run.artifact("teacher", "weights") == a
    a.write_text("tampered")
    with pytest.raises(RunDirError, match="changed since stage 'teacher'"):
        run.artifact("teacher", "weights")
    assert run.verify() and "changed" in run.verify()[0]
    a.unlink()
    with pytest.raises(RunDirError, match="missing"):
        run.artifact("teacher", "weights")


def test_missing_stage_names_the_command(tmp_path):
    run = RunDir.create(tmp_path / "run", RECIPE)
    with pytest.raises(RunDirError, match="edgekd teacher"):
        run.artifact("teacher", "weights")


def test_different_recipe_is_refused_unless_forced(tmp_path):
    run = RunDir.create(tmp_path / "run", RECIPE)
    a = atomic_write_text(run.stage_dir("teacher") / "m", "x")
    run.record("teacher", started=0.0, outputs={"weights": a})
    other = recipe_from_dict({"name": "r", "data": {"name": "avdigits"}, "teacher": {"epochs": 2}})
    with pytest.raises(RunDirError, match="--run-dir"):
        RunDir.create(tmp_path / "run", other)
    forced = RunDir.create(tmp_path / "run", other, force=True)
    assert forced.stage("teacher")["status"] == "stale"
    assert RunDir.open(tmp_path / "run").recipe.teacher.epochs == 2


def test_forcing_a_changed_section_stales_only_that_stage_and_later(tmp_path):
    run = RunDir.create(tmp_path / "run", RECIPE)
    for stage in ("teacher", "distill", "qat"):
        run.record(stage, started=0.0, outputs={"f": atomic_write_text(run.stage_dir(stage) / "f", stage)})
    changed = recipe_from_dict({"name": "r", "data": {"name": "avdigits"}, "distill": {"lr": 0.01}})
    forced = RunDir.create(tmp_path / "run", changed, force=True)
    assert [forced.stage(s)["status"] for s in ("teacher", "distill", "qat")] == ["done", "stale", "stale"]
    qat_only = recipe_from_dict({"name": "r", "data": {"name": "avdigits"}, "distill": {"lr": 0.01}, "qat": {"epochs": 9}})
    for stage in ("distill", "qat"):
        forced.record(stage, started=0.0, outputs={"f": atomic_write_text(forced.stage_dir(stage) / "f", stage)})
    again = RunDir.create(tmp_path / "run", qat_only, force=True)
    assert [again.stage(s)["status"] for s in ("teacher", "distill", "qat")] == ["done", "done", "stale"]


def test_corrupt_manifest_and_non_run_dir(tmp_path):
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir.open(tmp_path)
    run = RunDir.create(tmp_path / "run", RECIPE)
    (run.path / "manifest.json").write_text("{not json")
    with pytest.raises(RunDirError, match="corrupt"):
        RunDir.open(run.path)


def test_begin_marks_a_rerun_running_so_an_interrupted_stage_is_not_done(tmp_path):
    run = RunDir.create(tmp_path / "run", RECIPE)
    a = atomic_write_text(run.stage_dir("teacher") / "m", "x")
    run.record("teacher", started=0.0, outputs={"weights": a})
    run.record("distill", started=0.0, outputs={"weights": a})
    run.begin("teacher")  # ... and then the process is killed
    again = RunDir.open(run.path)
    assert again.stage("teacher")["status"] == "running" and not again.is_done("teacher")
    assert again.stage("distill")["status"] == "stale"
    assert again.stage("teacher")["outputs"]["weights"]["sha256"] == sha256_file(a)  # previous record kept


def test_interrupted_creation_is_recoverable(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text("name: old\n")  # killed before the manifest existed
    run = RunDir.create(tmp_path / "run", RECIPE)
    assert RunDir.open(run.path).recipe == RECIPE


def test_run_force_after_a_recipe_change_reruns_only_what_it_made_stale(tmp_path, capsys):
    """`edgekd run --force` with a changed distill section keeps the teacher (docs/recipes.md);
    with the same recipe, --force re-runs every stage."""
    from conftest import cli
    from test_pretrained import folder

    r = tmp_path / "r.yaml"
    r.write_text(f"""
name: force
data: {{name: folder, path: {folder(tmp_path)}, modalities: {{img: image, caption: text}}, image_size: 8}}
teacher: {{hidden: 16, layers: 1, heads: 2, epochs: 1, batch_size: 8, image_patch: 4}}
student: {{name: fusion_tiny}}
distill: {{epochs: 1, batch_size: 8, baseline: false}}
""")
    run = tmp_path / "run"

    def finished():
        stages = json.loads((run / "manifest.json").read_text())["stages"]
        return {k: v["finished"] for k, v in stages.items()}

    assert cli(capsys, "run", r, "--run-dir", run, "--until", "distill", "-q")[0] == 0
    first = finished()
    time.sleep(1.1)  # the manifest's times are to the second
    code, out, err = cli(capsys, "run", r, "--run-dir", run, "--until", "distill", "--set", "distill.epochs=2",
                         "--force", "-q")
    assert code == 0 and "teacher: up to date" in out, err
    second = finished()
    assert second["teacher"] == first["teacher"] and second["distill"] != first["distill"]
    code, out, err = cli(capsys, "run", r, "--run-dir", run, "--until", "distill", "--set", "distill.epochs=2",
                         "--force", "-q")
    assert code == 0 and finished()["teacher"] != first["teacher"], err
