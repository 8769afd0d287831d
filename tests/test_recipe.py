"""Recipe schema: strict keys, field paths, did-you-mean, --set overrides, safe YAML."""
import pytest
import torch
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekd.errors import RecipeError
from edgekd.recipe import dump_recipe, load_recipe, recipe_from_dict

BASE = {"name": "r", "data": {"name": "avdigits"}}


def _err(raw, overrides=None) -> str:
    with pytest.raises(RecipeError) as e:
        recipe_from_dict(raw, overrides)
    return str(e.value)


def test_defaults_fill_a_minimal_recipe():
    r = recipe_from_dict(dict(BASE))
    assert r.teacher.name == "mm_transformer" and r.student.name == "fusion_small" and r.distill.baseline


def test_shipped_recipes_load():
    for name in ("avdigits", "tiny", "avdigits-audio-only"):
        r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        assert r.name == name


def test_unknown_key_names_path_and_suggests():
    msg = _err({**BASE, "distill": {"temprature": 3}})
    assert "recipe.distill.temprature" in msg and "did you mean 'temperature'" in msg


def test_unknown_key_in_data_section_suggests_from_that_dataset():
    msg = _err({"name": "r", "data": {"name": "avdigits", "test_speaker": ["theo"]}})
    assert "recipe.data.test_speaker" in msg and "'test_speakers'" in msg


def test_misspelt_registry_name_suggests_closest():
    """Registry names are checked where models are built (loading a recipe imports no torch), and
    by `edgekd run` before anything is created on disk."""
    from edgekd.models import check_names

    recipe = recipe_from_dict({**BASE, "student": {"name": "fusoin_tiny"}})
    with pytest.raises(RecipeError) as e:
        check_names(recipe)
    assert "recipe.student.name" in str(e.value) and "did you mean 'fusion_tiny'" in str(e.value)


def test_wrong_type_and_bad_literal():
    assert "recipe.distill.epochs" in _err({**BASE, "distill": {"epochs": "many"}})
    msg = _err({**BASE, "student": {"fusion": "gatd"}})
    assert "recipe.student.fusion" in msg and "'gated'" in msg


def test_zero_or_negative_sizes_rejected():
    assert "recipe.teacher.hidden" in _err({**BASE, "teacher": {"hidden": 0}})
    assert "recipe.distill.batch_size" in _err({**BASE, "distill": {"batch_size": -4}})


def test_unknown_dataset_name():
    assert "avdigits" in _err({"name": "r", "data": {"name": "avdigit"}})


def test_set_overrides_are_typed_like_yaml():
    r = recipe_from_dict(dict(BASE), ["distill.epochs=3", "distill.cache=false", "student.modalities=[audio]",
                                      "teacher.lr=2e-4"])
    assert r.distill.epochs == 3 and r.distill.cache is False
    assert r.student.modalities == ["audio"] and r.teacher.lr == pytest.approx(2e-4)


def test_set_without_equals_and_on_unknown_key():
    assert "KEY=VALUE" in _err(dict(BASE), ["distill.epochs"])
    assert "recipe.distill.epoch" in _err(dict(BASE), ["distill.epoch=3"])


def test_yaml_is_loaded_safely(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("name: !!python/object/apply:os.system ['echo hacked']\ndata: {name: avdigits}\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_malformed_and_missing_files(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    p.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="YAML mapping"):
        load_recipe(p)


def test_dump_round_trips():
    r = recipe_from_dict({**BASE, "distill": {"alpha": 0.3}})
    import yaml

    assert recipe_from_dict(yaml.safe_load(dump_recipe(r))) == r


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(st.integers(), st.text(max_size=5), st.none()),
                       max_size=4))
def test_arbitrary_mappings_either_load_or_raise_recipe_error(extra):
    raw = {"name": "r", "data": {"name": "avdigits"}, "distill": extra}
    try:
        recipe_from_dict(raw)
    except RecipeError as e:
        assert str(e).startswith("recipe: recipe.distill") or "recipe.distill" in str(e)


def test_cross_field_checks():
    assert "cache: false" in _err({**BASE, "distill": {"augment": True}})
    assert "fmax" in _err({"name": "r", "data": {"name": "avdigits", "audio": {"fmax": 6000}}})
    assert "recipe.student.modalities" in _err({**BASE, "student": {"modalities": []}})
    assert "divisible by heads" in _err({**BASE, "teacher": {"hidden": 30, "heads": 4}})


def test_modality_names_are_checked_before_any_stage_runs():
    msg = _err({**BASE, "student": {"modalities": ["audo"]}})
    assert "recipe.student.modalities" in msg and "did you mean 'audio'" in msg
    msg = _err({**BASE, "teacher": {"encoders": {"imag": {"pretrained": "/x"}}}})
    assert "recipe.teacher.encoders" in msg and "'image'" in msg


def test_distill_seed_reruns_distill_on_the_same_teacher_and_changes_the_students_start(toy):
    from edgekd.distill.student_setup import build_student
    from edgekd.rundir import first_changed_stage

    base = load_recipe(ROOT / "recipes" / "tiny.yaml")
    same = load_recipe(ROOT / "recipes" / "tiny.yaml", ["distill.seed=0"])  # = the recipe seed
    other = load_recipe(ROOT / "recipes" / "tiny.yaml", ["distill.seed=7"])
    assert first_changed_stage(base, other) == "distill"  # the teacher (and its cache) are kept
    names = list(toy.modalities)
    weights = [next(iter(build_student(r, toy, names)[0].parameters())).detach().clone() for r in (base, same, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    with pytest.raises(RecipeError, match="distill.seed"):
        load_recipe(ROOT / "recipes" / "tiny.yaml", ["distill.seed=-1"])
