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
        if "weights only load failed" in str(exc).lower():
            try:
                names = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
            except Exception:  # legacy (non-zip) pickles cannot be scanned
                names = ""
            raise ValueError(f"{path} was refused: it holds pickled objects that could run code when loaded"
                             f"{f' (it references {names})' if names else ''}; it was not executed. Only tensors "
                             "and plain data are read: use a checkpoint written by `dpal-cache train`") from None
        raise ValueError(f"{path} is not a readable dpal-cache checkpoint (truncated or corrupt: {exc}); "
                         "restore it, or start a new run") from None


def load_weights(module: torch.nn.Module, weights: dict[str, Any], path: Path) -> None:
    """``module.load_state_dict(weights)`` strictly; a ValueError listing the differing keys when they disagree."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = [f"{k} {got[k]} (model: {want[k]})" for k in sorted(set(want) & set(got)) if want[k] != got[k]]
    if missing or extra or shapes:
        parts = [f"{what} ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                 for what, keys in (("missing keys", missing), ("unexpected keys", extra), ("other shapes", shapes))
                 if keys]
        raise ValueError(f"{path} holds weights of another architecture than this run's model: "
                         + "; ".join(parts) + ". Resume with the run's own config and checkpoint, or start a new run")
    module.load_state_dict(weights, strict=True)
