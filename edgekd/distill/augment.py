"""Cheap train-time augmentation on model-ready tensors (after preprocessing).

Audio: a random circular shift in time (clips are zero-padded at the end, so this moves the word
inside the window) plus one time mask and one frequency mask (SpecAugment). Images: a random shift
of up to 2 pixels. Both help most where the test split holds unseen speakers.
"""
from __future__ import annotations

import torch


def _shift(x: torch.Tensor, max_shift: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    shifts = torch.randint(-max_shift, max_shift + 1, (x.shape[0],), generator=gen)
    return torch.stack([torch.roll(xi, int(s), dims=dim - 1) for xi, s in zip(x, shifts)])


def _mask(x: torch.Tensor, width: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[dim]
    w = torch.randint(0, width + 1, (x.shape[0],), generator=gen)
    start = (torch.rand(x.shape[0], generator=gen) * (n - w).clamp(min=1)).long()
    pos = torch.arange(n)
    band = (pos[None] >= start[:, None]) & (pos[None] < (start + w)[:, None])  # (B, n)
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = n
    return x.masked_fill(band.view(shape), 0.0)


def augment(inputs: dict[str, torch.Tensor], kinds: dict[str, str], gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for name, x in inputs.items():
        if kinds.get(name) == "audio":  # (B, T, F)
            x = _shift(x, x.shape[1] // 4, 1, gen)
            x = _mask(_mask(x, x.shape[1] // 8, 1, gen), x.shape[2] // 8, 2, gen)
        elif kinds.get(name) == "image":  # (B, C, H, W)
            x = _shift(_shift(x, 2, 2, gen), 2, 3, gen)
        out[name] = x
    return out
