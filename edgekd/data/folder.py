"""User folder datasets: a directory with metadata.jsonl (or metadata.csv), one row per sample.

Every row is decoded once at load time (folder datasets are small). Normalisation statistics and
the text tokenizer are fitted on the train split only, and the arrays come from the same numpy
functions the device runtime uses (edgekd.runtime.preprocess), so what a model trains on is what a
bundle reproduces from the raw files with the stored `preprocess` parameters.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import math
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from edgekd.data.base import SPLITS, ModalitySpec, Split
from edgekd.data.features import audio_params
from edgekd.errors import DataError
from edgekd.recipe import FolderData
from edgekd.runtime import preprocess as pp

FORMAT = 1  # part of the fingerprint: bump when the same files + options give different arrays
STD_FLOOR = 1e-6  # constant inputs (silence, blank images, fixed features) must not divide by 0


@dataclass
class _Row:
    n: int  # 1-based data row: the stable id "row<n>" and what errors call the row
    line: int  # line in the metadata file, so the user can jump there
    values: dict


class FolderDataset:
    """A folder dataset held in memory as model-ready arrays (the edgekd.data.base.Dataset protocol)."""

    num_pairings = 1

    def __init__(self, name, modalities, classes, preprocess, inputs, labels, ids, splits, fingerprint, raw_text=None,
                 raw_files=None):
        self.name: str = name
        self.modalities: dict[str, ModalitySpec] = modalities
        self.classes: list[str] = classes
        self.preprocess: dict[str, dict] = preprocess
        self._inputs, self._labels, self._ids = inputs, labels, ids
        self._splits: dict[str, np.ndarray] = splits
        self._fingerprint = fingerprint
        # the columns as written, which a pretrained teacher's own processors read: texts, and image/audio files
        self.raw_text: dict[str, list[str]] = raw_text or {}
        self.raw_files: dict[str, list[Path]] = raw_files or {}

    def has_split(self, name: str) -> bool:
        return name in self._splits and len(self._splits[name]) > 0

    def split(self, name: str, pairing: int = 0) -> Split:
        if name not in SPLITS:
            raise DataError(f"unknown split '{name}': use one of {', '.join(SPLITS)}")
        idx = self._splits[name]
        return Split({m: x[idx] for m, x in self._inputs.items()}, self._labels[idx], [self._ids[i] for i in idx])

    def split_rows(self, name: str) -> np.ndarray:
        """The dataset rows of split `name`, in the split's order."""
        return self._splits[name]

    def fingerprint(self) -> str:
        return self._fingerprint

    def with_texts(self, texts: dict[str, list[str]]) -> FolderDataset:
        """The same rows with these text columns rewritten (an augmented view, edgekd.data.views):
        raw texts replaced, the student's token ids re-encoded with this dataset's own tokenizer."""
        from tokenizers import Tokenizer

        inputs = dict(self._inputs)
        for col, column in texts.items():
            p = self.preprocess[col]
            tok = Tokenizer.from_str(p["tokenizer_json"])
            inputs[col] = np.stack([pp.text_ids(t, p, tokenizer=tok) for t in column])
        return FolderDataset(self.name, self.modalities, self.classes, self.preprocess, inputs, self._labels,
                             self._ids, self._splits, self._fingerprint, {**self.raw_text, **texts}, self.raw_files)


