"""Pipeline stages. Each reads its inputs through the manifest and records itself last."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def threads(n: int):
    """Pin PyTorch's intra-op threads: on busy 2-core hosts 2 threads ran 15-20x slower than 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
