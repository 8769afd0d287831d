"""The student a recipe asks for: its modalities, its text input path and its first weights.

Shared by the distill stage and the student search (whose trials build students from sampled
settings), so both make exactly the same model from the same settings.
"""
from __future__ import annotations

import torch

from edgekd.data.processors import pruned_text_params
from edgekd.errors import RecipeError
from edgekd.models import create_model
from edgekd.schema import suggest


def student_options(s) -> dict:
    """The model options of a student section (only those set: configs of older runs stay the same)."""
    return {"fusion": s.fusion, "width": s.width, "depth": s.depth,
            **{k: v for k, v in (("dim", s.dim), ("text_kernel", s.text_kernel)) if v},
            **({"text_ngrams": 2, "text_buckets": s.text_buckets} if s.text_ngrams == 2 else {})}


def student_modalities(recipe, data) -> list[str]:
    wanted = recipe.student.modalities or list(data.modalities)
    for m in wanted:
        if m not in data.modalities:
            hint = suggest(m, data.modalities) or f" (the data has {list(data.modalities)})"
            raise RecipeError(f"recipe.student.modalities: unknown modality '{m}'{hint}")
    return list(dict.fromkeys(wanted))


def student_processors(recipe, data, names: list[str], teacher: dict) -> dict:
    """student.text_tokenizer: teacher -- each text modality through the teacher's own tokenizer
    (`teacher`: the teacher's processor parameters), its vocabulary pruned to the train split's tokens."""
    if recipe.student.text_tokenizer == "own":
        return {}
    texts = [m for m in names if data.modalities[m].kind == "text"]
    missing = [m for m in texts if m not in teacher]
    if not texts or missing:
        raise RecipeError(f"recipe.student.text_tokenizer: teacher needs a pretrained teacher text encoder with its "
                          f"own tokenizer for {', '.join(missing) or 'a text modality'}: set teacher.encoders."
                          f"{(missing or ['TEXT'])[0]}.pretrained, or use text_tokenizer: own")
    train = data.split_rows("train")
    return {m: pruned_text_params(teacher[m], data.texts(m, train)) for m in texts}


def distill_seed(recipe) -> int:
    return recipe.seed if recipe.distill.seed is None else recipe.distill.seed


def build_student(recipe, data, names):
    options = student_options(recipe.student)
    specs = {n: data.modalities[n] for n in names}
    torch.manual_seed(distill_seed(recipe))  # the KD student and the baseline start from the same weights
    return create_model(recipe.student.name, "student", modalities=specs, num_classes=len(data.classes), **options), options, specs
