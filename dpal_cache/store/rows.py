"""Bulk row reads from a store's sharded arrays: byte ranges out of the shard files, decoded in bulk.

A per-row array (``views/tokens``, ``crowds/attn``...) is a Zarr v3 array of one-row inner chunks grouped
into shards of one block each. Reading it through zarr costs about 0.5 ms of machinery per row. Here a
shard's index (at the end of its file: one ``(offset, length)`` uint64 pair per row, then a crc32c) is read
once and cached, the byte ranges of the asked rows are coalesced where they touch (a block's rows lie in
row order), and each range is one read: ``os.preadv`` straight into the output rows for a local store,
one gathered async request per range through the zarr store otherwise (fsspec URLs). Rows are stored
raw (format 2), so reading is the whole of it: no decompression. Rows that zarr did not write (all
zeros: images that are not cached) come back as zeros, as zarr reads them.

The store stays a plain Zarr v3 group: zarr, dask and any other reader still open it.

    rows = RowReader(group)
    tokens = rows.read("views/tokens", np.array([7, 3, 9001]))   # (3, 1 + L, D) float16, as stored
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpal_cache.store.errors import StoreError
from dpal_cache.store.io import local_store_path

_EMPTY = np.uint64(2**64 - 1)  # an inner chunk that was never written (all fill value)
_INDEX_CRC = 4  # bytes of the crc32c after the index
# per process, the most recently used shard files kept open and shard indexes kept parsed: a store of a million
# images has tens of thousands of shard files, more than a process may open (ulimit -n is often 1024)
OPEN_FILES = 256
CACHED_INDEXES = 4096


@dataclass(frozen=True)
class _ArrayInfo:
    """What reading rows of one array needs from its zarr metadata."""

    name: str
    dtype: np.dtype
    row_shape: tuple[int, ...]
    n_rows: int
    rows_per_shard: int
    key: str  # the shard file key of shard 0 with "{}" for the shard number, relative to the group

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    def shard_key(self, shard: int) -> str:
        return self.key.format(shard)


def array_info(array, name: str) -> _ArrayInfo:
    """The row layout of a sharded per-row store array; StoreError for any other codec chain."""
    meta = array.metadata
    shard_shape = tuple(meta.chunk_grid.chunk_shape)
    codecs = [c.to_dict() for c in meta.codecs]
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        raise StoreError(f"{name} is not sharded ({[c['name'] for c in codecs]}): not a dpal-cache store array")
    conf = codecs[0]["configuration"]
    inner = [c["name"] for c in conf["codecs"]]
    index = [c["name"] for c in conf["index_codecs"]]
    endian = conf["codecs"][0].get("configuration", {}).get("endian", "little")
    chunk = tuple(conf["chunk_shape"])
    if (inner != ["bytes"] or index != ["bytes", "crc32c"] or conf["index_location"] != "end"
            or chunk[0] != 1 or tuple(chunk[1:]) != tuple(array.shape[1:]) or endian != "little"):
        raise StoreError(f"{name}: inner chunks {chunk} with codecs {inner} / index {index} at "
                         f"{conf['index_location']} are not the row layout dpal-cache reads")
    tail = "/".join("0" * (len(shard_shape) - 1))
    if meta.encode_chunk_key((3,) + (0,) * (len(shard_shape) - 1)) != f"c/3/{tail}":
        raise StoreError(f"{name}: chunk keys are not zarr's default c/<i>/... encoding")
    return _ArrayInfo(name, np.dtype(array.dtype), tuple(array.shape[1:]), int(array.shape[0]), shard_shape[0],
                      f"{name}/c/{{}}/{tail}")


def parse_shard_index(tail: bytes, rows: int) -> np.ndarray:
    """The ``(rows, 2)`` uint64 (offset, length) index from the last bytes of a shard file; checks its crc32c."""
    import google_crc32c

    body, crc = tail[:-_INDEX_CRC], tail[-_INDEX_CRC:]
    if len(body) != rows * 16:
        raise StoreError(f"a shard index of {len(body)} bytes, expected {rows * 16}")
    if google_crc32c.value(body) != struct.unpack("<I", crc)[0]:
        raise StoreError("a shard index fails its crc32c check: the shard file is damaged; re-extract its block")
    return np.frombuffer(body, dtype="<u8").reshape(rows, 2)


class _LocalFiles:
    """Shard files of a local store: cached descriptors, ``os.preadv`` into the caller's buffers."""

    def __init__(self, root: str):
        self.root = root
        self._fds: OrderedDict[str, int] = OrderedDict()  # least recently used first

    def _fd(self, key: str) -> int | None:
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        try:
            fd = os.open(os.path.join(self.root, key), os.O_RDONLY)
        except FileNotFoundError:
            return None
        self._fds[key] = fd
        if len(self._fds) > OPEN_FILES:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def tail(self, key: str, size: int) -> bytes | None:
        fd = self._fd(key)
        if fd is None:
            return None
        end = os.fstat(fd).st_size
        if end < size:
            raise StoreError(f"{key}: {end} bytes, less than its shard index (the shard file is truncated)")
        return os.pread(fd, size, end - size)

    def read_into(self, requests: list[tuple[str, int, list[memoryview]]]) -> None:
        """Each ``(key, offset, buffers)``: one ``preadv`` filling the buffers with the bytes from ``offset`` on."""
        for key, offset, buffers in requests:
            fd = self._fd(key)
            want = sum(b.nbytes for b in buffers)
            got = os.preadv(fd, buffers, offset)
            if got != want:
                raise StoreError(f"{key}: read {got} of {want} bytes at {offset} (the shard file is truncated)")

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _StoreRanges:
    """Shard files of any zarr store (fsspec URLs, memory): gathered async byte-range requests."""

    def __init__(self, store, prefix: str):
        self.store = store
        self.prefix = f"{prefix}/" if prefix else ""

    def tail(self, key: str, size: int) -> bytes | None:
        from zarr.abc.store import SuffixByteRequest
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = sync(self.store.get(self.prefix + key, default_buffer_prototype(), SuffixByteRequest(size)))
        return None if buf is None else buf.to_bytes()

    def read_into(self, requests: list[tuple[str, int, list[memoryview]]]) -> None:
        import asyncio

        from zarr.abc.store import RangeByteRequest
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        proto = default_buffer_prototype()

        async def fetch():
            return await asyncio.gather(*(
                self.store.get(self.prefix + key, proto,
                               RangeByteRequest(offset, offset + sum(b.nbytes for b in buffers)))
                for key, offset, buffers in requests))

        for (key, offset, buffers), data in zip(requests, sync(fetch()), strict=True):
            raw = memoryview(data.to_bytes()) if data is not None else memoryview(b"")
            want = sum(b.nbytes for b in buffers)
            if raw.nbytes != want:
                raise StoreError(f"{key}: read {raw.nbytes} of {want} bytes at {offset} (the shard file is truncated)")
            pos = 0
            for b in buffers:
                b[:] = raw[pos:pos + b.nbytes]
                pos += b.nbytes

    def close(self) -> None:
        pass


