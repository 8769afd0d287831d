"""The run directory: a frozen recipe, every artifact, and manifest.json that points at them.

Contract (DESIGN.md): a stage writes its files first (temp file + rename), then records itself in
the manifest last, so an interrupted stage leaves the previous state intact and the manifest never
points at a half-written file. Re-running a stage marks every downstream stage stale.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from edgekd import __version__, stages
from edgekd.errors import RecipeError, RunDirError
from edgekd.files import (  # noqa: F401  (atomic_*: re-exported for scripts written against rundir)
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    is_writer,
    sha256_file,
    versions,
)
from edgekd.recipe import Recipe, dump_recipe, load_recipe

MANIFEST = "manifest.json"
RECIPE = "recipe.yaml"
SCHEMA_VERSION = 1


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --------------------------------------------------------------------------- the run directory


class RunDir:
    def __init__(self, path: Path, recipe: Recipe, manifest: dict):
        self.path, self.recipe, self.manifest = Path(path), recipe, manifest
        self.begun = False  # a stage of this process has started changing files (see pipeline.session)
        self.replaced_recipe = False  # create() swapped in a changed recipe (its stale stages re-run)

    # ---- opening

    @classmethod
    def create(cls, path: Path, recipe: Recipe, force: bool = False) -> RunDir:
        """Open or start the run directory for `recipe`, freezing the recipe into it."""
        path = Path(path)
        frozen = dump_recipe(recipe)
        if (path / RECIPE).exists() and (path / MANIFEST).exists():
            try:  # compare meaning, not text: a newer edgekd may add defaulted fields to the dump
                old = load_recipe(path / RECIPE)
                existing = dump_recipe(old)
            except RecipeError:
                old, existing = None, None
            if existing == frozen and (path / RECIPE).read_text(encoding="utf-8") != frozen:
                atomic_write_text(path / RECIPE, frozen)
            if existing != frozen:
                run = cls.open(path, check_recipe=False)  # the old recipe may no longer validate
                if not force and run.manifest["stages"]:  # nothing recorded yet: nothing to lose
                    raise RunDirError(
                        f"{path} holds a run of a different recipe; pass --run-dir NEW_DIR for a new run "
                        "or --force to replace the recipe (stages whose settings changed, and those after "
                        "them, become stale)"
                    )
                run.recipe = recipe
                first = first_changed_stage(old, recipe)
                changed = (first, *stages.after(first)) if first else ()
                for name, stage in run.manifest["stages"].items():
                    if name in changed or name not in stages.NAMES:
                        stage["status"] = "stale"
                run.save()  # stale first: an interruption here must not leave old stages "done"
                atomic_write_text(path / RECIPE, frozen)
                run.replaced_recipe = True  # `run --force` then re-runs the stale stages only
                return run
            return cls.open(path)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {"schema": SCHEMA_VERSION, "edgekd_version": __version__, "name": recipe.name,
                    "created": _now(), "recipe": RECIPE, "stages": {}}
        run = cls(path, recipe, manifest)
        run.save()
        atomic_write_text(path / RECIPE, frozen)
        return run

    @classmethod
    def open(cls, path: Path, check_recipe: bool = True) -> RunDir:
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise RunDirError(f"{path} is not a run directory (no {MANIFEST}); start one with `edgekd run RECIPE`")
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise RunDirError(f"{path / MANIFEST} is corrupt; re-run the pipeline into a new --run-dir") from e
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
            raise RunDirError(f"{path / MANIFEST} is corrupt; re-run the pipeline into a new --run-dir")
        if not check_recipe:
            return cls(path, None, manifest)
        if not (path / RECIPE).is_file():
            raise RunDirError(f"{path} is incomplete (no {RECIPE}); start again with `edgekd run RECIPE --run-dir {path}`")
        return cls(path, load_recipe(path / RECIPE), manifest)

    def save(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def reload(self) -> None:
        """Re-read the manifest another process (rank 0 under torchrun) has written."""
        self.manifest = RunDir.open(self.path, check_recipe=False).manifest

    # ---- reading stages

    def stage(self, name: str) -> dict | None:
        return self.manifest["stages"].get(name)

    def is_done(self, name: str) -> bool:
        st = self.stage(name)
        return bool(st) and st.get("status") == "done" and not self.verify(name)

    def require(self, name: str) -> dict:
        st = self.stage(name)
        if not st or st.get("status") != "done":
            state = "stale" if st else "missing"
            raise RunDirError(f"stage '{name}' is {state} in {self.path}; run `edgekd {name} {self.path}` first")
        return st

    def artifact(self, stage: str, key: str, verify: bool = True) -> Path:
        """The path of a recorded output, its sha256 checked against the manifest."""
        entry = self.require(stage)["outputs"].get(key)
        if entry is None:
            raise RunDirError(f"stage '{stage}' recorded no '{key}' output; re-run `edgekd {stage} {self.path}`")
        path = self.path / entry["path"]
        if not path.is_file():
            raise RunDirError(f"{path} is missing; re-run `edgekd {stage} {self.path}`")
        if verify and sha256_file(path) != entry["sha256"]:
            raise RunDirError(f"{path} changed since stage '{stage}' wrote it (sha256 differs); "
                              f"re-run `edgekd {stage} {self.path}`")
        return path

    def stage_dir(self, name: str) -> Path:
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ---- recording

    def begin(self, name: str) -> float:
        """Mark `name` as running (and everything after it stale) before any of its files change, so
        an interrupted re-run is never mistaken for a finished stage."""
        self.begun = True
        entry = self.manifest["stages"].get(name)
        if entry is not None:
            entry["status"] = "running"
            self._stale_after(name)
            self.save()
        return time.time()

    def _stale_after(self, name: str) -> None:
        for later in stages.after(name):
            if later in self.manifest["stages"]:
                self.manifest["stages"][later]["status"] = "stale"

    def _file_entry(self, path: Path) -> dict:
        path = Path(path)
        return {"path": os.path.relpath(path, self.path), "sha256": sha256_file(path), "bytes": path.stat().st_size}

    def record(self, name: str, *, started: float, outputs: dict[str, Path], inputs: dict[str, Path] | None = None,
               metrics: dict | None = None, status: str = "done", extra: dict | None = None) -> dict:
        """Record a finished stage (its files already written) and mark downstream stages stale.
        Under torchrun only rank 0 records; the others re-read the manifest after the stage."""
        if not is_writer():
            return {}
        entry = {
            "status": status,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "finished": _now(),
            "seconds": round(time.time() - started, 2),
            "inputs": {k: self._file_entry(p) for k, p in (inputs or {}).items()},
            "outputs": {k: self._file_entry(p) for k, p in outputs.items()},
            "versions": versions(),
            "metrics": metrics or {},
        }
        entry.update(extra or {})
        self.manifest["stages"][name] = entry
        self._stale_after(name)
        self.save()
        return entry

    def verify(self, name: str | None = None) -> list[str]:
        """Problems with the recorded outputs of stage `name` (default: every stage): a malformed
        entry, a missing file, a changed size or sha256. Empty when all is whole."""
        problems = []
        for stage in [name] if name else list(self.manifest["stages"]):
            for key, entry in (self.stage(stage) or {}).get("outputs", {}).items():
                fix = f"re-run `edgekd {stage} {self.path} --force`"
                if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or "sha256" not in entry:
                    problems.append(f"{stage}.{key}: the manifest entry is malformed; {fix}")
                    continue
                f = self.path / entry["path"]
                if not f.is_file():
                    problems.append(f"{stage}.{key}: {f} is missing; {fix}")
                elif f.stat().st_size != entry.get("bytes", f.stat().st_size) or sha256_file(f) != entry["sha256"]:
                    problems.append(f"{stage}.{key}: {f} changed since the stage wrote it (sha256 differs); {fix}")
            bundle = (self.stage(stage) or {}).get("bundle")  # verified file by file by its own manifest
            if isinstance(bundle, str) and not (self.path / bundle / "manifest.json").is_file():
                problems.append(f"{stage}.bundle: {self.path / bundle} is missing; re-run `edgekd {stage} "
                                f"{self.path} --force`")
        return problems


def first_changed_stage(old: Recipe | None, new: Recipe) -> str | None:
    """The earliest stage whose recipe sections differ between two recipes (None: no stage's)."""
    return stages.first_changed(None if old is None else old.model_dump(mode="json"), new.model_dump(mode="json"))
