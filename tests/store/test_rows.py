"""Bulk row reads: the bytes zarr itself reads, for every precision, any order, repeats, unwritten rows,
local paths, ``file://`` and ``memory://`` URLs; damaged shard files are refused."""

from __future__ import annotations

import shutil

import fsspec
import numpy as np
import pytest
import zarr

from dpal_cache.store.errors import StoreError
from dpal_cache.store.io import open_store
from dpal_cache.store.layout import STATUS_OK
from dpal_cache.store.rows import RowReader

PRECISIONS = {"fp16": {}, "int8+log8": {"token_precision": "int8", "map_precision": "log8", "gram": True}}


@pytest.fixture(scope="module", params=list(PRECISIONS))
def store(request, tiny_store_factory):
    path, _ = tiny_store_factory(f"rows_{request.param.replace('+', '_')}", **PRECISIONS[request.param])
    return path


def _rows_wanted(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unsorted rows over every shard, with repeats, the first and the last."""
    return np.concatenate([rng.permutation(n)[: n // 2], [0, n - 1, 3, 3], rng.integers(0, n, 5)])


def test_rows_equal_zarr_reads_bit_for_bit(store):
    group = open_store(str(store))
    names = [n for n in ("views/tokens", "views/attn_cls", "views/mask_score", "crowds/attn", "crowds/gram")
             if n in group]
    reader = RowReader(group, names)
    rng = np.random.default_rng(0)
    for name in names:
        whole = group[name][...]  # zarr's own read of every row
        rows = _rows_wanted(len(whole), rng)
        got = reader.read(name, rows)
        assert got.dtype == whole.dtype and got.tobytes() == whole[rows].tobytes(), name
        assert reader.read(name, rows[:1]).tobytes() == whole[rows[:1]].tobytes()  # one row
        assert reader.read(name, np.array([], dtype=np.int64)).shape == (0, *whole.shape[1:])
    with pytest.raises(IndexError):
        reader.read("views/tokens", [group["views/tokens"].shape[0]])


def test_rows_of_images_that_are_not_cached_read_as_zeros(tmp_path, tiny_builders):
    # a broken file is recorded as failed at scan: its rows are never written (zarr skips all-zero chunks)
    from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
    from dpal_cache.data.sources import open_source
    from dpal_cache.extract.run import extract
    from dpal_cache.synth import SynthConfig, synthesize

    synthesize(tmp_path / "s", SynthConfig(ids=3, images_per_id=2, train_fraction=1.0, height=64, width=32,
                                           masks=False, workers=1))
    folder = tmp_path / "s" / "bounding_box_train"
    (folder / "0002_zz_broken.jpg").write_text("not an image")
    scan(open_source(folder), tmp_path / "m.parquet", ScanConfig(workers=1))
    extract(tiny_builders.config(), open_source(folder), read_manifest(tmp_path / "m.parquet"), str(tmp_path / "f"))
    group = open_store(str(tmp_path / "f"))
    status = group["images/status"][:]
    bad = int(np.flatnonzero(status != STATUS_OK)[0])
    reader = RowReader(group, ["views/tokens"])
    rows = np.arange(2 * len(status))
    got = reader.read("views/tokens", rows)
    assert not got[2 * bad: 2 * bad + 2].any() and got.tobytes() == group["views/tokens"][...].tobytes()


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_urls_read_through_the_same_path(store, scheme):
    local = RowReader(open_store(str(store)), ["views/tokens", "crowds/attn"])
    if scheme == "file":
        url = f"file://{store}"
    else:
        fs = fsspec.filesystem("memory")
        url = f"memory://rows_{store.name}_{id(store)}"
        fs.put(str(store), url, recursive=True)
    remote = RowReader(zarr.open_group(url, mode="r"), ["views/tokens", "crowds/attn"])
    assert (remote._local_root is not None) == (scheme == "file")
    rows = _rows_wanted(local.info["views/tokens"].n_rows, np.random.default_rng(1))
    for name in ("views/tokens", "crowds/attn"):
        r = rows % local.info[name].n_rows
        assert remote.read(name, r).tobytes() == local.read(name, r).tobytes(), name


def test_damaged_shard_files_are_refused(store, tmp_path):
    copy = shutil.copytree(store, tmp_path / "copy")
    shard = copy / "views" / "tokens" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-6] ^= 0xFF  # inside the index
    shard.write_bytes(bytes(data))
    reader = RowReader(open_store(str(copy)), ["views/tokens"])
    with pytest.raises(StoreError, match="crc32c"):
        reader.read("views/tokens", [reader.info["views/tokens"].rows_per_shard])  # first row of shard 1
    shard.write_bytes(bytes(data[:40]))  # cut short: the index itself is gone
    fresh = RowReader(open_store(str(copy)), ["views/tokens"])
    with pytest.raises(StoreError):
        fresh.read("views/tokens", [fresh.info["views/tokens"].rows_per_shard])


def test_a_reader_pickles_without_open_files(store):
    import pickle

    reader = RowReader(open_store(str(store)), ["views/tokens"])
    first = reader.read("views/tokens", [0, 1])
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._files is None and clone.read("views/tokens", [0, 1]).tobytes() == first.tobytes()


def test_open_files_and_cached_indexes_stay_bounded(store, monkeypatch):
    """A store of many shards: the reader keeps at most OPEN_FILES descriptors and CACHED_INDEXES shard indexes per
    process (the least recently used go), and reads the same bytes while it evicts."""
    from dpal_cache.store import rows as rows_module

    monkeypatch.setattr(rows_module, "OPEN_FILES", 2)
    monkeypatch.setattr(rows_module, "CACHED_INDEXES", 3)
    group = open_store(str(store))
    names = [n for n in ("views/tokens", "views/attn_cls", "crowds/attn") if n in group]
    reader = RowReader(group, names)
    rng = np.random.default_rng(1)
    for _ in range(3):
        for name in names:
            whole = group[name][...]
            rows = _rows_wanted(len(whole), rng)
            assert reader.read(name, rows).tobytes() == whole[rows].tobytes(), name
            assert len(reader._backend()._fds) <= 2 and len(reader._index) <= 3
    assert len(reader._index) == 3  # the store has more shards than that: the cache was full and evicting
    reader.close()
