"""Student-only local crops: keyed by (seed, epoch, index, crop), fresh per epoch, configured as said."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpal_cache.views.config import GlobalViewConfig, LocalCropConfig
from dpal_cache.views.local import local_crop_params, local_crops
from dpal_cache.views.params import global_view_params
from dpal_cache.views.render import render_view

IMG = np.random.default_rng(3).integers(0, 256, (180, 80, 3), dtype=np.uint8)
SIZE = (180, 80)


def test_defaults_follow_the_release():
    cfg = LocalCropConfig()
    assert (cfg.count, cfg.size, cfg.scale, cfg.ratio, cfg.blur_p) == (2, (128, 96), (0.05, 0.8), (0.4, 0.6), 0.5)
    assert (cfg.flip_p, cfg.jitter_p, cfg.grayscale_p, cfg.blur_sigma) == (0.5, 0.8, 0.2, (0.1, 2.0))


def test_keyed_by_seed_epoch_index_and_crop():
    cfg = LocalCropConfig()
    base = local_crop_params(cfg, 0, 0, 5, 0, SIZE)
    assert local_crop_params(cfg, 0, 0, 5, 0, SIZE) == base
    for other in ((1, 0, 5, 0), (0, 1, 5, 0), (0, 0, 6, 0), (0, 0, 5, 1)):
        assert local_crop_params(cfg, *other, SIZE) != base
    # an own stream: not the global view with the same integers
    assert local_crop_params(cfg, 0, 0, 5, 0, SIZE).box != global_view_params(GlobalViewConfig(), 0, 5, 0, SIZE).box


def test_fresh_every_epoch_and_replayable():
    cfg = LocalCropConfig(size=(48, 32))
    epochs = [local_crops(cfg, 0, e, 9, IMG) for e in range(3)]
    for crops in epochs:
        assert len(crops) == 2 and all(c.shape == (3, 48, 32) and c.dtype == torch.uint8 for c in crops)
    assert not torch.equal(epochs[0][0], epochs[1][0]) and not torch.equal(epochs[0][0], epochs[0][1])
    again = local_crops(cfg, 0, 1, 9, IMG.copy())
    assert all(torch.equal(a, b) for a, b in zip(again, epochs[1]))
    p = local_crop_params(cfg, 0, 1, 9, 1, SIZE)
    assert torch.equal(render_view(IMG, p.to_vector()), epochs[1][1])


@pytest.mark.parametrize("count", [0, 1, 5])
def test_count(count):
    assert len(local_crops(LocalCropConfig(count=count, size=(16, 16)), 0, 0, 0, IMG)) == count


def test_scale_and_blur_probability():
    params = [local_crop_params(LocalCropConfig(), 0, 0, i, 0, (400, 200)) for i in range(400)]
    areas = [p.box[2] * p.box[3] / (400 * 200) for p in params]
    assert min(areas) >= 0.04 and max(areas) <= 0.82 and max(areas) - min(areas) > 0.5
    assert np.mean([p.blur for p in params]) == pytest.approx(0.5, abs=0.08)
