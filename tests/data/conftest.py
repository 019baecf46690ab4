"""Shared builders for the data tests: small generated images as bytes (LMDBs: tests/conftest.py)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image


def _encode(img: Image.Image | np.ndarray, fmt: str = "PNG", **save_kw) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kw)
    return buf.getvalue()


def _noise_jpeg(height: int = 48, width: int = 32, seed: int = 0, **save_kw) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return _encode(rgb, "JPEG", **save_kw)


@pytest.fixture()
def encode() -> Callable[..., bytes]:
    """``encode(image_or_array, fmt="PNG", **save_kw) -> bytes``."""
    return _encode


@pytest.fixture()
def noise_jpeg() -> Callable[..., bytes]:
    """``noise_jpeg(height=48, width=32, seed=0) -> bytes``: a JPEG of random pixels (hard to compress, so
    cutting it in half really truncates the scan data)."""
    return _noise_jpeg


