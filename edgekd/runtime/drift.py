"""Input-drift monitoring: a few per-sample statistics of each model input, and the model's
confidence, compared between the test split (the reference, written at export) and a rolling window
of live requests by the population-stability index (PSI). numpy only and a few vector ops per batch,
since the device server runs it on every request. Scalar features, not raw pixels or mel bins: each
is chosen so that a common field fault moves it (docs/monitoring.md); the server exports the values
as `edgekd_drift_psi{input, feature}`.
"""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np

from edgekd.errors import BundleError

SCHEMA, VERSION = "edgekd.drift", 1
FIX = "re-export with `edgekd export RUN_DIR`"
EPS = 1e-4
# Conventional PSI reading (credit scoring, where PSI comes from): below 0.1 the population is
# stable; 0.1-0.2 a moderate shift worth a look; above 0.2 a significant shift: the model now sees
# inputs unlike its test split, so its measured accuracy no longer vouches for it.
THRESHOLDS = {"warn": 0.1, "alert": 0.2}
FEATURES = {"image": ("mean", "std"), "audio": ("energy", "std"), "text": ("length", "unknown"),
            "vector": ("mean", "norm")}
CONFIDENCE = "confidence"


def features(kind: str, x: np.ndarray, unk_id: int | None = None) -> dict[str, np.ndarray]:
    """Per-sample scalar features (float64, one per row) of a batch of model inputs of `kind`.

    image  mean: brightness of the normalised pixels (exposure, inversion, a dark or washed-out
           camera); std: contrast (blur, fog, saturation, a blank frame).
    audio  energy: mean of the normalised log-mel, i.e. loudness (gain, distance to the mic; a
           factor g in amplitude adds 2*log10(g)/std to every unfloored bin); std: spread of the
           log-mel, which noise (raises the floor) and clipping (flattens the peaks) shrink.
    text   length: non-padding token count (id 0 is padding; truncation shows as a pile-up at
           max_length); unknown: fraction of those tokens equal to the tokenizer's unk id, i.e.
           vocabulary the model never saw (another language, OCR noise); only given `unk_id`.
    vector mean: a shared offset of the normalised features (a recalibrated sensor); norm: L2 norm,
           which any rescaled or outlying feature inflates.
    """
    if kind not in FEATURES:
        raise ValueError(f"unknown input kind {kind!r}: expected one of {', '.join(FEATURES)}")
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch (batch, ...) of {kind} inputs, got shape {x.shape}")
    flat = x.reshape(x.shape[0], -1)
    if kind == "text":
        real = flat != 0
        length = real.sum(axis=1).astype(np.float64)
        out = {"length": length}
        if unk_id is not None:  # per real token, so the length of a text does not move it
            out["unknown"] = ((flat == int(unk_id)) & real).sum(axis=1) / np.maximum(length, 1.0)
        return out
    flat = flat.astype(np.float64, copy=False)  # float32 sums over 2.5k pixels lose digits the cuts need
    if kind == "vector":
        return {"mean": flat.mean(axis=1), "norm": np.sqrt(np.einsum("ij,ij->i", flat, flat))}
    first = "mean" if kind == "image" else "energy"
    return {first: flat.mean(axis=1), "std": flat.std(axis=1)}


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """Max softmax probability per row of a (batch, classes) logits array (stable softmax)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return 1.0 / np.exp(z).sum(axis=1)  # the max's own term is exp(0) = 1


def _binned(values: np.ndarray, bins: int) -> dict:
    """Quantile bins of reference values: `cuts` are the interior edges (bin i is [cuts[i-1],
    cuts[i]) with -inf and +inf ends, kept implicit so the file stays strict JSON); equal quantiles
    are merged, so a constant feature gets two bins instead of empty ones or a crash."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no finite reference values to bin")
    cuts = np.unique(np.quantile(v, np.arange(1, bins) / bins))
    counts = np.bincount(np.searchsorted(cuts, v, side="right"), minlength=cuts.size + 1)
    return {"cuts": cuts.tolist(), "fracs": (counts / v.size).tolist()}


