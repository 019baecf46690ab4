"""What a feature store holds and what it costs: the numbers behind ``dpal-cache info``.

Opens the store through ``StoreReader`` (which reads metadata, the small per-block arrays and the
store's listing, never a row), and counts object sizes from the store's own listing, so it is cheap on
a remote store too. Bytes "on disk" are the sizes of the stored objects (shards and metadata
documents); "uncompressed" is what the written rows hold in memory. A store that disagrees with its
layout is described anyway, with its ``problems``.

    report = store_report("feats.zarr")
    report["completion"]["blocks_done"], report["bytes"]["per_image"]
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import numpy as np

from dpal_cache.config import to_dict
from dpal_cache.store.layout import STATUS_FAILED, STATUS_OK, STATUS_PENDING, STATUS_SKIPPED, StoreLayout
from dpal_cache.store.meta import StoreMeta
from dpal_cache.store.reader import StoreReader


async def _object_sizes(store, prefix: str, concurrency: int = 64) -> dict[str, int]:
    """Size of every object whose key starts with ``prefix``, by key."""
    keys = [key async for key in store.list_prefix(prefix)]
    limit = asyncio.Semaphore(concurrency)  # remote stores: bounded requests in flight

    async def size(key: str) -> int:
        async with limit:
            return await store.getsize(key)

    return dict(zip(keys, await asyncio.gather(*(size(key) for key in keys))))


def object_sizes(group) -> dict[str, int]:
    """Bytes of every stored object under ``group`` (keys relative to the group), from the store's listing."""
    from zarr.core.sync import sync

    root = group.store_path.path
    prefix = f"{root}/" if root else ""
    sizes = sync(_object_sizes(group.store, prefix))
    return {key[len(prefix):]: size for key, size in sizes.items()}


def written_images(layout: StoreLayout, done: np.ndarray) -> int:
    """Images in blocks whose done flag is set."""
    return sum(len(layout.shard_images_range(int(b))) for b in np.flatnonzero(done))


def completion(reader: StoreReader) -> dict[str, Any]:
    """Blocks done of total, and images by status code (pending = in blocks not written yet)."""
    layout, done, status = reader.layout, reader.done, reader.status
    return {
        "blocks_done": int(done.sum()),
        "blocks_total": int(len(done)),
        "images_total": int(layout.n_images),
        "images_written": written_images(layout, done),
        "images_ok": int((status == STATUS_OK).sum()),
        "images_skipped": int((status == STATUS_SKIPPED).sum()),
        "images_failed": int((status == STATUS_FAILED).sum()),
        "images_pending": int((status == STATUS_PENDING).sum()),
        "complete": bool(done.all()),
        # "stage: reason" -> count, from the failure records of the written blocks
        "not_cached_by_reason": dict(Counter(f"{r.get('stage')}: {r['reason']}"
                                             for r in reader.failures().values()).most_common()),
    }


def _array_rows(group, layout: StoreLayout, sizes: dict[str, int], images_written: int) -> list[dict[str, Any]]:
    specs = layout.arrays()
    rows = []
    for path in sorted(specs):
        arr = group[path]
        per_image = specs[path].rows_per_image
        itemsize = np.dtype(arr.dtype).itemsize
        row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * itemsize
        nbytes = int(np.prod(arr.shape, dtype=np.int64)) * itemsize
        # per-image arrays hold data only in written blocks; the rest are written whole
        written = images_written * per_image * row_bytes if per_image else nbytes
        mine = {k: v for k, v in sizes.items() if k.startswith(path + "/")}
        data = sum(v for k, v in mine.items() if not k.endswith("zarr.json"))
        rows.append({
            "path": path,
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "chunks": list(arr.chunks),
            "shards": list(arr.shards) if arr.shards is not None else None,
            "rows_per_image": per_image,
            "objects": len(mine),
            "bytes_stored": sum(mine.values()),  # data and the array's metadata document
            "bytes_uncompressed": nbytes,
            "bytes_uncompressed_written": written,
            "compression_ratio": written / data if data else None,
        })
    return rows


def _per_row(rows: list[dict], prefix: str, n_rows: int) -> float | None:
    stored = sum(r["bytes_stored"] for r in rows if r["path"].startswith(prefix))
    return stored / n_rows if n_rows else None


def _views_summary(meta: StoreMeta, layout: StoreLayout) -> dict[str, Any]:
    views = meta.views
    return {
        "seed": views["seed"],
        "views_per_image": layout.views_per_image,
        "crowds_per_image": layout.crowds_per_image,
        "global_view_size": list(views["global_view"]["size"]),
        "view_grid": list(layout.view_grid),
        "crowd_mode": views["crowd"]["mode"],
        "crowd_size": list(views["crowd"]["size"]),
        "crowd_grid": list(layout.crowd_grid),
        "background_dir": views["crowd"].get("background_dir"),
        "gram": layout.gram,
    }


def _precision(reader: StoreReader) -> dict[str, Any]:
    prec = reader.meta.precision
    # info runs no teacher: a measured error is shown only when the store recorded one
    out = {"tokens": prec.tokens, "maps": prec.maps, "mask_at_extract": prec.mask_at_extract,
           "measured": prec.measured}
    if prec.tokens == "int8" and reader.calibration is not None:
        scales = np.asarray(reader.calibration.token_scales, dtype=np.float64)
        out["int8_scales"] = {"min": float(scales.min()), "median": float(np.median(scales)),
                              "max": float(scales.max())}
    return out


def store_report(url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Describe the store at ``url``: arrays, bytes, completion, teacher, views, precision, calibration.

    Returns a JSON-safe dict; byte counts are of stored objects (``bytes_stored``) and of the
    written rows in memory (``bytes_uncompressed_written``), so the compression ratio of a
    partly written store is that of its written blocks.
    """
    reader = StoreReader(url, storage_options=storage_options, complete=False, check=False)
    group, meta, layout = reader.group, reader.meta, reader.layout
    done = completion(reader)
    sizes = object_sizes(group)
    arrays = _array_rows(group, layout, sizes, done["images_written"])
    in_arrays = {k for k in sizes if any(k.startswith(r["path"] + "/") for r in arrays)}
    per_image_rows = [r for r in arrays if r["rows_per_image"]]
    n_written = done["images_written"]
    return {
        "url": url,
        "format_version": meta.format_version,
        "dpal_cache_version": meta.dpal_cache_version,
        "complete_attr": meta.complete,
        "problems": reader.problems,
        "completion": done,
        "arrays": arrays,
        "bytes": {
            "store_total": sum(sizes.values()),
            "arrays": sum(r["bytes_stored"] for r in arrays),
            # manifest.parquet, group metadata, files written next to the arrays (extract.yaml)
            "other": {k: v for k, v in sorted(sizes.items()) if k not in in_arrays},
            "per_image": _per_row(per_image_rows, "", n_written),
            "per_view_row": _per_row(per_image_rows, "views/", n_written * layout.views_per_image),
            "per_crowd_row": _per_row(per_image_rows, "crowds/", n_written * layout.crowds_per_image),
            "per_image_uncompressed": layout.bytes_per_image(),
        },
        "layout": to_dict(layout),
        "teacher": meta.teacher,
        "views": _views_summary(meta, layout),
        "precision": _precision(reader),
        "calibration": to_dict(meta.calibration) if meta.calibration is not None else None,
        "manifest_fingerprint": meta.manifest_fingerprint,
        "source": meta.source,
        "extract_config": meta.extract_config,
    }
