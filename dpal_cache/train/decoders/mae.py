"""The ``mae`` decoder (paper Table 11, "MAE-style"): two transformer blocks and a linear head.

    res = MAEDecoder(192, 768, DecoderConfig(kind="mae"))(tokens, pattern)   # (B, L, 192) -> (B, L, 768)

As MAE's decoder: Linear(Ds -> D) embedding (D = ``inner_dim`` for a wider student, else Ds and an identity),
``mae_depth`` pre-norm timm blocks (``heads`` resolved for D, ``mlp_ratio``), LayerNorm,
Linear(D -> Dt). All patterns share the weights; no router: ``aux`` holds zeros, ``scores`` None.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from dpal_cache.train.decoders.config import DecoderConfig, DecoderOutput, check_pattern, resolve_heads, zero_aux
from dpal_cache.train.decoders.dpade import xavier_init
from dpal_cache.train.decoders.registry import register_decoder


@register_decoder("mae")
class MAEDecoder(nn.Module):
    """Embed -> ``mae_depth`` transformer blocks -> LayerNorm -> Linear to the teacher width."""

    def __init__(self, student_dim: int, teacher_dim: int, cfg: DecoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DecoderConfig(kind="mae")
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        inner = cfg.projected_width(student_dim)
        dim = inner or student_dim
        self.embed = nn.Linear(student_dim, dim) if inner else nn.Identity()
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.blocks = nn.Sequential(
            *[
                Block(dim, resolve_heads(dim, cfg.heads), cfg.mlp_ratio, qkv_bias=True, drop_path=cfg.drop_path,
                      norm_layer=norm)
                for _ in range(cfg.mae_depth)
            ]
        )
        self.norm = norm(dim)
        self.head = nn.Linear(dim, teacher_dim)
        self.apply(xavier_init)

    def forward(self, x: torch.Tensor, pattern: int) -> DecoderOutput:
        check_pattern(pattern)
        x = self.blocks(self.embed(x))  # (B, L, D)
        out = self.head(self.norm(x))  # (B, L, Dt)
        return DecoderOutput(out, zero_aux(out), None)
