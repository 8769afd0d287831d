"""The model I/O contract as data (optimum's exporters keep theirs the same way), torch-free.

Every edgekd model takes one named input per modality (batch axis first) and returns two
outputs: `logits` (batch, classes) and `embedding` (batch, features, the fused representation the
feature-KD term matches). The ONNX export, the parity ladder, the bundle's io_spec.json, the
bench's PyTorch runner and the device runtime all read these names from here.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgekd.errors import UsageError

OUTPUTS = ("logits", "embedding")
BATCH_AXIS = "batch"
BUNDLE_FORMAT = "edgekd.bundle"
# a modality the teacher reads through its own processor (e.g. a pretrained model's tokenizer) is
# its own input, `<modality>__teacher`, beside the student's `<modality>`
TEACHER_SUFFIX = "__teacher"


def modality_of(input_name: str) -> str:
    """The modality an input belongs to (`caption__teacher` -> `caption`)."""
    return input_name.removesuffix(TEACHER_SUFFIX)


def io_spec(modalities: dict[str, dict], num_classes: int, embed_dim: int) -> dict:
    """io_spec.json: named inputs (kind, dtype, shape with the batch axis) and the two outputs.
    `modalities` maps an input name to {"kind", "dtype", "shape"} (per-sample shape)."""
    return {"inputs": [{"name": n, "kind": s["kind"], "dtype": s["dtype"], "shape": [BATCH_AXIS, *s["shape"]]}
                       for n, s in modalities.items()],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [BATCH_AXIS, num_classes]},
                        {"name": "embedding", "dtype": "float32", "shape": [BATCH_AXIS, embed_dim]}]}


def to_numpy(output) -> dict:
    """A model's ModelOutput (torch tensors, any device or dtype) as the contract's numpy outputs."""
    return {"logits": output.logits.detach().float().cpu().numpy(),
            "embedding": output.features.detach().float().cpu().numpy()}


def source_kind(path) -> str:
    """'run' for a run directory, 'bundle' for a device bundle; a one-line UsageError otherwise.
    Reads manifest.json only: nothing is verified or imported here."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(f"{path} is neither a run directory nor a bundle (no readable manifest.json); "
                         "give runs/NAME or runs/NAME/bundle") from None
    if isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT:
        return "bundle"
    if isinstance(manifest, dict) and (path / "recipe.yaml").is_file():
        return "run"
    raise UsageError(f"{path} is neither a run directory nor a bundle (its manifest.json is neither); "
                     "give runs/NAME or runs/NAME/bundle")
