"""Render a view from decoded RGB uint8 pixels and its parameters; normalise separately.

    img = decode_rgb(source.read(i))                  # np.uint8 (H, W, 3)
    x = render_view(img, params)                      # torch.uint8 (3, out_h, out_w)
    x = normalize(x)                                  # torch.float32 (3, out_h, out_w)

The output is channels-first uint8, the layout models and ``normalize`` take. Order of
operations (as the release): crop + resize (bicubic, antialias) -> flip -> colour jitter in
the drawn order -> grayscale -> Gaussian blur. Resize, flip and jitter are
torchvision.transforms.v2.functional on CPU uint8 tensors, which is deterministic: rendering
the same parameters twice, in any process or thread count, gives identical bytes on one
machine. Jitter ops whose factor is the identity are skipped (a hue shift of 0 through HSV
is not exactly the identity on uint8).

The blur is :func:`gaussian_blur`, not torchvision's: same kernel (torchvision's 1-D
Gaussian), same reflect padding, one rounding at the end, but separable and written as
shifted weighted sums, ~10x faster on CPU (torchvision runs a dense k x k depthwise conv,
which dominated replay cost). It differs from torchvision by at most 1 grey level on a few
pixels in 100k (tested); elementwise ops only, so no thread-count dependence.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as NF
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from dpal_cache.views.params import ViewParams

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Decoded RGB uint8 (H, W, 3), numpy or torch, -> torch uint8 (3, H, W), no copy."""
    t = torch.from_numpy(image) if isinstance(image, np.ndarray) else image
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {tuple(t.shape)} {t.dtype}")
    return t.permute(2, 0, 1)


def _jitter(x: torch.Tensor, p: ViewParams) -> torch.Tensor:
    for op in p.order:
        if op == 0 and p.brightness != 1.0:
            x = TF.adjust_brightness(x, p.brightness)
        elif op == 1 and p.contrast != 1.0:
            x = TF.adjust_contrast(x, p.contrast)
        elif op == 2 and p.saturation != 1.0:
            x = TF.adjust_saturation(x, p.saturation)
        elif op == 3 and p.hue != 0.0:
            x = TF.adjust_hue(x, p.hue)
    return x


def gaussian_kernel1d(kernel: int, sigma: float) -> torch.Tensor:
    """torchvision's 1-D Gaussian: taps at integer offsets, exp(-t^2 / (2 sigma^2)), summing to 1."""
    lim = (kernel - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel, dtype=torch.float32)
    return torch.softmax(x.div(sigma).pow(2).neg(), dim=0)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of uint8 (C, H, W) with reflect padding -> uint8 (C, H, W)."""
    c, h, w = x.shape
    r = kernel // 2
    if r >= min(h, w):
        raise ValueError(f"blur kernel {kernel} is too large for a {h}x{w} image (reflect padding)")
    taps = gaussian_kernel1d(kernel, sigma).tolist()
    padded = NF.pad(x.to(torch.float32).unsqueeze(0), [r, r, r, r], mode="reflect")[0]  # (C, H+2r, W+2r)
    rows = padded[:, :, 0:w] * taps[0]  # (C, H+2r, W): horizontal pass
    for i in range(1, kernel):
        rows.add_(padded[:, :, i : i + w], alpha=taps[i])
    out = rows[:, 0:h] * taps[0]  # (C, H, W): vertical pass
    for i in range(1, kernel):
        out.add_(rows[:, i : i + h], alpha=taps[i])
    return out.round_().clamp_(0, 255).to(torch.uint8)


def render_view(image: np.ndarray | torch.Tensor, params: ViewParams | np.ndarray) -> torch.Tensor:
    """Render one view.

    Args:
        image: the decoded source, RGB uint8 (H, W, 3); must have the size the params were drawn for.
        params: a ViewParams or its stored vector.

    Returns:
        torch.uint8 (3, out_h, out_w), contiguous.
    """
    p = params if isinstance(params, ViewParams) else ViewParams.from_vector(params)
    src = to_chw(image)  # (3, H, W)
    if tuple(src.shape[1:]) != p.img_size:
        raise ValueError(f"view was drawn for a {p.img_size} image, got {tuple(src.shape[1:])}")
    top, left, h, w = p.box
    crop = src[:, top : top + h, left : left + w].contiguous()  # (3, h, w)
    x = TF.resize(crop, list(p.out_size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    if p.flip:
        x = TF.horizontal_flip(x)
    if p.jitter:
        x = _jitter(x, p)
    if p.grayscale:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if p.blur:
        x = gaussian_blur(x, p.kernel, p.sigma)
    return x.contiguous()  # (3, out_h, out_w) uint8


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, *size), bicubic with antialias (the one resampling rule here)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return TF.resize(x, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True).contiguous()


def normalize(
    x: torch.Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 (..., 3, H, W): scaled to [0, 1], then (x - mean) / std.

    ImageNet statistics by default; pass the teacher's own when it was trained with others.
    """
    if x.dtype != torch.uint8:
        raise ValueError(f"normalize takes rendered uint8 views, got {x.dtype}")
    y = x.to(torch.float32) / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (y - m) / s
