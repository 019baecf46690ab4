"""Absolute position embeddings: from the checkpoint's grid to the grid of each input.

A teacher keeps the position embedding of its checkpoint at the checkpoint's own grid (14x14
for PATH at 224x224, 16x8 for HAP at 256x128, 64x64 for Sapiens at 1024x1024) and resamples it
for every input grid it meets (16x8 for a 256x128 view, 16x16 for a 256x256 crowd image with
patch 16); model.py caches one resampled table per grid. Two methods, recorded with the store
because they give different numbers:

- ``timm``: ``timm.layers.resample_abs_pos_embed``: bicubic to the target size with
  antialiasing (which matters when a side shrinks, e.g. 14 -> 8 columns).
- ``release``: the DINO-style ``interpolate_pos_encoding`` of the DPAL release's teacher:
  bicubic with ``scale_factor=((h + 0.1) / H0, (w + 0.1) / W0)`` and no antialiasing; the
  +0.1 keeps the output size right and shifts the sampling positions slightly.

Prefix tokens (class, registers) are never resampled. A grid equal to the checkpoint's is
returned unchanged by both methods.

    table = resample_pos_embed(pos_embed, (14, 14), (16, 8), num_prefix_tokens=1, method="release")
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

PosEmbedMethod = Literal["timm", "release"]
POS_EMBED_METHODS: tuple[str, ...] = ("timm", "release")


def resample_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    method: PosEmbedMethod = "timm",
) -> torch.Tensor:
    """Resample ``pos_embed`` (1, P + H0*W0, D) to (1, P + H*W, D); the P prefix rows are kept as they are.

    Computed in float32 and returned in the input dtype.
    """
    if method not in POS_EMBED_METHODS:
        raise ValueError(f"unknown pos-embed method {method!r}; choose one of {', '.join(POS_EMBED_METHODS)}")
    (h0, w0), (h, w) = tuple(old_grid), tuple(new_grid)
    if pos_embed.shape[1] != num_prefix_tokens + h0 * w0:
        raise ValueError(f"pos_embed has {pos_embed.shape[1]} rows, expected {num_prefix_tokens} + {h0}x{w0}")
    if (h, w) == (h0, w0):
        return pos_embed
    if method == "timm":
        return resample_abs_pos_embed(
            pos_embed, new_size=[h, w], old_size=[h0, w0], num_prefix_tokens=num_prefix_tokens
        )
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, h0, w0, dim).permute(0, 3, 1, 2)  # (1, D, H0, W0)
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / h0, (w + 0.1) / w0), mode="bicubic", align_corners=False)
    if tuple(grid.shape[-2:]) != (h, w):  # cannot happen for grids below ~10^5; kept as the release asserts it
        raise RuntimeError(f"release interpolation gave {tuple(grid.shape[-2:])}, expected {(h, w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos_embed.dtype)  # (1, H*W, D)
    return torch.cat([prefix, grid], dim=1)


def infer_grid(num_positions: int, hint: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (rows, cols) grid of ``num_positions`` patch positions.

    ``hint`` (the teacher's pretraining grid) wins when it has the right size: HAP stores a 16x8
    table that no square guess could recover. Otherwise a square grid, then the 4:3 portrait
    grid Sapiens' downstream checkpoints use (64x48 at 1024x768).
    """
    if hint is not None and hint[0] * hint[1] == num_positions:
        return (int(hint[0]), int(hint[1]))
    side = math.isqrt(num_positions)
    if side * side == num_positions:
        return (side, side)
    cols = math.isqrt(num_positions * 3 // 4)
    if cols > 0 and cols * 4 % 3 == 0 and cols * (cols * 4 // 3) == num_positions:
        return (cols * 4 // 3, cols)
    raise ValueError(f"cannot tell the grid of a {num_positions}-position embedding (hint {hint})")
