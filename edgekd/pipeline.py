"""Resolving what a command works on (a recipe file or a run directory) and chaining stages.

`session` is the one way a command that runs stages gets its run directory: it takes the run's
lock (one writer per run directory), and when the directory was created by this very command and
no stage got as far as changing a file, it removes the directory again on failure, so a recipe
error found while reading the data leaves nothing behind.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from edgekd import distributed as dist
from edgekd import stages
from edgekd.errors import UsageError
from edgekd.files import writing
from edgekd.recipe import load_recipe
from edgekd.rundir import MANIFEST, RunDir
from edgekd.runlock import RunLock


def _resolve(target, run_dir, overrides):
    """(path of the run directory, the recipe to start it with or None to reopen it as it is)."""
    target = Path(target)
    if target.is_dir() and run_dir and Path(run_dir).resolve() != target.resolve():
        raise UsageError("--run-dir applies to a recipe file; the run directory given as target is used as it is")
    if target.is_dir():
        if (target / MANIFEST).is_file():
            if overrides:
                raise UsageError("--set applies to a recipe file, not to an existing run directory; "
                                 "pass the recipe YAML with --run-dir NEW_DIR")
            return target, None
        raise UsageError(f"{target} is a directory but not a run directory (no {MANIFEST}); "
                         "pass a recipe YAML or a directory made by `edgekd run`")
    recipe = load_recipe(target, overrides)
    from edgekd.models import check_names  # the model registry is training-side: checked here, not at load

    check_names(recipe)
    return (Path(run_dir) if run_dir else Path("runs") / recipe.name), recipe


def open_run(target, run_dir=None, overrides=None) -> RunDir:
    """The existing run directory of a recipe (runs/<name>, or --run-dir) or a run directory, for
    reading: it takes no lock and creates nothing. Commands that run stages use `session`."""
    path, _ = _resolve(target, run_dir, overrides)
    return RunDir.open(path)


@contextmanager
def session(target, run_dir=None, overrides=None, force: bool = False, echo=print):
    """The run directory with its lock held for the block (under torchrun: by rank 0)."""
    path, recipe = _resolve(target, run_dir, overrides)
    if dist.active() and not dist.is_main():  # rank 0 creates the directory and holds the lock
        dist.barrier()
        yield RunDir.open(path)
        return
    fresh = not path.exists()
    lock = run = None
    try:
        if recipe is not None:
            with writing(path):
                path.mkdir(parents=True, exist_ok=True)
        elif not (path / MANIFEST).is_file():
            RunDir.open(path)  # the one-line "not a run directory" error
        lock = RunLock(path).acquire()
        if lock.stale_warning():
            echo(f"warning: {lock.stale_warning()}")
        run = RunDir.open(path) if recipe is None else RunDir.create(path, recipe, force=force)
        dist.barrier()
        yield run
    except BaseException:
        if fresh and lock is not None and not (run is not None and run.begun):
            shutil.rmtree(path, ignore_errors=True)  # ours, and no stage changed anything in it
        raise
    finally:
        if lock is not None:
            lock.release()


def run_stage(run: RunDir, stage: str, **kwargs) -> dict | None:
    """Run one stage; under torchrun, None on the ranks that sit a single-process stage out."""
    spec = stages.get(stage)
    if not spec.trains and not dist.is_main():
        return None
    metrics = spec.run(run, **kwargs)
    if spec.trains and dist.active():
        dist.barrier()  # rank 0 has recorded the stage: every rank reads the same manifest next
        run.reload()
    return metrics


def check_until(until: str) -> None:
    if until not in stages.NAMES:
        raise UsageError(f"--until {until!r}: choose one of {', '.join(stages.NAMES)}")


def run_pipeline(run: RunDir, until: str = stages.NAMES[-1], data_root=None, resume: bool = False,
                 force: bool = False, progress=None, echo=print) -> dict:
    """Run every stage up to `until`; stages already done (and not stale) are kept unless `force`."""
    check_until(until)
    results = {}
    for stage in stages.NAMES[: stages.NAMES.index(until) + 1]:
        if run.is_done(stage) and not force:
            echo(f"{stage}: up to date (use --force to re-run)")
            results[stage] = run.stage(stage)["metrics"]
            continue
        results[stage] = run_stage(run, stage, data_root=data_root, resume=resume, progress=progress)
        if results[stage] is not None:
            echo(stages.get(stage).summary(results[stage]))
    return results
