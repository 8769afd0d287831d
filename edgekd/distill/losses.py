"""Distillation losses.

    loss = alpha * CE(student, labels)
         + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + beta * MSE(projector(student fused embedding), teacher fused embedding)
         + beta_modality * mean over shared modalities of MSE(projector_m(student_m), teacher_m)

The T^2 factor keeps the KD gradient's scale independent of T (Hinton et al., 2015).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher^T || p_student^T), averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean()
    return kl * temperature**2


class Projectors(nn.Module):
    """Learned linear maps from student embeddings to the teacher's embedding sizes."""

    def __init__(self, student_dim: int, teacher_dim: int, modalities: dict[str, tuple[int, int]]):
        super().__init__()
        self.fused = nn.Linear(student_dim, teacher_dim)
        self.modality = nn.ModuleDict({m: nn.Linear(s, t) for m, (s, t) in modalities.items()})

    @classmethod
    def between(cls, student, names, targets) -> Projectors:
        """The student's embedding to the teacher's, fused and per modality the targets carry."""
        dim_s, dim_t = student.embed_dim, targets.teacher.embed_dim
        return cls(dim_s, dim_t, {m: (dim_s, dim_t) for m in names if m in targets.modalities})


def loss_weights(distill, qat=None, features: bool = True) -> dict:
    """The objective's weights for `distill_loss`: the distill section's, with the qat section's
    overrides where set (QAD continues the distill objective). features=False drops both feature
    terms (targets without teacher embeddings, or a run without trained projectors)."""
    def pick(name):
        value = getattr(qat, name, None) if qat is not None else None
        return getattr(distill, name) if value is None else value

    weights = {"alpha": pick("alpha"), "temperature": pick("temperature"), "beta": pick("beta"),
               "beta_modality": distill.beta_modality}
    return weights if features else {**weights, "beta": 0.0, "beta_modality": 0.0}


def distill_loss(out, labels: torch.Tensor, teacher: dict | None, proj: Projectors | None, *, alpha: float,
                 temperature: float, beta: float, beta_modality: float) -> tuple[torch.Tensor, dict]:
    """`out`: the student's ModelOutput; `teacher`: {"logits", "features", "modality_features"}
    or None (plain supervised training). Returns the total and its parts (floats) for logging."""
    ce = F.cross_entropy(out.logits, labels)
    parts = {"ce": ce.item()}
    if teacher is None:
        return ce, parts
    total = alpha * ce
    if alpha < 1:
        kd = kd_kl(out.logits, teacher["logits"], temperature)
        total = total + (1 - alpha) * kd
        parts["kd"] = kd.item()
    if beta > 0 and proj is not None:
        feat = F.mse_loss(proj.fused(out.features), teacher["features"])
        total = total + beta * feat
        parts["feat"] = feat.item()
    if beta_modality > 0 and proj is not None and len(proj.modality):
        terms = [F.mse_loss(proj.modality[m](out.modality_features[m]), teacher["modality_features"][m])
                 for m in proj.modality]
        mod = torch.stack(terms).mean()
        total = total + beta_modality * mod
        parts["feat_modality"] = mod.item()
    return total, parts
