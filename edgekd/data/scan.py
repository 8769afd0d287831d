"""The metadata scan: every row checked once and laid out as per-row arrays in the data store.

Labels become class codes, splits split codes, texts and file references UTF-8 blobs with
offsets, vectors a float64 array; files are checked to exist inside the folder and their size and
mtime are recorded. Errors name the row and its line, as they always have. Decoding the files is
the store's next step (edgekd.data.decode), in parallel.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from edgekd.data.decode import save_array
from edgekd.data.store import SPLIT_CODES
from edgekd.errors import DataError

PATH, BYTES = 0, 1  # a row's file reference: a path inside the folder, or the bytes themselves


def _value(values: dict, col: str):
    """A cell, or None when absent: JSON null, a missing key and an empty CSV cell all mean 'no value'."""
    v = values.get(col)
    return None if v is None or v == "" else v


class _Blob:
    """Strings appended to `<name>.bin`, offsets to `<name>.off.npy` on close."""

    def __init__(self, d: Path, name: str):
        self.d, self.name = d, name
        self.f = open(d / f"{name}.bin.tmp", "wb")
        self.off = [0]

    def add(self, b: bytes) -> None:
        self.f.write(b)
        self.off.append(self.off[-1] + len(b))

    def close(self) -> None:
        self.f.close()
        save_array(self.d / f"{self.name}.off.npy", np.asarray(self.off, dtype=np.int64))
        os.replace(self.d / f"{self.name}.bin.tmp", self.d / f"{self.name}.bin")


def scan(source, cfg, folder: Path, partial: Path) -> None:
    """Write the per-row arrays of `source` into `partial`, scan.json last."""
    name = source.name
    columns = source.columns
    for col, field in [(cfg.label, "data.label")] + [(c, "data.modalities") for c in cfg.modalities]:
        if col not in columns:
            import difflib

            close = difflib.get_close_matches(col, columns, n=1, cutoff=0.5)
            raise DataError(f"{name} has no column '{col}' (columns: {', '.join(columns) or 'none'}): "
                            f"fix {field} or the metadata" + (f"; did you mean '{close[0]}'?" if close else ""))
    label_names = getattr(source, "label_names_of", lambda c: None)(cfg.label)
    blobs = {m: _Blob(partial, f"{'text' if k == 'text' else 'raw'}.{m}")
             for m, k in cfg.modalities.items() if k != "vector"}
    kinds = {m: [] for m, k in cfg.modalities.items() if k in ("image", "audio")}
    vectors = {m: [] for m, k in cfg.modalities.items() if k == "vector"}
    labels, splits, lines = [], [], []
    try:
        for n, line, values in source.rows():
            where = f"{name} row {n} (line {line})"
            labels.append(_label(values, cfg.label, where, label_names))
            split = _value(values, cfg.split_column) if cfg.split_column in values else values.get("__split__")
            splits.append(_split(split, cfg.split_column, where))
            lines.append(line)
            for m, kind in cfg.modalities.items():
                if kind == "text":
                    blobs[m].add(_text(values, m, where).encode("utf-8"))
                elif kind == "vector":
                    vectors[m].append(_vector(values, m, where, vectors[m][0] if vectors[m] else None))
                else:
                    ref, how = _file(values, m, folder, where)
                    blobs[m].add(ref)
                    kinds[m].append(how)
    except BaseException:
        for b in blobs.values():  # the scan starts over next time: no stray temp files
            b.f.close()
            (partial / f"{b.name}.bin.tmp").unlink(missing_ok=True)
        raise
    for b in blobs.values():
        b.close()
    codes = np.asarray(splits, dtype=np.int8)
    if (codes >= 0).any() and (codes < 0).any():
        i = int(np.flatnonzero(codes < 0)[0])
        raise DataError(f"{name} row {i + 1} (line {lines[i]}): no '{cfg.split_column}' value while other rows have "
                        "one: give every row train, val or test, or drop the column")
    classes = sorted(set(labels))
    lookup = {c: i for i, c in enumerate(classes)}
    save_array(partial / "label.npy", np.asarray([lookup[x] for x in labels], dtype=np.int64))
    save_array(partial / "split.npy", codes)
    save_array(partial / "line.npy", np.asarray(lines, dtype=np.int64))
    for m in kinds:
        save_array(partial / f"rawkind.{m}.npy", np.asarray(kinds[m], dtype=np.int8))
    for m, v in vectors.items():
        save_array(partial / f"vec.{m}.npy", np.asarray(v, dtype=np.float64))
    info = {"rows": len(labels), "classes": classes, "metadata": name,
            "raw": {m: "path" if not any(k) else "bytes" if all(k) else "mixed" for m, k in kinds.items()}}
    with open(partial / "scan.json.tmp", "w", encoding="utf-8") as f:
        json.dump(info, f)
    os.replace(partial / "scan.json.tmp", partial / "scan.json")


def _label(values: dict, col: str, where: str, names: list[str] | None) -> str:
    v = _value(values, col)
    if v is None or isinstance(v, (dict, list)):
        raise DataError(f"{where}: label column '{col}' needs a string or number, got {v!r}: give every row a label")
    if names is not None and isinstance(v, int) and not isinstance(v, bool):
        if not 0 <= v < len(names):
            raise DataError(f"{where}: label {v} is outside its ClassLabel's {len(names)} names: fix the row")
        return names[v]
    return str(v)


def _split(v, col: str, where: str) -> int:
    if v is None:
        return -1
    s = str(v).strip().lower()
    if s not in SPLIT_CODES:
        raise DataError(f"{where}: '{col}' is {v!r}, expected train, val or test: fix the row")
    return SPLIT_CODES[s]


def _file(values: dict, col: str, folder: Path, where: str) -> tuple[bytes, int]:
    """(reference, PATH or BYTES) of a row's image/audio cell. The path's syntax is checked here;
    that the file exists inside the folder is checked by the decode workers, which open it anyway."""
    v = _value(values, col)
    if isinstance(v, dict):  # the Hub's Image/Audio layout: bytes when embedded, else a path
        if v.get("bytes"):
            return bytes(v["bytes"]), BYTES
        v = v.get("path")
    if isinstance(v, (bytes, bytearray)):
        return bytes(v), BYTES
    if not isinstance(v, str):
        raise DataError(f"{where}: '{col}' needs a file path relative to {folder} (or the file's bytes), got "
                        f"{_short(v)}")
    rel = PurePosixPath(v)
    if rel.is_absolute() or PureWindowsPath(v).is_absolute() or v.startswith("\\"):
        raise DataError(f"{where}: '{col}' path '{v}' is absolute: write it relative to the dataset folder {folder}")
    if ".." in rel.parts:
        raise DataError(f"{where}: '{col}' path '{v}' leaves the dataset folder: write it relative to {folder}, without '..'")
    return str(rel).encode("utf-8"), PATH


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _vector(values: dict, col: str, where: str, first) -> list[float]:
    v = _value(values, col)
    if isinstance(v, str):  # CSV cells (and some JSONL writers) hold the list as a JSON string
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            pass
    ok = isinstance(v, list) and v and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in v)
    if not ok or not all(math.isfinite(e) for e in v):
        raise DataError(f"{where}: vector '{col}' must be a non-empty list of finite numbers like [1, 2.5], got {v!r}")
    if first is not None and len(v) != len(first):
        raise DataError(f"{where}: vector '{col}' has {len(v)} numbers but row 1 has {len(first)}: all rows need the same length")
    return [float(e) for e in v]


def _text(values: dict, col: str, where: str) -> str:
    v = values.get(col)  # not _value(): an empty text is a valid sample
    if v is None or isinstance(v, (dict, list, bool)):
        raise DataError(f"{where}: text '{col}' must be a string, got {v!r}: give every row its text")
    return str(v)
