"""The Optuna study behind `student: auto`: storage, resume, the trial loop's bounds, and the record.

- Sampler: TPE with the budget as constraints (`trial.set_constraint`, <= 0 when met): over-budget
  students are learned about without being trained.
- Pruner: Hyperband (successive halving over several brackets) on validation accuracy per epoch.
- Storage: SQLite in the run directory (search/study.db), one row per trial as it ends, so
  `--resume` continues the study. A trial a kill left RUNNING is failed and asked again: a kill loses
  at most the trial it interrupted.
- Bounds: `search.trials` trained trials (to the end or stopped by the pruner; an over-budget student
  costs a second and does not count, up to ATTEMPTS x trials samples) and `search.minutes` of wall
  time (no trial starts after it; a resumed study counts the time its trials already took).
"""
from __future__ import annotations

import json
from pathlib import Path

from edgekd.search.space import describe

STUDY = "student"


def open_study(folder: Path, seed: int, max_epochs: int, resume: bool, first: dict | None = None):
    """The study in folder/study.db: continued with `resume`, else started afresh (with `first`, a
    sampled point's params, as its first trial)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "study.db"
    if not resume:
        db.unlink(missing_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=6)  # constraints: trial.set_constraint
    pruner = optuna.pruners.HyperbandPruner(min_resource=max(1, max_epochs // 9), max_resource=max_epochs,
                                            reduction_factor=3)
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    if not study.trials and first:
        study.enqueue_trial(first)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # a kill's leftover
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params)
    return study


ATTEMPTS = 20  # over-budget samples allowed per counted trial before the search gives up


def over_budget(trial) -> bool:
    return any(c > 0 for c in trial.user_attrs.get("constraint", [0.0]))


def optimize(study, objective, trials: int, minutes: float, catch: tuple = ()) -> None:
    """Run trials until `trials` have been trained (to the end, or stopped by the pruner; students over
    the budget are refused in a second and do not count, up to ATTEMPTS x trials samples) or `minutes`
    have passed, counting a resumed study's."""
    from optuna.trial import TrialState

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

    def counted(s) -> int:
        return sum(t.state in ended and not over_budget(t) for t in s.trials)

    def stop(s, _trial) -> None:
        if counted(s) >= trials or len(s.trials) >= ATTEMPTS * trials:
            s.stop()

    spent = sum(t.duration.total_seconds() for t in study.trials if t.state in ended and t.duration is not None)
    seconds = minutes * 60 - spent
    if counted(study) < trials and len(study.trials) < ATTEMPTS * trials and seconds > 0:
        study.optimize(objective, timeout=seconds, catch=catch, gc_after_trial=True, callbacks=[stop])


def rows(study) -> list[dict]:
    """One dict per trial: its point, state, validation accuracy, size, latency, feasibility."""
    out = []
    for t in study.trials:
        a = t.user_attrs
        if "point" not in a:
            continue
        feasible = all(c <= 0 for c in a.get("constraint", [0.0]))
        out.append({"trial": t.number, "state": t.state.name.lower(), "val_accuracy": t.value,
                    "epochs_run": len(t.intermediate_values), "feasible": feasible, "params": a.get("params"),
                    "size_kb": a.get("size_kb"), "latency": a.get("latency") or {}, "why": a.get("why", ""),
                    "student": describe(a["point"]), "point": a["point"],
                    "seconds": round(t.duration.total_seconds(), 1) if t.duration else None})
    return out


def winner(trials: list[dict]) -> dict | None:
    """The most accurate (validation) finished trial that meets the budget; the faster on a tie."""
    ok = [t for t in trials if t["state"] == "complete" and t["feasible"] and t["val_accuracy"] is not None]
    return max(ok, key=lambda t: (t["val_accuracy"], -(t["latency"].get("value") or 0.0))) if ok else None


def pareto(trials: list[dict]) -> list[int]:
    """Trial numbers that no other finished trial beats on both latency and validation accuracy."""
    timed = sorted((t for t in trials if t["state"] == "complete" and t["latency"].get("value") is not None
                    and t["val_accuracy"]), key=lambda t: (t["latency"]["value"], -t["val_accuracy"]))
    front, best = [], -1.0
    for t in timed:
        if t["val_accuracy"] > best:
            front.append(t["trial"])
            best = t["val_accuracy"]
    return front


def table(trials: list[dict], chosen: dict | None) -> list[str]:
    lines = ["| trial | student | epochs | state | val acc | params | latency ms (95% CI) | meets budget |",
             "|---|---|---|---|---|---|---|---|"]
    for t in sorted(trials, key=lambda t: -(t["val_accuracy"] or 0.0)):
        lat = t["latency"]
        timing = (f"{lat['value']:.4f} [{lat.get('lo') or 0:.4f}, {lat.get('hi') or 0:.4f}]"
                  if lat.get("value") is not None else lat.get("skipped", "–"))
        acc = f"{t['val_accuracy']:.2%}" if t["val_accuracy"] is not None and t["feasible"] else "–"
        mark = " **chosen**" if chosen is t else ""
        state = t["state"] if t["feasible"] else f"over budget ({t['why']})"
        lines.append(f"| {t['trial']}{mark} | {t['student']} | {t['epochs_run']}/{t['point']['distill']['epochs']} | "
                     f"{state} | {acc} | {t['params'] or 0:,} | {timing} | {'yes' if t['feasible'] else 'no'} |")
    return lines


def fastest(trials: list[dict]) -> dict | None:
    timed = [t for t in trials if t["latency"].get("value") is not None]
    return min(timed, key=lambda t: t["latency"]["value"]) if timed else None


def plot_rows(trials: list[dict]) -> list[dict]:
    """Rows in the shape edgekd.plots.budget_png draws (name, val_accuracy, value, lo, hi)."""
    return [{"name": str(t["trial"]), "val_accuracy": t["val_accuracy"], **t["latency"]}
            for t in trials if t["state"] == "complete" and t["val_accuracy"] and t["latency"].get("value")]


def dump(trials: list[dict]) -> str:
    return json.dumps(trials, indent=1, default=str)