def reference(inputs: dict[str, np.ndarray], kinds: dict[str, str], confidence: np.ndarray, bins: int = 10,
              unk_ids: dict[str, int] | None = None, model: str | None = None) -> dict:
    """The JSON-serialisable drift reference of a test split: per input and feature, and for the
    model's confidence, quantile bins (deciles by default) and the reference fraction in each.
    `unk_ids` maps a text input to its tokenizer's unk id; `model` names the model whose confidence
    this is (confidence is model-specific: serve that model or expect a small confidence PSI)."""
    if bins < 2:
        raise ValueError(f"bins={bins}: need at least 2")
    unk_ids = unk_ids or {}
    out = {"schema": SCHEMA, "version": VERSION, "n": int(len(confidence)), "bins": int(bins), "model": model,
           "inputs": {}}
    for name, x in inputs.items():
        entry = {"kind": kinds[name]}
        if name in unk_ids:
            entry["unk_id"] = int(unk_ids[name])
        # a chunk at a time: a training-side split's columns are read lazily, never whole
        parts = [features(kinds[name], np.asarray(x[i : i + 1024]), entry.get("unk_id")) for i in range(0, len(x), 1024)]
        feats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        entry["features"] = {f: _binned(v, bins) for f, v in feats.items()}
        out["inputs"][name] = entry
    out[CONFIDENCE] = _binned(confidence, bins)
    return out


