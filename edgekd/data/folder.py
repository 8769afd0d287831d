"""User folder datasets: metadata.jsonl / .csv / .parquet, or a datasets.save_to_disk directory.

The rows are decoded once into the data store (edgekd.data.store: memory-mapped, built in
parallel, reused by every run and recipe over the same data and decode settings). Splits,
normalisation statistics (streamed over the train rows) and the text tokenizer (fitted on the
train texts) are computed from the store, and a split's inputs are lazy columns
(edgekd.data.columns) that normalise or tokenize only the rows a batch asks for, with the very
numpy functions the device runtime uses (edgekd.runtime.preprocess).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import zlib
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgekd.data.base import SPLITS, ModalitySpec, Split
from edgekd.data.columns import Column
from edgekd.data.features import audio_params
from edgekd.data.store import FORMAT as STORE_FORMAT
from edgekd.data.store import SPLIT_CODES, Store, open_or_build, workers_default
from edgekd.errors import DataError
from edgekd.recipe import FolderData
from edgekd.recipe_data import MACHINE_ONLY
from edgekd.runtime import preprocess as pp

FORMAT = 1  # part of the fingerprint: bump when the same files + options give different arrays
DERIVED = 2  # bump when the statistics or tokenizer of the same data and settings would differ
STD_FLOOR = 1e-6  # constant inputs (silence, blank images, fixed features) must not divide by 0
CHUNK = 1024  # rows per step when streaming over a split (statistics, tokenizer)


def decode_params(cfg: FolderData) -> dict:
    """Each image/audio modality's decode parameters and stored shape (before normalisation)."""
    out = {}
    for m, kind in cfg.modalities.items():
        if kind == "image":
            p = {"kind": "image", "size": cfg.image_size, "mean": 0.0, "std": 1.0}
            if cfg.image_mode == "rgb":
                p.update(channels=3, alpha="white", mean=[0.0] * 3, std=[1.0] * 3)
            out[m] = {"kind": kind, "params": p, "shape": [3 if cfg.image_mode == "rgb" else 1] + [cfg.image_size] * 2}
        elif kind == "audio":
            p = audio_params(cfg.audio)
            shape = pp.log_mel_features(np.zeros(p["num_samples"], dtype=np.float32), p).shape
            out[m] = {"kind": kind, "params": p, "shape": list(shape)}
        else:
            out[m] = {"kind": kind}
    return out


def load_folder(cfg: FolderData, data_root: Path, seed: int, progress=None) -> FolderDataset:
    from edgekd.data.scan import scan
    from edgekd.data.sources import open_source

    folder = Path(cfg.path).expanduser()
    folder = folder if folder.is_absolute() else Path(data_root) / folder
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} not found: fix data.path (relative paths resolve "
                        f"against the data root {data_root}, set with --data-root or EDGEKD_DATA)")
    for col in (cfg.label, cfg.split_column):
        if col in cfg.modalities:
            raise DataError(f"column '{col}' is both a modality and the label/split column: rename one in the recipe")
    source = open_source(folder, cfg.metadata)
    plan = {"shard_rows": cfg.shard_rows, "modalities": decode_params(cfg)}
    store = open_or_build(store_key(cfg, folder, source), lambda d: scan(source, cfg, folder, d), plan, folder,
                          cfg.workers or workers_default(), progress, label=f"{folder.name}: ")
    return FolderDataset(store, cfg, folder, seed, source)


def store_key(cfg: FolderData, folder: Path, source) -> str:
    """The store of this folder's rows decoded with these settings: its place, the metadata's identity
    and every field that changes what is decoded (not the splits, statistics or tokenizer, which are
    made from the store). A moved folder is decoded again; its fingerprint, and so every cache keyed
    by it, stays the same."""
    what = {k: v for k, v in cfg.model_dump(mode="json").items() if k in
            ("metadata", "label", "modalities", "split_column", "image_size", "image_mode", "audio")}
    return hashlib.sha256(f"edgekd-store-v{STORE_FORMAT}\n{folder.resolve()}\n{source.identity()}\n"
                          f"{json.dumps(what, sort_keys=True)}".encode()).hexdigest()[:20]


def store_state(cfg: FolderData, data_root: Path) -> tuple[str, str]:
    """(level, finding) about the recipe's data store, for `edgekd doctor`: note, warning or error."""
    from edgekd.data.sources import open_source
    from edgekd.data.store import cache_root, check, stale_shards

    folder = Path(cfg.path).expanduser()
    folder = folder if folder.is_absolute() else Path(data_root) / folder
    if not folder.is_dir():
        return "warning", f"data store: dataset folder {folder} not found (set --data-root or EDGEKD_DATA)"
    key = store_key(cfg, folder, open_source(folder, cfg.metadata))
    final, partial = cache_root() / key, cache_root() / f"{key}.partial"
    if (final / "index.json").is_file():
        problems = check(final)
        if problems:
            return "error", f"data store {final}: {problems[0]}; delete the folder and the next run decodes the data again"
        stale = stale_shards(Store(final), folder)
        if stale:
            return "warning", (f"data store {final}: files of {len(stale)} shard(s) changed since they were decoded; "
                               "the next run decodes those shards again")
        return "note", f"data store {final}: complete, {Store(final).rows:,} rows, files unchanged (size and mtime)"
    if partial.is_dir():
        done = len(list(partial.glob("*.done")))
        return "warning", f"data store {partial}: a build was cut short ({done} shard(s) decoded); the next run continues it"
    return "note", f"data store: not built yet for these data settings ({final}); the next run builds it"


