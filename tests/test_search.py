"""`student: auto` on the tiny recipe: trials under a measured budget, the choice trained by the distill
stage, resume after a kill, and the one-line error when no student meets the budget."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, cli

TINY = ROOT / "recipes" / "tiny.yaml"
AUTO = ["--set", "student.name=auto", "--set", "student.budget={latency_ms: 2.0, params: 50000}",
        "--set", "search.max_epochs=3", "--set", "search.latency_seconds=0.3"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny teacher, then a 5-trial search and the distill stage on its choice."""
    if not os.environ.get("EDGEKD_DATA"):
        pytest.skip("EDGEKD_DATA is not set (CI sets it to ../shared/data)")
    from edgekd.cli import main

    run_dir = tmp_path_factory.mktemp("runs") / "auto"
    try:
        main(["run", str(TINY), "--run-dir", str(run_dir), "--until", "distill", "-q", *AUTO,
              "--set", "search.trials=5"])
    except SystemExit as e:
        assert not e.code
    return run_dir


def _stages(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())["stages"]


def test_the_search_records_its_trials_and_a_choice_within_the_budget(searched):
    st = _stages(searched)
    m = st["search"]["metrics"]
    trials = json.loads((searched / "search" / "trials.json").read_text())
    assert len(trials) == m["trials"] and sum(t["feasible"] for t in trials) == 5  # over-budget ones do not count
    assert m["latency"]["hi"] <= 2.0 and m["params"] <= 50_000  # the budget, met by the choice
    chosen = next(t for t in trials if t["trial"] == m["trial"])
    assert chosen["state"] == "complete" and chosen["feasible"]
    assert all(t["val_accuracy"] in (None, 0.0) or t["val_accuracy"] <= m["val_accuracy"]
               for t in trials if t["state"] == "complete" and t["feasible"])
    assert not any(t["feasible"] for t in trials if t["params"] > 50_000)  # over budget: refused, not trained
    assert "**Chosen**" in (searched / "search" / "trials.md").read_text()


def test_the_distill_stage_trains_the_searched_student(searched):
    st = _stages(searched)
    config = json.loads((searched / "distill" / "student" / "config.json").read_text())
    choice = st["search"]["metrics"]["choice"]
    assert config["name"] == choice["student"]["name"]
    assert config["options"]["fusion"] == choice["student"]["fusion"]
    assert st["distill"]["metrics"]["params"] == st["search"]["metrics"]["params"]
    assert len(json.loads((searched / "distill" / "eval.json").read_text())["student"]["history"]) == \
        choice["distill"]["epochs"]
    # TensorBoard event files for every trained trial and stage (the tensorboard extra is installed here)
    pytest.importorskip("tensorboard")
    for folder in ("teacher", "distill/student", f"search/trial-{st['search']['metrics']['trial']}"):
        assert list((searched / "tb" / folder).glob("events.out.tfevents.*")), folder


def test_a_killed_search_resumes_losing_at_most_the_interrupted_trial(searched, tmp_path):
    import optuna

    run_dir = tmp_path / "killed"
    import shutil

    shutil.copytree(searched, run_dir, ignore=shutil.ignore_patterns("search", "distill", "cache", "tb"))
    m = json.loads((run_dir / "manifest.json").read_text())
    m["stages"] = {"teacher": m["stages"]["teacher"]}
    (run_dir / "manifest.json").write_text(json.dumps(m))
    cmd = [sys.executable, "-m", "edgekd", "run", str(TINY), "--run-dir", str(run_dir), "--until", "search", "-q",
           "--force", *AUTO, "--set", "search.trials=40", "--set", "search.max_epochs=6"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    db, deadline, done = run_dir / "search" / "study.db", time.time() + 120, 0
    try:
        while time.time() < deadline and done < 2:
            time.sleep(0.5)
            done = _finished(db)  # read-only: opening optuna's storage here would race the search creating it
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert done >= 2, "the search never finished two trials"
    with _quiet():
        before = optuna.load_study(study_name="student", storage=f"sqlite:///{db}").trials
    finished = {t.number: t.params for t in before if t.state.is_finished()}
    cut = [t.params for t in before if t.state.name == "RUNNING"]
    code, out, err = _run(cmd[3:], "--resume", "--set", "search.trials=" + str(len(finished) + 2))
    assert code == 0, err
    with _quiet():
        after = optuna.load_study(study_name="student", storage=f"sqlite:///{db}").trials
    assert {t.number: t.params for t in after if t.number in finished} == finished  # nothing finished is lost
    if cut:  # the interrupted trial is failed and asked again (a kill while it sampled leaves only some params)
        assert any(cut[0].items() <= t.params.items() and t.state.name != "FAIL"
                   for t in after if t.number not in finished)
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["search"]["metrics"]["choice"]


def _finished(db) -> int:
    import sqlite3

    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED', 'FAIL')").fetchone()[0]
    except sqlite3.Error:  # not created yet, or being written
        return 0


def _run(args, *more):
    r = subprocess.run([sys.executable, "-m", "edgekd", *args, *more], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    return r.returncode, r.stdout, r.stderr


class _quiet:
    def __enter__(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)

    def __exit__(self, *exc):
        return False


def test_no_student_meeting_the_budget_is_a_one_line_error_naming_the_fastest(searched, capsys, tmp_path):
    import shutil

    run_dir = tmp_path / "tight"
    shutil.copytree(searched, run_dir, ignore=shutil.ignore_patterns("search", "distill", "cache", "tb"))
    m = json.loads((run_dir / "manifest.json").read_text())
    m["stages"] = {"teacher": m["stages"]["teacher"]}
    (run_dir / "manifest.json").write_text(json.dumps(m))
    code, out, err = cli(capsys, "run", TINY, "--run-dir", run_dir, "--until", "search", "-q", "--force", "--set",
                         "student.name=auto", "--set", "student.budget={latency_ms: 0.012, params: 50000}",
                         "--set", "search.trials=3", "--set", "search.latency_seconds=0.2")
    line = err.strip().splitlines()[-1]
    assert code != 0 and "Traceback" not in err
    assert "no searched student meets" in line and "the fastest" in line and "ms" in line
    assert (run_dir / "search" / "trials.md").is_file()  # the table of what was tried stays for the user


def test_a_budget_on_a_named_student_is_refused():
    from edgekd.errors import RecipeError
    from edgekd.recipe import load_recipe

    with pytest.raises(RecipeError, match="student.budget applies to student.name: auto"):
        load_recipe(TINY, ["student.budget={latency_ms: 1}"])
    r = load_recipe(TINY, ["student.name=auto", "student.budget={latency_ms: 1, params: 3%}"])
    assert r.student.budget.params == "3%"
    with pytest.raises(RecipeError, match="percentage"):
        load_recipe(TINY, ["student.name=auto", "student.budget={params: 300%}"])
