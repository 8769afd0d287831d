"""distill.views: augmented copies of the train split, read through both input paths from the same
augmented text, each with the teacher's own cached targets (edgekd.data.views)."""
import json

import numpy as np
import pytest
from conftest import cli
from test_pretrained import folder, recipe, tiny_bert


def _data(tmp_path):
    from edgekd.data.folder import load_folder
    from edgekd.recipe import FolderData

    return load_folder(FolderData(path=str(folder(tmp_path)), modalities={"img": "image", "caption": "text"},
                                  image_size=8, text_max_length=6, text_vocab_size=16), tmp_path, 0)


def test_drop_words_is_seeded_and_keeps_a_word():
    from edgekd.data.views import drop_words

    text = "red cat ; blue, dog, tree"
    a = [drop_words(text, np.random.default_rng(1), 0.5) for _ in range(2)]
    assert a[0] == a[1]  # the same seed, the same view
    assert drop_words(text, np.random.default_rng(1), 0.0) == text
    for s in range(50):
        out = drop_words(text, np.random.default_rng(s), 0.9).split()
        assert 1 <= len(out) and set(out) <= set(text.split())
    assert drop_words("", np.random.default_rng(0), 0.5) == ""


def test_views_change_train_texts_only_and_both_input_paths_follow(tmp_path):
    from tokenizers import Tokenizer

    from edgekd.data.processors import text_params
    from edgekd.data.teacher_inputs import TeacherView
    from edgekd.data.views import ViewSpec, text_views, with_views
    from edgekd.runtime.preprocess import text_ids

    data = _data(tmp_path)
    views = text_views(data, ["img", "caption"], ViewSpec(3, 0.5, 0))
    assert len(views) == 3 and views[0] is data
    train, test = set(data.split_rows("train")), data.split_rows("test")
    raw, changed = data.raw_text["caption"], 0
    for v in views[1:]:
        for i, text in enumerate(v.raw_text["caption"]):
            if i in train:
                assert set(text.split()) <= set(raw[i].split())
                changed += text != raw[i]
            else:
                assert text == raw[i]  # val and test are never augmented
    assert changed > 10
    assert text_views(data, ["img", "caption"], ViewSpec(3, 0.5, 0))[2].raw_text == views[2].raw_text  # seeded
    assert text_views(data, ["img", "caption"], ViewSpec(3, 0.5, 1))[2].raw_text != views[2].raw_text

    tok = Tokenizer.from_str(data.preprocess["caption"]["tokenizer_json"])
    both = with_views(views, ViewSpec(3, 0.5, 0))
    assert both.num_pairings == 3 and both.fingerprint() != data.fingerprint()
    split, rows = both.split("train", 2), data.split_rows("train")
    for j, i in enumerate(rows):  # the student's own ids of view 2 are its augmented texts
        want = text_ids(views[2].raw_text["caption"][i], data.preprocess["caption"], tokenizer=tok)
        np.testing.assert_array_equal(split.inputs["caption"][j], want)
    np.testing.assert_array_equal(split.inputs["img"], data.split("train").inputs["img"])
    np.testing.assert_array_equal(both.split("test", 2).inputs["caption"], data.split("test").inputs["caption"])

    p = text_params(tiny_bert(tmp_path / "bert"), "here", 8)  # the teacher's path reads the same augmented text
    teacher = with_views([TeacherView(v, {"caption": p}) for v in views], ViewSpec(3, 0.5, 0))
    from edgekd.data.processors import encode_texts

    want = encode_texts([views[1].raw_text["caption"][i] for i in rows], p)
    np.testing.assert_array_equal(teacher.split("train", 1).inputs["caption__teacher"], want)
    assert teacher.split("test", 1).ids == [data.split("test").ids[k] for k in range(len(test))]


