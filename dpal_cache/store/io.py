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

import dataclasses
import functools
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zarr
import zarr.codecs

from dpal_cache.store.calibration import Calibration
from dpal_cache.store.errors import StoreError, StoreMissing, StoreWriteError
from dpal_cache.store.layout import STATUS_OK, StoreLayout
from dpal_cache.store.meta import StoreMeta

log = logging.getLogger(__name__)

ATTRS_KEY = "dpal_cache"
# set while create_store runs: a group that still has it holds no computed data and is created again
CREATING_KEY = "dpal_cache_creating"

F = TypeVar("F", bound=Callable[..., Any])


def _writes(what: str) -> Callable[[F], F]:
    """Turn an OSError raised while writing ``what`` into a StoreWriteError that says how to recover."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                raise StoreWriteError(
                    f"writing {what} into the store failed: {exc}. Free space (or fix the storage), then re-run "
                    "the same command: finished blocks are kept, the unfinished ones are written again"
                ) from exc

        return run  # type: ignore[return-value]

    return wrap


def _options(storage_options: dict | None) -> dict:
    # zarr refuses storage_options for plain local paths, so pass them only when given
    return {"storage_options": storage_options} if storage_options else {}


def local_store_path(url) -> Path | None:
    """The folder of a local store (a path, a ``file://`` URL, a zarr ``LocalStore`` or an fsspec store on the
    local filesystem), else None."""
    from zarr.storage import FsspecStore, LocalStore

    if isinstance(url, LocalStore):
        return Path(url.root)
    if isinstance(url, FsspecStore):
        protocol = url.fs.protocol
        local = "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))
        return Path(url.path) if local else None
    if isinstance(url, os.PathLike):
        return Path(url)
    if not isinstance(url, str):
        return None
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    return None if "://" in url else Path(url)


def remove_partial_files(url) -> int:
    """Delete the temp files (``*.partial``) that a writer killed mid-write left in a local store.

    Call only while holding the store's writer lock (no live writer has temp files then). Returns the count.
    """
    root = local_store_path(url)
    if root is None or not root.is_dir():
        return 0
    stale = list(root.rglob("*.partial"))
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temp file(s) left by an interrupted write in %s", len(stale), root)
    return len(stale)


STORE_WHAT = "a dpal-cache feature store"
STORE_FIX = "choose a new or empty --out; --overwrite replaces only a dpal-cache store"


def _is_ours(zarr_json: bytes | None) -> bool:
    """Whether a root ``zarr.json`` document is a dpal-cache store's (complete, or interrupted while created)."""
    if zarr_json is None:
        return False
    try:
        attrs = json.loads(zarr_json).get("attributes", {})
    except (ValueError, AttributeError):
        return False
    return isinstance(attrs, dict) and (isinstance(attrs.get(ATTRS_KEY), dict) or attrs.get(CREATING_KEY) is True)


def is_store_folder(folder: Path) -> bool:
    """Whether a local folder is a dpal-cache store (its root ``zarr.json`` carries our attributes)."""
    try:
        return _is_ours((folder / "zarr.json").read_bytes())
    except OSError:
        return False


def _remote_listing(url, storage_options: dict | None) -> tuple[list[str], bytes | None]:
    """(sorted top-level entry names, root ``zarr.json`` bytes or None) of a store URL or zarr store object."""
    from zarr.abc.store import Store
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import FsspecStore

    store = url if isinstance(url, Store) else FsspecStore.from_url(str(url), storage_options=storage_options,
                                                                      read_only=True)

    async def read() -> tuple[list[str], bytes | None]:
        names = sorted([name async for name in store.list_dir("")])
        doc = await store.get("zarr.json", prototype=default_buffer_prototype()) if "zarr.json" in names else None
        return names, None if doc is None else doc.to_bytes()

    return sync(read())


def check_store_location(url, storage_options: dict | None = None) -> None:
    """Refuse to create a store at ``url`` when something other than a dpal-cache store is there.

    Creating a store replaces what is at its location; only a store of ours may be replaced. Raises
    StoreError saying what is there (nothing is changed).
    """
    from dpal_cache.outputs import OutputRefused, check_output_folder

    local = local_store_path(url)
    try:
        if local is not None:
            check_output_folder(local, STORE_WHAT, is_store_folder, STORE_FIX)
            return
        names, root_doc = _remote_listing(url, storage_options)
        if names and not _is_ours(root_doc):
            more = f" and {len(names) - 4} more" if len(names) > 4 else ""
            raise OutputRefused(f"{url} is not empty and is not {STORE_WHAT}: it holds {', '.join(names[:4])}{more}. "
                                f"{STORE_FIX[:1].upper()}{STORE_FIX[1:]} (nothing was changed)")
    except OutputRefused as exc:
        raise StoreError(str(exc)) from None


