"""DPAL's three alignment losses as pure functions, and ``compute_losses`` that combines them.

    out = compute_losses(cfg, global_preds=[g, c1, c2], global_target=t_cls,
                         local_pred=p, local_target=t_patch, pca_score=s,
                         relation_tokens=r, relation_target=t_rel, aux=[res.aux for res in decoded],
                         router_ce_weight=router_ce_weight(dec_cfg, epoch), expert_l2_weight=dec_cfg.expert_l2_weight)
    out["loss"].backward()                 # the other keys are the unweighted components, for logging

- global: MSE between each decoded student class token (the global view and every local crop,
  each (B, Dt)) and the global view's teacher class token, averaged over views (release:
  per-view ``MSELoss(reduction="none").mean(-1).mean()``, then the view mean).
- local: masked MSE between decoded patch tokens and the teacher's (B, L, Dt). ``local_norm``:
  ``release`` = MSE(M * pred, M * target) averaged over all B * L * Dt elements (the paper's
  and release's form: soft masks weigh by M^2, background tokens still count in the mean);
  ``mask`` = sum(M * err^2) / (sum(M) * Dt), a mask-weighted mean over the foreground that does
  not shrink with the foreground's size.
- relation: KL(teacher || student) of row-stochastic maps, summed over keys, mean over rows and
  samples. The student map is softmax(G G^T / sqrt(Dt)) of decoded crowd tokens G, in float32.
  Target ``attention`` (dpal-cache's default): the teacher's head-mean last-block attention among
  patch tokens (B, Lc, Lc); the student map is over patch tokens only (a leading class token is
  dropped if given). Target ``gram`` (the release's): softmax(F F^T / sqrt(Dt)) over all teacher
  tokens incl. the class token (B, Lc + 1, Lc + 1); the student tokens must include their class
  token first. Stored targets are clamped at 0 and rows renormalised to 1 (quantisation).
- masks (``make_mask``): ``pca`` uses the store's per-token projection on the principal
  component, already in [0, 1]; ``attention`` uses the teacher's class -> patch attention (rows
  sum to 1) divided by its per-row max, so the strongest token is 1 and thresholds mean "this
  fraction of the peak"; ``none`` is all ones. Hard: 1 where score >= threshold, else 0. Soft:
  the score itself where score >= threshold, else 0 (threshold 0: the score as is, the
  release's soft PCA mask).
- target normalisation (optional): (x - mean) / std with per-channel statistics from the store,
  applied to the class and patch token targets (not to relation maps).

Weights of zero skip a term (its inputs may then be None); a weighted term without its inputs is
an error that says what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from dpal_cache.config import check

LOSS_KEYS = ("loss", "global", "local", "relation", "router_ce", "expert_l2")  # what compute_losses returns
MaskKind = Literal["pca", "attention", "none"]
RelationKind = Literal["attention", "gram"]


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and options (defaults: the release's choices where the store can reproduce them)."""

    global_weight: float = 1.0
    local_weight: float = 1.0
    relation_weight: float = 1.0
    mask: MaskKind = "pca"  # local-loss mask source
    mask_threshold: float = 0.0  # in [0, 1], on the mask score (attention: relative to the row max)
    mask_soft: bool = True  # soft: the score as the mask (release); hard: a 0/1 threshold
    local_norm: Literal["release", "mask"] = "release"
    relation: RelationKind = "attention"  # which teacher relation target the store holds
    normalize_targets: bool = False  # standardise class / patch token targets with the store's statistics
    aux_average: Literal["calls", "patterns"] = "calls"  # router CE and expert L2: mean over the release's decoder
    # calls (the global view and each local crop count once: the global pattern weighs (1 + K) / (3 + K)), or over
    # the three patterns

    def __post_init__(self) -> None:
        for name in ("global_weight", "local_weight", "relation_weight"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(0.0 <= self.mask_threshold <= 1.0, "mask_threshold", f"must be in [0, 1], got {self.mask_threshold}")


class TargetStats(NamedTuple):
    """Per-channel statistics of one target kind (class or patch tokens), each (Dt,)."""

    mean: torch.Tensor
    std: torch.Tensor


def normalize_targets(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(x - mean) / std over the last (channel) axis; ``std`` is clamped at ``eps``."""
    return (x - mean.to(x)) / std.to(x).clamp_min(eps)


def _flat_tokens(x: torch.Tensor, name: str) -> torch.Tensor:
    """(B, Dt) or (B, 1, Dt) -> (B, Dt)."""
    if x.dim() == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 2:
        raise ValueError(f"{name}: expected (B, Dt) or (B, 1, Dt), got {tuple(x.shape)}")
    return x


def global_loss(preds: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Mean over student views of MSE(view's decoded class token, global view's teacher class token)."""
    if len(preds) == 0:
        raise ValueError("global_loss needs at least one student view")
    target = _flat_tokens(target, "global target").float()
    terms = []
    for i, pred in enumerate(preds):
        pred = _flat_tokens(pred, f"global prediction {i}")
        if pred.shape != target.shape:
            raise ValueError(f"global prediction {i} has shape {tuple(pred.shape)}, target {tuple(target.shape)}")
        terms.append(F.mse_loss(pred.float(), target))
    return torch.stack(terms).mean()


def make_mask(
    kind: MaskKind,
    pca_score: torch.Tensor | None = None,
    attn_cls: torch.Tensor | None = None,
    threshold: float = 0.0,
    soft: bool = True,
    shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Per-token local-loss weights (B, L) in [0, 1] from the teacher's PCA score or class attention.

    Args:
        kind: ``pca``, ``attention`` or ``none``.
        pca_score: (B, L) projection on the store's principal component, in [0, 1].
        attn_cls: (B, L) class -> patch attention, rows summing to 1; divided by the row max.
        threshold: scores below it are 0.
        soft: keep the score as the weight (else 1 at or above the threshold).
        shape: (B, L) of the all-ones ``none`` mask when no score is given.
    """
    if kind == "none":
        ref = pca_score if pca_score is not None else attn_cls
        if ref is not None:
            return torch.ones_like(ref, dtype=torch.float32)
        if shape is None:
            raise ValueError("make_mask('none') needs a score tensor or shape=(B, L)")
        return torch.ones(shape)
    if kind == "pca":
        if pca_score is None:
            raise ValueError("mask 'pca' needs the store's pca score (B, L); use mask='attention' or 'none' otherwise")
        score = pca_score.float().clamp(0.0, 1.0)
    elif kind == "attention":
        if attn_cls is None:
            raise ValueError("mask 'attention' needs the teacher's attn_cls (B, L); use mask='pca' or 'none' otherwise")
        attn = attn_cls.float().clamp_min(0.0)
        score = attn / attn.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    else:
        raise ValueError(f"unknown mask kind {kind!r}; choose pca, attention or none")
    if score.dim() != 2:
        raise ValueError(f"mask score must be (B, L), got {tuple(score.shape)}")
    keep = score >= threshold
    return torch.where(keep, score, torch.zeros_like(score)) if soft else keep.float()


def local_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, norm: str = "release"
) -> torch.Tensor:
    """Masked MSE of decoded patch tokens (B, L, Dt) against the teacher's; ``mask`` (B, L) or None (all ones).

    ``norm="release"``: mean over all elements of (M * (pred - target))^2; ``"mask"``: sum(M * err^2) / (sum(M) * Dt).
    """
    if pred.shape != target.shape:
        raise ValueError(f"local prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    err = (pred.float() - target.float()).pow(2)  # (B, L, Dt)
    if mask is None:
        return err.mean()
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"local mask {tuple(mask.shape)} does not match tokens {tuple(pred.shape[:2])}")
    m = mask.float().unsqueeze(-1)  # (B, L, 1)
    if norm == "release":
        return (err * m.pow(2)).mean()
    if norm == "mask":
        return (err * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1e-12)
    raise ValueError(f"unknown local_norm {norm!r}; choose release or mask")


def student_relation(tokens: torch.Tensor) -> torch.Tensor:
    """Log of the student's relation map: log_softmax(G G^T / sqrt(Dt)) over tokens (B, N, Dt) -> (B, N, N), float32.

    Autocast is switched off so the logits are not recomputed in bf16 (they feed a log)."""
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        g = tokens.float()
        return torch.log_softmax(g @ g.transpose(1, 2) / math.sqrt(g.shape[-1]), dim=-1)


def relation_loss(student_tokens: torch.Tensor, target: torch.Tensor, kind: RelationKind = "attention") -> torch.Tensor:
    """KL(teacher || student) of row-stochastic token relation maps, summed over keys, mean over rows.

    Args:
        student_tokens: decoded crowd tokens (B, Lc, Dt), or (B, Lc + 1, Dt) with the class token first.
        target: ``attention``: (B, Lc, Lc) patch -> patch attention; ``gram``: (B, Lc + 1, Lc + 1).
        kind: which teacher map ``target`` is.
    """
    if target.dim() != 3 or target.shape[1] != target.shape[2]:
        raise ValueError(f"relation target must be a square map (B, N, N), got {tuple(target.shape)}")
    if student_tokens.dim() != 3 or student_tokens.shape[0] != target.shape[0]:
        raise ValueError(
            f"relation tokens must be (B, N, Dt) with the target's batch {target.shape[0]}, "
            f"got {tuple(student_tokens.shape)}"
        )
    n, n_tok = target.shape[1], student_tokens.shape[1]
    if kind == "attention":
        if n_tok == n + 1:
            student_tokens = student_tokens[:, 1:]  # the attention target is among patches only
        elif n_tok != n:
            raise ValueError(
                f"relation 'attention' target is {n}x{n} patch tokens but the student gives {n_tok} tokens "
                f"(expected {n} patch tokens, or {n + 1} with the class token first)"
            )
    elif kind == "gram":
        if n_tok != n:
            raise ValueError(
                f"relation 'gram' target is {n}x{n} over class + patch tokens but the student gives {n_tok} tokens "
                f"(pass the decoded class token first, then the {n - 1} patch tokens)"
            )
    else:
        raise ValueError(f"unknown relation kind {kind!r}; choose attention or gram")
    t = target.float().clamp_min(0.0)
    t = t / t.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    log_s = student_relation(student_tokens)  # (B, N, N)
    return F.kl_div(log_s, t, reduction="none").sum(dim=-1).mean()


def mean_aux(aux: Sequence[Mapping[str, torch.Tensor]], key: str, like: torch.Tensor,
             calls: Sequence[int] | None = None) -> torch.Tensor:
    """The mean of one auxiliary loss over decoder calls; 0 without calls.

    ``calls[i]``: how many of the release's decoder calls entry ``i`` stands for (dpal-cache decodes the global
    view and the local crops in one call; the release calls the decoder once per view and divides by the count,
    ``/ num_aux_loss``); None weighs the entries alike."""
    values = [(a[key].float(), 1 if calls is None else calls[i]) for i, a in enumerate(aux) if key in a]
    if not values:
        return like.new_zeros((), dtype=torch.float32)
    total = sum(n for _, n in values)
    return torch.stack([v * (n / total) for v, n in values]).sum()


def _require(value: torch.Tensor | None, term: str, what: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"the {term} loss has a non-zero weight but no {what} was given; set loss.{term}_weight=0 "
                         f"to train without it")
    return value


def compute_losses(
    cfg: LossConfig,
    *,
    global_preds: Sequence[torch.Tensor] = (),
    global_target: torch.Tensor | None = None,
    local_pred: torch.Tensor | None = None,
    local_target: torch.Tensor | None = None,
    pca_score: torch.Tensor | None = None,
    attn_cls: torch.Tensor | None = None,
    relation_tokens: torch.Tensor | None = None,
    relation_target: torch.Tensor | None = None,
    aux: Sequence[Mapping[str, torch.Tensor]] = (),
    aux_calls: Sequence[int] | None = None,
    keep_tokens: torch.Tensor | None = None,
    router_ce_weight: float = 0.0,
    expert_l2_weight: float = 0.0,
    global_stats: TargetStats | None = None,
    local_stats: TargetStats | None = None,
) -> dict[str, torch.Tensor]:
    """All loss terms of one step: ``loss`` (weighted sum, to backpropagate) and the unweighted components.

    Args:
        cfg: weights and options.
        global_preds: decoded class tokens, (B, Dt) each: the global view's, then the local crops'.
        global_target: the global view's teacher class token (B, Dt).
        local_pred, local_target: decoded and teacher patch tokens of the global view (B, L, Dt).
        pca_score, attn_cls: (B, L) mask sources (whichever ``cfg.mask`` uses).
        relation_tokens: decoded crowd tokens (B, Lc(+1), Dt); relation_target: the teacher map.
        aux: the ``aux`` dicts of every decoder call of the step; router CE and expert L2 are averaged over them.
        aux_calls: how many of the release's decoder calls each ``aux`` entry stands for (``cfg.aux_average``
            ``calls``); None: one each.
        keep_tokens: (B, L) bool, False for patch tokens the store zeroed (``mask_at_extract``): their local-loss
            weight is 0, whatever the mask.
        router_ce_weight: ``router_ce_weight(decoder_cfg, epoch)``; expert_l2_weight: ``decoder_cfg.expert_l2_weight``.
        global_stats, local_stats: target statistics, required when ``cfg.normalize_targets``.

    Returns:
        ``loss``, ``global``, ``local``, ``relation``, ``router_ce``, ``expert_l2`` (scalars; a skipped term is 0).
    """
    ref = next((t for t in (global_target, local_target, relation_target) if t is not None), None)
    if ref is None:
        raise ValueError("compute_losses needs at least one target")
    zero = ref.new_zeros((), dtype=torch.float32)
    out = {"global": zero, "local": zero, "relation": zero}
    if cfg.global_weight > 0:
        target = _require(global_target, "global", "teacher class token")
        if cfg.normalize_targets:
            stats = _require(global_stats, "global", "class-token statistics (normalize_targets is on)")
            target = normalize_targets(target, *stats)
        if not global_preds:
            _require(None, "global", "decoded student class token")
        out["global"] = global_loss(global_preds, target)
    if cfg.local_weight > 0:
        pred = _require(local_pred, "local", "decoded student patch tokens")
        target = _require(local_target, "local", "teacher patch tokens")
        if cfg.normalize_targets:
            stats = _require(local_stats, "local", "patch-token statistics (normalize_targets is on)")
            target = normalize_targets(target, *stats)
        mask = None
        if cfg.mask != "none":
            mask = make_mask(cfg.mask, pca_score, attn_cls, cfg.mask_threshold, cfg.mask_soft)
        if keep_tokens is not None:  # zeroed at extraction: not a target, whatever the mask says
            keep = keep_tokens.to(torch.float32)
            mask = keep if mask is None else mask * keep
        out["local"] = local_loss(pred, target, mask, cfg.local_norm)
    if cfg.relation_weight > 0:
        tokens = _require(relation_tokens, "relation", "decoded crowd tokens")
        target = _require(relation_target, "relation", f"teacher relation map ({cfg.relation!r} in the store)")
        out["relation"] = relation_loss(tokens, target, cfg.relation)
    calls = aux_calls if cfg.aux_average == "calls" else None
    out["router_ce"] = mean_aux(aux, "router_ce", zero, calls)
    out["expert_l2"] = mean_aux(aux, "expert_l2", zero, calls)
    out["loss"] = (
        cfg.global_weight * out["global"]
        + cfg.local_weight * out["local"]
        + cfg.relation_weight * out["relation"]
        + router_ce_weight * out["router_ce"]
        + expert_l2_weight * out["expert_l2"]
    )
    return {k: out[k] for k in LOSS_KEYS}
