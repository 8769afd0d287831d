"""Channel pruning with NVIDIA ModelOpt FastNAS: the student wrapper ModelOpt traces, the search
rules, and rebuilding a pruned student from its ModelOpt state (the prune stage writes it; qat,
export and bench rebuild through `restore_pruned`)."""
from __future__ import annotations

import contextlib
import io

from edgekd.errors import CheckpointError, RecipeError


class Unreachable(RecipeError):
    """A FLOPs/parameter bound no subnet of the search space meets."""


@contextlib.contextmanager
def quiet():
    """ModelOpt prints search tables, progress bars and tracing warnings: none of it is the user's."""
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def positional(model, names: list[str]):
    """ModelOpt traces forward(*tensors); the student takes a dict and returns a ModelOutput."""
    import torch

    class Positional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *xs):
            return self.model(dict(zip(names, xs))).logits

    return Positional()


def prune_to(wrapped, bound: dict, divisor: int, loader: list, score, dummy: tuple, checkpoint):
    """ModelOpt FastNAS under `bound` ({"flops": "50%"} or {"params": ...}); the search checkpoint
    holds the per-layer sensitivity map, so a second bound (or a killed search, resumed) reuses it."""
    with quiet():  # ModelOpt prints its search tables, a progress bar, and warns on import
        import modelopt.torch.prune as mtp

        try:
            pruned, _ = mtp.prune(wrapped, [("fastnas", fastnas_rules(divisor))], bound, dummy_input=dummy,
                                  config={"data_loader": loader, "score_func": score, "collect_func": lambda b: b,
                                          "checkpoint": str(checkpoint)})
        except ValueError as e:
            if "constraints can be satisfied" not in str(e):
                raise
            key, value = next(iter(bound.items()))
            raise Unreachable(f"prune.{key} {value} is below the smallest this student reaches with channels in "
                              f"steps of {divisor}; raise the bound or lower prune.channel_divisor") from None
    return pruned


def fastnas_rules(divisor: int) -> dict:
    """Conv channels in steps of `divisor` (BatchNorms too: they tie to their convolutions, and at
    ModelOpt's default step of 32 the convolutions' choices collapse to it); Linear layers keep their
    width, so the embedding the export's io_spec and the distill projectors rely on stays."""
    ratios = tuple(round(0.05 * i, 2) for i in range(1, 21))
    rules = {k: {"*": {"channels_ratio": ratios, "kernel_size": (), "channel_divisor": divisor}}
             for k in ("nn.Conv1d", "nn.Conv2d")}
    rules.update({k: {"*": {"features_ratio": ratios, "feature_divisor": divisor}}
                  for k in ("nn.BatchNorm1d", "nn.BatchNorm2d")})
    rules["nn.Linear"] = {"*": {"features_ratio": (1.0,)}}
    return rules


def restore_pruned(student, names: list[str], path):
    """The distilled student rebuilt into the pruned architecture with the recovered weights."""
    from edgekd.quant.int8 import modelopt

    _, mto = modelopt()
    try:
        with quiet():
            return mto.restore(positional(student, names), str(path), weights_only=True).model.eval()
    except Exception as e:
        raise CheckpointError(f"{path} is not a ModelOpt pruning checkpoint of this student ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}); re-run `edgekd prune`") from e