def psi(expected_fracs, actual_fracs, eps: float = EPS) -> float:
    """Population-stability index, sum((a - e) * ln(a / e)) over bins. Both sides are floored at
    `eps` first: a bin empty on one side would otherwise make the log infinite, and a bin that was
    empty in the reference and stays empty must add nothing (it does: a = e = eps)."""
    e = np.maximum(np.asarray(expected_fracs, dtype=np.float64), eps)
    a = np.maximum(np.asarray(actual_fracs, dtype=np.float64), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def check_reference(ref) -> dict:
    """`ref` itself when it is a well-formed reference, else BundleError naming the first problem."""
    def bad(why: str):
        raise BundleError(f"drift reference: {why}; {FIX}")

    def check_bins(where: str, b) -> None:
        if not isinstance(b, dict) or not isinstance(b.get("cuts"), list) or not isinstance(b.get("fracs"), list):
            bad(f"{where} needs lists 'cuts' and 'fracs'")
        try:
            cuts, fracs = np.asarray(b["cuts"], dtype=np.float64), np.asarray(b["fracs"], dtype=np.float64)
        except (TypeError, ValueError):
            bad(f"{where} holds values that are not numbers")
        if cuts.ndim != 1 or fracs.ndim != 1 or fracs.size != cuts.size + 1:
            bad(f"{where} has {cuts.size} cuts and {fracs.size} fractions (expected one more fraction than cuts)")
        if not np.isfinite(cuts).all() or np.any(np.diff(cuts) <= 0):
            bad(f"{where} cuts are not finite and strictly increasing")
        if not np.isfinite(fracs).all() or fracs.min() < 0 or abs(fracs.sum() - 1.0) > 1e-6:
            bad(f"{where} fractions are not non-negative and summing to 1")

    if not isinstance(ref, dict):
        bad(f"expected a JSON object, got {type(ref).__name__}")
    if ref.get("schema") != SCHEMA or ref.get("version") != VERSION:
        bad(f"schema {ref.get('schema')!r} version {ref.get('version')!r}, this edgekd reads {SCHEMA!r} "
            f"version {VERSION}")
    if not isinstance(ref.get("n"), int) or isinstance(ref["n"], bool) or ref["n"] < 1:
        bad(f"'n' is {ref.get('n')!r}, expected a positive sample count")
    if not isinstance(ref.get("inputs"), dict):
        bad("'inputs' is missing or not an object")
    for name, entry in ref["inputs"].items():
        if not isinstance(entry, dict) or entry.get("kind") not in FEATURES:
            bad(f"input '{name}' has no known kind (image, audio, text or vector)")
        feats = entry.get("features")
        allowed = FEATURES[entry["kind"]]
        if not isinstance(feats, dict) or not feats or any(f not in allowed for f in feats):
            bad(f"input '{name}' features {sorted(feats) if isinstance(feats, dict) else feats!r} are not "
                f"among {', '.join(allowed)}")
        if "unknown" in feats and not isinstance(entry.get("unk_id"), int):
            bad(f"input '{name}' has an 'unknown' feature but no integer 'unk_id'")
        for f, b in feats.items():
            check_bins(f"{name}/{f}", b)
    if CONFIDENCE not in ref:
        bad(f"'{CONFIDENCE}' is missing")
    check_bins(CONFIDENCE, ref[CONFIDENCE])
    return ref


def read_reference(path) -> dict:
    """A checked reference from a JSON file (a bundle's drift.json)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise BundleError(f"cannot read drift reference {path} ({e.strerror or e}); {FIX}") from None
    try:
        ref = json.loads(text)
    except ValueError as e:
        raise BundleError(f"drift reference {path} is not JSON ({e}); {FIX}") from None
    return check_reference(ref)


class _Series:
    """A ring buffer of the bin index of the last `window` values of one feature, with running bin
    counts: observing is a searchsorted and two bincounts, reading the PSI costs O(bins) whatever
    the window. Bin indices, not values, are kept since values are only ever compared with cuts."""

    def __init__(self, spec: dict, window: int):
        self.cuts = np.asarray(spec["cuts"], dtype=np.float64)
        self.expected = np.asarray(spec["fracs"], dtype=np.float64)
        self.buf = np.zeros(window, dtype=np.intp)
        self.counts = np.zeros(self.expected.size, dtype=np.int64)
        self.pos = self.filled = 0

    def add(self, values: np.ndarray) -> None:
        w, nb = self.buf.size, self.counts.size
        idx = np.searchsorted(self.cuts, values, side="right")[-w:]  # NaN lands in the top bin
        slots = (self.pos + np.arange(idx.size)) % w
        over = slots[idx.size - max(0, self.filled + idx.size - w):]  # the oldest values, now overwritten
        self.counts -= np.bincount(self.buf[over], minlength=nb)
        self.buf[slots] = idx
        self.counts += np.bincount(idx, minlength=nb)
        self.pos, self.filled = int((self.pos + idx.size) % w), min(w, self.filled + idx.size)

    def psi(self, min_samples: int) -> float | None:
        return psi(self.expected, self.counts / self.filled) if self.filled >= min_samples else None


class DriftMonitor:
    """PSI of live inputs against a bundle's reference over the last `window` samples per series;
    None for a series until `min_samples` were seen (noise alone gives about (bins - 1) * (1/n +
    1/reference n) on average: 0.1 at 100 live samples, 0.02 at 1000, 10 bins). Thread-safe."""

    def __init__(self, reference: dict, window: int = 1000, min_samples: int = 100):
        if not 1 <= min_samples <= window:
            raise ValueError(f"need 1 <= min_samples ({min_samples}) <= window ({window})")
        ref = check_reference(reference)
        self.window, self.min_samples = int(window), int(min_samples)
        self._inputs = {name: (e["kind"], e.get("unk_id")) for name, e in ref["inputs"].items()}
        self._series = {f"{name}/{f}": _Series(b, self.window)
                        for name, e in ref["inputs"].items() for f, b in e["features"].items()}
        self._series[CONFIDENCE] = _Series(ref[CONFIDENCE], self.window)
        self._lock = threading.Lock()

    def observe(self, inputs: dict[str, np.ndarray], confidence: np.ndarray | None = None) -> None:
        """Count one batch: model inputs by name (names the reference lacks are ignored) and the
        model's max softmax probability per row. Features are computed outside the lock."""
        new = {}
        for name, x in inputs.items():
            if name in self._inputs:
                kind, unk = self._inputs[name]
                for f, v in features(kind, x, unk).items():
                    if f"{name}/{f}" in self._series:
                        new[f"{name}/{f}"] = v
        if confidence is not None:
            new[CONFIDENCE] = np.asarray(confidence, dtype=np.float64).reshape(-1)
        with self._lock:
            for key, v in new.items():
                self._series[key].add(v)

    def psi(self) -> dict[str, float | None]:
        """{"image/mean": 0.03, ..., "confidence": 0.01}: the PSI of each series, None while short."""
        with self._lock:
            return {key: s.psi(self.min_samples) for key, s in self._series.items()}

    def counts(self) -> dict[str, int]:
        """Samples in each series' window (at most `window`)."""
        with self._lock:
            return {key: s.filled for key, s in self._series.items()}


def metric_labels(key: str) -> dict[str, str]:
    """Prometheus labels of a psi() key: "image/mean" -> input image, feature mean; "confidence" ->
    input confidence, feature top_probability (as edgekd/serve/metrics.py labels them)."""
    name, _, feature = key.partition("/")
    return {"input": name, "feature": feature or "top_probability"}


def level(value: float | None) -> str:
    """'stable', 'warn' or 'alert' for a PSI by THRESHOLDS ('unknown' while None or NaN)."""
    if value is None or math.isnan(value):
        return "unknown"
    return "alert" if value > THRESHOLDS["alert"] else "warn" if value > THRESHOLDS["warn"] else "stable"
