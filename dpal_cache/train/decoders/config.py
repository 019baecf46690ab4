"""Decoder config and the contract every pattern decoder follows.

A pattern decoder maps student tokens of ONE pattern into the teacher's space:

    out = decoder(x, pattern)              # x (B, L, Ds); pattern 0 global, 1 local, 2 relation
    out.out                                # (B, L, Dt)
    out.aux["router_ce"], out.aux["expert_l2"]   # scalars, zeros where the decoder has no router / experts
    out.scores                             # (B, 3) router probabilities, or None

Auxiliary losses are returned, never kept in module state; their weights are applied by the
caller (``router_ce_weight(cfg, epoch)``, ``cfg.expert_l2_weight``), as the release does in its
training loop. Defaults follow the authors' release (``LossMOEDecoder``, ``MoEGate``):

- ``heads`` 16: the release's ``align_num_heads`` for the D-PaDe self- and cross-attention of
  every student; ``router_heads`` 12: its router cross-attention hard-codes 12 heads.
- ``expert_scale`` 256: the release divides the mixed expert matrix by a hard-coded 256. The
  generated experts end in a LayerNorm, so their entries have unit scale; 256 keeps
  ``y @ W`` small at the start (about sqrt(Ds) / 256) whatever the student width.
- router CE weight 0.1 for epochs < 20, then 0.01; expert L2 weight 0.025 (the release's
  ``weight_decay * 0.5`` with 0.05) on sum(W^2) per sample, averaged over the batch.

Head counts must divide the attention width; :func:`resolve_heads` takes the largest count
<= the requested one that divides the width and keeps heads at least 8 wide (so small test
widths get fewer, wider heads instead of 2-wide ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

import torch

from dpal_cache.config import check
from dpal_cache.train.decoders.registry import DECODERS, unknown_decoder


class Pattern(IntEnum):
    """The three patterns and the router class (expert) each one is supervised towards."""

    GLOBAL = 0
    LOCAL = 1
    RELATION = 2


NUM_PATTERNS = len(Pattern)
MIN_HEAD_DIM = 8


@dataclass(frozen=True)
class DecoderConfig:
    """One pattern decoder (paper Table 11): ``kind`` is a registered decoder (registry.py), ``dpade`` by default."""

    kind: str = "dpade"  # checked against the registry: DECODERS in registry.py
    heads: int = 16  # D-PaDe / MoE self- and cross-attention, MAE blocks (release: align_num_heads 16)
    router_heads: int = 12  # router cross-attention (release: 12, hard-coded)
    inner_dim: int | None = 192  # students wider than this are projected down to it first (release: 192 for Swin
    # and ViT-B students; ViT-Ti is 192 already); null = never project
    expert_scale: float = 256.0  # D-PaDe: the mixed expert matrix is divided by this (release: 256)
    low_rank: int | None = None  # D-PaDe: generate experts as U (Di x r) @ V (r x Dt) instead of full matrices
    router_ce_weight: float = 0.1  # weight of the router cross-entropy before router_ce_switch_epoch
    router_ce_weight_late: float = 0.01  # ... and from that epoch on
    router_ce_switch_epoch: int = 20
    expert_l2_weight: float = 0.025  # D-PaDe: weight of sum(W^2) of the mixed expert matrix
    mae_depth: int = 2  # MAE-style decoder: transformer blocks
    mlp_ratio: float = 4.0  # MAE blocks and the fixed MoE experts: hidden width / input width
    drop_path: float = 0.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        check(self.kind in DECODERS, "kind", unknown_decoder(self.kind))
        check(self.heads >= 1, "heads", f"must be >= 1, got {self.heads}")
        check(self.router_heads >= 1, "router_heads", f"must be >= 1, got {self.router_heads}")
        if self.inner_dim is not None:
            check(self.inner_dim >= 1, "inner_dim", f"must be >= 1 or null, got {self.inner_dim}")
        check(self.expert_scale > 0, "expert_scale", f"must be > 0, got {self.expert_scale}")
        if self.low_rank is not None:
            check(self.low_rank >= 1, "low_rank", f"must be >= 1 or null, got {self.low_rank}")
            check(self.kind == "dpade", "low_rank", f"applies to the dpade decoder only, not {self.kind}")
        for name in ("router_ce_weight", "router_ce_weight_late", "expert_l2_weight", "drop_path"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(self.drop_path < 1, "drop_path", f"must be < 1, got {self.drop_path}")
        check(self.router_ce_switch_epoch >= 0, "router_ce_switch_epoch", "must be >= 0")
        check(self.mae_depth >= 1, "mae_depth", f"must be >= 1, got {self.mae_depth}")
        check(self.mlp_ratio > 0, "mlp_ratio", f"must be > 0, got {self.mlp_ratio}")
        check(self.norm_eps > 0, "norm_eps", f"must be > 0, got {self.norm_eps}")

    def projected_width(self, student_dim: int) -> int | None:
        """The width student tokens are projected down to before the decoder (``inner_dim`` when the student is
        wider), or None: the decoder works at the student's width."""
        return self.inner_dim if self.inner_dim is not None and student_dim > self.inner_dim else None


class DecoderOutput(NamedTuple):
    """What every decoder returns: decoded tokens, auxiliary losses (unweighted) and router scores."""

    out: torch.Tensor  # (B, L, Dt)
    aux: dict[str, torch.Tensor]  # router_ce, expert_l2: scalars
    scores: torch.Tensor | None  # (B, NUM_PATTERNS) router probabilities, None without a router


def router_ce_weight(cfg: DecoderConfig, epoch: int) -> float:
    """The release's router cross-entropy schedule: ``router_ce_weight`` before the switch epoch, then the late one."""
    return cfg.router_ce_weight if epoch < cfg.router_ce_switch_epoch else cfg.router_ce_weight_late


def resolve_heads(dim: int, requested: int) -> int:
    """The largest head count <= ``requested`` that divides ``dim`` with heads at least MIN_HEAD_DIM wide (>= 1)."""
    limit = max(1, min(requested, dim // MIN_HEAD_DIM))
    return next(h for h in range(limit, 0, -1) if dim % h == 0)


def check_pattern(pattern: int) -> int:
    """``pattern`` as a plain int, or a ValueError naming the valid ones."""
    if isinstance(pattern, bool) or int(pattern) != pattern or not 0 <= int(pattern) < NUM_PATTERNS:
        valid = ", ".join(f"{p.value} ({p.name.lower()})" for p in Pattern)
        raise ValueError(f"pattern must be one of {valid}, got {pattern!r}")
    return int(pattern)


def zero_aux(like: torch.Tensor) -> dict[str, torch.Tensor]:
    """The aux dict of a decoder without router or experts (zeros on ``like``'s device and dtype)."""
    zero = like.new_zeros((), dtype=torch.float32)
    return {"router_ce": zero, "expert_l2": zero}
