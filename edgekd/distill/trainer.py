"""One training loop for teachers, students and baselines: AdamW, warm-up + cosine, modality
dropout, a checkpoint every epoch, and exact resume.

Every epoch reseeds from (seed, epoch), so a run resumed from its last checkpoint ends with the
same weights as one that was never interrupted.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.data.base import Dataset
from edgekd.distill.augment import augment
from edgekd.distill.cache import SelfTargets, TeacherTargets
from edgekd.distill.losses import Projectors, distill_loss
from edgekd.errors import CheckpointError, TrainingError
from edgekd.recipe import Optim
from edgekd.rundir import atomic_path


@dataclass
class Job:
    """What to train and how. `targets` None = supervised only (a teacher or a no-KD baseline)."""

    model: nn.Module
    names: list[str]  # modalities the model consumes
    optim: Optim
    seed: int
    checkpoint: Path
    label: str
    targets: TeacherTargets | SelfTargets | None = None
    projectors: Projectors | None = None
    loss: dict = field(default_factory=lambda: {"alpha": 1.0, "temperature": 1.0, "beta": 0.0, "beta_modality": 0.0})
    # what the checkpoint must have been trained for (recipe, data, teacher); resume refuses others
    fingerprint: str = ""


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _modality_keep(batch: int, m: int, p: float, gen: torch.Generator) -> torch.Tensor | None:
    if m < 2 or p <= 0:
        return None
    keep = (torch.rand(batch, m, generator=gen) >= p).float()
    none_left = keep.sum(1) == 0
    if none_left.any():  # every sample keeps at least one modality
        pick = torch.randint(0, m, (int(none_left.sum()),), generator=gen)
        keep[none_left.nonzero()[:, 0], pick] = 1.0
    return keep


def _layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it and run without --resume") from e


def train(job: Job, data: Dataset, resume: bool = False, progress=None) -> list[dict]:
    """Train `job.model` on data's train split; returns the per-epoch history."""
    o = job.optim
    params = list(job.model.parameters()) + (list(job.projectors.parameters()) if job.projectors else [])
    # fused: one kernel for all parameters (measured 4x faster steps than the per-tensor loop on CPU)
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, fused=True)
    splits = {0: data.split("train", 0)}  # one pairing in memory at a time; epoch 0 reuses this one
    n_train = len(splits[0])
    steps_per_epoch = math.ceil(n_train / o.batch_size)
    total, warmup = steps_per_epoch * o.epochs, max(1, int(o.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, total, warmup))
    start, history = 0, []
    if resume and job.checkpoint.is_file():
        ck = load_checkpoint(job.checkpoint)
        if ck.get("fingerprint", "") != job.fingerprint:
            raise CheckpointError(f"checkpoint {job.checkpoint} was written for another recipe, dataset or teacher; "
                                  "run without --resume to start this stage afresh")
        try:
            job.model.load_state_dict(ck["model"])
            if job.projectors is not None:
                job.projectors.load_state_dict(ck["projectors"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            start, history = int(ck["epoch"]), list(ck["history"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {job.checkpoint} does not match this recipe's model ({e}); "
                                  "delete it or run without --resume") from e

    # channels-last 2-D convolutions run ~25% faster on CPU (oneDNN); weights go back to the
    # default layout after training because safetensors stores contiguous tensors only
    job.model.to(memory_format=torch.channels_last)
    try:
        return _epochs(job, data, opt, sched, splits, start, history, steps_per_epoch, progress)
    finally:
        job.model.to(memory_format=torch.contiguous_format)


def _epochs(job, data, opt, sched, splits, start, history, steps_per_epoch, progress) -> list[dict]:
    o = job.optim
    task = progress.add_task(job.label, total=o.epochs * steps_per_epoch, completed=start * steps_per_epoch) if progress else None
    kinds = {n: s.kind for n, s in data.modalities.items()}
    for epoch in range(start, o.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(job.seed * 1_000_003 + epoch)
        gen = torch.Generator().manual_seed(job.seed * 7919 + epoch)
        pairing = epoch % data.num_pairings
        if pairing not in splits:
            splits = {pairing: data.split("train", pairing)}  # keep one pairing in memory
        split = splits[pairing]
        order = np.random.default_rng([job.seed, epoch]).permutation(len(split))
        job.model.train()
        seen = correct = 0
        loss_sum = 0.0
        part_sums: dict[str, float] = {}
        # a trailing batch of one sample would break BatchNorm: fold it into the batch before
        starts = list(range(0, len(order), o.batch_size))
        if len(starts) > 1 and len(order) - starts[-1] == 1:
            starts.pop()
        for k, i in enumerate(starts):
            idx = order[i : starts[k + 1] if k + 1 < len(starts) else len(order)]
            x = {n: _layout(torch.from_numpy(split.inputs[n][idx])) for n in job.names}
            if o.augment:
                x = augment(x, kinds, gen)
            y = torch.from_numpy(split.labels[idx])
            keep = _modality_keep(len(idx), len(job.names), o.modality_dropout, gen)
            out = job.model(x, keep=keep)
            target = None
            if isinstance(job.targets, SelfTargets):  # the FP32 model on exactly this batch and mask
                target = job.targets.get(x, keep)
            elif job.targets is not None:
                target = job.targets.get(pairing, idx, x if o.augment else None)
            loss, parts = distill_loss(out, y, target, job.projectors, **job.loss)
            if not torch.isfinite(loss):
                raise TrainingError(f"{job.label}: the loss became {loss.item()} in epoch {epoch + 1}; lower the "
                                    "learning rate (recipe lr) or check the data for extreme values")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            correct += int((out.logits.argmax(1) == y).sum())
            loss_sum += loss.item() * len(idx)
            for k, v in parts.items():
                part_sums[k] = part_sums.get(k, 0.0) + v * len(idx)
            if progress:
                progress.update(task, advance=1, description=f"{job.label} e{epoch + 1}/{o.epochs} "
                                f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
        history.append({"epoch": epoch + 1, "loss": round(loss_sum / seen, 5), "train_accuracy": round(correct / seen, 4),
                        "seconds": round(time.perf_counter() - t0, 2),
                        **{k: round(v / seen, 5) for k, v in part_sums.items()}})
        state = {"model": job.model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": epoch + 1, "history": history, "fingerprint": job.fingerprint,
                 "projectors": job.projectors.state_dict() if job.projectors is not None else {}}
        with atomic_path(job.checkpoint) as tmp:
            torch.save(state, tmp)
    if progress:
        progress.remove_task(task)
    return history