class RowReader:
    """Rows of a store's sharded arrays, many per read; see the module docstring.

    Picklable: each process opens its own files (a DataLoader worker reads through its own descriptors).

    Args:
        group: the store's zarr group (opened read-only).
        names: the sharded per-row arrays to serve.
    """

    def __init__(self, group, names: list[str]):
        self.info = {name: array_info(group[name], name) for name in names}
        root = local_store_path(group.store)
        prefix = group.store_path.path
        self._local_root = None if root is None else os.path.join(str(root), prefix) if prefix else str(root)
        self._store = group.store if root is None else None
        self._prefix = prefix
        self._files: _LocalFiles | _StoreRanges | None = None
        self._pid = -1
        self._index: OrderedDict[tuple[str, int], np.ndarray | None] = OrderedDict()  # least recently used first

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = None, -1  # descriptors never cross processes
        return state

    def _backend(self) -> _LocalFiles | _StoreRanges:
        if self._files is None or self._pid != os.getpid():
            self._files = _LocalFiles(self._local_root) if self._local_root is not None else _StoreRanges(
                self._store, self._prefix)
            self._pid = os.getpid()
        return self._files

    def close(self) -> None:
        if self._files is not None and self._pid == os.getpid():
            self._files.close()
        self._files = None

    def shard_index(self, name: str, shard: int) -> np.ndarray | None:
        """The (rows, 2) offsets and lengths of shard ``shard`` of ``name`` (None: the shard file is absent)."""
        key = (name, shard)
        if key in self._index:
            self._index.move_to_end(key)
            return self._index[key]
        info = self.info[name]
        tail = self._backend().tail(info.shard_key(shard), info.rows_per_shard * 16 + _INDEX_CRC)
        index = self._index[key] = None if tail is None else parse_shard_index(tail, info.rows_per_shard)
        if len(self._index) > CACHED_INDEXES:
            self._index.popitem(last=False)
        return index

    def read(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) of ``name``: (len(rows), *row shape) in the stored dtype."""
        info = self.info[name]
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= info.n_rows):
            raise IndexError(f"{name}: rows outside 0..{info.n_rows - 1}")
        out = np.empty((len(rows), *info.row_shape), dtype=info.dtype)  # every slot is read or zeroed below
        if not len(rows):
            return out
        unique, first = np.unique(rows, return_index=True)  # read each row once; repeats copied after
        requests, unwritten = self._plan(info, unique, first, out)
        out[unwritten] = 0  # rows zarr never wrote: all fill value
        self._backend().read_into(requests)
        if len(unique) != len(rows):
            out[:] = out[first[np.searchsorted(unique, rows)]]
        return out

    def _plan(self, info: _ArrayInfo, unique: np.ndarray, first: np.ndarray, out: np.ndarray):
        """One request per run of rows that touch in their shard file (rows of a block lie in row order), each
        row landing in its output slot; and the output slots of rows that were never written."""
        flat = out.reshape(len(out), -1).view(np.uint8)  # slot -> its bytes
        offsets = np.full(len(unique), -1, dtype=np.int64)
        lengths = np.zeros(len(unique), dtype=np.int64)
        shards = unique // info.rows_per_shard
        for shard in np.unique(shards):
            index = self.shard_index(info.name, int(shard))
            pick = np.flatnonzero(shards == shard)
            if index is not None:  # no file: every row of the shard is fill value
                entries = index[unique[pick] - shard * info.rows_per_shard]
                written = entries[:, 0] != _EMPTY
                offsets[pick[written]] = entries[written, 0].astype(np.int64)
                lengths[pick[written]] = entries[written, 1].astype(np.int64)
        present = offsets >= 0
        if np.any(lengths[present] != info.row_bytes):
            raise StoreError(f"{info.name}: a raw row of {lengths[present].max()} bytes, expected {info.row_bytes}")
        order = np.flatnonzero(present)
        order = order[np.lexsort((offsets[order], shards[order]))]
        # a new request where the shard changes or the bytes do not continue the previous row's
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = (shards[order[1:]] != shards[order[:-1]]) | (
            offsets[order[1:]] != offsets[order[:-1]] + lengths[order[:-1]])
        requests: list[tuple[str, int, list[memoryview]]] = []
        for j, slot, new in zip(order.tolist(), first[order].tolist(), starts.tolist()):
            if new:
                run: list[memoryview] = []
                requests.append((info.shard_key(int(shards[j])), int(offsets[j]), run))
            run.append(memoryview(flat[slot]))
        return requests, first[~present]
