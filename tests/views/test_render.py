"""Rendering views: sizes, value ranges, each operation as stated, bitwise replay."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from dpal_cache.normalization import IMAGENET_MEAN, IMAGENET_STD
from dpal_cache.views import ops
from dpal_cache.views.config import GlobalViewConfig, LocalCropConfig
from dpal_cache.views.params import ViewParams, global_view_params
from dpal_cache.views.render import normalize, render_view


def _image(h: int = 220, w: int = 100, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient plus noise: every op (blur, hue, contrast) visibly changes it."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 255 / h, xx * 255 / w, 128 + 60 * np.sin(yy / 9.0)], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 20, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


IMG = _image()
PLAIN = ViewParams(img_size=(220, 100), box=(10, 5, 200, 90), out_size=(64, 32))


@pytest.mark.parametrize("aug", [GlobalViewConfig(), LocalCropConfig(), GlobalViewConfig(size=(40, 24))])
def test_configured_size_dtype_and_range(aug):
    for view in range(12):
        x = render_view(IMG, global_view_params(aug, 0, 3, view, IMG.shape[:2]))
        assert x.shape == (3, *aug.size) and x.dtype == torch.uint8 and x.is_contiguous()
        assert 0 < x.float().std() and int(x.max()) <= 255


def test_replay_from_stored_vector_is_bitwise_identical():
    for view in range(16):
        p = global_view_params(GlobalViewConfig(), 7, 3, view, IMG.shape[:2])
        first = render_view(IMG, p)
        stored = p.to_vector().astype(np.float32)  # the smallest storage we allow
        assert torch.equal(render_view(IMG.copy(), ViewParams.from_vector(stored)), first)
        assert torch.equal(render_view(torch.from_numpy(IMG), stored), first)  # torch input, raw vector


def test_thread_count_does_not_change_pixels():
    params = [global_view_params(GlobalViewConfig(blur_p=1.0, jitter_p=1.0), 0, 1, v, IMG.shape[:2]) for v in range(6)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [render_view(IMG, p) for p in params]
        torch.set_num_threads(2)
        two = [render_view(IMG, p) for p in params]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_other_cpu_kernels_change_a_view_by_at_most_one_grey_level():
    # bit for bit holds on one machine; another CPU's vectorised kernels round some sums differently.
    # ATEN_CPU_CAPABILITY=default (no SIMD kernels) stands in for another CPU on this one.
    cfg = GlobalViewConfig(blur_p=1.0, jitter_p=1.0)
    here = torch.stack([render_view(IMG, global_view_params(cfg, 0, 1, v, IMG.shape[:2])) for v in range(8)])
    script = ("import sys, torch; torch.set_num_threads(1)\n"
              "sys.path.insert(0, sys.argv[1]); from test_render import IMG\n"
              "from dpal_cache.views.config import GlobalViewConfig\n"
              "from dpal_cache.views.params import global_view_params\n"
              "from dpal_cache.views.render import render_view\n"
              "cfg = GlobalViewConfig(blur_p=1.0, jitter_p=1.0)\n"
              "x = torch.stack([render_view(IMG, global_view_params(cfg, 0, 1, v, IMG.shape[:2])) for v in range(8)])\n"
              "sys.stdout.buffer.write(x.numpy().tobytes())\n")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    proc = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__)], env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    there = torch.from_numpy(np.frombuffer(proc.stdout, dtype=np.uint8).reshape(here.shape).copy())
    diff = (here.int() - there.int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() >= 0.999


def test_crop_and_resize():
    same = dataclasses.replace(PLAIN, out_size=(200, 90))  # no resampling needed: exactly the box
    assert torch.equal(render_view(IMG, same), torch.from_numpy(IMG[10:210, 5:95]).permute(2, 0, 1))
    expected = TF.resize(
        torch.from_numpy(IMG[10:210, 5:95]).permute(2, 0, 1).contiguous(),
        [64, 32],
        interpolation=TF.InterpolationMode.BICUBIC,
        antialias=True,
    )
    assert torch.equal(render_view(IMG, PLAIN), expected)


def test_flip_and_grayscale():
    base = render_view(IMG, PLAIN)
    assert torch.equal(render_view(IMG, dataclasses.replace(PLAIN, flip=True)), base.flip(-1))
    gray = render_view(IMG, dataclasses.replace(PLAIN, grayscale=True))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2]) and not torch.equal(gray, base)


def test_jitter_follows_the_stored_order():
    p = dataclasses.replace(
        PLAIN, jitter=True, brightness=1.3, contrast=0.6, saturation=1.4, hue=0.08, order=(3, 0, 2, 1)
    )
    x = render_view(IMG, dataclasses.replace(PLAIN))[None]
    factors = {0: 1.3, 1: 0.6, 2: 1.4, 3: 0.08}
    for op in p.order:
        x = ops.OPS[op](x, torch.tensor([factors[op]]))
    assert torch.equal(render_view(IMG, p), x[0])
    assert not torch.equal(render_view(IMG, dataclasses.replace(p, order=(0, 1, 2, 3))), x[0])  # order matters


def test_identity_jitter_factors_are_skipped():
    noop = dataclasses.replace(PLAIN, jitter=True, order=(3, 2, 1, 0))
    assert torch.equal(render_view(IMG, noop), render_view(IMG, PLAIN))
    brighter = render_view(IMG, dataclasses.replace(noop, brightness=1.5)).float().mean()
    assert brighter > render_view(IMG, PLAIN).float().mean() * 1.2


def test_blur_matches_torchvision_and_smooths():
    x = render_view(IMG, dataclasses.replace(PLAIN, out_size=(128, 64)))
    for kernel, sigma in ((3, 0.3), (7, 1.1), (13, 2.0), (19, 3.0)):
        ours = ops.gaussian_blur(x[None], [kernel], [sigma], torch.tensor([True]))[0]
        ref = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
        diff = (ours.int() - ref.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # float summation order only
    blurred = render_view(IMG, dataclasses.replace(PLAIN, blur=True, sigma=2.0, kernel=13))
    sharp = render_view(IMG, PLAIN)
    assert blurred.float().diff(dim=-1).abs().mean() < 0.5 * sharp.float().diff(dim=-1).abs().mean()


def test_wrong_image_is_refused():
    with pytest.raises(ValueError, match="drawn for"):
        render_view(_image(221, 100), PLAIN)
    with pytest.raises(ValueError, match="RGB uint8"):
        render_view(IMG.astype(np.float32), PLAIN)


def test_normalize():
    mean_img = torch.tensor([round(m * 255) for m in IMAGENET_MEAN], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4)
    assert normalize(mean_img).abs().max() < 0.01
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)  # batches work too
    y = normalize(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]))
    own = normalize(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # the teacher's own statistics
    assert torch.allclose(own, torch.ones_like(own))
    with pytest.raises(ValueError):
        normalize(x.float())


@pytest.mark.parametrize("name, value", [("brightness", 0.6), ("brightness", 1.4), ("contrast", 0.6),
                                         ("contrast", 1.4), ("saturation", 0.6), ("saturation", 1.4),
                                         ("hue", -0.1), ("hue", 0.3)])
def test_colour_ops_follow_torchvision_within_one_grey_level(name, value):
    # ours are written without multiply-adds (the same bytes for a batch of one and of many, on CPU and GPU);
    # torchvision's may fuse them: the two differ by rounding only
    x = torch.from_numpy(IMG).permute(2, 0, 1)[None, :, :96, :64].contiguous()
    ours = ops.OPS[["brightness", "contrast", "saturation", "hue"].index(name)](x, torch.tensor([value]))
    ref = getattr(TF, f"adjust_{name}")(x[0], value)
    assert int((ours[0].int() - ref.int()).abs().max()) <= 1
    grey = ops.grayscale(x, torch.tensor([True]))[0]  # torchvision fuses a multiply-add on AVX2: 1 level at most
    assert int((grey.int() - TF.rgb_to_grayscale(x[0], num_output_channels=3).int()).abs().max()) <= 1
