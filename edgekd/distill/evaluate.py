"""Accuracy, per-class report, confusion matrix, and accuracy with each modality absent."""
from __future__ import annotations

import numpy as np
import torch

from edgekd.data.base import Split
from edgekd.data.loader import batches, sequential


@torch.no_grad()
def predict(model, split: Split, names: list[str], batch_size: int = 256, keep: np.ndarray | None = None) -> np.ndarray:
    """Logits (N, C) of `model` over `split`, using only modalities `names`."""
    model.eval()
    outs = []
    for idx, got in batches({n: split.inputs[n] for n in names}, sequential(len(split), batch_size)):
        x = {n: torch.from_numpy(got[n]) for n in names}
        k = None if keep is None else torch.from_numpy(keep[idx])
        outs.append(model(x, keep=k).logits.float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)


def confusion(labels: np.ndarray, preds: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (labels, preds), 1)
    return m  # rows: true class, columns: predicted


def per_class(conf: np.ndarray, classes: list[str]) -> dict:
    tp = np.diag(conf).astype(float)
    precision = tp / np.maximum(conf.sum(axis=0), 1)
    recall = tp / np.maximum(conf.sum(axis=1), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return {c: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                "support": int(s)} for c, p, r, f, s in zip(classes, precision, recall, f1, conf.sum(axis=1))}


def evaluate(model, split: Split, names: list[str], classes: list[str]) -> dict:
    """Everything the manifest and the stage report need about one model on one split."""
    logits = predict(model, split, names)
    preds = logits.argmax(axis=1)
    conf = confusion(split.labels, preds, len(classes))
    result = {
        "accuracy": round(float((preds == split.labels).mean()), 4),
        "per_class": per_class(conf, classes),
        "confusion": conf.tolist(),
        "accuracy_without": {},
    }
    if len(names) > 1:
        order = list(getattr(model, "names", names))  # the keep mask follows the model's modality order
        for name in names:
            i = order.index(name)
            keep = np.ones((len(split), len(order)), dtype=np.float32)
            keep[:, i] = 0.0
            p = predict(model, split, names, keep=keep).argmax(axis=1)
            result["accuracy_without"][name] = round(float((p == split.labels).mean()), 4)
    return result
