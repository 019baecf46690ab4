"""Precision codecs for cached teacher outputs, and the error measures that judge them.

Tokens (``views/tokens``):
- ``fp16``: IEEE half. Lossless codecs barely shrink ViT tokens, so this is the default.
- ``int8``: symmetric per-channel scales fitted once per store in the calibration pass
  (``scale_c = clip_c / 127``), one set for class tokens and one for patch tokens; each clip is
  the fraction of the channel's absmax that minimises the squared error on the calibration
  tokens. Per-token scales are bad (a few outlier channels set them).

Attention maps (``views/attn_cls``, ``crowds/attn``; rows are probability distributions):
- ``fp16``: IEEE half.
- ``log8``: uint8 on a log scale: 0 encodes "below ``LOG8_EPS``", codes 1..255 cover
  [LOG8_EPS, 1] evenly in log(p). Decoding renormalises each row to sum 1.

    q = encode_log8(attn); back = decode_log8(q)   # KL(attn || back) per row ~ 2e-4

Encoders are numpy (extraction encodes on the host); decoders are torch on any device (training decodes
on the device the model runs on, from the stored dtype: fewer bytes cross to it).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

TOKEN_PRECISIONS = ("fp16", "int8")
MAP_PRECISIONS = ("fp16", "log8")

LOG8_EPS = 1e-8
_LOG8_SPAN = -np.log(LOG8_EPS)  # log(1) - log(eps)


def int8_scales(clip: np.ndarray) -> np.ndarray:
    """Per-channel scales (float32) from per-channel clipping magnitudes (e.g. calibration absmax)."""
    clip = np.asarray(clip, dtype=np.float32)
    return np.where(clip > 0, clip / 127.0, np.float32(1.0)).astype(np.float32)


def fit_int8_scales(x: np.ndarray, max_rows: int = 16384, ratios: int = 24) -> np.ndarray:
    """Per-channel int8 scales (D,) for samples ``x`` (M, D): the clip at a fraction of each channel's
    absmax (searched on a grid from 0.25 to 1) with the lowest squared round-trip error."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, np.shape(x)[-1])
    if len(x) > max_rows:  # an even subsample keeps the search fast and deterministic
        x = x[np.linspace(0, len(x) - 1, max_rows).astype(np.int64)]
    absmax = np.abs(x).max(axis=0)
    best_err = np.full(x.shape[1], np.inf)
    best = int8_scales(absmax)
    for r in np.linspace(0.25, 1.0, ratios):
        scales = int8_scales(absmax * r)
        err = ((encode_int8(x, scales).astype(np.float32) * scales - x) ** 2).sum(axis=0)  # round trip, in numpy
        better = err < best_err
        best_err[better] = err[better]
        best[better] = scales[better]
    return best


def encode_int8(x: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(..., D) float -> int8 with per-channel ``scales`` (D,); values beyond the scale clip."""
    q = np.rint(np.asarray(x, dtype=np.float32) / scales)
    return np.clip(q, -127, 127).astype(np.int8)


def decode_int8(q, scales) -> torch.Tensor:
    """int8 codes (numpy or torch, any device) -> float32 ``q * scales``: one IEEE multiply, the same bits on
    every device."""
    q = torch.as_tensor(q)
    return q.to(torch.float32) * torch.as_tensor(scales, dtype=torch.float32, device=q.device)


def encode_log8(p: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 log codes (0 = below LOG8_EPS)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        code = 1.0 + 254.0 * (np.log(np.maximum(p, LOG8_EPS)) + _LOG8_SPAN) / _LOG8_SPAN
    code = np.where(p < LOG8_EPS, 0.0, np.clip(np.rint(code), 1, 255))
    return code.astype(np.uint8)


# the probability of each code: a gather decodes (the same values on every device); code 0 is 0
LOG8_VALUES = np.where(np.arange(256) == 0, 0.0, np.exp((np.arange(256) - 1.0) / 254.0 * _LOG8_SPAN - _LOG8_SPAN))


@functools.lru_cache(maxsize=8)
def _log8_table(device: torch.device) -> torch.Tensor:
    """``LOG8_VALUES`` on ``device``, copied there once (decoding runs twice per training batch)."""
    return torch.as_tensor(LOG8_VALUES, device=device)


def decode_log8(code, renormalise: bool = True) -> torch.Tensor:
    """uint8 log codes (numpy or torch, any device) -> float32 probabilities; rows (last axis) renormalised
    to sum 1 (in float64)."""
    code = torch.as_tensor(code)
    p = _log8_table(code.device)[code.long()]
    if renormalise:
        p = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    return p.to(torch.float32)


# float32 rounding noise of a teacher output is relative to its row's scale (a token's largest channel,
# an attention row's largest probability), not to each value: fp16 resolves values near zero far more
# finely than that noise, so a unit of fp16 is never counted finer than its spacing at this fraction of
# the row's largest magnitude. Measured on the test teacher (random ViT-Ti, 12 blocks): float32 and
# float64 outputs differ by <= 1.8e-6 of the row's largest value, so two float32 computations by at
# most twice that; fp16's spacing at 2**-6 of the row's largest value is >= 7.6e-6 of it.
FP16_ROW_FLOOR = 2.0**-6


def units_apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-value distance between two encodings of the same outputs, in units of their stored precision.

    int8 tokens and log8 maps: the difference of the codes. fp16: the difference over fp16's spacing at
    the larger magnitude of the two, that magnitude taken at least ``FP16_ROW_FLOOR`` times the row's
    largest (rows along the last axis). Two float32 computations of an output that round differently
    (another batch shape, another thread count) give encodings at most 1 apart.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        raise ValueError(f"cannot compare {a.dtype}{a.shape} with {b.dtype}{b.shape}")
    if a.dtype.kind in "iu":
        return np.abs(a.astype(np.int64) - b.astype(np.int64)).astype(np.float64)
    if a.dtype != np.float16:
        raise ValueError(f"no stored precision is {a.dtype}")
    mag = np.maximum(np.abs(a), np.abs(b)).astype(np.float32)
    floor = FP16_ROW_FLOOR * mag.max(axis=-1, keepdims=True)
    unit = np.spacing(np.maximum(mag, floor).astype(np.float16)).astype(np.float64)
    return np.abs(a.astype(np.float64) - b.astype(np.float64)) / unit


def relative_l2(ref: np.ndarray, approx: np.ndarray) -> float:
    """||ref - approx|| / ||ref|| over the whole array (float64 accumulation).

    Sums of squares, not ``np.linalg.norm``: its BLAS dot splits the sum over threads, so the stored
    measurement would depend on the process's BLAS thread count (dpal_cache/numerics.py).
    """
    ref = np.asarray(ref, dtype=np.float64)
    diff = ref - np.asarray(approx, dtype=np.float64)
    return float(np.sqrt(np.square(diff).sum()) / max(np.sqrt(np.square(ref).sum()), 1e-30))


def kl_per_row(ref: np.ndarray, approx: np.ndarray) -> float:
    """Mean over rows of KL(ref || approx), rows along the last axis (nats)."""
    p = np.asarray(ref, dtype=np.float64)
    q = np.asarray(approx, dtype=np.float64)
    p = p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-30)
    q = q / np.maximum(q.sum(axis=-1, keepdims=True), 1e-30)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(np.maximum(q, 1e-30))), 0.0)
    return float(terms.sum(axis=-1).mean())
