"""`edgekd data prepare` and `edgekd data verify`: the data store of a recipe's folder dataset,
built (or resumed) ahead of a run, and checked byte for byte against the files it came from."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekd.errors import DataError, UsageError

RecipeArg = Annotated[Path, typer.Argument(help="A recipe YAML whose data section names a folder dataset.")]
DataRoot = Annotated[Optional[Path], typer.Option("--data-root", help="Dataset root (default: $EDGEKD_DATA, then ~/.cache/edgekd/data).")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe value, e.g. --set data.workers=2 (repeatable).")]


def _recipe(path: Path, sets):
    from edgekd.recipe import load_recipe

    recipe = load_recipe(path, sets or [])
    if recipe.data.name != "folder":
        raise UsageError(f"{path}: data.name is {recipe.data.name}; the data store is for folder datasets "
                         "(avdigits is small and decoded in memory)")
    return recipe


def prepare(recipe: RecipeArg, data_root: DataRoot = None, set_: Sets = None,
            resume: Annotated[bool, typer.Option("--resume", help="Accepted for symmetry: a cut-short build always continues.")] = False):
    """Decode a folder dataset into its data store (in parallel, resumable); runs reuse it."""
    import sys

    import tokenizers  # noqa: F401  (code loading is not data preparation: the time below is the data's)

    import edgekd.data.folder  # noqa: F401
    from edgekd.data import load_dataset
    from edgekd.progress import progress_bar

    r = _recipe(recipe, set_)
    t0 = time.perf_counter()
    with progress_bar(enabled=sys.stderr.isatty()) as bar:
        data = load_dataset(r, data_root, progress=bar)
    store = data.store
    typer.echo(f"data store {store.path}: {store.rows:,} rows, {len(data.classes)} classes, "
               f"fingerprint {data.fingerprint()} ({time.perf_counter() - t0:.2f} s; when built: scan "
               f"{store.index.get('scan_seconds', 0)} s, decoding {store.index.get('decode_seconds', 0)} s on "
               f"{store.index.get('workers', 1)} workers)")


def verify(recipe: RecipeArg, data_root: DataRoot = None, set_: Sets = None):
    """Re-hash every file the data store decoded (runs only compare sizes and mtimes)."""
    from edgekd.data import load_dataset
    from edgekd.data.store import verify as verify_store

    r = _recipe(recipe, set_)
    data = load_dataset(r, data_root)
    bad = verify_store(data.store, data.folder)
    if bad:
        import shutil

        shutil.rmtree(data.store.path, ignore_errors=True)  # the next run decodes them again
        raise DataError(f"{len(bad)} file(s) changed since the data store decoded them without a change of size or "
                        f"mtime (first: {bad[0]}); the store was removed, the next run decodes the data again")
    typer.echo(f"data store {data.store.path}: all files match the sha256 taken when they were decoded")


def register(data_app: typer.Typer) -> None:
    data_app.command("prepare")(prepare)
    data_app.command("verify")(verify)
