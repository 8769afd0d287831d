"""`edgekd doctor PATH`: is a run directory (or a bundle) whole, and what would resume do?

Findings are errors (the manifest points at something missing, changed or unreadable: a re-run is
needed), warnings (an interrupted stage, an incomplete cache, temp files a killed writer left:
harmless, `--resume` or `--clean` deals with them) or notes. Torch is only imported to read the
epoch of a training checkpoint, so a device install can check bundles.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgekd import stages
from edgekd.contract import source_kind
from edgekd.errors import EdgekdError, RunDirError, UsageError


@dataclass
class Report:
    path: Path
    kind: str  # "run" or "bundle"
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    temp_files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "ok": self.ok, "errors": self.errors,
                "warnings": self.warnings, "notes": self.notes, "temp_files": [str(p) for p in self.temp_files]}


def temp_files(root: Path) -> list[Path]:
    """Leftovers of writers killed mid-write: `.NAME.*.tmp` files and `.NAME.tmp-*`/`.old-*` folders.
    Their names start with a dot and end unlike any artifact, so nothing ever loads them."""
    found = [p for p in root.rglob(".*.tmp") if p.is_file()]
    found += [p for pat in (".*.tmp-*", ".*.old-*") for p in root.rglob(pat) if p.is_dir()]
    return sorted(found)


def check(path: Path) -> Report:
    """Check a run directory or a bundle (a bundle needs nothing but the core install)."""
    path = Path(path)
    try:
        kind = source_kind(path)
    except UsageError:
        if (path / "manifest.json").is_file():  # an unreadable or foreign manifest: the bundle check says why
            return check_bundle(path)
        raise RunDirError(f"{path} is neither a run directory nor a bundle (no manifest.json); "
                          "give the folder `edgekd run` or `edgekd export` made") from None
    return check_run(path) if kind == "run" else check_bundle(path)


def check_bundle(path: Path) -> Report:
    from edgekd.runtime.bundle import load_bundle

    report = Report(path, "bundle", temp_files=temp_files(path))
    try:
        bundle = load_bundle(path)
        report.notes.append(f"bundle: {len(bundle.manifest['files'])} files verified (size and sha256)")
    except EdgekdError as e:
        report.errors.append(str(e))
    _warn_temp(report)
    return report


def check_run(path: Path) -> Report:
    from edgekd.recipe import load_recipe
    from edgekd.rundir import RECIPE, RunDir

    report = Report(path, "run", temp_files=temp_files(path))
    run = RunDir.open(path, check_recipe=False)  # a corrupt manifest is a RunDirError: one line, exit 1
    try:
        recipe = load_recipe(path / RECIPE)
    except EdgekdError as e:
        recipe = None
        report.errors.append(f"recipe.yaml: {e}")
    recorded = run.manifest["stages"]
    for name, st in list(recorded.items()):
        if not isinstance(st, dict) or not isinstance(st.get("outputs", {}), dict):
            report.errors.append(f"manifest.json: the entry of stage '{name}' is malformed; re-run "
                                 f"`edgekd {name} {path} --force`")
            recorded.pop(name)
            continue
        status = st.get("status")
        bad = run.verify(name) if status == "done" else []
        report.errors += bad
        if status == "done" and not bad:
            report.notes.append(f"{name}: done, {len(st.get('outputs', {}))} outputs verified")
        elif status == "running":
            report.warnings.append(f"{name}: interrupted while re-running; continue with "
                                   f"`edgekd run {path} --resume` (finished epochs are kept)")
        elif status == "stale":
            report.warnings.append(f"{name}: stale (an earlier stage or its settings changed); "
                                   f"`edgekd run {path}` re-runs it")
        elif status == "skipped":
            report.notes.append(f"{name}: skipped ({st.get('metrics', {}).get('skipped', 'see the manifest')})")
    for name in stages.NAMES:
        if name not in recorded:
            report.notes.append(f"{name}: not run yet")
    for stage in stages.STAGES:
        if stage.trains and recorded.get(stage.name, {}).get("status") != "done":
            _check_checkpoints(report, path, stage.name, recipe)
    _check_cache(report, path)
    _check_store(report, recipe)
    if (path / "bundle").is_dir() and recorded.get("export", {}).get("status") == "done":
        sub = check_bundle(path / "bundle")
        report.errors += [f"bundle: {e}" for e in sub.errors]
        report.notes += sub.notes
    _warn_temp(report)
    return report


def _check_checkpoints(report: Report, path: Path, stage: str, recipe) -> None:
    from edgekd.recipe import recipe_hash

    for ck in sorted((path / stage).rglob("checkpoint.pt")) if (path / stage).is_dir() else []:
        try:
            import torch

            state = torch.load(ck, map_location="cpu", weights_only=True)
            epoch = int(state["epoch"])
            written_for = str(state.get("fingerprint", "")).split(":")[0]
        except ModuleNotFoundError:
            report.notes.append(f"{ck}: present (install edgekd[train] to read its epoch)")
            continue
        except Exception as e:  # a truncated or foreign file: resume would refuse it
            report.errors.append(f"{ck} is unreadable ({type(e).__name__}); delete it and run without --resume")
            continue
        total = _epochs(recipe, stage)
        of = f"/{total}" if total else ""
        if recipe is not None and written_for != recipe_hash(recipe):
            report.warnings.append(f"{stage}: checkpoint {ck.relative_to(path)} (epoch {epoch}) was written for another "
                                   "recipe; --resume will refuse it: delete it or re-run the stage without --resume")
            continue
        report.warnings.append(f"{stage}: unfinished; checkpoint {ck.relative_to(path)} holds epoch {epoch}{of}: "
                               f"`edgekd run {path} --resume` continues from there")


def _epochs(recipe, stage: str) -> int | None:
    if recipe is None:
        return None
    return getattr(getattr(recipe, stage, None), "epochs", None)


def _check_cache(report: Report, path: Path) -> None:
    import numpy as np

    for pairing in sorted((path / "cache").glob("teacher-*/pairing*")) if (path / "cache").is_dir() else []:
        meta_file = pairing / "meta.json"
        if not meta_file.is_file():
            report.warnings.append(f"{pairing.relative_to(path)}: incomplete teacher-output cache (interrupted); "
                                   "the next distill recomputes it")
            continue
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            for name in meta["files"]:
                rows = np.load(pairing / f"{name}.npy", mmap_mode="r", allow_pickle=False).shape[0]
                if rows != meta["rows"]:
                    raise ValueError(f"{name}.npy has {rows} rows, meta.json says {meta['rows']}")
        except Exception as e:  # noqa: BLE001 -- any unreadable array is the same finding
            report.errors.append(f"{pairing.relative_to(path)}: corrupt teacher-output cache ({e}); delete the "
                                 "folder and the next distill recomputes it")


def _check_store(report: Report, recipe) -> None:
    """The data store of a folder dataset (in EDGEKD_CACHE): whole, current, or a build cut short."""
    if recipe is None or recipe.data.name != "folder":
        return
    try:
        from edgekd.data.folder import store_state
        from edgekd.data.root import data_root

        level, finding = store_state(recipe.data, data_root(None))
    except ModuleNotFoundError:  # a device install checks bundles, not training data
        return
    except EdgekdError as e:
        level, finding = "warning", f"data store: {e}"
    {"note": report.notes, "warning": report.warnings, "error": report.errors}[level].append(finding)


def _warn_temp(report: Report) -> None:
    if report.temp_files:
        report.warnings.append(f"{len(report.temp_files)} temp file(s) left by an interrupted write (never loaded); "
                               f"`edgekd doctor {report.path} --clean` removes them")


def clean(report: Report) -> int:
    import shutil

    for p in report.temp_files:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return len(report.temp_files)
