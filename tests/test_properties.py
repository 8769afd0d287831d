"""Property tests: whatever a user feeds the recipe loader or the folder-dataset reader, the answer is
either a valid object or the project's own one-line error, never another exception."""
from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgekd.data.folder import FolderDataset, load_folder
from edgekd.errors import DataError, RecipeError
from edgekd.recipe import FolderData, Recipe, load_recipe, recipe_from_dict

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_one_line(err: Exception, kind: type) -> None:
    assert type(err) is kind or isinstance(err, kind), type(err)
    event(f"{kind.__name__}")
    msg = str(err)
    assert msg.strip() and "\n" not in msg and "Traceback" not in msg, msg
    assert len(msg) < 2000, len(msg)  # a hostile value is quoted in short, never dumped whole


# --------------------------------------------------------------------------- recipes

SECTIONS = ["name", "seed", "threads", "data", "teacher", "student", "distill", "qat", "export", "build", "bench"]
FIELDS = ["name", "epochs", "batch_size", "lr", "alpha", "temperature", "hidden", "heads", "layers", "fusion",
          "modalities", "path", "label", "audio", "seconds", "sample_rate", "n_fft", "image_size", "batches",
          "exclude", "checkpoint", "encoders", "pretrained", "cache", "augment", "split", "test_speakers",
          "image_pca_variance", "test_fraction", "val_fraction", "target", "method", "teacher", "baseline"]
