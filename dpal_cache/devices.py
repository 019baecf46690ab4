"""Where models run: one rule for every command.

    device = resolve_device("auto")      # cuda when available, else cpu
    resolve_device("cuda")               # RuntimeError on a machine without CUDA (before any work starts)
"""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` (or None): CUDA when available, else the CPU; any other torch device name as given, refused when it
    names CUDA on a machine without it."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name} asked for, but CUDA is not available here")
    return device
