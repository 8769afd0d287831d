"""Model registry: `create_model(name, **kwargs)` over a decorator registry (timm-style)."""
from __future__ import annotations

import difflib

from edgekd.errors import RecipeError
from edgekd.models.registry import _REGISTRY, Entry, ModelOutput, register_model  # noqa: F401  (re-exported)


def _load_builtin():
    from edgekd.models import hf_classifier, student, teacher  # noqa: F401  (registration side effect)


def list_models(role: str | None = None) -> list[Entry]:
    _load_builtin()
    return [e for e in sorted(_REGISTRY.values(), key=lambda e: e.name) if role in (None, e.role)]


def get_entry(name: str, role: str, where: str) -> Entry:
    _load_builtin()
    entry = _REGISTRY.get(name)
    if entry is None or entry.role != role:
        names = [e.name for e in list_models(role)]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else f" (registered: {', '.join(names)})"
        raise RecipeError(f"{where}: unknown {role} '{name}'{hint}")
    return entry


def create_model(name: str, role: str, **kwargs):
    return get_entry(name, role, f"{role}.name").factory(**kwargs)


def check_names(recipe) -> None:
    get_entry(recipe.teacher.name, "teacher", "recipe.teacher.name")
    if recipe.student.name != "auto":  # auto: the search builds registered students
        get_entry(recipe.student.name, "student", "recipe.student.name")


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model, example: dict) -> int:
    """Forward FLOPs for one sample (batch 1), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    # no torch.no_grad(): FlopCounterMode's module tracker fails on no-grad tensors (torch 2.13)
    with FlopCounterMode(display=False) as counter:
        model(example)
    model.train(was_training)
    return int(counter.get_total_flops())
