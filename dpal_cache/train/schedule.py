"""Schedules: the learning rate (linear warmup, then per-iteration cosine decay: the DPAL recipe) and the EMA decay.

    lr = lr_at(step, total_steps, warmup_steps, peak=2.5e-4 * batch / 256, floor=1e-6)
    decay = ema_decay_at(step, total_steps, 0.996, "cosine")     # 0.996 at step 0, rising to 1 at the end
"""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule the release uses: lr = base_lr * global batch / 256."""
    return base_lr * batch_size / 256.0


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def ema_decay_at(step: int, total_steps: int, decay: float, schedule: str = "constant") -> float:
    """EMA decay after optimizer step ``step`` (0-based): ``constant``, or ``cosine`` from ``decay`` to 1 over the
    run (the release's momentum schedule, as in DINO)."""
    if schedule == "constant":
        return decay
    if schedule != "cosine":
        raise ValueError(f"unknown EMA schedule {schedule!r}; choose constant or cosine")
    progress = min(1.0, step / max(1, total_steps))
    return 1.0 - (1.0 - decay) * 0.5 * (1.0 + math.cos(math.pi * progress))
