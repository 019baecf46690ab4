"""Exponential moving average of the student's weights (the release keeps one)."""

from __future__ import annotations

import copy

import torch


class EMA:
    """``shadow = decay * shadow + (1 - decay) * live`` after every optimizer step; buffers are copied."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float | None = None) -> None:
        """One step; ``decay`` overrides the constant one (a schedule's value at this step)."""
        decay = self.decay if decay is None else decay
        for shadow, live in zip(self.module.parameters(), model.parameters()):
            shadow.lerp_(live.detach(), 1.0 - decay)
        for shadow, live in zip(self.module.buffers(), model.buffers()):
            shadow.copy_(live)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
