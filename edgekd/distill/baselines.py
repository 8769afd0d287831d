"""Linear baselines beside every teacher and student: what a student has to beat to be worth shipping.

Fitted with scikit-learn on the same train split, scored on the same validation rows (the data's
val split, else edgekd.data.holdout's share of train) and on the whole test split:

- TF-IDF over word 1-2 grams + logistic regression, per text modality;
- logistic regression on each image (average-pooled to at most 8 x 8 per channel), audio (each mel
  band's mean and spread over time) and vector modality;
- their late fusion: the per-modality models' log-probabilities summed (a product of experts).

Each model's C is chosen on validation; without a val split the chosen one is refitted on every
train row before test, as a grid search would. At most MAX_FIT_ROWS seeded train rows are fitted,
so the baselines cost seconds at any dataset size; features are read a chunk at a time.
"""
from __future__ import annotations

import numpy as np

from edgekd.data.columns import chunks, take
from edgekd.data.holdout import holdout

MAX_FIT_ROWS = 20_000
POOL = 8  # image side after average pooling
GRIDS = {"text": (1.0, 10.0, 100.0), "dense": (0.1, 1.0, 10.0)}


def _pool(x: np.ndarray, side: int = POOL) -> np.ndarray:
    """(N, [C,] H, W) -> (N, C * h * w), each of h x w cells the mean of its block of pixels."""
    x = x.reshape(len(x), -1, *x.shape[-2:])
    h, w = x.shape[2], x.shape[3]
    rs = np.linspace(0, h, min(side, h) + 1).astype(int)[:-1]
    cs = np.linspace(0, w, min(side, w) + 1).astype(int)[:-1]
    s = np.add.reduceat(np.add.reduceat(x, rs, axis=2), cs, axis=3)
    counts = np.outer(np.diff(np.append(rs, h)), np.diff(np.append(cs, w)))
    return (s / counts).reshape(len(x), -1).astype(np.float32)


def _dense(column, kind: str, rows: np.ndarray) -> np.ndarray:
    out = []
    for _, x in chunks(take(column, rows)):
        x = np.asarray(x, np.float32)
        if kind == "image":
            out.append(_pool(x))
        elif kind == "audio":  # (N, T, mels): each band's level and spread over the clip
            out.append(np.concatenate([x.mean(1), x.std(1)], axis=1))
        else:
            out.append(x.reshape(len(x), -1))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class _Modality:
    """One modality's features for one split, and a model over them."""

    def __init__(self, data, m: str):
        self.m, self.kind = m, data.modalities[m].kind
        self.data = data

    def features(self, split: str, rows: np.ndarray):
        if self.kind == "text":
            return self.data.texts(self.m, self.data.split_rows(split)[rows])
        return _dense(self.data.split(split).inputs[self.m], self.kind, rows)

    def model(self, c: float):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        lr = LogisticRegression(C=c, max_iter=500)
        if self.kind == "text":
            return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), lr)
        return make_pipeline(StandardScaler(), lr)

    @property
    def title(self) -> str:
        if self.kind == "text":
            return f"{self.m}: TF-IDF 1-2 grams + logistic regression"
        how = {"image": f"pixels pooled to {POOL}x{POOL}", "audio": "mean and spread of each mel band"}
        return f"{self.m}: logistic regression on {how.get(self.kind, 'the vector')}"


def _log_proba(model, x, n_classes: int) -> np.ndarray:
    """(N, n_classes) log-probabilities; classes the fit never saw get a floor."""
    p = np.full((len(x), n_classes), -30.0)
    p[:, model.classes_] = np.maximum(model.predict_log_proba(x), -30.0)
    return p


def fit_baselines(data, modalities: list[str], seed: int = 0) -> dict:
    """{"models": [{name, title, val_accuracy, accuracy, C}], "validation": where val came from,
    "fit_rows": n} for `modalities` of `data` (skipped where the data cannot give raw text)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # a C far off converges slowly; it loses anyway
    train_y = data.split("train").labels
    rng = np.random.default_rng([seed, 0xBA5E])
    cap = np.sort(rng.choice(len(train_y), MAX_FIT_ROWS, replace=False)) if len(train_y) > MAX_FIT_ROWS else \
        np.arange(len(train_y))
    own_val = data.has_split("val")
    if own_val:
        fit, val_split, val_rows = cap, "val", np.arange(len(data.split("val")))
    else:
        f, v = holdout(train_y[cap], seed=seed)
        fit, val_split, val_rows = cap[f], "train", cap[v]
    val_y = data.split(val_split).labels[val_rows]
    test_y = data.split("test").labels
    n = len(data.classes)
    mods = [_Modality(data, m) for m in modalities if data.modalities[m].kind != "text" or hasattr(data, "texts")]
    rows, val_lp, test_lp = [], [], []
    for mod in mods:
        x_fit, x_val = mod.features("train", fit), mod.features(val_split, val_rows)
        grid = GRIDS["text" if mod.kind == "text" else "dense"]
        scored = []
        for c in grid:
            model = mod.model(c).fit(x_fit, train_y[fit])
            lp = _log_proba(model, x_val, n)
            scored.append(((lp.argmax(1) == val_y).mean(), -c, c, model, lp))
        acc, _, c, model, lp = max(scored, key=lambda s: s[:2])
        if not own_val:  # the chosen C again on every (capped) train row
            model = mod.model(c).fit(mod.features("train", cap), train_y[cap])
        tlp = _log_proba(model, mod.features("test", np.arange(len(test_y))), n)
        val_lp.append(lp)
        test_lp.append(tlp)
        rows.append({"name": mod.m, "title": mod.title, "C": c, "val_accuracy": round(float(acc), 4),
                     "accuracy": round(float((tlp.argmax(1) == test_y).mean()), 4)})
    if len(rows) > 1:
        rows.append({"name": "late_fusion", "title": "late fusion of the above (log-probabilities summed)",
                     "val_accuracy": round(float((sum(val_lp).argmax(1) == val_y).mean()), 4),
                     "accuracy": round(float((sum(test_lp).argmax(1) == test_y).mean()), 4)})
    return {"models": rows, "fit_rows": int(len(cap)),
            "validation": "the val split" if own_val else f"{len(val_rows)} held-out train rows (edgekd.data.holdout)"}


def best(baselines: dict | None, key: str = "val_accuracy") -> dict | None:
    """The baseline with the highest `key` (val_accuracy: how it is chosen), or None."""
    models = [b for b in (baselines or {}).get("models", []) if b.get(key) is not None]
    return max(models, key=lambda b: b[key]) if models else None


def beaten_by(baselines: dict | None, accuracy: float | None, what: str = "the student") -> str | None:
    """The plain sentence when a baseline (manifest form: {name: {val_accuracy, accuracy}}) beats
    `accuracy` on test, e.g. "a linear model on `text` is 6.3 points better than the student"."""
    if not baselines or accuracy is None:
        return None
    name, b = max(baselines.items(), key=lambda kv: kv[1]["accuracy"])
    if b["accuracy"] <= accuracy:
        return None
    on = "the late fusion of linear models" if name == "late_fusion" else f"a linear model on `{name}`"
    return f"{on} is {100 * (b['accuracy'] - accuracy):.1f} points better than {what} on test"


def budget_rows(baselines: dict | None) -> list[dict]:
    """The accuracy budget's first rows: each baseline, compared with nothing."""
    return [{"stage": f"baseline: {'late fusion' if k == 'late_fusion' else k} (linear)", "accuracy": b["accuracy"],
             "delta": None, "against": None} for k, b in (baselines or {}).items()]
