"""The pixel operations of a view, on batches of uint8 images with one parameter per image, on any device.

Both renderers use these: the per-sample one (``render.render_view``, a batch of one) and the batched one
(``batched.BatchRenderer``), so there is one definition of each operation. The colour operations are written
as separate IEEE operations (no multiply-adds with a scalar ``alpha``, which a CPU vectorises into a fused
multiply-add and a GPU may not), so a batch of one and a batch of many give the same bytes on a CPU. The blur
accumulates with ``addcmul_``, which CUDA fuses: CPU and CUDA may differ by a grey level or two (measured
bound in ``batched.py``).

Semantics follow torchvision's uint8 colour transforms: brightness scales, contrast blends with the mean
grey, saturation with the grey image, hue rotates in HSV; results are clamped to [0, 255] and truncated.
Grey is ``0.2989 R + 0.587 G + 0.114 B``. The blur is a separable Gaussian with torchvision's 1-D kernel and
reflect padding, rounded once at the end.

    x = jitter(x, factors, order, active)     # x (B, 3, H, W) uint8; factors (B, 4); order (B, 4) long
    x = gaussian_blur(x, kernels, sigmas, active)
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as NF

GREY = (0.2989, 0.587, 0.114)
IDENTITY = (1.0, 1.0, 1.0, 0.0)  # the factor of each jitter op that leaves an image as it is


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) factors -> (B, 1, 1, 1) float32 on the images' device."""
    return values.to(device=like.device, dtype=torch.float32).view(-1, 1, 1, 1)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float images in [0, 255] after clamping -> uint8 by truncation (torchvision's rule for these ops)."""
    return x.clamp_(0, 255).to(torch.uint8)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 1, H, W) float32 grey, floored (the grey torchvision blends with)."""
    f = x.to(torch.float32)
    r, g, b = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return (r * GREY[0] + g * GREY[1] + b * GREY[2]).floor_()


def blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """``a * ratio + b * (1 - ratio)`` of uint8 ``a`` and float ``b``, per image ``ratio`` (B,), -> uint8."""
    r = _per_image(ratio, a)
    return _to_uint8(a.to(torch.float32) * r + b * (1.0 - r))


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _to_uint8(x.to(torch.float32) * _per_image(factor, x))


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # float32 sum: exact (order-free) while the grey sum stays below 2**24, i.e. up to ~65.8k pixels (256x256
    # crowds just fit); a larger image sums with rounding that may depend on the batch layout
    mean = grey(x).sum(dim=(-3, -2, -1), keepdim=True) / float(x.shape[-2] * x.shape[-1])
    return blend(x, mean, factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, grey(x), factor)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """float RGB in [0, 1] (B, 3, H, W) -> HSV, as PIL and torchvision define it."""
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    flat = maxc == minc
    span = maxc - minc
    s = span / torch.where(flat, torch.ones_like(maxc), maxc)
    span = torch.where(flat, torch.ones_like(span), span)
    rc, gc, bc = (maxc - r) / span, (maxc - g) / span, (maxc - b) / span
    is_r, is_g = maxc == r, (maxc == g) & (maxc != r)
    is_b = ~is_r & ~is_g
    h = (bc - gc) * is_r + (rc + 2.0 - bc) * is_g + (gc + 4.0 - rc) * is_b
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=1)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int64).remainder(6)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # which of v, p, q, t each channel takes in each sextant of the hue circle (0..5)
    in_ = [i == k for k in range(6)]
    r = torch.where(in_[0] | in_[5], v, torch.where(in_[1], q, torch.where(in_[4], t, p)))
    g = torch.where(in_[1] | in_[2], v, torch.where(in_[0], t, torch.where(in_[3], q, p)))
    b = torch.where(in_[3] | in_[4], v, torch.where(in_[2], t, torch.where(in_[5], q, p)))
    return torch.stack((r, g, b), dim=1)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` (B,) in [-0.5, 0.5] turns."""
    hsv = _rgb_to_hsv(x.to(torch.float32) / 255.0)
    h = torch.remainder(hsv[:, 0:1] + _per_image(shift, x), 1.0)
    rgb = _hsv_to_rgb(torch.cat([h, hsv[:, 1:]], dim=1))
    return (rgb * (255.0 + 1.0 - 1e-3)).to(torch.uint8)  # torchvision's float -> uint8 rule


