"""``StoreReader``: the one way into a store: it opens and checks it, then serves its catalog and its rows.

Opening checks, before anything is read from the rows: the format version (an older store is refused with
how to rebuild it), that every array of the layout is there with its shape and dtype and every done block
has its data, that the teacher width matches the layout, and (``complete=True``) that every block is done.
Given the images (``source``), it checks they are the ones the store was extracted from (listed as the
scan listed them) and serves them through a :class:`Catalog` that checks every image against the scan.

Rows come out as stored (fp16 / int8 / uint8), one or many per call, read many per I/O
(:class:`RowReader`); decoding is the caller's (``store.codecs``, on the device that uses them). The
small per-block arrays (status, view parameters, crowd recipes, calibration) are in memory as numpy
arrays. A reader pickles without its zarr handles: every DataLoader worker reads through its own files.

    reader = StoreReader("feats.zarr", open_source("imgs/"))
    rows = reader.read_many({"views/tokens": [0, 5], "crowds/attn": [0, 2]})
    rgb = reader.catalog.load(3)
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from dpal_cache.data.backgrounds import Backgrounds
from dpal_cache.data.catalog import Catalog
from dpal_cache.data.sources import FolderSource, ImageSource, SourceError
from dpal_cache.store.calibration import Calibration
from dpal_cache.store.errors import StoreError
from dpal_cache.store.io import (
    check_store_source,
    done_blocks,
    layout_problems,
    open_store,
    read_calibration,
    read_failures,
    read_meta,
    read_store_manifest,
)
from dpal_cache.store.layout import STATUS_OK
from dpal_cache.store.rows import RowReader

log = logging.getLogger(__name__)


class StoreReader:
    """A checked, open store; see the module docstring.

    Args:
        url: the store (local path or fsspec URL).
        source: the images it was extracted from (same keys, same order); None serves no catalog.
        storage_options: fsspec options of a remote store.
        complete: refuse a store whose blocks are not all done (training); ``False`` reads what is there
            (``info``, ``verify``).
        check: refuse a store whose arrays disagree with its layout (``False``: ``verify`` reports it).
        background_dir: where the crowd backgrounds are on this machine (default: the path recorded at extract).
    """

    def __init__(self, url: str, source: ImageSource | None = None, *, storage_options: dict | None = None,
                 complete: bool = True, check: bool = True, background_dir: str | Path | None = None):
        self.url = str(url)
        self.storage_options = storage_options
        group = open_store(url, "r", storage_options)
        self.meta = meta = read_meta(group, self.url)
        self.layout = layout = meta.layout
        self.done = done_blocks(group)
        if complete and not meta.complete:
            raise StoreError(f"{url} is incomplete ({int(self.done.sum())} of {len(self.done)} blocks done): re-run "
                             "the same `dpal-cache extract` command to finish it")
        self.problems = layout_problems(group, layout)
        if meta.teacher_dim != layout.dim:
            self.problems.append(f"the teacher has {meta.teacher_dim} dims, the layout says {layout.dim}")
        if check and self.problems:
            raise StoreError(f"{url} does not hold what its attributes describe (damaged, or copied incompletely):\n  "
                             + "\n  ".join(self.problems) + "\ncopy the whole store again, or re-extract it "
                             "(--overwrite)")
        try:
            self.manifest = read_store_manifest(group)
        except StoreError:
            if check:
                raise
            self.manifest = None  # verify reports it
        self.catalog: Catalog | None = None if source is None else self.open_catalog(source)
        bg = background_dir if background_dir is not None else meta.background_dir
        self.backgrounds = Backgrounds(FolderSource(bg), meta.decode) if bg is not None else None
        self.status = group["images/status"][:]
        self.calibration: Calibration | None = read_calibration(group)
        self.rows = RowReader(group, layout.row_arrays())
        self._group = group

    # the per-row view parameters and crowd recipes, whole, in numpy, read on first use (``info`` never reads
    # them); training reads them before its workers fork (no copy-on-access there)
    @functools.cached_property
    def params(self) -> np.ndarray:
        return self.group["views/params"][:]

    @functools.cached_property
    def recipes(self) -> np.ndarray | None:
        return self.group["crowds/recipe"][:] if self.layout.crowds_per_image else None

    def open_catalog(self, source: ImageSource) -> Catalog:
        """``source`` as the store's catalog: refused (StoreError) unless it holds the images the store was
        extracted from (listed as the scan listed them); every image is checked against the scan on load."""
        if self.manifest is None:
            raise StoreError(f"{self.url} holds no manifest.parquet to check images against")
        try:
            scanned = check_store_source(self.manifest, source)  # as scanned: listed (and warned about) once
            return Catalog(scanned, self.manifest, self.meta.decode)
        except (SourceError, ValueError) as exc:
            raise StoreError(f"{self.url}: {exc}") from None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_group"] = None  # zarr handles never cross processes; the rows reopen their files
        return state

    @property
    def group(self):
        """The zarr group (opened again in a process that received this reader pickled)."""
        if self._group is None:
            self._group = open_store(self.url, "r", self.storage_options)
        return self._group

    @property
    def usable(self) -> np.ndarray:
        """Sorted int64 indices of the images whose targets are cached (status ok)."""
        return np.flatnonzero(self.status == STATUS_OK).astype(np.int64)

    def require_calibration(self) -> Calibration:
        if self.calibration is None:
            raise StoreError(f"{self.url} has no calibration yet (its extract stopped before the calibration pass): "
                             "re-run the same `dpal-cache extract` command")
        return self.calibration

    def read(self, name: str, rows) -> np.ndarray:
        """Rows of one sharded array, in the stored dtype: (len(rows), *row shape)."""
        return self.rows.read(name, np.asarray(rows, dtype=np.int64))

    def read_many(self, rows: dict[str, Any]) -> dict[str, np.ndarray]:
        """``read`` for several arrays: {name: rows} -> {name: stored rows}."""
        return {name: self.read(name, r) for name, r in rows.items()}

    def image_rows(self, name: str, images) -> np.ndarray:
        """The rows of ``name`` that belong to ``images`` (every view, or every crowd, of each), in order."""
        per = self.layout.arrays()[name].rows_per_image
        images = np.asarray(images, dtype=np.int64)
        return self.read(name, (images[:, None] * per + np.arange(per)).reshape(-1))

    def failures(self) -> dict[int, dict[str, Any]]:
        """Image index -> failure record of every image of a done block that is not cached."""
        return read_failures(self.group)

    def close(self) -> None:
        self.rows.close()