def load_folder(cfg: FolderData, data_root: Path, seed: int) -> FolderDataset:
    folder = Path(cfg.path).expanduser()
    folder = folder if folder.is_absolute() else Path(data_root) / folder
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} not found: fix data.path (relative paths resolve "
                        f"against the data root {data_root}, set with --data-root or EDGEKD_DATA)")
    for col in (cfg.label, cfg.split_column):
        if col in cfg.modalities:
            raise DataError(f"column '{col}' is both a modality and the label/split column: rename one in the recipe")
    meta = _metadata_file(folder, cfg.metadata)
    raw = meta.read_bytes()
    rows, columns = _parse(meta.name, raw, csv_format=meta.suffix.lower() == ".csv")
    for col, field in [(cfg.label, "data.label")] + [(c, "data.modalities") for c in cfg.modalities]:
        if col not in columns:
            close = difflib.get_close_matches(col, columns, n=1, cutoff=0.5)
            raise DataError(f"{meta.name} has no column '{col}' (columns: {', '.join(columns) or 'none'}): "
                            f"fix {field} or the metadata" + (f"; did you mean '{close[0]}'?" if close else ""))

    def where(r: _Row) -> str:
        return f"{meta.name} row {r.n} (line {r.line})"

    label_names = [_label(r, cfg.label, where) for r in rows]
    classes = sorted(set(label_names))
    labels = np.array([classes.index(x) for x in label_names], dtype=np.int64)
    splits = _splits(rows, label_names, classes, cfg, seed, where, meta.name)
    train = splits["train"]

    root = folder.resolve()
    modalities, preprocess, inputs, files, raw_text, raw_files = {}, {}, {}, {}, {}, {}
    for col, kind in cfg.modalities.items():
        vocab = 0
        if kind in ("image", "audio"):
            paths = raw_files[col] = [_file(folder, root, r, col, where) for r in rows]
            files.update({str(f.relative_to(folder)): f for f in paths})
            x, p = (_images if kind == "image" else _audio)(paths, rows, col, cfg, train, where)
        elif kind == "vector":
            x, p = _vectors([_vector(r, col, where) for r in rows], rows, col, train, where)
        else:
            texts = raw_text[col] = [_text(r, col, where) for r in rows]
            tok = train_tokenizer([texts[i] for i in train], cfg.text_vocab_size)
            p = {"kind": "text", "max_length": cfg.text_max_length, "tokenizer_json": tok.to_str()}
            x, vocab = np.stack([pp.text_ids(t, p, tokenizer=tok) for t in texts]), tok.get_vocab_size()
        inputs[col], preprocess[col] = x, p
        modalities[col] = ModalitySpec(col, kind, tuple(x.shape[1:]), "int64" if kind == "text" else "float32", vocab)

    # The fingerprint covers contents, not locations: moving the folder keeps cached results valid.
    h = hashlib.sha256(f"edgekd-folder-v{FORMAT} seed={seed}\n".encode())
    # image_mode joined the recipe later: left out at its default, so older runs keep their fingerprint
    unchanged = {"path"} | ({"image_mode"} if cfg.image_mode == "gray" else set())
    h.update(cfg.model_dump_json(exclude=unchanged).encode() + b"\n" + raw)
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel].read_bytes()).digest())
    return FolderDataset(root.name, modalities, classes, preprocess, inputs, labels,
                         [f"row{r.n}" for r in rows], splits, h.hexdigest()[:16], raw_text,
                         raw_files)


# --------------------------------------------------------------------------- metadata


def _metadata_file(folder: Path, name: str | None) -> Path:
    names = [name] if name else ["metadata.jsonl", "metadata.csv"]
    if name and (PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or ".." in PurePosixPath(name).parts
                 or not (folder / name).resolve().is_relative_to(folder.resolve())):
        raise DataError(f"data.metadata '{name}' points outside the dataset folder {folder}: give a file name "
                        "inside the dataset folder (e.g. metadata.jsonl)")
    for n in names:
        if (folder / n).is_file():
            if Path(n).suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv"):
                raise DataError(f"metadata file {n}: unknown format; use a .jsonl or .csv file")
            return folder / n
    raise DataError(f"no {' or '.join(names)} in {folder}: add a metadata file with one row per sample (or set data.metadata)")


