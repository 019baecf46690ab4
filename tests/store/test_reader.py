"""StoreReader: the one way into a store: what it checks on open, what it serves, and that it travels to
worker processes without its handles; remote (fsspec) stores go through the same path."""

from __future__ import annotations

import json
import pickle
import uuid

import fsspec
import numpy as np
import pytest
import zarr

from dpal_cache.data.sources import open_source
from dpal_cache.store.errors import StoreError
from dpal_cache.store.layout import FORMAT_VERSION, STATUS_OK
from dpal_cache.store.reader import StoreReader


@pytest.fixture(scope="module")
def tiny(tiny_store_factory):
    return tiny_store_factory("reader")  # (store path, image folder)


def test_a_complete_store_serves_its_metadata_catalog_and_rows(tiny):
    store, folder = tiny
    reader = StoreReader(str(store), open_source(folder))
    meta, layout = reader.meta, reader.layout
    assert meta.format_version == FORMAT_VERSION and meta.complete and meta.teacher_dim == layout.dim == 192
    assert reader.usable.tolist() == np.flatnonzero(reader.status == STATUS_OK).tolist() and len(reader.usable) == 10
    assert reader.catalog.load(int(reader.usable[0])).dtype == np.uint8
    assert reader.calibration is not None and reader.calibration.token_scales.shape == (2, 192)
    group = zarr.open_group(str(store), mode="r")
    assert reader.params.tobytes() == group["views/params"][...].tobytes()
    images = [3, 0]
    rows = reader.image_rows("views/tokens", images)  # both views of each image, in order
    assert rows.tobytes() == group["views/tokens"][...][[6, 7, 0, 1]].tobytes()
    got = reader.read_many({"views/mask_score": [5], "crowds/attn": [2, 2]})
    assert got["crowds/attn"].shape == (2, 16, 16) and got["views/mask_score"].shape == (1, 8)


def test_it_pickles_without_handles_and_reads_in_the_other_process(tiny):
    store, folder = tiny
    reader = StoreReader(str(store), open_source(folder))
    want = reader.read("views/tokens", [1, 2])
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._group is None and clone.read("views/tokens", [1, 2]).tobytes() == want.tobytes()
    assert clone.group is not None  # opened again on demand


def _edit(store, **fields) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["dpal_cache"].update(fields)
    (store / "zarr.json").write_text(json.dumps(doc))


def test_what_is_refused_on_open(tiny, tmp_path):
    import shutil

    store, folder = tiny
    old = shutil.copytree(store, tmp_path / "old.zarr")
    _edit(old, format_version=1)
    with pytest.raises(StoreError, match="format version 1.*reads version 2.*--overwrite"):
        StoreReader(str(old))
    partial = shutil.copytree(store, tmp_path / "partial.zarr")
    _edit(partial, complete=False)
    with pytest.raises(StoreError, match="incomplete"):
        StoreReader(str(partial))
    assert not StoreReader(str(partial), complete=False).meta.complete  # info / verify / viz read it anyway
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.jpg").write_bytes((folder / sorted(p.name for p in folder.iterdir())[0]).read_bytes())
    with pytest.raises(StoreError, match="not the ones the store was extracted from|scanned images"):
        StoreReader(str(store), open_source(other))


def test_a_memory_url_reads_through_the_same_path(tiny):
    store, folder = tiny
    url = f"memory://reader_store_{uuid.uuid4().hex}.zarr"  # the memory filesystem is shared by the process
    fsspec.filesystem("memory").put(str(store), url, recursive=True)
    local, remote = StoreReader(str(store), open_source(folder)), StoreReader(url, open_source(folder))
    assert remote.meta == local.meta
    rows = np.array([0, 19, 7, 7, 12])
    assert remote.read("views/tokens", rows).tobytes() == local.read("views/tokens", rows).tobytes()
    assert remote.read("crowds/attn", rows % 10).tobytes() == local.read("crowds/attn", rows % 10).tobytes()
