"""The batched renderer against the per-sample one: global views, local crops and crowd images of whole batches.

On a CPU with torch's AVX2 uint8 resize (every x86-64 machine we run on) the two give the same bytes: the
batched resize reproduces that kernel's fixed-point arithmetic, and every later operation is shared
(views/ops.py). What holds on any CPU, and what the tests assert everywhere, is the stated tolerance: at most
2 grey levels apart and at least 99.9 % of the pixels identical (RENDER_TOLERANCE).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from dpal_cache.views import ops
from dpal_cache.views.batched import BatchRenderer
from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewsConfig
from dpal_cache.views.crowd import make_recipe, render_crowd
from dpal_cache.views.local import local_crop_params
from dpal_cache.views.params import global_view_params
from dpal_cache.views.render import render_view

RNG = np.random.default_rng(3)
N = 24
SIZES = np.stack([RNG.integers(90, 200, N), RNG.integers(40, 100, N)], axis=1)  # (H, W) of person-crop shapes


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth shading, edges and noise: every operation changes it, and it resamples like a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 255 / h, xx * 255 / w, 128 + 90 * np.sin(yy / 7.0 + xx / 5.0)], axis=-1)
    base[h // 3: 2 * h // 3, w // 4: 3 * w // 4] = rng.integers(0, 256, 3)  # a hard-edged block
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


IMAGES = {i: _image(int(h), int(w), i) for i, (h, w) in enumerate(SIZES)}
OK = np.arange(N, dtype=np.int64)
VIEWS = ViewsConfig(global_view=GlobalViewConfig(size=(64, 32), jitter_p=0.9, blur_p=0.7, grayscale_p=0.3),
                    local_crops=LocalCropConfig(size=(32, 24)), crowd=CrowdConfig(size=(64, 64)))


def _sources() -> dict[int, torch.Tensor]:
    return {i: torch.from_numpy(img).permute(2, 0, 1).contiguous() for i, img in IMAGES.items()}


def within_tolerance(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    """(largest grey-level difference, fraction of identical values)."""
    diff = (a.int() - b.int()).abs()
    return int(diff.max()), float((diff == 0).float().mean())


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    worst, same = within_tolerance(a, b)
    assert worst <= 2 and same >= 0.999, (worst, same)


def exact_resize_expected() -> bool:
    """torch resizes uint8 with its fixed-point AVX2 kernel on x86-64 CPUs that have AVX2 (the batched resize
    reproduces that kernel); elsewhere it may take another path."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def test_resize_reproduces_torchs_uint8_resize():
    crops = [torch.from_numpy(IMAGES[i]).permute(2, 0, 1).contiguous() for i in range(8)]
    outs = [(64, 32), (64, 32), (128, 64), (32, 24), (200, 100), (int(SIZES[5, 0]), 20), (17, 9), (64, 32)]
    got = ops.resize_exact(crops, outs)
    for c, o, g in zip(crops, outs, got):
        ref = TF.resize(c, list(o), interpolation=InterpolationMode.BICUBIC, antialias=True)
        if exact_resize_expected():
            assert torch.equal(ref, g), (tuple(c.shape), o)
        assert_close(ref, g)


