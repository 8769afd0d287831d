"""Where datasets live: --data-root, then $EDGEKD_DATA, then ~/.cache/edgekd/data."""
from __future__ import annotations

import os
from pathlib import Path


def data_root(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("EDGEKD_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "edgekd" / "data"