def _fingerprint(store: Store, cfg: FolderData, seed: int, source) -> str:
    """Covers contents, not locations (moving the folder keeps cached results valid): the metadata
    and the sha256 of every file a row names, taken when the store decoded it."""
    h = hashlib.sha256(f"edgekd-folder-v{FORMAT} seed={seed}\n".encode())
    # image_mode joined the recipe later: left out at its default, so older runs keep their fingerprint
    unchanged = {"path", *MACHINE_ONLY} | ({"image_mode"} if cfg.image_mode == "gray" else set())
    h.update(cfg.model_dump_json(exclude=unchanged).encode() + b"\n")
    h.update(source.content())
    h.update((store.path / "files.bin").read_bytes())  # each file's path and sha256, sorted by path
    return h.hexdigest()[:16]


class FolderDataset:
    """A folder dataset over its store (the edgekd.data.base.Dataset protocol)."""

    num_pairings = 1

    def __init__(self, store: Store, cfg: FolderData, folder: Path, seed: int, source):
        self.store, self.folder, self.workers = store, folder, cfg.workers
        self.name = folder.resolve().name
        self.classes: list[str] = list(store.classes)
        self._labels = np.asarray(store.labels, dtype=np.int64)
        self._splits = _splits(store, self.classes, cfg, seed)
        self._text_override: dict[str, list[str]] = {}
        self._fingerprint = _fingerprint(store, cfg, seed, source)
        derived = store.path / "derived" / f"v{DERIVED}-{self._fingerprint}.json"
        if derived.is_file():  # the statistics and tokenizers of these settings, computed by an earlier run
            got = json.loads(derived.read_text(encoding="utf-8"))
            self.preprocess = got["preprocess"]
            self.modalities = {m: ModalitySpec(**{**e, "shape": tuple(e["shape"])}) for m, e in got["modalities"].items()}
        else:
            self._fit(store, cfg)
            _write_json(derived, {"preprocess": self.preprocess,
                                  "modalities": {m: asdict(e) for m, e in self.modalities.items()}})
        self._tokenizers = {m: _tokenizer(p["tokenizer_json"]) for m, p in self.preprocess.items() if p["kind"] == "text"}

    def _fit(self, store: Store, cfg: FolderData) -> None:
        """Normalisation statistics (streamed over the train rows) and text tokenizers (train texts)."""
        self.modalities, self.preprocess = {}, {}
        train = self._splits["train"]
        for m, kind in cfg.modalities.items():
            vocab = 0
            if kind == "text":
                texts = (t for i in range(0, len(train), CHUNK) for t in store.texts(m, train[i : i + CHUNK]))
                tok = train_tokenizer(texts, cfg.text_vocab_size)
                p = {"kind": "text", "max_length": cfg.text_max_length, "tokenizer_json": tok.to_str()}
                vocab, shape = tok.get_vocab_size(), (cfg.text_max_length,)
            elif kind == "vector":
                mean, std = _moments(lambda r, m=m: store.vectors(m)[r], train, "column")
                p = {"kind": "vector", "mean": mean.tolist(), "std": std.tolist()}
                shape = (store.vectors(m).shape[1],)
            else:
                p = copy.deepcopy(store.index["modalities"][m]["params"])
                norm = pp.normalise_image if kind == "image" else pp.normalise_audio
                # statistics of what the model would see with mean 0 / std 1 (pixels / 255, log-mels)
                per = "channel" if p.get("channels", 1) == 3 else "all"
                mean, std = _moments(lambda r, m=m, norm=norm, p0=dict(p): norm(store.gather(m, r), p0), train, per)
                p["mean"], p["std"] = (mean.tolist(), std.tolist()) if per == "channel" else (mean, std)
                shape = store.feature_shape(m)
            self.preprocess[m] = p
            self.modalities[m] = ModalitySpec(m, kind, tuple(shape), "int64" if kind == "text" else "float32", vocab)

    # ---------------------------------------------------------------- the Dataset protocol
    def has_split(self, name: str) -> bool:
        return name in self._splits and len(self._splits[name]) > 0

    def split(self, name: str, pairing: int = 0) -> Split:
        if name not in SPLITS:
            raise DataError(f"unknown split '{name}': use one of {', '.join(SPLITS)}")
        idx = self._splits[name]
        inputs = {m: Column(self._fetcher(m), idx, s.shape, s.dtype) for m, s in self.modalities.items()}
        return Split(inputs, self._labels[idx], [f"row{i + 1}" for i in idx])

    def split_rows(self, name: str) -> np.ndarray:
        """The dataset rows of split `name`, in the split's order."""
        return self._splits[name]

    def fingerprint(self) -> str:
        return self._fingerprint

    def __len__(self) -> int:
        return len(self._labels)

    # ---------------------------------------------------------------- raw columns
    def texts(self, m: str, rows) -> list[str]:
        """Column `m`'s texts as written (or as an augmented view rewrote them)."""
        if m in self._text_override:
            return [self._text_override[m][i] for i in np.asarray(rows, dtype=np.int64)]
        return self.store.texts(m, rows)

    @property
    def raw_text(self) -> dict[str, list[str]]:
        """Every text column whole (augmented views rewrite whole columns; tests compare them)."""
        rows = np.arange(len(self))
        return {m: self.texts(m, rows) for m, s in self.modalities.items() if s.kind == "text"}

    def files(self, m: str, rows) -> list:
        """Column `m`'s image/audio sources of `rows`: paths, or file objects over bytes the metadata held."""
        return self.store.files(m, rows, self.folder)

    def with_texts(self, texts: dict[str, list[str]]) -> FolderDataset:
        """The same rows with these text columns rewritten (an augmented view, edgekd.data.views): the
        student's token ids follow, with this dataset's own tokenizer. Holds the rewritten texts."""
        out = copy.copy(self)
        out._text_override = {**self._text_override, **texts}
        return out

    def _fetcher(self, m: str):
        kind, p = self.modalities[m].kind, self.preprocess[m]
        if kind == "image":
            return lambda rows: pp.normalise_image(self.store.gather(m, rows), p)
        if kind == "audio":
            return lambda rows: pp.normalise_audio(self.store.gather(m, rows), p)
        if kind == "vector":
            mean, std = np.asarray(p["mean"], np.float32), np.asarray(p["std"], np.float32)
            return lambda rows: ((np.asarray(self.store.vectors(m)[rows], np.float32) - mean) / std).astype(np.float32)
        tok, length = self._tokenizers[m], int(p["max_length"])

        def ids(rows):
            out = np.zeros((len(rows), length), dtype=np.int64)
            for k, enc in enumerate(tok.encode_batch(self.texts(m, rows))):
                got = enc.ids[:length]
                out[k, : len(got)] = got
            return out
        return ids


