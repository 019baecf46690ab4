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

from dpal_cache.teachers.checkpoint import CorruptCheckpointError, UnsafeCheckpointError, safe_torch_load
from dpal_cache.weights import state_dict_differences


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
        return safe_torch_load(path, map_location=map_location)
    except UnsafeCheckpointError as exc:
        names = f" (it references {', '.join(exc.names)})" if exc.names else ""
        raise ValueError(f"{path} was refused: it holds pickled objects that could run code when loaded{names}; "
                         "it was not executed. Only tensors and plain data are read: use a checkpoint written by "
                         "`dpal-cache train`") from None
    except CorruptCheckpointError as exc:
        raise ValueError(f"{path} is not a readable dpal-cache checkpoint (truncated or corrupt: {exc.detail}); "
                         "restore it, or start a new run") from None


RESUME_HINT = "Resume with the run's own config and checkpoint, or start a new run"


def load_weights(module: torch.nn.Module, weights: dict[str, Any], path: Path, hint: str = RESUME_HINT) -> None:
    """``module.load_state_dict(weights)`` strictly; a ValueError listing the differing keys when they disagree.

    ``hint`` ends that error: what to do instead (the default suits resuming a training run).
    """
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if parts := state_dict_differences(want, got):
        raise ValueError(f"{path} holds weights of another architecture than the model they are loaded into: "
                         + "; ".join(parts) + f". {hint}")
    module.load_state_dict(weights, strict=True)
