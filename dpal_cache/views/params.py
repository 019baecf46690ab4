"""View parameters as pure functions of (seed, stream, image index, view index).

Every random number of a view comes from a counter-based generator keyed by integers only:
``SeedSequence([seed, stream, index, a, b])`` hashes the key into a 128-bit Philox key, and
the raw 64-bit outputs become uniforms by our own fixed rule (top 53 bits). Nothing depends
on process, worker count, call order or global RNG state, so stage one (extract) and stage
two (train) draw identical parameters anywhere. Image size enters only to turn the drawn
crop scale/ratio into a pixel box, exactly as torchvision's RandomResizedCrop does.

    p = global_view_params(cfg.global_view, seed=0, index=17, view=1, size=(384, 160))
    vec = p.to_vector()                      # float64 (PARAM_LEN,), store it per view
    assert ViewParams.from_vector(vec) == p  # replay renders the same pixels

Continuous values are rounded to float32 when drawn, so a vector stored as float32 or
float64 replays exactly. Every integer slot is < 2**24, hence exact in float32 too.

Parameter vector layout (``PARAM_LEN`` = 24 slots, float64):

    slot  name        meaning
    0     version     layout version, currently 1
    1     img_h       height of the decoded source image the box refers to
    2     img_w       width of the decoded source image
    3     top         crop box top row (pixels of the source)
    4     left        crop box left column
    5     crop_h      crop box height
    6     crop_w      crop box width
    7     out_h       rendered height (the crop is resized to out_h x out_w, bicubic, antialias)
    8     out_w       rendered width
    9     flip        1: horizontal flip after resizing
    10    jitter      1: colour jitter applied (slots 11-18 used), 0: skipped
    11    brightness  brightness factor (1 = unchanged)
    12    contrast    contrast factor (1 = unchanged)
    13    saturation  saturation factor (1 = unchanged)
    14    hue         hue shift in [-0.5, 0.5] (0 = unchanged)
    15-18 order       jitter ops in application order: 0 brightness, 1 contrast, 2 saturation, 3 hue
    19    grayscale   1: converted to 3-channel grayscale after jitter
    20    blur        1: Gaussian blur applied last
    21    sigma       blur sigma in output pixels (0 when no blur)
    22    kernel      blur kernel size, odd (0 when no blur)
    23    reserved    0

Streams (second key integer): 1 global view ``(index, view, 0)``, 2 local crop
``(index, epoch, crop)``, 3 crowd recipe ``(index, crowd, part)``, 4 crowd local crop
``(index, crowd, 0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dpal_cache.streams import STREAM_CROWD, STREAM_CROWD_LOCAL, STREAM_GLOBAL, STREAM_LOCAL  # noqa: F401
from dpal_cache.views.config import GlobalViewConfig, ViewAugConfig, ViewsConfig

LAYOUT_VERSION = 1
PARAM_LEN = 24
SLOTS = (
    "version", "img_h", "img_w", "top", "left", "crop_h", "crop_w", "out_h", "out_w", "flip",
    "jitter", "brightness", "contrast", "saturation", "hue", "order0", "order1", "order2", "order3",
    "grayscale", "blur", "sigma", "kernel", "reserved",
)  # fmt: skip
assert len(SLOTS) == PARAM_LEN


# Uniforms one view consumes: 10 box tries x (scale, ratio), box position (2), then flip, jitter,
# 4 factors, 4 order keys, grayscale, blur, sigma (13). Fixed, so no draw depends on a branch taken.
RRC_ATTEMPTS = 10
VIEW_DRAWS = 2 * RRC_ATTEMPTS + 2 + 13
IDENTITY_ORDER = (0, 1, 2, 3)


def uniforms(seed: int, stream: int, index: int, a: int, b: int, n: int) -> np.ndarray:
    """``n`` uniforms in [0, 1) (float64) keyed by five non-negative integers; a pure function."""
    ints = [int(seed), int(stream), int(index), int(a), int(b)]
    if min(ints) < 0:
        raise ValueError(f"random keys are non-negative integers, got (seed, stream, index, a, b) = {ints}")
    key = np.random.SeedSequence(ints).generate_state(2, np.uint64)
    raw = np.random.Philox(key=key).random_raw(n)  # (n,) uint64
    # our own bits-to-float rule, so numpy's Generator method internals never matter
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def f32(x: float) -> float:
    """Round to the nearest float32, kept as a Python float: what is stored is what is rendered."""
    return float(np.float32(x))


def blur_kernel(sigma: float, out_size: tuple[int, int]) -> int:
    """Odd kernel covering +-3 sigma, capped so reflect padding stays smaller than the view."""
    k = 2 * math.ceil(3.0 * sigma) + 1
    cap = 2 * ((min(out_size) - 1) // 2) + 1
    return max(3, min(k, cap))


@dataclass(frozen=True)
class ViewParams:
    """Everything needed to render one view from its decoded source image (see module table)."""

    img_size: tuple[int, int]  # (H, W) of the source
    box: tuple[int, int, int, int]  # top, left, height, width in the source
    out_size: tuple[int, int]  # (H, W) of the rendered view
    flip: bool = False
    jitter: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    order: tuple[int, int, int, int] = IDENTITY_ORDER
    grayscale: bool = False
    blur: bool = False
    sigma: float = 0.0
    kernel: int = 0

    def to_vector(self) -> np.ndarray:
        """The stored form: float64 (PARAM_LEN,)."""
        v = np.zeros(PARAM_LEN, dtype=np.float64)
        v[0] = LAYOUT_VERSION
        v[1:3] = self.img_size
        v[3:7] = self.box
        v[7:9] = self.out_size
        v[9] = self.flip
        v[10] = self.jitter
        v[11:15] = (self.brightness, self.contrast, self.saturation, self.hue)
        v[15:19] = self.order
        v[19] = self.grayscale
        v[20] = self.blur
        v[21] = self.sigma
        v[22] = self.kernel
        return v

    @classmethod
    def from_vector(cls, vec: np.ndarray) -> ViewParams:
        """Inverse of :meth:`to_vector`; accepts float32 or float64 and validates the layout."""
        v = np.asarray(vec, dtype=np.float64)
        if v.shape != (PARAM_LEN,):
            raise ValueError(f"view parameter vector must have shape ({PARAM_LEN},), got {v.shape}")
        if v[0] != LAYOUT_VERSION:
            raise ValueError(f"view parameter layout version {v[0]} is not {LAYOUT_VERSION}")
        ints = np.r_[v[1:11], v[15:21], v[22]]
        if not np.all(ints == np.round(ints)) or np.any(ints < 0):
            raise ValueError("view parameter vector has non-integer or negative values in integer slots")
        if np.any(v[[9, 10, 19, 20]] > 1):
            raise ValueError("view parameter vector has a flag (flip, jitter, grayscale, blur) other than 0/1")
        if v[20] and (v[21] <= 0 or v[22] % 2 != 1):
            raise ValueError(f"blur needs sigma > 0 and an odd kernel, got sigma {v[21]}, kernel {v[22]}")
        order = tuple(int(x) for x in v[15:19])
        if sorted(order) != [0, 1, 2, 3]:
            raise ValueError(f"jitter order {order} is not a permutation of 0..3")
        top, left, h, w = (int(x) for x in v[3:7])
        img_h, img_w = int(v[1]), int(v[2])
        if h < 1 or w < 1 or top + h > img_h or left + w > img_w:
            raise ValueError(f"crop box {(top, left, h, w)} does not fit a {img_h}x{img_w} image")
        return cls(
            img_size=(img_h, img_w),
            box=(top, left, h, w),
            out_size=(int(v[7]), int(v[8])),
            flip=bool(v[9]),
            jitter=bool(v[10]),
            brightness=float(v[11]),
            contrast=float(v[12]),
            saturation=float(v[13]),
            hue=float(v[14]),
            order=order,  # type: ignore[arg-type]
            grayscale=bool(v[19]),
            blur=bool(v[20]),
            sigma=float(v[21]),
            kernel=int(v[22]),
        )


def resolve_box(
    u: np.ndarray, img_size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box from 2 * RRC_ATTEMPTS + 2 uniforms: (top, left, height, width).

    Same rule as torchvision: up to 10 tries of (area scale, log-uniform ratio) that must fit
    the image, else a centred crop at the nearest allowed ratio.
    """
    img_h, img_w = img_size
    area = img_h * img_w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(RRC_ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * k + 1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= img_w and 0 < h <= img_h:
            top = int(u[2 * RRC_ATTEMPTS] * (img_h - h + 1))
            left = int(u[2 * RRC_ATTEMPTS + 1] * (img_w - w + 1))
            return top, left, h, w
    in_ratio = img_w / img_h
    if in_ratio < ratio[0]:
        w, h = img_w, int(round(img_w / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = img_h, int(round(img_h * ratio[1]))
    else:
        h, w = img_h, img_w
    h, w = max(1, min(h, img_h)), max(1, min(w, img_w))
    return (img_h - h) // 2, (img_w - w) // 2, h, w


def _factor(strength: float, u: float) -> float:
    """A jitter factor uniform in [max(0, 1 - strength), 1 + strength], as torchvision's ColorJitter."""
    lo = max(0.0, 1.0 - strength)
    return f32(lo + (1.0 + strength - lo) * u)


def draw_view(aug: ViewAugConfig, img_size: tuple[int, int], u: np.ndarray) -> ViewParams:
    """Map VIEW_DRAWS uniforms to the parameters of one view of an ``img_size`` (H, W) image."""
    if len(u) < VIEW_DRAWS:
        raise ValueError(f"a view needs {VIEW_DRAWS} uniforms, got {len(u)}")
    if img_size[0] < 1 or img_size[1] < 1:
        raise ValueError(f"image size must be positive, got {img_size}")
    i = 2 * RRC_ATTEMPTS + 2
    box = resolve_box(u[:i], img_size, aug.scale, aug.ratio)
    flip = bool(u[i] < aug.flip_p)
    jitter = bool(u[i + 1] < aug.jitter_p)
    factors = (
        _factor(aug.brightness, u[i + 2]),
        _factor(aug.contrast, u[i + 3]),
        _factor(aug.saturation, u[i + 4]),
        f32(-aug.hue + 2 * aug.hue * u[i + 5]),
    )
    # a random permutation from 4 uniform sort keys: fixed draw count, no shuffle algorithm to pin
    order = tuple(int(k) for k in np.argsort(u[i + 6 : i + 10], kind="stable"))
    grayscale = bool(u[i + 10] < aug.grayscale_p)
    blur = bool(u[i + 11] < aug.blur_p)
    sigma = f32(aug.blur_sigma[0] + (aug.blur_sigma[1] - aug.blur_sigma[0]) * u[i + 12]) if blur else 0.0
    if not jitter:
        factors, order = (1.0, 1.0, 1.0, 0.0), IDENTITY_ORDER
    return ViewParams(
        img_size=(int(img_size[0]), int(img_size[1])),
        box=box,
        out_size=aug.size,
        flip=flip,
        jitter=jitter,
        brightness=factors[0],
        contrast=factors[1],
        saturation=factors[2],
        hue=factors[3],
        order=order,  # type: ignore[arg-type]
        grayscale=grayscale,
        blur=blur,
        sigma=sigma,
        kernel=blur_kernel(sigma, aug.size) if blur else 0,
    )


def global_view_params(
    cfg: GlobalViewConfig, seed: int, index: int, view: int, img_size: tuple[int, int]
) -> ViewParams:
    """Parameters of global view ``view`` of image ``index`` (source size ``img_size`` = (H, W))."""
    return draw_view(cfg, img_size, uniforms(seed, STREAM_GLOBAL, index, view, 0, VIEW_DRAWS))


def image_view_params(cfg: ViewsConfig, index: int, img_size: tuple[int, int]) -> np.ndarray:
    """All cached global views of one image as stored vectors: float64 (views_per_image, PARAM_LEN)."""
    return np.stack(
        [
            global_view_params(cfg.global_view, cfg.seed, index, v, img_size).to_vector()
            for v in range(cfg.views_per_image)
        ]
    )


def full_frame(img_size: tuple[int, int], out_size: tuple[int, int], flip: bool = False) -> ViewParams:
    """The whole image resized to ``out_size``, optionally flipped, nothing else (crowd pastes)."""
    return ViewParams(img_size=img_size, box=(0, 0, img_size[0], img_size[1]), out_size=out_size, flip=flip)