@_writes("the arrays and attributes")
def create_store(url: str, meta: StoreMeta, storage_options: dict | None = None,
                 files: dict[str, bytes] | None = None):
    """Create a store with every array of ``layout`` preallocated, replacing an earlier dpal-cache store at
    ``url`` (anything else there is refused: ``check_store_location``).

    ``files`` (e.g. ``manifest.parquet``) are stored before the attributes, which come last: a store
    whose creation was interrupted has no ``dpal_cache`` attributes yet and is created again.
    """
    check_store_location(url, storage_options)
    group = zarr.open_group(url, mode="w", zarr_format=3, attributes={CREATING_KEY: True},
                            **_options(storage_options))
    for name, spec in meta.layout.arrays().items():
        group.create_array(
            name,
            shape=spec.shape,
            chunks=spec.chunks,
            shards=spec.shards,
            dtype=spec.dtype,
            # per-row arrays are read by byte range (store/rows.py): raw rows, no decompression on the hot path
            compressors=zarr.codecs.ZstdCodec(level=3) if spec.compressed else None,
            fill_value=0,
        )
    for key, data in (files or {}).items():
        put_bytes(group, key, data)
    group.attrs.put({ATTRS_KEY: meta.to_attrs()})  # replaces the creation marker: the store exists from here on
    return group


def open_store(url: str, mode: str = "r", storage_options: dict | None = None):
    """Open a dpal-cache store, refusing anything that is not one of this format version (``read_meta``)."""
    try:
        group = zarr.open_group(url, mode=mode, **_options(storage_options))
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreMissing(f"no feature store at {url} ({exc})") from None
    attrs = group.attrs.get(ATTRS_KEY)
    if not isinstance(attrs, dict) and group.attrs.get(CREATING_KEY):
        raise StoreMissing(f"no feature store at {url} yet: its creation was interrupted before any data was written")
    if not isinstance(attrs, dict):
        raise StoreError(f"{url} is a Zarr group but not a dpal-cache store (no '{ATTRS_KEY}' attributes)")
    StoreMeta.from_attrs(attrs, str(url))  # the format version, before anything else is read
    return group


def read_meta(group, url: str | None = None) -> StoreMeta:
    """The store's metadata (``attrs['dpal_cache']``), parsed."""
    return StoreMeta.from_attrs(group.attrs.get(ATTRS_KEY), url or str(group.store_path))


@_writes("the attributes")
def write_meta(group, meta: StoreMeta) -> None:
    """Replace the store's metadata (coordinator only: attributes are one JSON document)."""
    group.attrs.put({ATTRS_KEY: meta.to_attrs()})


def done_blocks(group) -> np.ndarray:
    """Boolean (n_blocks,) of blocks whose every array has been written."""
    return group["shards/done"][:].astype(bool)


def layout_problems(group, layout: StoreLayout) -> list[str]:
    """What in a store disagrees with its layout ([] when nothing): missing arrays, other shapes or dtypes,
    and done blocks whose data objects are gone (zarr would read those as zeros).

    Uses the store's own listing, not consolidated metadata, which still lists what was deleted.
    A done block whose images all failed legitimately has no tokens (all-zero chunks are not stored), and
    ``views/mask_score`` may be all zeros, so neither is required.
    """
    from zarr.core.sync import sync

    root = group.store_path.path
    prefix = f"{root}/" if root else ""

    async def listing() -> set[str]:
        return {key[len(prefix):] async for key in group.store.list_prefix(prefix)}

    keys = sync(listing())
    present: dict[str, set[int]] = {}  # array -> indices along axis 0 of its stored chunks / shards
    for key in keys:
        name, sep, rest = key.partition("/c/")
        head = rest.split("/")[0]
        if sep and head.isdigit():  # chunk keys only (not a stray c/.DS_Store)
            present.setdefault(name, set()).add(int(head))
    problems = []
    specs = layout.arrays()
    for name, spec in specs.items():
        if f"{name}/zarr.json" not in keys:
            problems.append(f"{name} is missing")
            continue
        arr = group[name]
        if tuple(arr.shape) != tuple(spec.shape) or np.dtype(arr.dtype) != np.dtype(spec.dtype):
            problems.append(f"{name} is {tuple(arr.shape)} {arr.dtype}, the layout says {tuple(spec.shape)} "
                            f"{spec.dtype}")
    if problems or "images/status" not in specs:
        return problems
    done = np.flatnonzero(done_blocks(group))
    status = group["images/status"][:]
    with_ok = [int(b) for b in done if (status[layout.shard_images_range(int(b))] == STATUS_OK).any()]
    for name, spec in specs.items():
        if name == "views/mask_score":  # may be all zeros for a whole block (then legitimately not stored)
            continue
        needed = (done.tolist() if name == "images/status" else with_ok) if spec.rows_per_image else []
        if name.startswith("calibration/") and with_ok:
            needed = [0]
        lost = sorted(set(needed) - present.get(name, set()))
        if lost:
            problems.append(f"{name} lacks the data of {len(lost)} done block(s), e.g. block {lost[0]}")
    return problems


