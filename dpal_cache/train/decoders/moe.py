"""The ``moe`` decoder (paper Table 11, "standard MoE"): D-PaDe with three FIXED MLP experts.

    res = MoEDecoder(192, 768, DecoderConfig(kind="moe"))(tokens, Pattern.GLOBAL)
    res.out (B, L, 768), res.scores (B, 3), res.aux["router_ce"]

Everything but the experts is D-PaDe's (dpade.py): optional down-projection, y = LN(x +
SelfAttn(x)), the same router with the same per-pattern cross-entropy. The experts are learned
MLPs D -> mlp_ratio * D -> Dt shared by all samples instead of matrices generated per sample;
the mixture is dense and soft like D-PaDe's: out = LN(sum_e scores_e * MLP_e(y)). Fixed experts
are regularised by the optimizer's weight decay, so ``expert_l2`` is zero.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import Mlp

from dpal_cache.train.decoders.config import NUM_PATTERNS, DecoderConfig, DecoderOutput, check_pattern
from dpal_cache.train.decoders.dpade import Router, TokenMixer, xavier_init
from dpal_cache.train.decoders.registry import register_decoder


@register_decoder("moe")
class MoEDecoder(nn.Module):
    """Token mixer + router + three fixed MLP experts, softly mixed by the router scores."""

    def __init__(self, student_dim: int, teacher_dim: int, cfg: DecoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DecoderConfig(kind="moe")
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.mixer = TokenMixer(student_dim, cfg)
        dim = self.mixer.dim
        self.router = Router(dim, cfg)
        self.experts = nn.ModuleList(
            [Mlp(dim, int(dim * cfg.mlp_ratio), teacher_dim) for _ in range(NUM_PATTERNS)]
        )
        self.out_norm = nn.LayerNorm(teacher_dim, eps=cfg.norm_eps)
        self.apply(xavier_init)
        self.router.reset_head()

    def forward(self, x: torch.Tensor, pattern: int) -> DecoderOutput:
        pattern = check_pattern(pattern)
        _, y = self.mixer(x)  # (B, L, D)
        scores, router_ce = self.router(y, pattern)  # (B, 3)
        expert_out = torch.stack([expert(y) for expert in self.experts], dim=1)  # (B, 3, L, Dt)
        mixed = torch.einsum("be,beld->bld", scores.to(expert_out.dtype), expert_out)  # (B, L, Dt)
        aux = {"router_ce": router_ce, "expert_l2": router_ce.new_zeros(())}
        return DecoderOutput(self.out_norm(mixed), aux, scores)
