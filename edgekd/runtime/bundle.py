"""The device bundle (format version 1): what ships to a device and runs without torch.

    bundle/
      manifest.json    format, version, models, default_model, sha256 + bytes of every other file
      io_spec.json     named inputs (kind, dtype, shape with a "batch" axis) and outputs
      preprocess.json  per-modality parameters of edgekd.runtime.preprocess
      labels.json      class names in logit order
      tokenizer/*.json text tokenizers (only when a text modality is used)
      *.onnx           the models (an engine file may join later)

The spec for release engineers is export/BUNDLE.md. A bundle is written into a sibling temp
directory and renamed into place, so a crash never leaves a half bundle that loads; loading
re-hashes every file, so a file changed or swapped after export is refused, never silently run.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from edgekd import __version__
from edgekd.contract import BUNDLE_FORMAT
from edgekd.errors import BundleError, UsageError
from edgekd.files import atomic_write_text, building_dir, sha256_file

FORMAT, VERSION = BUNDLE_FORMAT, 1
MANIFEST = "manifest.json"
META_FILES = ("io_spec.json", "preprocess.json", "labels.json")
MODEL_SUFFIXES = (".onnx", ".engine", ".plan", ".trt")  # an unlisted one of these could be run by mistake
DEFAULT_ORDER = ("student_int8_cpu", "student_fp32")  # until a bench decides (set_default_models)
RUNNER_BACKENDS = {"onnxruntime": "onnxruntime-cpu"}  # a runner backend -> the bench backend it measures as
ALLOWED = {"role": ("student", "teacher"), "precision": ("fp32", "int8"), "target": ("any", "cpu", "tensorrt")}
FIX = "re-export with `edgekd export RUN_DIR`"


def model_filename(key: str, suffix: str = ".onnx") -> str:
    """student_int8_cpu -> student.int8-cpu.onnx: the role, then the variant, readable on a device."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", key):
        raise BundleError(f"model key {key!r} is not a plain name: use letters, digits, _ and -")
    role, _, variant = key.partition("_")
    return f"{role}.{variant.replace('_', '-')}{suffix}" if variant else f"{role}{suffix}"


def write_bundle(dest: Path, *, name: str, models: dict[str, dict], model_files: dict[str, Path],
                 io_spec: dict, preprocess: dict, labels: list[str], extra_files: dict[str, Path] | None = None,
                 baselines: dict | None = None) -> Path:
    """Write a complete bundle at `dest`, replacing an existing bundle only once the new one is whole.
    `extra_files` maps a relative path in the bundle to a source file (e.g. testset.npz); `baselines`:
    the run's linear baselines {name: {val_accuracy, accuracy}}, the floor `edgekd gate` can hold a student to."""
    dest = Path(dest)
    if set(models) != set(model_files) or not models:
        raise BundleError(f"bundle models {sorted(models)} and model files {sorted(model_files)} differ: "
                          "give one file per model key")
    for key, meta in models.items():
        for field, allowed in ALLOWED.items():
            if meta.get(field) not in allowed:
                raise BundleError(f"model {key}: {field}={meta.get(field)!r}, expected one of {', '.join(allowed)}")
    for spec in io_spec.get("inputs", []):
        if spec["name"] not in preprocess:
            raise BundleError(f"io_spec input '{spec['name']}' has no preprocess parameters: "
                              "pass the dataset's preprocess dict for every model input")
    if dest.exists() and not (dest.is_dir() and ((dest / MANIFEST).is_file() or not any(dest.iterdir()))):
        raise BundleError(f"{dest} exists and is not an edgekd bundle: move it away or write the bundle elsewhere")

    with building_dir(dest) as tmp:  # a full disk or a crash leaves the old bundle as it was
        model_meta = {}
        for key, meta in models.items():
            rel = model_filename(key, Path(model_files[key]).suffix or ".onnx")
            if (tmp / rel).exists():
                raise BundleError(f"model keys map to the same file {rel}: rename one key")
            shutil.copyfile(model_files[key], tmp / rel)
            model_meta[key] = {"file": rel, **{k: v for k, v in meta.items() if k != "file"}}
        pre = copy.deepcopy(preprocess)  # never mutate the dataset's live parameters
        used = set()
        for modality, p in pre.items():
            if isinstance(p, dict) and "tokenizer_json" in p:
                stem = re.sub(r"[^A-Za-z0-9_.-]", "_", modality).lstrip(".") or "text"
                while stem in used:
                    stem += "_"
                used.add(stem)
                rel = f"tokenizer/{stem}.json"
                _write(tmp / rel, p.pop("tokenizer_json"))
                p["tokenizer_file"] = rel
        for rel, src in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        _write(tmp / "io_spec.json", _dumps(io_spec))
        _write(tmp / "preprocess.json", _dumps(pre))
        _write(tmp / "labels.json", _dumps([str(x) for x in labels]))

        files = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = f.relative_to(tmp).as_posix()
            files[rel] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        default = next((k for k in DEFAULT_ORDER if k in model_meta), next(iter(model_meta)))
        manifest = {"format": FORMAT, "version": VERSION, "name": name,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "edgekd_version": __version__, "models": model_meta, "default_model": default, "files": files,
                    **({"baselines": baselines} if baselines else {})}
        _write(tmp / MANIFEST, _dumps(manifest))  # last: a directory without it never loads
    return dest


