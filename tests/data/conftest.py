"""Shared builders for the data tests: small generated images as bytes, and LMDBs holding them."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

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


def _make_lmdb(db_dir: Path, items: dict[bytes, bytes]) -> Path:
    import lmdb

    db_dir.mkdir(parents=True, exist_ok=True)
    with lmdb.open(str(db_dir), map_size=1 << 24) as env, env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    return db_dir


@pytest.fixture()
def make_lmdb() -> Callable[[Path, dict[bytes, bytes]], Path]:
    """``make_lmdb(folder, {key_bytes: value_bytes}) -> folder``: a LUPerson-style LMDB (values raw image bytes)."""
    pytest.importorskip("lmdb")
    return _make_lmdb
