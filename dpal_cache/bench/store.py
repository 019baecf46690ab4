"""Store benchmark: bytes on disk per image and per view row for each precision, and their error.

The same float32 teacher outputs (extract's batches) are encoded by extract's own ``BlockBuffer``
at each precision option, written with ``write_block`` into a store of the real layout (with the
calibration of the benchmark's extracted store), then read back and decoded as training decodes
them. Reported per option: bytes of every array on disk (the files under the array's folder),
per image and per view row, the ratio to the default fp16 store, the token relative L2 and the
mean KL per attention row (class attention and crowd attention) against the float32 outputs.

    result = run_store_bench(ctx)
    result["options"]["int8+log8"]["ratio_to_fp16"]
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from typing import Any

import numpy as np

from dpal_cache.bench.common import BenchContext, dir_bytes

log = logging.getLogger(__name__)

# (token precision, map precision); the first is the default store every ratio refers to
OPTIONS = (("fp16", "fp16"), ("int8", "fp16"), ("fp16", "log8"), ("int8", "log8"))


def _reference(outs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The float32 outputs of every ok image, concatenated in row order."""
    return {key: np.concatenate([o[key] for o in outs if key in o]) for key in ("tokens", "attn_cls", "crowd_attn")}


def _write_option(ctx: BenchContext, tokens: str, maps: str, calib, url) -> Any:
    from dpal_cache.extract.compute import BlockBuffer
    from dpal_cache.store import io as store_io

    session = ctx.session
    layout = dataclasses.replace(session.layout, token_precision=tokens, map_precision=maps)
    meta = session.meta.replace(layout=layout, precision=dataclasses.replace(session.meta.precision, tokens=tokens,
                                                                              maps=maps))
    shutil.rmtree(url, ignore_errors=True)
    group = store_io.create_store(str(url), meta)
    store_io.write_calibration(group, calib)
    buffers: dict[int, BlockBuffer] = {}
    for batch, out in zip(ctx.rendered, ctx.teacher_outputs()):
        block = int(batch["index"][0]) // layout.shard_images
        buf = buffers.setdefault(block, BlockBuffer(layout, block, session.cfg.mask_at_extract))
        buf.add(batch, out, calib)
        if buf.complete:
            store_io.write_block(group, layout, block, buffers.pop(block).arrays)
    store_io.consolidate(group)
    return group, layout


def _errors(group, calib, ref: dict[str, np.ndarray]) -> dict[str, float]:
    from dpal_cache.store.codecs import decode_map, decode_tokens
    from dpal_cache.store.layout import STATUS_OK
    from dpal_cache.store.quant import kl_per_row, relative_l2

    ok = group["images/status"][:] == STATUS_OK
    v = group["views/tokens"].shape[0] // len(ok)
    c = group["crowds/attn"].shape[0] // len(ok) if "crowds/attn" in group else 0
    rows_v, rows_c = np.repeat(ok, v), np.repeat(ok, c)
    tokens = decode_tokens(group["views/tokens"][:][rows_v], calib.token_scales).numpy()
    out = {
        "tokens_rel_l2": relative_l2(ref["tokens"], tokens),
        "attn_cls_kl_per_row": kl_per_row(ref["attn_cls"], decode_map(group["views/attn_cls"][:][rows_v]).numpy()),
    }
    if c:
        out["crowd_attn_kl_per_row"] = kl_per_row(ref["crowd_attn"],
                                                  decode_map(group["crowds/attn"][:][rows_c]).numpy())
    return out


def run_store_bench(ctx: BenchContext) -> dict[str, Any]:
    """Bytes per image / view row on disk and codec error of every precision option."""
    from dpal_cache.store import io as store_io

    calib = store_io.read_calibration(store_io.open_store(str(ctx.store()), "r"))
    ref = _reference(ctx.teacher_outputs())
    root = ctx.workdir / "store"
    options: dict[str, dict[str, Any]] = {}
    for tokens, maps in OPTIONS:
        name = f"{tokens}+{maps}"
        url = root / f"{name}.zarr"
        group, layout = _write_option(ctx, tokens, maps, calib, url)
        arrays = {path: dir_bytes(url / path) for path in layout.arrays()}
        total = dir_bytes(url)
        n, v = layout.n_images, layout.views_per_image
        view_bytes = sum(b for path, b in arrays.items() if path.startswith("views/"))
        options[name] = {
            "tokens": tokens,
            "maps": maps,
            "bytes_total": total,
            "bytes_arrays": arrays,
            "bytes_metadata": total - sum(arrays.values()),
            "bytes_per_image": total / n,
            "bytes_per_view_row": view_bytes / (n * v),
            "uncompressed_bytes_per_image": layout.bytes_per_image(),
            **_errors(group, calib, ref),
        }
        log.info("store %s: %.1f KiB/image", name, total / n / 1024)
    base = options["fp16+fp16"]["bytes_per_image"]
    for res in options.values():
        res["ratio_to_fp16"] = res["bytes_per_image"] / base
    return {"images": ctx.session.layout.n_images, "teacher": ctx.settings.teacher,
            "dim": ctx.session.layout.dim, "default": "fp16+fp16", "compact": "int8+log8", "options": options}