NAMES = ["avdigits", "folder", "fusion_tiny", "mm_transformer", "gated", "late", "concat", "image", "audio", "x"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(NAMES), st.text(max_size=12))
keys = st.one_of(st.sampled_from(FIELDS + SECTIONS), st.text(min_size=1, max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=12)
sections = st.fixed_dictionaries(
    {"name": st.one_of(st.just("r"), scalars)},
    optional={"data": st.one_of(
        st.fixed_dictionaries({"name": st.sampled_from(["avdigits", "folder", "imagenet"])},
                              optional={k: values for k in ("path", "modalities", "audio", "image_pca_variance",
                                                            "test_fraction", "label", "split")}),
        values),
        **{s: st.one_of(st.dictionaries(keys, values, max_size=5), values) for s in SECTIONS[1:] if s != "data"}})


def _section_fields(section: str) -> list[str]:
    ann = Recipe.model_fields[section].annotation
    return [f for f in getattr(ann, "model_fields", {}) if f not in ("encoders", "checkpoint", "name", "modalities")]


plausible = st.one_of(st.integers(1, 8), st.floats(0.05, 0.95), st.booleans(), st.sampled_from(NAMES))
# mostly-valid recipes: real field names with plausible values, so both outcomes are exercised
near_valid = st.fixed_dictionaries(
    {"name": st.just("r"), "data": st.just({"name": "avdigits"})},
    optional={s: st.dictionaries(st.sampled_from(_section_fields(s)), plausible, max_size=3)
              for s in ("teacher", "student", "distill", "qat", "export", "bench")})


def _recipe_or_one_line_error(make) -> None:
    try:
        recipe = make()
    except RecipeError as e:
        assert_one_line(e, RecipeError)
    else:
        event("valid recipe")
        assert isinstance(recipe, Recipe)


@FAST
@given(raw=st.one_of(near_valid, near_valid, sections, values))
def test_random_recipe_dicts_give_a_recipe_or_one_line_recipe_error(raw):
    _recipe_or_one_line_error(lambda: recipe_from_dict(raw))


@FAST
@given(sets=st.lists(st.tuples(st.lists(st.sampled_from(SECTIONS + FIELDS), min_size=1, max_size=3),
                               st.text(max_size=10)), max_size=3))
def test_random_set_overrides_give_a_recipe_or_one_line_recipe_error(sets):
    overrides = [".".join(path) + "=" + value for path, value in sets]
    _recipe_or_one_line_error(lambda: recipe_from_dict({"name": "r", "data": {"name": "avdigits"}}, overrides))


YAML_PIECES = ["name: r\n", "data: {name: avdigits}\n", "data:\n  name: folder\n  path: x\n  modalities: {a: image}\n",
               "distill: {epochs: 2}\n", "teacher:\n  hidden: 0\n", "  - x\n", "\t", ": ", "- ", "[", "]", "{", "}",
               "&a ", "*a ", "!!python/object:os.system ", "!!binary ", "'", '"', "#", "\n", "---\n", "...\n", "%YAML 1.1\n",
               ".inf", ".nan", "~", "null", "yes", "0x1F", "1e999", "é", "\u2028", "\x00", "\ufeff"]


@FAST
@given(pieces=st.lists(st.one_of(st.sampled_from(YAML_PIECES), st.text(max_size=6)), max_size=12),
       raw_bytes=st.one_of(st.none(), st.binary(max_size=40)))
def test_random_yaml_texts_give_a_recipe_or_one_line_recipe_error(tmp_path_factory, pieces, raw_bytes):
    path = tmp_path_factory.getbasetemp() / "prop-recipe.yaml"
    data = "".join(pieces).encode("utf-8", "surrogatepass") if raw_bytes is None else raw_bytes
    try:
        path.write_bytes(data)
    except UnicodeEncodeError:  # pragma: no cover - lone surrogates cannot be written as UTF-8
        return
    _recipe_or_one_line_error(lambda: load_recipe(path))


# --------------------------------------------------------------------------- folder datasets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A valid png, a corrupt png and a valid wav that random layouts copy or point at."""
    import wave

    from PIL import Image

    d = tmp_path_factory.mktemp("assets")
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L").save(d / "ok.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with wave.open(str(d / "ok.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes((np.sin(np.arange(800) / 5) * 9000).astype("<i2").tobytes())
    (d / "bad.wav").write_bytes(b"RIFFxxxxWAVEjunk")
    return d


PATHS = ["img/ok.png", "img/bad.png", "img/none.png", "../outside.png", "/etc/hostname", "img", "img/link.png",
         "snd/ok.wav", "C:\\x.png", "img/../img/ok.png", ""]
cells = st.one_of(st.sampled_from(PATHS), st.none(), st.integers(-3, 3), st.floats(allow_nan=True),
                  st.text(max_size=6), st.lists(st.one_of(st.floats(allow_nan=True), st.integers(-5, 5), st.text(max_size=2)),
                                                max_size=3), st.booleans())
good_row = st.fixed_dictionaries(
    {"label": st.sampled_from(["a", "b"]), "img": st.just("img/ok.png"), "snd": st.just("snd/ok.wav"),
     "vec": st.lists(st.floats(-5, 5), min_size=2, max_size=2), "txt": st.sampled_from(["red dog", "blue cat", ""])})
hostile_row = st.fixed_dictionaries(
    {},
    optional={"label": st.one_of(st.sampled_from(["a", "b", "c"]), cells),
              "img": st.one_of(st.sampled_from(["img/ok.png"] * 3 + PATHS), cells),
              "vec": st.one_of(st.lists(st.floats(-5, 5), min_size=2, max_size=2), cells),
              "txt": st.one_of(st.sampled_from(["red dog", "blue cat", ""]), cells),
              "split": st.one_of(st.sampled_from(["train", "test", "val", "TRAIN", "holdout"]), st.none())})


def _write_metadata(folder: Path, rows: list[dict], fmt: str, junk: str | None) -> None:
    if fmt == "csv":
        cols = sorted({k for r in rows for k in r})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
        text = buf.getvalue()
    else:
        text = "\n".join(json.dumps(r) for r in rows)
    if junk is not None:
        text += "\n" + junk
    (folder / f"metadata.{fmt}").write_text(text, encoding="utf-8", errors="surrogatepass")


@FAST
@given(rows=st.lists(st.one_of(good_row, good_row, good_row, hostile_row), max_size=8),
       fmt=st.sampled_from(["jsonl", "csv"]),
       junk=st.one_of(st.none(), st.none(), st.none(), st.sampled_from(["{", "[1]", "\xff", '{"label": "a", "img": "img/ok.png"}', "a,b,c,d,e,f,g"]),
                      st.text(max_size=8)),
       modalities=st.one_of(st.sampled_from([{"img": "image", "vec": "vector"}, {"txt": "text"}, {"snd": "audio", "vec": "vector"}]),
                            st.dictionaries(st.sampled_from(["img", "vec", "txt", "label", "snd"]),
                                            st.sampled_from(["image", "vector", "text", "audio"]), min_size=1, max_size=3)),
       symlink=st.booleans())
def test_random_folder_layouts_give_a_dataset_or_one_line_data_error(assets, rows, fmt, junk, modalities, symlink):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ds"
        (folder / "img").mkdir(parents=True)
        (folder / "snd").mkdir()
        shutil.copy(assets / "ok.png", folder / "img" / "ok.png")
        shutil.copy(assets / "bad.png", folder / "img" / "bad.png")
        shutil.copy(assets / "ok.wav", folder / "snd" / "ok.wav")
        shutil.copy(assets / "ok.png", Path(tmp) / "outside.png")
        if symlink:
            (folder / "img" / "link.png").symlink_to(Path(tmp) / "outside.png")
        try:
            _write_metadata(folder, rows, fmt, junk)
        except UnicodeEncodeError:  # pragma: no cover
            return
        cfg = FolderData(path=str(folder), modalities=modalities, image_size=8,
                         audio={"seconds": 0.05, "n_fft": 64, "hop_length": 32, "n_mels": 8})
        before = sorted(p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*"))
        try:
            data = load_folder(cfg, Path(tmp), seed=0)
        except DataError as e:
            assert_one_line(e, DataError)
        else:
            event("valid dataset")
            assert isinstance(data, FolderDataset)
            ids = [i for s in ("train", "val", "test") for i in data.split(s).ids]
            assert data.has_split("train") and len(ids) == len(set(ids))  # disjoint splits, train never empty
        assert sorted(p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*")) == before  # reads only