def _tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def _write_json(path: Path, obj) -> None:
    import os

    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a read-only cache: the statistics are computed again next time, nothing is lost
        tmp.unlink(missing_ok=True)


def _moments(fetch, rows: np.ndarray, per: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std over `rows` (per: "all" values, "channel" of (B, C, H, W), "column"
    of (B, D)), streamed in chunks and merged with Chan et al.'s formula, in float64."""
    n, mean, m2 = 0, 0.0, 0.0
    rows = np.sort(rows)  # the store's order: sequential reads
    for i in range(0, len(rows), CHUNK):
        x = np.asarray(fetch(rows[i : i + CHUNK]))
        # (rows, statistics, values of each): no transposed copy, float64 accumulation
        x = x.reshape(1, 1, -1) if per == "all" else x.reshape(len(x), x.shape[1], -1) if per == "channel" \
            else x.reshape(len(x), -1, 1)
        k, cm = x.shape[0] * x.shape[2], x.mean(axis=(0, 2), dtype=np.float64)
        cm2 = ((x - cm[None, :, None]) ** 2).sum(axis=(0, 2))
        delta, total = cm - mean, n + k
        mean = mean + delta * k / total
        m2 = m2 + cm2 + delta**2 * n * k / total
        n = total
    std = np.maximum(np.sqrt(np.asarray(m2) / max(n, 1)), STD_FLOOR)
    return (float(mean[0]), float(std[0])) if per == "all" else (np.asarray(mean), std)


# --------------------------------------------------------------------------- splits


def _splits(store: Store, classes: list[str], cfg: FolderData, seed: int) -> dict[str, np.ndarray]:
    codes = np.asarray(store.split_codes)
    label_names = np.asarray(classes)[np.asarray(store.labels)]
    if (codes < 0).all():
        return _stratified(label_names, classes, cfg, seed)
    out = {s: np.flatnonzero(codes == c) for s, c in SPLIT_CODES.items()}
    in_train = set(label_names[out["train"]].tolist())
    missing = [c for c in classes if c not in in_train]
    if missing:
        raise DataError(f"{store.index['metadata']}: class(es) {', '.join(missing)} have no train rows in column "
                        f"'{cfg.split_column}': mark at least one row of each class as train")
    if not len(out["val"]) and cfg.val_fraction > 0:  # a split column without val rows: carve val out of train
        train, val = _carve(out["train"].tolist(), label_names, classes, cfg.val_fraction, seed)
        out["train"], out["val"] = np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64)
    return {s: np.asarray(v, dtype=np.int64) for s, v in out.items()}


def _carve(train: list[int], label_names, classes, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Per class, a seeded `fraction` of its train rows (at least one train row left) becomes val."""
    names = np.asarray(label_names)[train]
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
    names = np.asarray(label_names)
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


# --------------------------------------------------------------------------- text


def train_tokenizer(texts, vocab_size: int):
    """A WordPiece tokenizer (lowercase, BERT pre-tokenizer, "[PAD]" = 0, "[UNK]" = 1) over an
    iterable of texts (streamed: only the word counts are held).

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
