"""Training checkpoints: written atomically (temp file + rename), carrying the resolved config.

A checkpoint holds the student, decoder, optimizer, EMA, step/epoch/batch position and the
torch RNG state, so ``--resume`` continues exactly. A kill during a write leaves the previous
checkpoint untouched (the rename is the commit point).

    save_checkpoint(run_dir / "last.pt", state)
    state = load_checkpoint(run_dir / "last.pt")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (fsync'd temp file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (tensors and plain data only: weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable dpal-cache checkpoint: {exc}") from None
