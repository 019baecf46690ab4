"""From teacher outputs to stored rows and back: the store's encoders (numpy, on the host) and decoders
(torch, on any device), for every precision (``quant.py`` holds the per-value math).

    rows = encode_outputs(outputs, calib, layout)                 # TeacherStep outputs -> rows by array name
    tokens = decode_tokens(torch.from_numpy(rows["views/tokens"]), calib.token_scales)   # float32
    probs = decode_map(torch.from_numpy(rows["crowds/attn"]))      # float32 rows summing to 1

Extraction and online mode encode with ``encode_outputs``; training decodes with ``decode_targets`` on the
training device, so stored rows cross to it in their own (smaller) dtype.
"""

from __future__ import annotations

import numpy as np
import torch

from dpal_cache.store.calibration import Calibration, mask_score
from dpal_cache.store.layout import StoreLayout
from dpal_cache.store.quant import decode_int8, decode_log8, encode_int8, encode_log8, kl_per_row, relative_l2

# which stored array each relation target reads
RELATION_ARRAYS = {"attention": "crowds/attn", "gram": "crowds/gram"}
# the stored rows a training sample needs, by target name
TARGET_ARRAYS = {"t_tokens": "views/tokens", "t_attn_cls": "views/attn_cls", "t_mask_score": "views/mask_score"}


def encode_map(x: np.ndarray, precision: str) -> np.ndarray:
    """Attention maps (float32 rows summing to 1) -> stored dtype (fp16, or log8 uint8 codes)."""
    return encode_log8(x) if precision == "log8" else x.astype(np.float16)


def decode_map(stored) -> torch.Tensor:
    """Stored attention maps (fp16 or log8 uint8; numpy or torch, any device) -> float32 rows summing to 1."""
    stored = torch.as_tensor(stored)
    return decode_log8(stored) if stored.dtype == torch.uint8 else stored.to(torch.float32)


def encode_tokens(tokens: np.ndarray, precision: str, scales: np.ndarray) -> np.ndarray:
    """(N, 1 + L, D) float32 -> stored dtype; int8 uses ``scales`` (2, D): class row, patch row."""
    if precision != "int8":
        return tokens.astype(np.float16)
    return np.concatenate([encode_int8(tokens[:, :1], scales[0]), encode_int8(tokens[:, 1:], scales[1])], axis=1)


def decode_tokens(stored, scales) -> torch.Tensor:
    """Stored tokens (..., 1 + L, D) (fp16 or int8; numpy or torch, any device) -> float32."""
    stored = torch.as_tensor(stored)
    if stored.dtype != torch.int8:
        return stored.to(torch.float32)
    scales = torch.as_tensor(scales, device=stored.device)
    return torch.cat([decode_int8(stored[..., :1, :], scales[0]), decode_int8(stored[..., 1:, :], scales[1])], dim=-2)


def encode_outputs(out: dict[str, np.ndarray], calib: Calibration, layout: StoreLayout,
                   mask_at_extract: float | None = None) -> dict[str, np.ndarray]:
    """``TeacherStep`` outputs -> their stored rows by array name, at the layout's precisions: tokens
    (background patches zeroed with ``mask_at_extract``), class attention, mask score, and the crowd
    maps present in ``out``. Extraction and online mode both encode with this."""
    encoded = {}
    if "tokens" in out:
        tokens = out["tokens"]
        score = mask_score(tokens[:, 1:], calib)  # (rows, L)
        if mask_at_extract is not None:
            tokens = tokens.copy()
            tokens[:, 1:] *= (score > mask_at_extract)[..., None]
        encoded["views/tokens"] = encode_tokens(tokens, layout.token_precision, calib.token_scales)
        encoded["views/attn_cls"] = encode_map(out["attn_cls"], layout.map_precision)
        encoded["views/mask_score"] = score.astype(np.float16)
    for key, name in (("crowd_attn", "crowds/attn"), ("crowd_gram", "crowds/gram")):
        if key in out:
            encoded[name] = encode_map(out[key], layout.map_precision)
    return encoded


def as_targets(rows: dict[str, np.ndarray], relation: str) -> dict[str, torch.Tensor]:
    """Stored rows of a batch's samples (by array name) -> its ``t_*`` entries, still as stored."""
    targets = {key: torch.from_numpy(rows[name]) for key, name in TARGET_ARRAYS.items()}
    targets["t_relation"] = torch.from_numpy(rows[RELATION_ARRAYS[relation]])
    return targets


def decode_targets(batch: dict[str, torch.Tensor], token_scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch whose ``t_*`` targets are stored rows (as the dataset serves them) -> float32 targets, decoded
    where the batch is (the training device): tokens, class attention, mask score, relation map."""
    out = dict(batch)
    out["t_tokens"] = decode_tokens(batch["t_tokens"], token_scales)  # (B, 1 + L, D)
    out["t_attn_cls"] = decode_map(batch["t_attn_cls"])  # (B, L)
    out["t_mask_score"] = batch["t_mask_score"].to(torch.float32)  # (B, L)
    out["t_relation"] = decode_map(batch["t_relation"])  # (B, Lc, Lc), or (B, Lc + 1, Lc + 1) for gram
    return out


def measure_precision(layout: StoreLayout, scales: np.ndarray, tokens: np.ndarray, maps: dict[str, np.ndarray]
                      ) -> dict[str, float]:
    """Error of the store's codecs on float32 teacher outputs (the calibration pass's): relative L2
    of tokens, mean KL per row of each attention map kind (0 where nothing is lossy beyond fp16)."""
    round_trip = decode_tokens(encode_tokens(tokens, layout.token_precision, scales), scales).numpy()
    out = {"tokens_rel_l2": relative_l2(tokens, round_trip)}
    for name, x in maps.items():
        out[f"{name}_kl_per_row"] = kl_per_row(x, decode_map(encode_map(x, layout.map_precision)).numpy())
    return out