@pytest.mark.parametrize("whole_batch", [False, True], ids=["view-by-view", "whole-batch"])
def test_batched_views_and_local_crops_match_the_per_sample_renderer(whole_batch):
    sources, renderer = _sources(), BatchRenderer("cpu", whole_batch=whole_batch)
    params = [global_view_params(VIEWS.global_view, 0, i, v, tuple(SIZES[i])) for i in range(N) for v in range(2)]
    assert any(p.jitter for p in params) and any(p.blur for p in params) and any(p.grayscale for p in params)
    batch = renderer.views([sources[i] for i in range(N) for _ in range(2)], params)
    single = torch.stack([render_view(IMAGES[i], p) for i, p in zip([i for i in range(N) for _ in range(2)], params)])
    assert batch.shape == (2 * N, 3, 64, 32) and batch.dtype == torch.uint8
    assert_close(batch, single)
    if exact_resize_expected():
        assert torch.equal(batch, single)
    crops = [local_crop_params(VIEWS.local_crops, 0, 3, i, k, tuple(SIZES[i])) for i in range(N) for k in range(2)]
    got = renderer.views([sources[i] for i in range(N) for _ in range(2)], crops)
    want = torch.stack([render_view(IMAGES[i // 2], p) for i, p in enumerate(crops)])
    assert_close(got, want)


@pytest.mark.parametrize("whole_batch", [False, True], ids=["view-by-view", "whole-batch"])
@pytest.mark.parametrize("mode", ["copy-paste", "release"])
def test_batched_crowds_match_the_per_sample_renderer(mode, whole_batch):
    cfg = ViewsConfig(global_view=VIEWS.global_view, local_crops=VIEWS.local_crops,
                      crowd=CrowdConfig(size=(64, 64), mode=mode, persons=(1, 3)))
    recipes = [make_recipe(cfg, 0, i, c, OK, SIZES) for i in range(N) for c in range(2)]
    assert len({len(r.pastes) for r in recipes}) > 1 or mode == "release"  # slots used by some images only
    got = BatchRenderer("cpu", whole_batch=whole_batch).crowds(recipes, _sources())
    want = torch.stack([render_crowd(r, IMAGES) for r in recipes])
    assert got.shape == want.shape == (2 * N, 3, 64, 64)
    assert_close(got, want)
    if exact_resize_expected():
        assert torch.equal(got, want)


def test_a_batch_of_one_is_a_batch_of_many():
    # the per-sample renderer is a batch of one through the same operations: results cannot depend on the batch
    x = torch.stack([torch.from_numpy(IMAGES[i][:64, :32].copy()).permute(2, 0, 1) for i in range(8)])
    spread = torch.linspace(0.8, 1.2, 8, dtype=torch.float64)[:, None]
    factors = torch.tensor([[1.2, 0.7, 1.3, 0.05]] * 8, dtype=torch.float64) * spread
    factors[:, 3] = torch.linspace(-0.3, 0.3, 8)
    order = torch.stack([torch.randperm(4, generator=torch.Generator().manual_seed(i)) for i in range(8)])
    active = torch.tensor([True, False] * 4)
    many = ops.jitter(x, factors, order, active)
    one = torch.cat([ops.jitter(x[i:i + 1], factors[i:i + 1], order[i:i + 1], active[i:i + 1]) for i in range(8)])
    assert torch.equal(many, one) and torch.equal(many[1], x[1])  # inactive images untouched
    kernels, sigmas = [3, 5, 7, 9, 11, 13, 3, 5], [0.4 + 0.2 * i for i in range(8)]
    blurred = ops.gaussian_blur(x, kernels, sigmas, torch.ones(8, dtype=torch.bool))
    for i in range(8):
        alone = ops.gaussian_blur(x[i:i + 1], kernels[i:i + 1], sigmas[i:i + 1], torch.ones(1, dtype=torch.bool))
        assert torch.equal(blurred[i:i + 1], alone), i


@pytest.mark.parametrize("whole_batch", [False, True], ids=["view-by-view", "whole-batch"])
def test_views_of_another_size_or_image_are_refused(whole_batch):
    sources, renderer = _sources(), BatchRenderer("cpu", whole_batch=whole_batch)
    p0 = global_view_params(VIEWS.global_view, 0, 0, 0, tuple(SIZES[0]))
    p1 = global_view_params(VIEWS.local_crops, 0, 1, 0, tuple(SIZES[1]))
    with pytest.raises(ValueError, match="one output size"):
        renderer.views([sources[0], sources[1]], [p0, p1])
    with pytest.raises(ValueError, match="drawn for"):
        renderer.views([sources[1]], [p0])
