"""Sources for the device renderer: JPEGs travel as bytes only when a JPEG decoder alone gives decode_rgb's
pixels; everything else travels as pixels; decoding on the CPU gives decode_rgb's bytes."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from dpal_cache.data.decode import DecodeConfig, decode_rgb
from dpal_cache.data.device_decode import decode_sources, jpeg_size, pack_source


def _photo(h: int = 40, w: int = 24) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 6, xx * 10, (yy + xx) * 3], axis=-1).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_only_plain_jpegs_travel_as_bytes():
    rgb = Image.fromarray(_photo())
    plain = _encode(rgb, "JPEG")
    grey = _encode(rgb.convert("L"), "JPEG")
    exif = rgb.getexif()
    exif[0x0112] = 6  # rotated: Pillow's rules turn it, a bare JPEG decoder would not
    rotated = _encode(rgb, "JPEG", exif=exif)
    png, cmyk = _encode(rgb, "PNG"), _encode(rgb.convert("CMYK"), "JPEG")
    assert jpeg_size(plain) == (40, 24) and jpeg_size(grey) == (40, 24)
    assert jpeg_size(rotated) is None and jpeg_size(png) is None and jpeg_size(cmyk) is None
    assert jpeg_size(b"not an image") is None
    cfg = DecodeConfig()
    assert pack_source(plain, cfg, bytes_ok=True).ndim == 1
    assert pack_source(plain, cfg, bytes_ok=False).shape == (3, 40, 24)
    assert pack_source(plain, cfg, bytes_ok=True, size=(41, 24)).shape == (3, 40, 24)  # not the scanned size
    assert pack_source(rotated, cfg, bytes_ok=True).shape == (3, 24, 40)  # turned by decode_rgb


def test_cpu_decoding_gives_decode_rgbs_pixels():
    rgb = Image.fromarray(_photo(64, 32))
    files = [_encode(rgb, "JPEG", quality=q) for q in (60, 95)] + [_encode(rgb.convert("L"), "JPEG"),
                                                                  _encode(rgb, "PNG")]
    packed = [pack_source(f, DecodeConfig(), bytes_ok=True) for f in files]
    assert [p.ndim for p in packed] == [1, 1, 1, 3]
    for data, got in zip(files, decode_sources(packed, torch.device("cpu"))):
        want = torch.from_numpy(decode_rgb(data)).permute(2, 0, 1)
        assert got.shape == want.shape and torch.equal(got, want)
