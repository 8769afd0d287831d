"""INT8 in the form TensorRT's explicit quantization expects, through ModelOpt: weights per-channel
symmetric on axis 0, activations per-tensor symmetric, zero-point 0 (ModelOpt's integer
quantizers are amax-scaled and signed, so there is no zero-point to drift)."""
from __future__ import annotations

import contextlib
import fnmatch
import io
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import CheckpointError, RecipeError
from edgekd.files import atomic_path
from edgekd.recipe import QatConfig
from edgekd.schema import suggest

_QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def modelopt():
    """(mtq, mto), imported lazily: ModelOpt warns on import about transformers versions it has
    not been tested with, which is noise for the plain torch modules quantized here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import modelopt.torch.opt as mto
        import modelopt.torch.quantization as mtq
    return mtq, mto


def quantizable_layers(model: nn.Module, embeddings: bool = False) -> list[str]:
    kinds = _QUANTIZABLE + ((nn.Embedding,) if embeddings else ())
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]


def check_exclude(model: nn.Module, q: QatConfig) -> None:
    layers = quantizable_layers(model, q.quantize_embeddings)
    for pattern in q.exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*") for n in layers):
            shown = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
            raise RecipeError(f"recipe.qat.exclude: {pattern!r} matches no quantizable layer{suggest(pattern, layers)} "
                              f"(layers: {shown}; `edgekd qat --list-layers` prints them all)")


def quant_config(q: QatConfig) -> dict:
    """ModelOpt's rule list: later rules win. Everything off, then weights and inputs of
    Conv/Linear on, then the exclusions."""
    rules = [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
        {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 8, "axis": None}},
    ]
    rules += [{"quantizer_name": "*", "parent_class": f"nn.{c}", "enable": False}
              for c in ("BatchNorm1d", "BatchNorm2d", "LayerNorm")]
    if not q.quantize_embeddings:
        rules.append({"quantizer_name": "*", "parent_class": "nn.Embedding", "enable": False})
    for pattern in q.exclude:
        rules.append({"quantizer_name": f"{pattern}.*quantizer", "enable": False})
    return {"quant_cfg": rules, "algorithm": q.algorithm}


def quantize(model: nn.Module, q: QatConfig, batches: Iterable[dict]) -> nn.Module:
    """Insert quantizers and calibrate them on `batches` (real train inputs) in eval mode."""
    mtq, _ = modelopt()
    check_exclude(model, q)
    batches = list(batches)
    if not batches:
        raise RecipeError("recipe.qat.calib_batches: no calibration batches could be drawn from the train split")

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for x in batches:
                m(x)

    model.eval()
    with contextlib.redirect_stdout(io.StringIO()):  # ModelOpt prints "Inserted N quantizers"
        return mtq.quantize(model, quant_config(q), forward_loop)


def quantizers(model: nn.Module) -> dict[str, dict]:
    """Every ModelOpt quantizer: {name: {enabled, num_bits, axis, unsigned, amax_shape}}."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    table = {}
    for name, m in model.named_modules():
        if isinstance(m, TensorQuantizer):
            amax = m.amax
            table[name] = {"enabled": bool(m.is_enabled), "num_bits": m.num_bits, "axis": m.axis,
                           "unsigned": bool(m.unsigned),
                           "amax_shape": list(amax.shape) if isinstance(amax, torch.Tensor) else None}
    return table


def save_quantized(model: nn.Module, path: Path) -> Path:
    """ModelOpt state (quantizer layout and calibration) + weights, in one file restorable with
    `weights_only=True`."""
    _, mto = modelopt()
    with atomic_path(path) as tmp:
        mto.save(model, tmp)
    return path


def restore_quantized(model: nn.Module, path: Path) -> nn.Module:
    """Rebuild the quantized model on a freshly built, BatchNorm-folded student."""
    _, mto = modelopt()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return mto.restore(model, str(path), weights_only=True)  # never unpickle arbitrary objects
    except Exception as e:
        raise CheckpointError(f"{path} is not a ModelOpt checkpoint of this student ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}); re-run `edgekd qat`") from e


def calibration_batches(split, names: list[str], batch_size: int, count: int, seed: int) -> Iterator[dict]:
    """The first `count` batches of a seeded shuffle of the train split (un-augmented, all
    modalities present)."""
    import numpy as np

    from edgekd.data.loader import batches

    order = np.random.default_rng([seed, 7]).permutation(len(split))
    index = [b for k in range(count) if len(b := order[k * batch_size : (k + 1) * batch_size])]
    for _, x in batches({n: split.inputs[n] for n in names}, index):
        yield {n: torch.from_numpy(x[n]) for n in names}
