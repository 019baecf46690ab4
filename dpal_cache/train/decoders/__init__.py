"""Pattern decoders (paper Table 11) behind one registry.

    dec = build_decoder("dpade", student_dim=192, teacher_dim=768, cfg=DecoderConfig())
    res = dec(tokens, Pattern.LOCAL)       # tokens (B, L, Ds) -> res.out (B, L, Dt), res.aux, res.scores
    loss = ... + router_ce_weight(cfg, epoch) * res.aux["router_ce"] + cfg.expert_l2_weight * res.aux["expert_l2"]

Kinds: ``dpade`` (default, dpade.py), ``linear`` (linear.py), ``mae`` (mae.py), ``moe`` (moe.py).
The contract (``DecoderOutput``, ``Pattern``) and the config live in config.py.
"""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from dpal_cache.train.decoders.config import (
    NUM_PATTERNS,
    DecoderConfig,
    DecoderKind,
    DecoderOutput,
    Pattern,
    resolve_heads,
    router_ce_weight,
)
from dpal_cache.train.decoders.dpade import DPaDe
from dpal_cache.train.decoders.linear import LinearDecoder
from dpal_cache.train.decoders.mae import MAEDecoder
from dpal_cache.train.decoders.moe import MoEDecoder

DECODERS: dict[str, type[nn.Module]] = {
    "dpade": DPaDe,
    "linear": LinearDecoder,
    "mae": MAEDecoder,
    "moe": MoEDecoder,
}


def build_decoder(
    kind: DecoderKind | None, student_dim: int, teacher_dim: int, cfg: DecoderConfig | None = None
) -> nn.Module:
    """A fresh decoder of ``kind`` (None: ``cfg.kind``) mapping Ds-wide student tokens to Dt-wide ones."""
    cfg = cfg or DecoderConfig()
    kind = kind or cfg.kind
    if kind not in DECODERS:
        raise ValueError(f"unknown decoder kind {kind!r}; choose one of {', '.join(DECODERS)}")
    if kind != cfg.kind:
        cfg = dataclasses.replace(cfg, kind=kind)
    if student_dim < 1 or teacher_dim < 1:
        raise ValueError(f"decoder dims must be positive, got student {student_dim}, teacher {teacher_dim}")
    return DECODERS[kind](student_dim, teacher_dim, cfg)


__all__ = [
    "DECODERS",
    "NUM_PATTERNS",
    "DecoderConfig",
    "DecoderOutput",
    "Pattern",
    "build_decoder",
    "resolve_heads",
    "router_ce_weight",
]