def _parse(name: str, raw: bytes, csv_format: bool) -> tuple[list[_Row], list[str]]:
    body = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # tolerate the BOM spreadsheets write
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body[: e.start].count(b"\n") + 1
        raise DataError(f"{name} line {line} is not valid UTF-8 (byte {body[e.start]:#04x}): save the file as UTF-8") from None
    rows: list[_Row] = []
    if csv_format:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            for values in reader:
                if None in values:  # DictReader files surplus fields under the key None
                    raise DataError(f"{name} line {reader.line_num} has more fields than the header: quote values containing commas")
                rows.append(_Row(len(rows) + 1, reader.line_num, values))
        except csv.Error as e:
            raise DataError(f"{name} line {reader.line_num} is not valid CSV ({e}): fix its quoting") from None
        columns = list(reader.fieldnames or [])
    else:
        columns = {}
        for line_no, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside strings
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{name} line {line_no} is not valid JSON ({e.msg}, column {e.colno}): write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{name} line {line_no} is a JSON {type(obj).__name__}, not an object: write one {{\"column\": value}} object per line")
            columns.update(dict.fromkeys(obj))
            rows.append(_Row(len(rows) + 1, line_no, obj))
        columns = list(columns)
    if not rows:
        raise DataError(f"{name} has no rows: add one row per sample")
    return rows, columns


def _value(r: _Row, col: str):
    """A cell, or None when absent: JSON null, a missing key and an empty CSV cell all mean 'no value'."""
    v = r.values.get(col)
    return None if v is None or v == "" else v


def _label(r: _Row, col: str, where) -> str:
    v = _value(r, col)
    if v is None or isinstance(v, (dict, list)):
        raise DataError(f"{where(r)}: label column '{col}' needs a string or number, got {v!r}: give every row a label")
    return str(v)


# --------------------------------------------------------------------------- splits


def _splits(rows, label_names, classes, cfg: FolderData, seed: int, where, meta_name) -> dict[str, np.ndarray]:
    col = cfg.split_column
    given = [_value(r, col) for r in rows]
    if all(v is None for v in given):
        return _stratified(label_names, classes, cfg, seed)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, (r, v) in enumerate(zip(rows, given)):
        if v is None:
            raise DataError(f"{where(r)}: no '{col}' value while other rows have one: give every row train, val or test, or drop the column")
        s = str(v).strip().lower()
        if s not in out:
            raise DataError(f"{where(r)}: '{col}' is {v!r}, expected train, val or test: fix the row")
        out[s].append(i)
    in_train = {label_names[i] for i in out["train"]}
    missing = [c for c in classes if c not in in_train]
    if missing:
        raise DataError(f"{meta_name}: class(es) {', '.join(missing)} have no train rows in column '{col}': mark at least one row of each class as train")
    if not out["val"] and cfg.val_fraction > 0:  # a split column without val rows: carve val out of train
        out["train"], out["val"] = _carve(out["train"], label_names, classes, cfg.val_fraction, seed)
    return {s: np.array(v, dtype=np.int64) for s, v in out.items()}


def _carve(train: list[int], label_names, classes, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Per class, a seeded `fraction` of its train rows (at least one train row left) becomes val."""
    names = np.array(label_names)[train]
    keep, val = [], []
    for c in classes:
        rng = np.random.default_rng([seed % 2**32, zlib.crc32(c.encode()), 1])  # as _stratified, another stream
        idx = rng.permutation(np.asarray(train)[names == c])
        n_val = max(0, min(math.floor(len(idx) * fraction + 0.5), len(idx) - 1))
        val += idx[:n_val].tolist()
        keep += idx[n_val:].tolist()
    return sorted(keep), sorted(val)


def _stratified(label_names, classes, cfg: FolderData, seed: int) -> dict[str, np.ndarray]:
    """Per class: `test_fraction` to test (at least one when the class has 2+ rows), `val_fraction` to
    val, the rest (always at least one) to train."""
    names = np.array(label_names)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for c in classes:
        # One generator per class, keyed by its name: adding a class does not reshuffle the others.
        rng = np.random.default_rng([seed % 2**32, zlib.crc32(c.encode())])
        idx = rng.permutation(np.flatnonzero(names == c))
        n = len(idx)
        n_test = min(max(1, math.floor(n * cfg.test_fraction + 0.5)), n - 1) if n >= 2 else 0
        n_val = max(0, min(math.floor(n * cfg.val_fraction + 0.5), n - 1 - n_test))
        out["test"] += idx[:n_test].tolist()
        out["val"] += idx[n_test : n_test + n_val].tolist()
        out["train"] += idx[n_test + n_val :].tolist()
    return {s: np.array(sorted(v), dtype=np.int64) for s, v in out.items()}


# --------------------------------------------------------------------------- modalities


def _file(folder: Path, root: Path, r: _Row, col: str, where) -> Path:
    v = _value(r, col)
    if not isinstance(v, str):
        raise DataError(f"{where(r)}: '{col}' needs a file path relative to {folder}, got {v!r}")
    rel = PurePosixPath(v)
    if rel.is_absolute() or PureWindowsPath(v).is_absolute() or v.startswith("\\"):
        raise DataError(f"{where(r)}: '{col}' path '{v}' is absolute: write it relative to the dataset folder {folder}")
    if ".." in rel.parts:
        raise DataError(f"{where(r)}: '{col}' path '{v}' leaves the dataset folder: write it relative to {folder}, without '..'")
    path = folder / rel
    if not path.resolve().is_relative_to(root):  # a symlink may still point elsewhere
        raise DataError(f"{where(r)}: '{col}' path '{v}' resolves to {path.resolve()}, outside the dataset folder: copy the file into {folder}")
    if not path.is_file():
        raise DataError(f"{where(r)}: '{col}' file '{v}' not found in {folder}: add the file or fix the row")
    return path


def _decode(fn, path: Path, p: dict, r: _Row, col: str, what: str, where) -> np.ndarray:
    try:
        return fn(path, p)
    except Exception as e:  # decoders raise many types (OSError, EOFError, ValueError, ...)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{where(r)}: '{col}' file '{r.values[col]}' is not a readable {what} ({detail}): replace or remove it") from None


def _scalar_stats(x: np.ndarray) -> tuple[float, float]:
    # Python floats, not numpy scalars: JSON-serialisable, and float32 arithmetic stays float32.
    x64 = x.astype(np.float64)
    return float(x64.mean()), max(float(x64.std()), STD_FLOOR)


def _images(paths, rows, col, cfg: FolderData, train, where):
    p = {"kind": "image", "size": cfg.image_size, "mean": 0.0, "std": 1.0}
    if cfg.image_mode == "rgb":
        p.update(channels=3, alpha="white", mean=[0.0] * 3, std=[1.0] * 3)
    x = np.stack([_decode(pp.image_from_file, f, p, r, col, "image (png/jpg)", where) for f, r in zip(paths, rows)])
    if cfg.image_mode == "rgb":  # per channel, over every train pixel
        x64 = x[train].astype(np.float64)
        p["mean"] = x64.mean(axis=(0, 2, 3)).tolist()
        p["std"] = np.maximum(x64.std(axis=(0, 2, 3)), STD_FLOOR).tolist()
    else:
        p["mean"], p["std"] = _scalar_stats(x[train])
    # Recompute with the fitted values rather than rescale: the runtime may compute in float64
    # (resized images) before its float32 cast, and the device must see bit-identical inputs.
    return np.stack([pp.image_from_file(f, p) for f in paths]), p


def _audio(paths, rows, col, cfg: FolderData, train, where):
    p = audio_params(cfg.audio)
    x = np.stack([_decode(pp.audio_from_file, f, p, r, col, "audio file", where) for f, r in zip(paths, rows)])
    p["mean"], p["std"] = _scalar_stats(x[train])
    # As for images: log_mel normalises in float64 before its float32 cast, so recompute.
    return np.stack([pp.audio_from_file(f, p) for f in paths]), p


def _vector(r: _Row, col: str, where) -> list[float]:
    v = _value(r, col)
    if isinstance(v, str):  # CSV cells (and some JSONL writers) hold the list as a JSON string
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            pass
    ok = isinstance(v, list) and v and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in v)
    if not ok or not all(math.isfinite(e) for e in v):
        raise DataError(f"{where(r)}: vector '{col}' must be a non-empty list of finite numbers like [1, 2.5], got {v!r}")
    return [float(e) for e in v]


def _vectors(values, rows, col, train, where):
    for v, r in zip(values, rows):
        if len(v) != len(values[0]):
            raise DataError(f"{where(r)}: vector '{col}' has {len(v)} numbers but row 1 has {len(values[0])}: all rows need the same length")
    v64 = np.asarray(values, dtype=np.float64)[train]
    p = {"kind": "vector", "mean": v64.mean(axis=0).tolist(), "std": np.maximum(v64.std(axis=0), STD_FLOOR).tolist()}
    return np.stack([pp.vector_array(v, p) for v in values]), p


def _text(r: _Row, col: str, where) -> str:
    v = r.values.get(col)  # not _value(): an empty text is a valid sample
    if v is None or isinstance(v, (dict, list, bool)):
        raise DataError(f"{where(r)}: text '{col}' must be a string, got {v!r}: give every row its text")
    return str(v)


def train_tokenizer(texts: list[str], vocab_size: int):
    """A WordPiece tokenizer (lowercase, BERT pre-tokenizer, "[PAD]" = 0, "[UNK]" = 1).

    The vocabulary is every character seen at a word start and inside a word ("##c"), then the most
    frequent words (ties alphabetical), up to `vocab_size`; unseen words split into known pieces.
    tokenizers' WordPieceTrainer is not used because it breaks ties in hash order: it was measured to
    give a different vocabulary on most runs over the same texts, which would change token ids
    behind an unchanged dataset fingerprint.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    norm, pre = normalizers.Lowercase(), pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    firsts = sorted({w[0] for w in words})
    inner = sorted({"##" + c for w in words for c in w[1:]})
    vocab: dict[str, int] = {}
    for piece in ["[PAD]", "[UNK]", *firsts, *inner, *words]:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.WordPiece()
    return tok
