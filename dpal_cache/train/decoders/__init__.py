"""Pattern decoders (paper Table 11) behind one registry.

    dec = build_decoder("dpade", student_dim=192, teacher_dim=768, cfg=DecoderConfig())
    res = dec(tokens, Pattern.LOCAL)       # tokens (B, L, Ds) -> res.out (B, L, Dt), res.aux, res.scores
    loss = ... + router_ce_weight(cfg, epoch) * res.aux["router_ce"] + cfg.expert_l2_weight * res.aux["expert_l2"]

Kinds: the registry ``DECODERS`` (registry.py), filled by the decoder modules imported here, each
module named after its kind (dpade.py holds the default). A new decoder is a module whose class
carries ``@register_decoder("<kind>")``, imported below; ``DecoderConfig.kind``, the ``--decoder``
help (``DECODERS_HELP``) and ``build_decoder`` take it from the registry.
The contract (``DecoderOutput``, ``Pattern``) and the config live in config.py.
"""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from dpal_cache.train.decoders.config import (
    NUM_PATTERNS,
    DecoderConfig,
    DecoderOutput,
    Pattern,
    resolve_heads,
    router_ce_weight,
)
from dpal_cache.train.decoders.dpade import DPaDe
from dpal_cache.train.decoders.linear import LinearDecoder
from dpal_cache.train.decoders.mae import MAEDecoder
from dpal_cache.train.decoders.moe import MoEDecoder
from dpal_cache.train.decoders.registry import DECODERS, register_decoder, unknown_decoder

# the registered kinds, for --decoder help (the registry is the one list), the config's default marked
DECODERS_HELP = ", ".join(f"{kind} (default)" if kind == DecoderConfig.kind else kind for kind in DECODERS)


def build_decoder(
    kind: str | None, student_dim: int, teacher_dim: int, cfg: DecoderConfig | None = None
) -> nn.Module:
    """A fresh decoder of ``kind`` (None: ``cfg.kind``) mapping Ds-wide student tokens to Dt-wide ones."""
    cfg = cfg or DecoderConfig()
    kind = kind or cfg.kind
    if kind not in DECODERS:
        raise ValueError(unknown_decoder(kind))
    if kind != cfg.kind:
        cfg = dataclasses.replace(cfg, kind=kind)
    if student_dim < 1 or teacher_dim < 1:
        raise ValueError(f"decoder dims must be positive, got student {student_dim}, teacher {teacher_dim}")
    return DECODERS[kind](student_dim, teacher_dim, cfg)


__all__ = [
    "DECODERS",
    "DECODERS_HELP",
    "NUM_PATTERNS",
    "DPaDe",
    "DecoderConfig",
    "DecoderOutput",
    "LinearDecoder",
    "MAEDecoder",
    "MoEDecoder",
    "Pattern",
    "build_decoder",
    "register_decoder",
    "resolve_heads",
    "router_ce_weight",
]