@pytest.mark.parametrize("train", ["head", "all"])
def test_distill_with_views_caches_the_teachers_targets_per_view(tmp_path, capsys, train):
    model = tiny_bert(tmp_path / "bert")
    r = recipe(tmp_path, folder(tmp_path), model, train)
    r.write_text(r.read_text().replace("distill: {epochs: 1, batch_size: 8}",
                                       "distill: {epochs: 3, batch_size: 8, views: 3, word_dropout: 0.4}"))
    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", r, "--run-dir", run, "--until", "qat", "-q")
    assert code == 0, err
    m = json.loads((run / "manifest.json").read_text())["stages"]["distill"]
    assert m["metrics"]["views"] == 3 and m["metrics"]["word_dropout"] == 0.4
    cache = run / m["cache"]
    logits = [np.load(cache / f"pairing{k}" / "logits.npy") for k in range(3)]
    assert all(x.shape == logits[0].shape for x in logits)
    # the teacher said something else of the augmented texts (with train: head its frozen encoder ran on
    # the view's token ids, not on the cached embeddings of the rows as written)
    assert not np.allclose(logits[0], logits[1]) and not np.allclose(logits[1], logits[2])
    from edgekd.data.views import ViewSpec

    assert ViewSpec(1, 0.4, 0).fingerprint("abc") == "abc"  # one view keeps a run's cache key
    assert m["cache"].endswith(ViewSpec(3, 0.4, 0).fingerprint(m["data_fingerprint"]))


def test_views_without_a_text_modality_are_a_one_line_recipe_error(tmp_path, capsys):
    r = recipe(tmp_path, folder(tmp_path), tiny_bert(tmp_path / "bert"))
    r.write_text(r.read_text().replace("student: {name: fusion_tiny}", "student: {name: fusion_tiny, modalities: [img]}")
                 .replace("distill: {epochs: 1, batch_size: 8}", "distill: {epochs: 1, batch_size: 8, views: 2}"))
    code, _, err = cli(capsys, "run", r, "--run-dir", tmp_path / "run", "-q")
    assert code == 1 and "recipe.distill.views: 2 augments the texts the student reads" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    code, _, err = cli(capsys, "run", "recipes/tiny.yaml", "--run-dir", tmp_path / "r2", "--set", "distill.views=2", "-q")
    assert code == 1 and "views need a text modality of a folder dataset" in err, err


def test_the_teacher_pass_in_length_order_gives_every_row_its_own_outputs():
    import torch

    from edgekd.distill.cache import _by_length, _teacher_outputs
    from edgekd.models.registry import ModelOutput

    class Enc(torch.nn.Module):
        cuts_padding = True

        def text_mask(self, ids):
            return ids != 0

    class Teacher(torch.nn.Module):
        names = ["ids"]

        def __init__(self):
            super().__init__()
            self.encoders = torch.nn.ModuleDict({"ids": Enc()})

        def forward(self, x):  # each row's outputs depend on that row alone, and on no padding
            ids = x["ids"].float()
            width = int((x["ids"] != 0).sum(1).max())
            assert (x["ids"][:, width:] == 0).all()
            f = torch.stack([ids.sum(1), (ids > 0).sum(1).float()], 1)
            return ModelOutput(f * 2, f, {"ids": f})

    rng = np.random.default_rng(0)
    ids = np.zeros((700, 12), dtype=np.int64)
    for i, n in enumerate(rng.integers(1, 13, 700)):
        ids[i, :n] = rng.integers(1, 50, n)
    order = _by_length(Teacher(), ["ids"], {"ids": ids})
    lengths = (ids != 0).sum(1)[order]
    assert (np.diff(lengths) >= 0).all()
    out = _teacher_outputs(Teacher(), ["ids"], {"ids": ids}, batch_size=64)
    np.testing.assert_array_equal(out["features"][:, 0], ids.sum(1))
    np.testing.assert_array_equal(out["logits"], 2 * out["features"])
    float_order = _by_length(Teacher(), ["x"], {"x": np.zeros((3, 2), np.float32)})
    assert float_order.tolist() == [0, 1, 2]  # float inputs: as they come