OPS = (brightness, contrast, saturation, hue)


def jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Colour jitter of the ``active`` images: brightness, contrast, saturation and hue factors (B, 4), applied
    in each image's own ``order`` (B, 4) of op indices; an op whose factor is its identity is skipped (a hue
    shift of 0 through HSV is not exactly the identity on uint8)."""
    identity = torch.tensor(IDENTITY, device=factors.device, dtype=factors.dtype)
    owned = False  # x is the caller's until the first partial op copies it; later ones write in place
    for stage in range(4):
        for op, fn in enumerate(OPS):
            pick = active & (order[:, stage] == op) & (factors[:, op] != identity[op])
            if not bool(pick.any()):
                continue
            if bool(pick.all()):
                x, owned = fn(x, factors[:, op]), True
                continue
            if not owned:
                x, owned = x.clone(), True
            index = pick.nonzero().flatten()
            x.index_copy_(0, index, fn(x.index_select(0, index), factors.index_select(0, index)[:, op]))
    return x


def _apply(x: torch.Tensor, pick: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` on the picked images of the batch (the whole batch without indexing when all are picked)."""
    if bool(pick.all()):
        return fn(x)
    if not bool(pick.any()):
        return x
    index = pick.nonzero().flatten()
    return x.index_copy(0, index, fn(x.index_select(0, index)))


