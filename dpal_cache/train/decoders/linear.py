"""The ``linear`` decoder (paper Table 11, "none"): one Linear(Ds -> Dt) shared by all patterns.

    res = LinearDecoder(192, 768)(tokens, pattern)     # tokens (B, L, 192) -> res.out (B, L, 768)

It has no router and no experts: ``aux`` holds zeros and ``scores`` is None.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dpal_cache.train.decoders.config import DecoderConfig, DecoderOutput, check_pattern, zero_aux
from dpal_cache.train.decoders.dpade import xavier_init
from dpal_cache.train.decoders.registry import register_decoder


@register_decoder("linear")
class LinearDecoder(nn.Module):
    """Linear(Ds -> Dt); ``cfg`` is accepted for a uniform constructor and otherwise unused."""

    def __init__(self, student_dim: int, teacher_dim: int, cfg: DecoderConfig | None = None) -> None:
        super().__init__()
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.proj = nn.Linear(student_dim, teacher_dim)
        self.apply(xavier_init)

    def forward(self, x: torch.Tensor, pattern: int) -> DecoderOutput:
        check_pattern(pattern)
        out = self.proj(x)  # (B, L, Dt)
        return DecoderOutput(out, zero_aux(out), None)
