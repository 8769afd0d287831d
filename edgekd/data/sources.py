"""Where a folder dataset's rows come from: metadata.jsonl / .csv with files beside it,
metadata.parquet with image/audio bytes (the Hugging Face Hub layout `{"bytes": ..., "path": ...}`),
or a directory written by `datasets.save_to_disk`.

A source yields rows as dicts (with the 1-based row number and the line, or row index, errors
name), says which columns it has, and gives two hashes: `identity`, cheap, which keys the data
store, and `content`, what the dataset fingerprint covers besides the files a row points at.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from edgekd.errors import DataError

TABLES = (".jsonl", ".json", ".ndjson", ".csv")
BATCH = 1024  # Arrow rows converted to Python at a time


class Source:
    name: str  # what errors call the metadata ("metadata.jsonl", "metadata.parquet", "train split")
    columns: list[str]
    split_names: bool = False  # rows carry their split from the source's own layout (a DatasetDict)
    label_names: list[str] | None = None  # a ClassLabel column's names, for integer labels

    def rows(self) -> Iterator[tuple[int, int, dict]]:
        raise NotImplementedError

    def identity(self) -> str:
        raise NotImplementedError

    def content(self) -> bytes:
        raise NotImplementedError


def open_source(folder: Path, name: str | None) -> Source:
    """The source of dataset folder `folder`; `name` is data.metadata (a file inside the folder)."""
    if name and (PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute()
                 or ".." in PurePosixPath(name).parts or not (folder / name).resolve().is_relative_to(folder.resolve())):
        raise DataError(f"data.metadata '{name}' points outside the dataset folder {folder}: give a file name "
                        "inside the dataset folder (e.g. metadata.jsonl)")
    if not name and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()):
        return ArrowSource(folder)
    names = [name] if name else ["metadata.jsonl", "metadata.csv", "metadata.parquet"]
    for n in names:
        if (folder / n).is_file():
            suffix = Path(n).suffix.lower()
            if suffix == ".parquet":
                return ParquetSource(folder / n)
            if suffix not in TABLES:
                raise DataError(f"metadata file {n}: unknown format; use a .jsonl, .csv or .parquet file")
            return TableSource(folder / n)
    raise DataError(f"no {' or '.join(names)} in {folder}: add a metadata file with one row per sample (or set "
                    "data.metadata), or point data.path at a datasets.save_to_disk directory")


class TableSource(Source):
    """metadata.jsonl or metadata.csv: parsed whole (a few hundred bytes a row), then released."""

    def __init__(self, path: Path):
        self.path, self.name = path, path.name
        self.raw = path.read_bytes()
        self._parsed = None  # parsed on first use: a run that finds its store never parses

    def _parse(self):
        if self._parsed is None:
            self._parsed = _parse(self.name, self.raw, csv_format=self.path.suffix.lower() == ".csv")
        return self._parsed

    @property
    def columns(self) -> list[str]:
        return self._parse()[1]

    def rows(self):
        yield from self._parse()[0]

    def identity(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def content(self) -> bytes:
        return self.raw


def _parse(name: str, raw: bytes, csv_format: bool) -> tuple[list[tuple[int, int, dict]], list[str]]:
    body = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # tolerate the BOM spreadsheets write
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body[: e.start].count(b"\n") + 1
        raise DataError(f"{name} line {line} is not valid UTF-8 (byte {body[e.start]:#04x}): save the file as UTF-8") from None
    rows: list = []
    if csv_format:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            for values in reader:
                if None in values:  # DictReader files surplus fields under the key None
                    raise DataError(f"{name} line {reader.line_num} has more fields than the header: quote values containing commas")
                rows.append((len(rows) + 1, reader.line_num, values))
        except csv.Error as e:
            raise DataError(f"{name} line {reader.line_num} is not valid CSV ({e}): fix its quoting") from None
        columns = list(reader.fieldnames or [])
    else:
        seen: dict = {}
        for line_no, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside strings
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{name} line {line_no} is not valid JSON ({e.msg}, column {e.colno}): write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{name} line {line_no} is a JSON {type(obj).__name__}, not an object: write one {{\"column\": value}} object per line")
            seen.update(dict.fromkeys(obj))
            rows.append((len(rows) + 1, line_no, obj))
        columns = list(seen)
    if not rows:
        raise DataError(f"{name} has no rows: add one row per sample")
    return rows, columns


def _stats_key(paths: list[Path], folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _hash_files(paths: list[Path], folder: Path) -> bytes:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.digest()


def _arrow_rows(batches, name: str, start: int = 0) -> Iterator[tuple[int, int, dict]]:
    n = start
    for batch in batches:
        for values in batch.to_pylist():
            n += 1
            yield n, n, values  # the "line" of a Parquet/Arrow row is its 1-based row number
    if n == start == 0:
        raise DataError(f"{name} has no rows: add one row per sample")


class ParquetSource(Source):
    """metadata.parquet: read in batches; image/audio cells are `{"bytes", "path"}` structs or paths."""

    def __init__(self, path: Path):
        pq = _pyarrow("metadata.parquet").parquet
        self.path, self.name = path, path.name
        try:
            self.file = pq.ParquetFile(path)
        except Exception as e:  # ArrowInvalid, OSError
            raise DataError(f"{path.name} is not a readable Parquet file ({str(e).splitlines()[0][:160]}): "
                            "write it again (e.g. datasets' to_parquet or pandas' to_parquet)") from None
        self.columns = list(self.file.schema_arrow.names)

    def rows(self):
        yield from _arrow_rows(self.file.iter_batches(batch_size=BATCH), self.name)

    def identity(self) -> str:
        return _stats_key([self.path], self.path.parent)

    def content(self) -> bytes:
        return _hash_files([self.path], self.path.parent)


class ArrowSource(Source):
    """A `datasets.save_to_disk` directory: one Dataset, or a DatasetDict whose split names become
    the rows' split. ClassLabel labels are read as their names; Image/Audio cells as their bytes."""

    def __init__(self, folder: Path):
        datasets = _datasets()
        self.folder, self.name = folder, f"{folder.name} (datasets.save_to_disk)"
        try:
            loaded = datasets.load_from_disk(str(folder))
        except Exception as e:  # FileNotFoundError, ArrowInvalid, json errors
            raise DataError(f"{folder} is not a readable datasets.save_to_disk directory "
                            f"({str(e).splitlines()[0][:160]}): write it again with Dataset.save_to_disk") from None
        self.parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"": loaded}
        unknown = [s for s in self.parts if s and s not in ("train", "val", "validation", "test")]
        if unknown:
            raise DataError(f"{self.name}: split(s) {unknown} are not train, validation or test: rename them "
                            "(DatasetDict keys) before save_to_disk")
        self.split_names = "" not in self.parts
        first = next(iter(self.parts.values()))
        self.columns = list(first.column_names)
        self.features = first.features

    def label_names_of(self, column: str) -> list[str] | None:
        feature = self.features.get(column)
        return list(feature.names) if hasattr(feature, "names") else None

    def rows(self):
        n = 0
        for split, ds in self.parts.items():
            for batch in ds.with_format("arrow").iter(batch_size=BATCH):
                for values in batch.to_pylist():
                    n += 1
                    if self.split_names:
                        values["__split__"] = "val" if split == "validation" else split
                    yield n, n, values
        if n == 0:
            raise DataError(f"{self.name} has no rows: add one row per sample")

    def _files(self) -> list[Path]:
        return [p for p in self.folder.rglob("*") if p.is_file()]

    def identity(self) -> str:
        return _stats_key(self._files(), self.folder)

    def content(self) -> bytes:
        return _hash_files(self._files(), self.folder)


def _pyarrow(what: str):
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError(f"reading {what} needs pyarrow: pip install 'edgekd[data]'") from None
    return pyarrow


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading a datasets.save_to_disk directory needs the datasets library: "
                        "pip install 'edgekd[data]'") from None
    return datasets
