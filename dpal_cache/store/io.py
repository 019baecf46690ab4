"""Create, open and write feature stores (Zarr v3 groups on a local path or an fsspec URL).

Write protocol (see docs/store-format.md): the coordinator creates every array at its full
shape and writes the group attributes once; then each image block is written whole by one
task (one assignment per array, so no shard is ever shared between writers) and only then
is ``shards/done[block]`` set. A crash leaves a block without its flag, and the block is
simply written again on resume. Metadata is consolidated once at the end.

    group = create_store("feats.zarr", layout, attrs)
    write_block(group, layout, block, arrays)   # arrays: name -> rows of this block
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import zarr
import zarr.codecs

from dpal_cache.store.layout import FORMAT_VERSION, StoreLayout

log = logging.getLogger(__name__)

ATTRS_KEY = "dpal_cache"


class StoreError(Exception):
    """A store is missing, of another format, or does not match what is asked of it."""


def _options(storage_options: dict | None) -> dict:
    # zarr refuses storage_options for plain local paths, so pass them only when given
    return {"storage_options": storage_options} if storage_options else {}


def _compressor(name: str) -> zarr.codecs.ZstdCodec:
    # tokens are near-incompressible noise: zstd level 1 for speed; maps gain ~2x at level 3
    return zarr.codecs.ZstdCodec(level=1 if name.endswith("tokens") else 3)


def create_store(url: str, layout: StoreLayout, attrs: dict[str, Any], storage_options: dict | None = None):
    """Create (replacing anything at ``url``) a store with every array of ``layout`` preallocated."""
    group = zarr.open_group(url, mode="w", zarr_format=3, **_options(storage_options))
    for name, spec in layout.arrays().items():
        group.create_array(
            name,
            shape=spec.shape,
            chunks=spec.chunks,
            shards=spec.shards,
            dtype=spec.dtype,
            compressors=_compressor(name),
            fill_value=0,
        )
    group.attrs.put({ATTRS_KEY: attrs})
    return group


def open_store(url: str, mode: str = "r", storage_options: dict | None = None):
    """Open a dpal-cache store, refusing anything that is not one of this format version."""
    try:
        group = zarr.open_group(url, mode=mode, **_options(storage_options))
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"no feature store at {url} ({exc})") from None
    meta = group.attrs.get(ATTRS_KEY)
    if not isinstance(meta, dict):
        raise StoreError(f"{url} is a Zarr group but not a dpal-cache store (no '{ATTRS_KEY}' attributes)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{url} has store format version {version!r}; this dpal-cache reads version {FORMAT_VERSION}. "
            "Re-extract it with this version, or use the dpal-cache version that wrote it "
            f"({meta.get('dpal_cache_version', 'unknown')})."
        )
    return group


def store_meta(group) -> dict[str, Any]:
    """The store's own attributes (``attrs['dpal_cache']``)."""
    return dict(group.attrs[ATTRS_KEY])


def update_meta(group, **fields: Any) -> None:
    """Rewrite some top-level attribute fields (coordinator only: attrs are one JSON document)."""
    meta = store_meta(group)
    meta.update(fields)
    group.attrs.put({ATTRS_KEY: meta})


def done_blocks(group) -> np.ndarray:
    """Boolean (n_blocks,) of blocks whose every array has been written."""
    return group["shards/done"][:].astype(bool)


def write_block(group, layout: StoreLayout, block: int, arrays: dict[str, np.ndarray]) -> None:
    """Write every per-image array of ``block`` in one assignment each, then mark it done."""
    images = layout.shard_images_range(block)
    for name, spec in layout.arrays().items():
        if not spec.rows_per_image:
            continue
        if name not in arrays:
            raise StoreError(f"block {block}: no data for {name}")
        rows = slice(images.start * spec.rows_per_image, images.stop * spec.rows_per_image)
        data = arrays[name]
        expected = (rows.stop - rows.start, *spec.shape[1:])
        if data.shape != expected:
            raise StoreError(f"block {block}: {name} has shape {data.shape}, expected {expected}")
        group[name][rows] = data
    group["shards/done"][block] = 1


def write_calibration(group, arrays: dict[str, np.ndarray]) -> None:
    for name, value in arrays.items():
        group[f"calibration/{name}"][:] = value


def put_bytes(group, key: str, data: bytes) -> None:
    """Store a plain file (e.g. ``manifest.parquet``) inside the store, next to the Zarr nodes."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    sync(group.store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def get_bytes(group, key: str) -> bytes | None:
    """Read a plain file stored with ``put_bytes`` (None when absent)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = sync(group.store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def read_store_manifest(group, source=None):
    """The manifest a store was extracted from (a pyarrow Table), checked against ``source`` if given.

    Raises StoreError when the store has no manifest, or when ``source`` holds other images (other
    keys or another order) than the ones the store was made from.
    """
    import io

    import pyarrow.parquet as pq

    from dpal_cache.data.manifest import manifest_metadata

    raw = get_bytes(group, "manifest.parquet")
    if raw is None:
        raise StoreError("the store lacks manifest.parquet: it was not written by `dpal-cache extract`")
    manifest = pq.read_table(io.BytesIO(raw))
    stored = manifest_metadata(manifest).get("source_fingerprint")
    if source is not None and stored is not None and stored != source.fingerprint():
        raise StoreError(f"the images given ({source.describe()}) are not the ones the store was extracted from "
                         "(different keys or order): pass the same --data as for extract")
    return manifest


def consolidate(group) -> None:
    """Consolidate metadata once, at the end (one read opens the store on remote filesystems)."""
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not in the v3 spec yet; zarr itself reads it
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(group.store)
