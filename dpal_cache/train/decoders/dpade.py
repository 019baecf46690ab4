"""D-PaDe, the dynamic pattern decoder: a router plus per-sample experts generated from pattern queries.

    dec = DPaDe(student_dim=192, teacher_dim=768, cfg=DecoderConfig())
    res = dec(tokens, Pattern.LOCAL)       # tokens (B, L, 192) -> res.out (B, L, 768)

The computation follows the authors' release (``LossMOEDecoder`` / ``MoEGate``), with D = Ds,
or Di = ``inner_dim`` when the student is wider (``DecoderConfig.projected_width``):

0. optional down-projection: x = LN(GELU(Linear(x)))                              # (B, L, D)
1. y = LN(x + SelfAttn(x))  (no pre-norm)                                         # (B, L, D)
2. router: a learnable token r (randn init) -> CrossAttn(LN(r), y, y) -> Linear(D -> 3, no
   bias) = logits, scores = softmax(logits)                                       # (B, 3)
   router_ce = CE(logits, pattern): each pattern is pushed towards its own expert.
3. expert generator: three pattern queries q (zero init) -> q + SelfAttn(q) (no pre-norm)
   -> q + CrossAttn(LN(q), x, x), keys/values from x of step 0 (not y)
   -> LayerNorm(GELU(Linear(D -> D * Dt)(LN(q)))): the GELU and a LayerNorm over all D * Dt
   outputs come after the Linear, reshaped to one D x Dt matrix per query        # (B, 3, D, Dt)
   ``low_rank=r``: the FFN emits U (D x r) and V (r x Dt) per expert instead (LayerNorm over
   the r * (D + Dt) outputs) and W_e = U V / sqrt(r), which keeps W_e's entries at the full
   generator's unit scale (so ``expert_scale`` means the same) with r (D + Dt) instead of D Dt
   outputs per expert.
4. W = sum_e scores_e W_e / expert_scale                                          # (B, D, Dt)
   expert_l2 = sum(W^2) per sample, batch mean (weighted by the caller).
5. out = LN(GELU(y @ W))                                                          # (B, L, Dt)

Init as the release: xavier-uniform Linear weights with zero biases, LayerNorms at 1/0, the
router head with PyTorch's default Linear init (it is a bare parameter there).

``Router`` and ``TokenMixer`` (steps 0-2) are shared with the fixed-expert MoE decoder (moe.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, DropPath

from dpal_cache.train.decoders.config import (
    NUM_PATTERNS,
    DecoderConfig,
    DecoderOutput,
    check_pattern,
    resolve_heads,
)
from dpal_cache.train.decoders.registry import register_decoder


def xavier_init(module: nn.Module) -> None:
    """The release's decoder init: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TokenMixer(nn.Module):
    """Steps 0-1: optional down-projection, then y = LN(x + SelfAttn(x)). Returns (x, y), both (B, L, D)."""

    def __init__(self, student_dim: int, cfg: DecoderConfig) -> None:
        super().__init__()
        inner = cfg.projected_width(student_dim)
        self.dim = inner or student_dim
        if inner:
            self.down = nn.Sequential(nn.Linear(student_dim, inner), nn.GELU(), nn.LayerNorm(inner, eps=cfg.norm_eps))
        else:
            self.down = nn.Identity()
        self.attn = Attention(self.dim, num_heads=resolve_heads(self.dim, cfg.heads), qkv_bias=True)
        self.drop_path = DropPath(cfg.drop_path) if cfg.drop_path > 0 else nn.Identity()
        self.norm = nn.LayerNorm(self.dim, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.down(x)  # (B, L, D)
        y = self.norm(x + self.drop_path(self.attn(x)))  # (B, L, D)
        return x, y


class Router(nn.Module):
    """Step 2: a learnable token cross-attends to the tokens; Linear(D -> 3, no bias) gives the logits."""

    def __init__(self, dim: int, cfg: DecoderConfig) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, dim))
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = nn.MultiheadAttention(dim, resolve_heads(dim, cfg.router_heads), batch_first=True)
        self.head = nn.Linear(dim, NUM_PATTERNS, bias=False)

    def reset_head(self) -> None:
        self.head.reset_parameters()  # PyTorch's kaiming-uniform default, as the release's bare gate weight

    def forward(self, y: torch.Tensor, pattern: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, L, D) -> (scores (B, 3), router_ce scalar)."""
        B = y.shape[0]
        token = self.norm(self.token).expand(B, -1, -1)  # (B, 1, D)
        pooled = self.attn(token, y, y, need_weights=False)[0].squeeze(1)  # (B, D)
        logits = self.head(pooled).float()  # (B, 3)
        target = torch.full((B,), pattern, dtype=torch.long, device=y.device)
        return logits.softmax(dim=-1), F.cross_entropy(logits, target)


class ExpertGenerator(nn.Module):
    """Step 3: three pattern queries -> SelfAttn -> CrossAttn(x) -> FFN -> per-sample experts (B, 3, D, Dt)."""

    def __init__(self, dim: int, teacher_dim: int, cfg: DecoderConfig) -> None:
        super().__init__()
        self.dim, self.teacher_dim, self.rank = dim, teacher_dim, cfg.low_rank
        heads = resolve_heads(dim, cfg.heads)
        self.queries = nn.Parameter(torch.zeros(1, NUM_PATTERNS, dim))
        self.self_attn = Attention(dim, num_heads=heads, qkv_bias=True)
        self.norm_cross = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim, eps=cfg.norm_eps)
        n_out = dim * teacher_dim if self.rank is None else self.rank * (dim + teacher_dim)
        self.ffn = nn.Sequential(nn.Linear(dim, n_out), nn.GELU(), nn.LayerNorm(n_out, eps=cfg.norm_eps))
        self.drop_path = DropPath(cfg.drop_path) if cfg.drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L, D) -> expert matrices (B, 3, D, Dt)."""
        B = x.shape[0]
        q = self.queries.expand(B, -1, -1)  # (B, 3, D)
        q = q + self.drop_path(self.self_attn(q))
        q = q + self.drop_path(self.cross_attn(self.norm_cross(q), x, x, need_weights=False)[0])
        params = self.ffn(self.norm_ffn(q))  # (B, 3, D * Dt) or (B, 3, r * (D + Dt))
        if self.rank is None:
            return params.reshape(B, NUM_PATTERNS, self.dim, self.teacher_dim)
        r = self.rank
        u = params[..., : self.dim * r].reshape(B, NUM_PATTERNS, self.dim, r)  # (B, 3, D, r)
        v = params[..., self.dim * r :].reshape(B, NUM_PATTERNS, r, self.teacher_dim)  # (B, 3, r, Dt)
        return u @ v / math.sqrt(r)  # (B, 3, D, Dt)