def grayscale(x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """3-channel grey for the ``active`` images (truncated to uint8, as torchvision)."""
    return _apply(x, active.to(x.device), lambda part: grey_uint8(part).expand(-1, 3, -1, -1).contiguous())


def grey_uint8(x: torch.Tensor) -> torch.Tensor:
    f = x.to(torch.float32)
    return (f[:, 0:1] * GREY[0] + f[:, 1:2] * GREY[1] + f[:, 2:3] * GREY[2]).to(torch.uint8)


def flip(x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Mirror the ``active`` images left to right."""
    return _apply(x, active.to(x.device), lambda part: part.flip(-1))


def gaussian_kernel1d(kernel: int, sigma: float) -> torch.Tensor:
    """torchvision's 1-D Gaussian: taps at integer offsets, exp(-t^2 / (2 sigma^2)), summing to 1."""
    lim = (kernel - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, steps=kernel, dtype=torch.float32)
    return torch.softmax(t.div(sigma).pow(2).neg(), dim=0)


def gaussian_blur(x: torch.Tensor, kernels: list[int], sigmas: list[float], active: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of the ``active`` images, each with its own odd kernel size and sigma; reflect
    padding; one rounding at the end. (B, 3, H, W) uint8 -> uint8. Images of one kernel size are blurred
    together (each pays for its own kernel only)."""
    pick = torch.nonzero(active.to(x.device)).flatten().tolist()
    if not pick:
        return x
    h, w = x.shape[-2:]
    if max(kernels[i] for i in pick) // 2 >= min(h, w):
        raise ValueError(f"blur kernel {max(kernels[i] for i in pick)} is too large for a {h}x{w} image "
                         "(reflect padding)")
    groups: dict[int, list[int]] = {}
    for i in pick:
        groups.setdefault(kernels[i], []).append(i)
    if len(groups) == 1 and len(pick) == len(x):
        return _blur(x, kernels[0], [sigmas[i] for i in pick])
    x = x.clone()
    for kernel, members in groups.items():
        index = torch.tensor(members, device=x.device)
        x.index_copy_(0, index, _blur(x.index_select(0, index), kernel, [sigmas[i] for i in members]))
    return x


def _blur(x: torch.Tensor, kernel: int, sigmas: list[float]) -> torch.Tensor:
    """Blur every image of uint8 (n, 3, H, W) with a ``kernel``-tap Gaussian of its own sigma."""
    radius, h, w = kernel // 2, x.shape[-2], x.shape[-1]
    taps = torch.stack([gaussian_kernel1d(kernel, s) for s in sigmas]).to(x.device)
    taps = taps.view(len(sigmas), kernel, 1, 1, 1)
    padded = NF.pad(x.to(torch.float32), [radius] * 4, mode="reflect")  # (n, 3, H+2r, W+2r)
    rows = padded[..., 0:w] * taps[:, 0]  # horizontal pass: (n, 3, H + 2r, W)
    for j in range(1, kernel):
        rows.addcmul_(padded[..., j:j + w], taps[:, j])
    out = rows[:, :, 0:h] * taps[:, 0]  # vertical pass: (n, 3, H, W)
    for j in range(1, kernel):
        out.addcmul_(rows[:, :, j:j + h], taps[:, j])
    return out.round_().clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------- resampling


@functools.lru_cache(maxsize=256)  # dense (n_out, n_in) float64 matrices: a few hundred KB each
def aa_weights(n_in: int, n_out: int) -> tuple[torch.Tensor, int]:
    """Antialiased bicubic weights of one axis, ``n_in`` -> ``n_out`` pixels, as torch's uint8 resize uses them:
    whole numbers ``(n_out, n_in)`` (float64) and the power of two they are scaled by.

    The float weights are torch's own (its float64 antialiased bicubic interpolation of unit impulses); they are
    scaled to int16 with the largest precision that keeps every weight below 2**15, as torch's uint8 kernel does.
    """
    impulses = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, 1, n_in)
    w = NF.interpolate(impulses, size=(1, n_out), mode="bicubic", antialias=True, align_corners=False)
    w = w[:, 0, 0, :].T.contiguous()  # (n_out, n_in)
    top = float(w.abs().max())
    precision = 0
    while precision < 22 and int(0.5 + top * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = w * (1 << precision)
    return torch.where(w < 0, (scaled - 0.5).trunc(), (scaled + 0.5).trunc()), precision


def _resample_axis(x: torch.Tensor, sizes: list[int], outs: list[int]) -> torch.Tensor:
    """One antialiased bicubic pass along the last axis of float64 (B, C, H, W) holding whole numbers: image b
    uses its first ``sizes[b]`` columns and gets ``outs[b]`` (zero-padded to the widest); rounded and clamped
    to [0, 255] as torch's uint8 kernel rounds each pass."""
    n, width = len(sizes), max(outs)
    weights = torch.zeros((n, width, x.shape[-1]), dtype=torch.float64)
    shift = torch.zeros(n, dtype=torch.float64)
    for b, (n_in, n_out) in enumerate(zip(sizes, outs)):
        if n_in == n_out:  # torch leaves an axis of unchanged size alone
            weights[b, :n_out, :n_in] = torch.eye(n_in, dtype=torch.float64)
        else:
            w, p = aa_weights(n_in, n_out)
            weights[b, :n_out, :n_in] = w
            shift[b] = p
    weights, scale = weights.to(x.device), (2.0 ** shift).to(x.device).view(-1, 1, 1, 1)
    acc = x @ weights.transpose(1, 2).unsqueeze(1)  # (B, C, H, width): sums of whole numbers < 2**53, exact
    return torch.floor((acc + scale / 2) / scale).clamp_(0, 255)  # an unchanged axis: scale 1, acc whole


def resize_exact(crops: list[torch.Tensor], out_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Resize uint8 (3, h, w) crops (one device) to their ``out_sizes``, antialiased bicubic, in one batch: the
    same bytes as torch's CPU uint8 resize (horizontal pass, rounded to uint8, then vertical), exactly: the
    passes are matrix products of whole numbers in float64."""
    if not crops:
        return []
    hs, ws = [int(c.shape[1]) for c in crops], [int(c.shape[2]) for c in crops]
    x = torch.zeros((len(crops), 3, max(hs), max(ws)), dtype=torch.float64, device=crops[0].device)
    for b, c in enumerate(crops):
        x[b, :, :hs[b], :ws[b]] = c
    x = _resample_axis(x, ws, [o[1] for o in out_sizes])  # (B, 3, Hmax, Wout)
    x = _resample_axis(x.transpose(-1, -2), hs, [o[0] for o in out_sizes]).transpose(-1, -2)  # (B, 3, Hout, Wout)
    return [x[b, :, :oh, :ow].to(torch.uint8) for b, (oh, ow) in enumerate(out_sizes)]
