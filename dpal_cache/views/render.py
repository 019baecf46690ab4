"""Render a view from decoded RGB uint8 pixels and its parameters; normalise separately.

    img = decode_rgb(source.read(i))                  # np.uint8 (H, W, 3)
    x = render_view(img, params)                      # torch.uint8 (3, out_h, out_w)
    x = normalize(x)                                  # torch.float32 (3, out_h, out_w)

The output is channels-first uint8, the layout models and ``normalize`` take. Order of
operations (as the release): crop + resize (bicubic, antialias) -> flip -> colour jitter in
the drawn order -> grayscale -> Gaussian blur. The resize is torchvision's uint8 resize on the
CPU; every later step is an operation of ``views/ops.py`` (``apply_params``). ``render_view`` is the
view-by-view path of the one renderer, ``batched.BatchRenderer``, for one image; its whole-batch path
emulates the uint8 resize exactly and runs the same operations. Rendering the same parameters twice,
in any process or thread count, gives identical bytes on one machine. Jitter ops whose factor is the
identity are skipped (a hue shift of 0 through HSV is not exactly the identity on uint8).
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from dpal_cache.normalization import IMAGENET_MEAN, IMAGENET_STD
from dpal_cache.views import ops
from dpal_cache.views.params import ViewParams


def to_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Decoded RGB uint8 (H, W, 3), numpy or torch, -> torch uint8 (3, H, W), no copy."""
    t = torch.from_numpy(image) if isinstance(image, np.ndarray) else image
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {tuple(t.shape)} {t.dtype}")
    return t.permute(2, 0, 1)


def apply_params(x: torch.Tensor, params: list[ViewParams]) -> torch.Tensor:
    """Everything after crop + resize, for a batch of views of one size: uint8 (B, 3, h, w) on any device."""
    device = x.device

    def flag(name: str) -> torch.Tensor:  # (B,) bool
        return torch.tensor([bool(getattr(p, name)) for p in params], device=device)

    x = ops.flip(x, flag("flip"))
    jitter = flag("jitter")
    if bool(jitter.any()):
        factors = torch.tensor([(p.brightness, p.contrast, p.saturation, p.hue) for p in params], dtype=torch.float64,
                               device=device)
        x = ops.jitter(x, factors, torch.tensor([p.order for p in params], device=device), jitter)
    x = ops.grayscale(x, flag("grayscale"))
    return ops.gaussian_blur(x, [p.kernel for p in params], [p.sigma for p in params], flag("blur"))


def render_view(image: np.ndarray | torch.Tensor, params: ViewParams | np.ndarray) -> torch.Tensor:
    """Render one view.

    Args:
        image: the decoded source, RGB uint8 (H, W, 3); must have the size the params were drawn for.
        params: a ViewParams or its stored vector.

    Returns:
        torch.uint8 (3, out_h, out_w), contiguous.
    """
    p = params if isinstance(params, ViewParams) else ViewParams.from_vector(params)
    return render_chw(to_chw(image), p)


def crop(source: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """The view's box of a uint8 (3, H, W) source (a view of it), after checking the source's size."""
    if tuple(source.shape[1:]) != p.img_size:
        raise ValueError(f"view was drawn for a {p.img_size} image, got {tuple(source.shape[1:])}")
    top, left, h, w = p.box
    return source[:, top : top + h, left : left + w]


def render_chw(source: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """One view of a uint8 (3, H, W) source on the CPU: crop, torch's uint8 resize, then ``apply_params``."""
    x = resize(crop(source, p).contiguous(), p.out_size)
    return apply_params(x[None], [p])[0].contiguous()  # (3, out_h, out_w) uint8


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
