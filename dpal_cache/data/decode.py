"""The one image decoder every stage uses: encoded bytes -> RGB uint8 (H, W, 3).

Scan, extract and train must see identical pixels, so there is exactly one decode path:
Pillow opens the bytes, EXIF orientation is applied, and every mode is brought to 8-bit RGB
by fixed rules (below). Anything that cannot be decoded raises :class:`ImageDecodeError`
with a machine-readable ``reason`` (one of :data:`DECODE_REASONS`) that the manifest records.

Mode rules:
- ``L``/``1``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV``: Pillow's own conversion to RGB.
- alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency): composited over a constant grey
  ``alpha_background`` (default 0 = black), never silently dropped.
- 16/32-bit integer (``I;16*``, ``I``): scaled by the top 8 of 16 bits (value >> 8), clipped.
- 32-bit float (``F``): values in [0, 1] scaled by 255, else clipped to [0, 255].
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dpal_cache.config import check

DECODE_REASONS = ("empty", "not_an_image", "truncated", "too_many_pixels", "too_small", "bad_exif", "unsupported")


class ImageDecodeError(Exception):
    """The bytes are not a usable image. ``reason`` is one of DECODE_REASONS; ``detail`` says more."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in DECODE_REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):
        # the default rebuilds from args=(message,), which fails the reason check: errors raised in
        # pool workers must survive the trip back to the parent
        return type(self), (self.reason, self.detail)


@dataclass(frozen=True)
class DecodeConfig:
    """How bytes become pixels; saved with every store so all stages decode alike."""

    # Pillow's warning threshold; Pillow itself refuses anything over twice that, whatever we set
    max_pixels: int = 89_478_485
    alpha_background: int = 0  # grey level transparent pixels are composited over
    min_side: int = 1  # images with a smaller side are refused as too_small

    def __post_init__(self) -> None:
        check(0 < self.max_pixels <= 2 * 89_478_485, "max_pixels", "must be in 1..178956970 (Pillow's hard limit)")
        check(0 <= self.alpha_background <= 255, "alpha_background", "must be in 0..255")
        check(self.min_side >= 1, "min_side", "must be >= 1")


def _high_bit_depth_to_rgb(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        arr = arr * 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else arr
        arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    else:  # I;16, I;16B, I;16L, I (PNG 16-bit greyscale opens as I or I;16)
        arr = np.clip(arr.astype(np.int64) >> 8, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _to_rgb(img: Image.Image, background: int) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _high_bit_depth_to_rgb(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        base = Image.new("RGBA", img.size, (background, background, background, 255))
        img = Image.alpha_composite(base, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def decode_rgb(data: bytes, cfg: DecodeConfig = DecodeConfig()) -> np.ndarray:
    """Decode encoded image bytes to a C-contiguous RGB uint8 array of shape (H, W, 3).

    Raises:
        ImageDecodeError: with reason ``empty``, ``not_an_image``, ``truncated``,
            ``too_many_pixels``, ``too_small``, ``bad_exif`` or ``unsupported``.
    """
    if not data:
        raise ImageDecodeError("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below replaces Pillow's warning threshold
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not_an_image", f"unrecognised format, first bytes {bytes(data[:8])!r}") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_many_pixels", str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError("truncated", f"header: {exc}") from None
    with img:
        width, height = img.size
        if width * height > cfg.max_pixels:
            raise ImageDecodeError("too_many_pixels", f"{width}x{height} exceeds max_pixels={cfg.max_pixels}")
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageDecodeError("truncated", str(exc)) from None
        except Exception as exc:  # Pillow raises many types on odd files; keep the reason explicit
            raise ImageDecodeError("unsupported", f"{type(exc).__name__}: {exc}") from None
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception as exc:
            raise ImageDecodeError("bad_exif", f"{type(exc).__name__}: {exc}") from None
        try:
            arr = _to_rgb(oriented, cfg.alpha_background)
        except (OSError, ValueError) as exc:
            raise ImageDecodeError("unsupported", f"mode {oriented.mode}: {exc}") from None
    if min(arr.shape[0], arr.shape[1]) < cfg.min_side:
        raise ImageDecodeError("too_small", f"{arr.shape[1]}x{arr.shape[0]} has a side below min_side={cfg.min_side}")
    return arr


def decode_image(data: bytes, cfg: DecodeConfig = DecodeConfig()):
    """Decode to a torch uint8 tensor (H, W, 3); same pixels as :func:`decode_rgb`."""
    import torch  # local: scan workers decode without paying torch's import

    return torch.from_numpy(decode_rgb(data, cfg))
