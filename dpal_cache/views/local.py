"""Student-only local crops: drawn fresh every epoch from (seed, epoch, index, crop), never cached.

Their class tokens are matched to the cached teacher class token of the global view, so
they cost nothing in the store and keep some augmentation fresh across epochs.

    crops = local_crops(cfg.local_crops, cfg.seed, epoch=3, index=17, image=rgb)  # count x uint8 (3, 128, 96)
"""

from __future__ import annotations

import numpy as np
import torch

from dpal_cache.views.config import LocalCropConfig
from dpal_cache.views.params import STREAM_LOCAL, VIEW_DRAWS, ViewParams, draw_view, uniforms
from dpal_cache.views.render import render_view


def local_crop_params(
    cfg: LocalCropConfig, seed: int, epoch: int, index: int, crop: int, img_size: tuple[int, int]
) -> ViewParams:
    """Parameters of local crop ``crop`` of image ``index`` in ``epoch`` (source size (H, W))."""
    return draw_view(cfg, img_size, uniforms(seed, STREAM_LOCAL, index, epoch, crop, VIEW_DRAWS))


def local_crops(
    cfg: LocalCropConfig, seed: int, epoch: int, index: int, image: np.ndarray | torch.Tensor
) -> list[torch.Tensor]:
    """Render the ``cfg.count`` local crops of one image for one epoch: each uint8 (3, *cfg.size)."""
    img_size = (int(image.shape[0]), int(image.shape[1]))
    return [
        render_view(image, local_crop_params(cfg, seed, epoch, index, k, img_size)) for k in range(cfg.count)
    ]
