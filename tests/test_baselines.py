"""Linear baselines (edgekd.distill.baselines): TF-IDF on text, pooled pixels, their late fusion, chosen on
held-out train rows when the data has no val split; and the sentence that says when one beats the student."""
import numpy as np

from edgekd.data.base import ModalitySpec, Split
from edgekd.data.holdout import HeldOut, holdout
from edgekd.distill.baselines import _pool, beaten_by, best, fit_baselines

WORDS = {0: "arrow left right up down", 1: "file folder document paper", 2: "user person people account"}


class TextAndImage:
    """Texts that name their class with some noise words, and images that carry no signal."""

    classes = ["arrows", "files", "users"]
    modalities = {"text": ModalitySpec("text", "text", (8,), "int64", vocab_size=10),
                  "image": ModalitySpec("image", "image", (3, 12, 12))}

    def __init__(self, n=240, seed=0):
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 3, n)
        noise = ["the", "icon", "small", "outline", "filled"]
        self._texts = [" ".join(rng.choice(WORDS[c].split(), 2).tolist() + rng.choice(noise, 2).tolist())
                       for c in self.labels]
        self.images = rng.standard_normal((n, 3, 12, 12)).astype(np.float32)
        self.rows = {"train": np.arange(0, 180), "test": np.arange(180, n)}

    def has_split(self, name):
        return name in self.rows

    def split(self, name, pairing=0):
        r = self.rows[name]
        return Split({"image": self.images[r], "text": np.zeros((len(r), 8), np.int64)}, self.labels[r])

    def split_rows(self, name):
        return self.rows[name]

    def texts(self, m, rows):
        return [self._texts[i] for i in rows]


def test_baselines_choose_on_held_out_train_rows_and_report_test():
    got = fit_baselines(TextAndImage(), ["text", "image"])
    by = {b["name"]: b for b in got["models"]}
    assert set(by) == {"text", "image", "late_fusion"}
    assert by["text"]["accuracy"] >= 0.95 and by["text"]["val_accuracy"] >= 0.9  # the words name the class
    assert by["image"]["accuracy"] < 0.6  # noise
    assert "18 held-out train rows" in got["validation"] and got["fit_rows"] == 180
    assert best(got)["name"] in ("text", "late_fusion")


def test_holdout_is_stratified_seeded_and_disjoint():
    labels = np.repeat([0, 1, 2], [50, 30, 1])
    fit, val = holdout(labels, 0.1, seed=3)
    assert not set(fit) & set(val) and len(fit) + len(val) == len(labels)
    assert [int((labels[val] == c).sum()) for c in (0, 1, 2)] == [5, 3, 0]  # a class of one row stays in fit
    assert np.array_equal(holdout(labels, 0.1, seed=3)[1], val)
    data = HeldOut(TextAndImage(), fit[fit < 180], val[val < 180])
    assert data.has_split("val") and len(data.split("val")) == len(val[val < 180])


def test_pooling_averages_blocks_of_any_size():
    x = np.arange(2 * 1 * 4 * 6, dtype=np.float32).reshape(2, 1, 4, 6)
    assert _pool(x, side=2).shape == (2, 4)
    assert _pool(x, side=2)[0, 0] == x[0, 0, :2, :3].mean()
    assert _pool(np.zeros((3, 5, 5)), side=8).shape == (3, 25)  # (N, H, W) and smaller than the side


def test_the_report_sentence_names_the_baseline_and_the_gap():
    base = {"text": {"val_accuracy": 0.90, "accuracy": 0.935}, "late_fusion": {"val_accuracy": 0.87, "accuracy": 0.91}}
    assert beaten_by(base, 0.872) == "a linear model on `text` is 6.3 points better than the student on test"
    assert beaten_by(base, 0.94) is None and beaten_by(None, 0.5) is None
