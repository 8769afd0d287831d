"""Distillation losses against values worked out by hand."""
import math

import pytest
import torch

from edgekd.distill.losses import Projectors, distill_loss, kd_kl
from edgekd.models import ModelOutput


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_kl_matches_hand_computed_value():
    s, t, temp = [1.0, 2.0, 0.5], [0.2, 3.0, -1.0], 2.0
    p_t = _softmax([x / temp for x in t])
    p_s = _softmax([x / temp for x in s])
    expected = temp**2 * sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    got = kd_kl(torch.tensor([s]), torch.tensor([t]), temp)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_kl_is_zero_for_identical_logits_and_averages_over_batch():
    a = torch.tensor([[1.0, -1.0, 0.0], [0.3, 0.1, 2.0]])
    assert kd_kl(a, a, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    b = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.1, 2.0]])
    one = kd_kl(a[:1], b[:1], 4.0).item()
    assert kd_kl(a, b, 4.0).item() == pytest.approx(one / 2, rel=1e-5)  # second row contributes 0


def test_total_loss_weights_each_term():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([1])
    proj = Projectors(2, 2, {"audio": (2, 2)})
    with torch.no_grad():
        for lin in (proj.fused, proj.modality["audio"]):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    out = ModelOutput(logits, torch.tensor([[1.0, 2.0]]), {"audio": torch.tensor([[0.0, 0.0]])})
    teacher = {"logits": torch.tensor([[0.0, 1.0, 0.0]]), "features": torch.tensor([[1.0, 0.0]]),
               "modality_features": {"audio": torch.tensor([[2.0, 2.0]])}}
    p = _softmax([2.0, 0.0, -1.0])
    ce = -math.log(p[1])
    kd = kd_kl(logits, teacher["logits"], 3.0).item()
    feat = (0.0**2 + 2.0**2) / 2  # MSE of [1,2] vs [1,0]
    feat_mod = (2.0**2 + 2.0**2) / 2
    total, parts = distill_loss(out, labels, teacher, proj, alpha=0.25, temperature=3.0, beta=0.5, beta_modality=2.0)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert parts["feat"] == pytest.approx(feat) and parts["feat_modality"] == pytest.approx(feat_mod)
    assert total.item() == pytest.approx(0.25 * ce + 0.75 * kd + 0.5 * feat + 2.0 * feat_mod, rel=1e-5)


def test_without_teacher_the_loss_is_plain_cross_entropy():
    logits = torch.tensor([[0.5, 1.5]])
    out = ModelOutput(logits, torch.zeros(1, 2), {})
    total, parts = distill_loss(out, torch.tensor([0]), None, None, alpha=0.5, temperature=4, beta=1, beta_modality=1)
    assert total.item() == pytest.approx(-math.log(_softmax([0.5, 1.5])[0]), rel=1e-6)
    assert set(parts) == {"ce"}
