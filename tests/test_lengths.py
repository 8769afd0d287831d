"""Length-grouped batches (optim.group_by_length): each batch of a pretrained text encoder's train
steps holds texts of similar length, the epoch keeps its shuffle, and models that cut no padding
train on plain shuffled batches."""
from pathlib import Path

import numpy as np
import torch

from edgekd.data.base import ModalitySpec, Split
from edgekd.distill.lengths import GROUP_BATCHES, grouped, token_lengths
from edgekd.distill.trainer import Job, train
from edgekd.models.registry import ModelOutput
from edgekd.recipe import Optim, load_recipe


def test_grouped_sorts_each_run_longest_first_and_keeps_every_row():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, 1000)
    order = rng.permutation(1000)
    out = grouped(order, lengths, 128)
    assert sorted(out.tolist()) == list(range(1000))
    for i in range(0, 1000, 128):
        run = out[i : i + 128]
        assert set(run.tolist()) == set(order[i : i + 128].tolist())  # the shuffle decides who shares a run
        assert (np.diff(lengths[run]) <= 0).all()
    assert grouped(order[:0], lengths, 128).tolist() == []


class _Enc(torch.nn.Module):
    def __init__(self, cuts: bool):
        super().__init__()
        self.cuts_padding = cuts

    def text_mask(self, ids):
        return ids != 0


class _Model(torch.nn.Module):
    """Records the real-token counts of every train batch it sees."""

    def __init__(self, cuts: bool):
        super().__init__()
        self.encoders = torch.nn.ModuleDict({"ids": _Enc(cuts)})
        self.head = torch.nn.Linear(1, 2)
        self.batches: list[np.ndarray] = []

    def forward(self, x, keep=None):
        n = (x["ids"] != 0).sum(1)
        self.batches.append(n.numpy())
        f = n.float()[:, None]
        return ModelOutput(self.head(f), f, {"ids": f})


class _Texts:
    num_pairings = 1

    def __init__(self, n=640, width=40):
        rng = np.random.default_rng(1)
        self.ids = np.zeros((n, width), dtype=np.int64)
        for i, k in enumerate(rng.integers(1, width + 1, n)):
            self.ids[i, :k] = rng.integers(1, 99, k)
        self.labels = rng.integers(0, 2, n)
        self.modalities = {"ids": ModalitySpec("ids", "text", (width,), "int64", 100)}

    def split(self, name, pairing=0):
        return Split({"ids": self.ids}, self.labels)


def _spread(model: _Model) -> float:
    return float(np.mean([b.max() - b.min() for b in model.batches]))


def test_a_text_encoder_that_cuts_padding_trains_on_batches_of_similar_length(tmp_path):
    data = _Texts()
    runs = {}
    for cuts, group in ((True, True), (True, False), (False, True)):
        model = _Model(cuts)
        train(Job(model, ["ids"], Optim(epochs=2, batch_size=16, group_by_length=group), 0,
                  tmp_path / f"{cuts}{group}.pt", "t"), data)
        runs[cuts, group] = model
    grouped_, plain, no_cut = runs[True, True], runs[True, False], runs[False, True]
    assert len(grouped_.batches) == len(plain.batches) == 80  # 2 epochs of 640 / 16
    assert _spread(grouped_) < 0.25 * _spread(plain)  # a 128-row run spans about a 40-token range / 8
    assert all((a == b).all() for a, b in zip(no_cut.batches, plain.batches))  # nothing to gain: plain order
    # every epoch sees every row once, in another order than the one before
    lengths = token_lengths(grouped_, ["ids"], {"ids": data.ids})
    assert sorted(np.concatenate(grouped_.batches[:40]).tolist()) == sorted(lengths.tolist())
    assert not all((a == b).all() for a, b in zip(grouped_.batches[:40], grouped_.batches[40:]))
    assert GROUP_BATCHES * 16 == 128


def test_token_lengths_only_where_an_encoder_cuts_padding():
    ids = np.array([[5, 6, 0], [7, 0, 0]])
    assert token_lengths(_Model(True), ["ids"], {"ids": ids}).tolist() == [2, 1]
    assert token_lengths(_Model(False), ["ids"], {"ids": ids}) is None
    assert token_lengths(_Model(True), ["ids"], {"ids": ids.astype(np.float32)}) is None  # cached embeddings


def test_the_recipe_groups_by_default_and_can_turn_it_off():
    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "icons.yaml", ["teacher.group_by_length=false"])
    assert r.teacher.group_by_length is False and r.distill.group_by_length is True


def test_a_pretrained_text_encoder_cuts_padding_and_one_trained_here_does_not(tmp_path):
    from test_pretrained import tiny_bert

    from edgekd.models.teacher import HFEncoder

    spec = ModalitySpec("caption", "text", (16,), "int64", 100)
    pretrained = HFEncoder(spec, 16, 1, 2, source={"pretrained": str(tiny_bert(tmp_path / "bert"))})
    scratch = HFEncoder(spec, 16, 1, 2)
    assert pretrained.cuts_padding and not scratch.cuts_padding