def add_model(bundle_dir: Path, key: str, file: Path, meta: dict, *,
              extra_files: dict[str, Path] | None = None) -> Path:
    """Add (or replace) model `key` in an existing, verified bundle: `file` (e.g. a TensorRT engine)
    under its model_filename, plus `extra_files` (bundle-relative name -> source, e.g. the engine's
    build.json), which are removed again when the key is replaced. The bundle is rebuilt beside
    itself and swapped in, so readers see the old bundle or the new one, never a mix."""
    dest = Path(bundle_dir)
    old = load_bundle(dest)  # never extend a bundle that no longer verifies
    for field, allowed in ALLOWED.items():
        if meta.get(field) not in allowed:
            raise BundleError(f"model {key}: {field}={meta.get(field)!r}, expected one of {', '.join(allowed)}")
    rel = model_filename(key, Path(file).suffix or ".onnx")
    extra = dict(extra_files or {})
    manifest = copy.deepcopy(old.manifest)
    previous = manifest["models"].pop(key, None) or {}
    dropped = {previous.get("file"), *previous.get("extra_files", [])} - {None}
    for name in [rel, *extra]:
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts or name in META_FILES or name == MANIFEST:
            raise BundleError(f"cannot add {name!r} to the bundle: give a plain file name")
        if name in manifest["files"] and name not in dropped:
            raise BundleError(f"bundle already holds {name} for another model: use another model key")
    with building_dir(dest) as tmp:  # a full disk or a crash leaves the old bundle as it was
        shutil.copytree(dest, tmp, dirs_exist_ok=True)
        for name in dropped:
            manifest["files"].pop(name, None)
            (tmp / name).unlink(missing_ok=True)
        for name, src in [(rel, Path(file)), *extra.items()]:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / name)
            manifest["files"][name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
        manifest["models"][key] = {"file": rel, **{k: v for k, v in meta.items() if k != "file"},
                                   **({"extra_files": sorted(extra)} if extra else {})}
        _check_manifest(manifest)
        _write(tmp / MANIFEST, _dumps(manifest))  # last, as in write_bundle
    return dest


def set_default_models(bundle_dir: Path, defaults: dict[str, dict]) -> dict:
    """Record a bench's per-backend default models ({backend: {"model", "why", ...}}) in the bundle's
    manifest; `default_model` becomes the onnxruntime-cpu choice where there is one. Only the
    manifest changes (it lists no hash of itself), written beside and renamed over the old one."""
    bundle = load_bundle(bundle_dir)  # never touch a bundle that no longer verifies
    manifest = copy.deepcopy(bundle.manifest)
    for backend, d in defaults.items():
        if not isinstance(d, dict) or d.get("model") not in manifest["models"]:
            raise BundleError(f"default model for {backend} is {d.get('model') if isinstance(d, dict) else d!r}, "
                              f"not one of this bundle's models ({', '.join(manifest['models'])})")
    manifest["default_models"] = {**manifest.get("default_models", {}), **copy.deepcopy(defaults)}
    if "onnxruntime-cpu" in defaults:
        manifest["default_model"] = defaults["onnxruntime-cpu"]["model"]
    _check_manifest(manifest)
    atomic_write_text(bundle.path / MANIFEST, _dumps(manifest))
    return manifest["default_models"]


def _dumps(obj) -> str:
    def plain(o):  # numpy scalars/arrays that slipped into preprocess parameters
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")

    return json.dumps(obj, indent=2, default=plain) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- loading


@dataclass
class Bundle:
    path: Path
    manifest: dict
    io_spec: dict
    preprocess: dict
    labels: list[str]

    @property
    def models(self) -> dict[str, dict]:
        return self.manifest["models"]

    @property
    def default_model(self) -> str:
        return self.manifest["default_model"]

    def picked(self, backend: str | None) -> str | None:
        """The model a bench picked for `backend` (a bench backend name, or the runner's
        `onnxruntime` = onnxruntime-cpu): the fastest student within the accuracy budget there."""
        entry = (self.manifest.get("default_models") or {}).get(RUNNER_BACKENDS.get(backend, backend)) or {}
        return entry.get("model") if entry.get("model") in self.models else None

    def default_for(self, backend: str | None = None) -> str:
        return self.picked(backend) or self.default_model

    def resolve_key(self, key: str | None = None, backend: str | None = None) -> str:
        """`key`, or the default model (for `backend`); an unknown key names the ones this bundle has."""
        key = key or self.default_for(backend)
        if key not in self.models:
            raise UsageError(f"unknown model '{key}': this bundle has {', '.join(self.models)} "
                             f"(default {self.default_model})")
        return key

    def model_path(self, key: str | None = None) -> Path:
        return self.path / self.models[self.resolve_key(key)]["file"]

    def verified_bytes(self, key: str | None = None) -> bytes | None:
        """Model `key`'s file read once and checked against the manifest's sha256, for a runner to load
        from these very bytes: hashing the file and letting the runtime read it again would serve a
        file swapped in between. None for a model with external data (loaded from its path)."""
        path = self.model_path(key)
        rel = path.relative_to(self.path).as_posix()
        if any(other != rel and other.startswith(rel) for other in self.manifest["files"]):
            return None  # ONNX external data (`model.onnx.data`) resolves from the model's folder
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.manifest["files"][rel]["sha256"]:
            raise BundleError(f"bundle file {rel} changed since the bundle was opened (sha256 differs); {FIX}")
        return data


def load_bundle(path) -> Bundle:
    """Open and verify a bundle: every listed file present with its recorded size and sha256."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"no bundle at {root}: give the bundle directory (runs/NAME/bundle) or create it "
                          "with `edgekd export RUN_DIR`")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{root} has no {MANIFEST} (not a bundle, or an interrupted copy); {FIX}") from None
    except (ValueError, OSError) as e:
        raise BundleError(f"bundle {MANIFEST} is unreadable ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          f"{FIX}") from None
    _check_manifest(manifest)
    files = manifest["files"]
    for rel, entry in files.items():
        f = root / rel
        if not f.is_file():
            raise BundleError(f"bundle file {rel} is missing; copy the whole bundle directory again or {FIX}")
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(f"bundle file {rel} changed since export (size {size} bytes, manifest says "
                              f"{entry['bytes']}); {FIX}")
        if sha256_file(f) != entry["sha256"]:
            raise BundleError(f"bundle file {rel} changed since export (sha256 differs); {FIX}")
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and f.suffix.lower() in MODEL_SUFFIXES and rel not in files:
            raise BundleError(f"bundle holds {rel}, a model file its manifest does not list; remove it or {FIX}")
    meta = {}
    for name in META_FILES:
        try:
            meta[name] = json.loads((root / name).read_text(encoding="utf-8"))
        except ValueError as e:
            raise BundleError(f"bundle file {name} is not valid JSON ({e}); {FIX}") from None
    labels = meta["labels.json"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise BundleError(f"bundle file labels.json must be a list of strings; {FIX}")
    for name in ("io_spec.json", "preprocess.json"):
        if not isinstance(meta[name], dict):
            raise BundleError(f"bundle file {name} must be a JSON object, not a {type(meta[name]).__name__}; {FIX}")
    if not isinstance(meta["io_spec.json"].get("inputs", []), list) or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) for i in meta["io_spec.json"].get("inputs", [])):
        raise BundleError(f"bundle file io_spec.json: 'inputs' must be a list of objects with a name; {FIX}")
    return Bundle(root, manifest, meta["io_spec.json"], meta["preprocess.json"], labels)


def _check_manifest(m) -> None:
    def bad(why: str):
        raise BundleError(f"bundle {MANIFEST} is corrupt ({why}); {FIX}")

    if not isinstance(m, dict) or m.get("format") != FORMAT:
        bad(f"format is {m.get('format') if isinstance(m, dict) else m!r}, expected {FORMAT!r}")
    if m.get("version") != VERSION:
        raise BundleError(f"bundle format version {m.get('version')!r} is not readable by edgekd {__version__} "
                          f"(it reads version {VERSION}); use the edgekd that wrote it or {FIX}")
    files, models = m.get("files"), m.get("models")
    if not isinstance(files, dict) or not isinstance(models, dict) or not models:
        bad("'files' and 'models' must be non-empty objects")
    for rel, entry in files.items():
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or "\\" in rel or rel == MANIFEST:
            bad(f"file path {rel!r} leaves the bundle")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not isinstance(entry.get("bytes"), int):
            bad(f"file {rel} needs a sha256 string and a bytes count")
    for name in META_FILES:
        if name not in files:
            bad(f"{name} is not listed")
    for key, meta in models.items():
        if not isinstance(meta, dict) or meta.get("file") not in files:
            bad(f"model {key} names a file the manifest does not list")
    if m.get("default_model") not in models:
        bad(f"default_model {m.get('default_model')!r} is not one of {', '.join(models)}")
