"""Sources for a renderer on the accelerator: data workers read bytes, the device decodes them.

A data worker sends each image either as its encoded bytes (a 1-D uint8 tensor), when the device's JPEG
decoder gives it the pixels ``decode_rgb`` would (an RGB or grey JPEG without an EXIF rotation), or as
pixels decoded by ``decode_rgb`` on the CPU (every other image: PNG, CMYK, rotated, alpha...). On CUDA the
bytes are decoded in one batched call of torchvision's GPU JPEG decoder (nvJPEG); on the CPU by
torchvision's libjpeg decoder. Decoders round differently: nvJPEG's pixels may differ from Pillow's by a
few grey levels (the GPU run in docs/benchmarks.md measures it); the store records which decoder made its
views.

    packed = pack_source(data, decode_cfg, bytes_ok=True)     # in a data worker: bytes or (3, H, W) pixels
    images = decode_sources([packed, ...], torch.device("cuda"))  # uint8 (3, H, W) tensors on the device
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image

from dpal_cache.data.decode import DecodeConfig, ImageDecodeError, decode_rgb

EXIF_ORIENTATION = 0x0112


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(H, W) when a JPEG decoder alone gives ``decode_rgb``'s pixels for ``data`` (an RGB or grey JPEG, no EXIF
    rotation); None for anything that needs Pillow's rules (other formats and modes, rotations)."""
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
                return None
            return img.height, img.width
    except Exception:  # noqa: BLE001 - anything unreadable goes through decode_rgb, which says why
        return None


def pack_source(data: bytes, cfg: DecodeConfig, bytes_ok: bool, size: tuple[int, int] | None = None) -> torch.Tensor:
    """What a worker sends for one image: its bytes (1-D uint8) when ``bytes_ok`` and the device can decode them
    alike, else its pixels (3, H, W) uint8 from ``decode_rgb``. ``size``: the (H, W) the JPEG header must give
    for its bytes to be sent; otherwise the pixels are sent and the caller's size check reports the image as
    changed."""
    if bytes_ok:
        header = jpeg_size(data)
        if header is not None and (size is None or tuple(header) == tuple(size)):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    rgb = decode_rgb(data, cfg)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def decode_sources(packed: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """``pack_source`` results -> uint8 (3, H, W) on ``device``: bytes decoded there in one batch, pixels moved."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(packed)
    encoded = [i for i, p in enumerate(packed) if p.ndim == 1]
    if encoded:
        try:
            with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec; we use its nvJPEG binding
                warnings.simplefilter("ignore", DeprecationWarning)
                images = decode_jpeg([packed[i] for i in encoded], mode=ImageReadMode.RGB, device=device)
        except RuntimeError as exc:
            raise ImageDecodeError("unsupported", f"the {device.type} JPEG decoder failed: {exc}") from None
        for i, image in zip(encoded, images):
            out[i] = image
    for i, p in enumerate(packed):
        if p.ndim == 3:
            out[i] = p.to(device, non_blocking=True)
    return out  # type: ignore[return-value]