@_writes("a block")
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


def read_calibration(group) -> Calibration | None:
    """The store's calibration (arrays and metadata), or None before the calibration pass wrote it."""
    meta = read_meta(group)
    if meta.calibration is None:
        return None
    arrays = {name: group[f"calibration/{name}"][:] for name in Calibration.ARRAYS}
    return Calibration.from_store(arrays, meta.calibration, meta.precision.measured)


@_writes("the calibration")
def write_calibration(group, calib: Calibration) -> None:
    """The calibration's arrays, then its scalars and measured codec error into the metadata (coordinator)."""
    for name, value in calib.arrays().items():
        group[f"calibration/{name}"][:] = value
    meta = read_meta(group)
    write_meta(group, meta.replace(calibration=calib.info,
                                   precision=dataclasses.replace(meta.precision, measured=calib.measured)))


@_writes("a file")
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


def failures_key(block: int) -> str:
    return f"failures/{block:06d}.json"


def write_failures(group, block: int, failures: list[dict[str, Any]]) -> None:
    """Record why the images of ``block`` that are not cached were not (``index``, ``key``, ``reason``).

    Written by the block's writer before its arrays (one writer per file, rewritten with the block).
    """
    put_bytes(group, failures_key(block), json.dumps({"block": block, "images": failures}).encode())


def read_failures(group) -> dict[int, dict[str, Any]]:
    """Image index -> ``{"index", "key", "reason"}`` of every recorded not-cached image of done blocks."""
    done = np.flatnonzero(done_blocks(group))
    out: dict[int, dict[str, Any]] = {}
    for block in done.tolist():
        raw = get_bytes(group, failures_key(block))
        if raw is None:  # stores written before failures were recorded
            continue
        for record in json.loads(raw)["images"]:
            out[int(record["index"])] = record
    return out


def read_store_manifest(group):
    """The manifest a store was extracted from (a pyarrow Table); check images against it with
    ``check_store_source``. Raises StoreError when the store has no manifest."""
    import io

    import pyarrow.parquet as pq

    raw = get_bytes(group, "manifest.parquet")
    if raw is None:
        raise StoreError("the store lacks manifest.parquet: it was not written by `dpal-cache extract`")
    return pq.read_table(io.BytesIO(raw))


def check_store_source(manifest, source):
    """``source`` as the store's ``manifest`` scanned it (``source_as_scanned``: a deleted file keeps its
    index); StoreError when it names other images (keys or order) than the manifest.

    Pass the returned source on (to a Catalog): listing it again would log its changes again.
    """
    from dpal_cache.data.catalog import source_as_scanned
    from dpal_cache.data.manifest import manifest_metadata
    from dpal_cache.data.sources import SourceError

    try:
        source = source_as_scanned(source, manifest)
    except SourceError as exc:
        raise StoreError(str(exc)) from None
    stored = manifest_metadata(manifest).get("source_fingerprint")
    if stored is not None and stored != source.fingerprint():
        raise StoreError(f"the images given ({source}) are not the ones the store was extracted from "
                         "(different keys or order): pass the same --data as for extract")
    return source


@_writes("the consolidated metadata")
def consolidate(group) -> None:
    """Consolidate metadata once, at the end (one read opens the store on remote filesystems)."""
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not in the v3 spec yet; zarr itself reads it
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(group.store)