@register_decoder("dpade")
class DPaDe(nn.Module):
    """The dynamic pattern decoder (see the module docstring); ``forward(x, pattern) -> DecoderOutput``."""

    def __init__(self, student_dim: int, teacher_dim: int, cfg: DecoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DecoderConfig()
        self.student_dim, self.teacher_dim, self.expert_scale = student_dim, teacher_dim, cfg.expert_scale
        self.mixer = TokenMixer(student_dim, cfg)
        dim = self.mixer.dim
        self.router = Router(dim, cfg)
        self.generator = ExpertGenerator(dim, teacher_dim, cfg)
        self.out_norm = nn.LayerNorm(teacher_dim, eps=cfg.norm_eps)
        self.apply(xavier_init)
        self.router.reset_head()

    def mix_experts(self, experts: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Experts (B, 3, D, Dt) and router scores (B, 3) -> the sample's expert matrix W (B, D, Dt)."""
        return torch.einsum("be,bedt->bdt", scores.to(experts.dtype), experts) / self.expert_scale

    def forward(self, x: torch.Tensor, pattern: int) -> DecoderOutput:
        """Student tokens (B, L, Ds) of one pattern -> decoded tokens (B, L, Dt) with router CE and expert L2."""
        pattern = check_pattern(pattern)
        x, y = self.mixer(x)  # (B, L, D) each
        scores, router_ce = self.router(y, pattern)  # (B, 3), ()
        weight = self.mix_experts(self.generator(x), scores)  # (B, D, Dt)
        expert_l2 = weight.float().pow(2).sum(dim=(1, 2)).mean()
        out = self.out_norm(F.gelu(y @ weight))  # (B, L, Dt)
        return DecoderOutput(out, {"router_ce": router_ce, "expert_l2": expert_l2}, scores)
