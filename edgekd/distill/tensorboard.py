"""TensorBoard event files for every training stage, where `tensorboard` is installed (the
`[tensorboard]` extra); training never needs it. `tensorboard --logdir runs/<name>/tb` shows them."""
from __future__ import annotations

import sys
from pathlib import Path

_SAID: list[bool] = []


def writer(folder: Path | None):
    """torch's SummaryWriter over `folder`, or None (no folder, or tensorboard not installed: said once)."""
    if folder is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard needs the tensorboard package
        if not _SAID:
            _SAID.append(True)
            print("edgekd: no TensorBoard event files (pip install 'edgekd[tensorboard]' for them)", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(folder))


class Board:
    """One stage's scalars per epoch: loss and its terms, train/val accuracy, lr, epoch seconds."""

    def __init__(self, folder: Path | None):
        self.folder, self.w = folder, None

    def __enter__(self) -> Board:
        self.w = writer(self.folder)
        return self

    def epoch(self, row: dict, lr: float) -> None:
        if self.w is None:
            return
        step = int(row["epoch"])
        for k, v in row.items():
            if k != "epoch" and isinstance(v, int | float):
                group = "time" if k == "seconds" else "accuracy" if "accuracy" in k else "loss"
                self.w.add_scalar(f"{group}/{k}", v, step)
        self.w.add_scalar("lr", lr, step)
        self.w.flush()

    def __exit__(self, *exc) -> None:
        if self.w is not None:
            self.w.close()
