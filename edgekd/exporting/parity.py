"""The parity ladder: each exported model against the PyTorch model it came from, at batch 1 and
at a larger batch, then its accuracy on the whole test split through onnxruntime.

A rung compares every output (max abs diff against a tolerance) and the top-1 class. A failed
rung raises ExportError naming the model, the output, the diff and the tolerance. The exported
side runs through the device runtime's OrtRunner, the same code `predict` and `bench` use; every
bound is recorded in the unit it is checked in (absolute logit difference).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgekd.contract import OUTPUTS, to_numpy
from edgekd.errors import ExportError


@dataclass
class Rung:
    name: str  # the artifact, e.g. student_int8_qdq
    reference: str  # what it is compared with, e.g. "pytorch fake-quant"
    tolerance: float  # max abs diff allowed on logits (embedding: scaled by its magnitude)
    min_agreement: float  # top-1 agreement required where the reference is not a near-tie
    relative: bool = False  # tolerance is a fraction of the batch's largest |logit| (at least 1)


def torch_outputs(model, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return to_numpy(model({k: torch.from_numpy(v) for k, v in batch.items()}))


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], tolerance: float = 0.0) -> dict:
    diffs = {k: float(np.abs(ref[k] - got[k]).max()) for k in OUTPUTS}
    scale = {k: float(np.abs(ref[k]).max()) or 1.0 for k in OUTPUTS}
    same = ref["logits"].argmax(1) == got["logits"].argmax(1)
    # a sample whose two best reference logits are closer than the tolerance allows either answer
    top2 = np.sort(ref["logits"], axis=1)[:, -2:] if ref["logits"].shape[1] > 1 else np.zeros((len(same), 2))
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
    return {"max_abs_diff": diffs, "scale": scale, "top1_agreement": float(same.mean()),
            "decisive_samples": int(decisive.sum()),
            "decisive_agreement": float(same[decisive].mean()) if decisive.any() else 1.0}


def run_rung(rung: Rung, model, runner, batches: dict[int, dict[str, np.ndarray]]) -> dict:
    """Compare `model` (PyTorch) with `runner` (the exported model, e.g. an OrtRunner) on each batch
    size; raise on the first output over tolerance. `bound` is the absolute logit bound each batch
    was held to (for a relative rung: the tolerance times the batch's largest |logit|, at least 1)."""
    result = {"reference": rung.reference, "tolerance": rung.tolerance, "relative": rung.relative,
              "min_agreement": rung.min_agreement, "batches": {}}
    for size, batch in batches.items():
        got = runner.run(batch)
        for k in OUTPUTS:
            if got[k].shape != (size, *got[k].shape[1:]):
                raise ExportError(f"{rung.name}: output '{k}' has batch {got[k].shape[0]} for an input batch of {size}; "
                                  "the dynamic batch axis is broken")
        ref = torch_outputs(model, batch)
        base = rung.tolerance * (max(1.0, float(np.abs(ref["logits"]).max())) if rung.relative else 1.0)
        c = compare(ref, got, base)
        c["bound"] = base
        result["batches"][size] = c
        for k in OUTPUTS:
            # the embedding may be on another scale than the logits: hold it to the same relative error
            tol = base * (1.0 if k == "logits" else max(1.0, c["scale"][k] / max(c["scale"]["logits"], 1e-6)))
            if not c["max_abs_diff"][k] <= tol:
                raise ExportError(f"parity: {rung.name} vs {rung.reference} at batch {size}: output '{k}' max abs "
                                  f"diff {c['max_abs_diff'][k]:.3g} > tolerance {tol:.3g}; the exported model does not "
                                  "compute what the PyTorch model does (raise recipe.export tolerances only if this is "
                                  "expected rounding)")
        if c["decisive_agreement"] < rung.min_agreement:
            raise ExportError(f"parity: {rung.name} vs {rung.reference} at batch {size}: top-1 agreement "
                              f"{c['decisive_agreement']:.3f} < {rung.min_agreement} on the {c['decisive_samples']} "
                              "samples whose top-2 logits are further apart than the tolerance")
    result["max_abs_diff"] = max(c["max_abs_diff"]["logits"] for c in result["batches"].values())
    result["top1_agreement"] = min(c["top1_agreement"] for c in result["batches"].values())
    worst = max(result["batches"].values(), key=lambda c: c["max_abs_diff"]["logits"])
    result["bound"] = worst["bound"]  # the bound of the batch the largest diff came from
    return result


def accuracy(runner, inputs: dict[str, np.ndarray], labels: np.ndarray, batch_size: int = 256) -> tuple[float, np.ndarray]:
    """(top-1 accuracy, predictions) of an exported model over a split, through its runner."""
    preds = []
    for i in range(0, len(labels), batch_size):
        out = runner.run({k: v[i : i + batch_size] for k, v in inputs.items()})["logits"]
        preds.append(out.argmax(1))
    preds = np.concatenate(preds)
    return round(float((preds == labels).mean()), 4), preds
