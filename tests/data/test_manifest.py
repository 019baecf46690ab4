"""The scan manifest: one row per image whatever state it is in, identical with any number of workers, written
atomically and streamed in bounded row groups; plus ordered_map, the bounded ordered pool stream it runs on."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dpal_cache import __version__
from dpal_cache.config import ConfigError, to_dict
from dpal_cache.data import manifest as manifest_mod
from dpal_cache.data.decode import DecodeConfig
from dpal_cache.data.manifest import (
    MANIFEST_SCHEMA,
    ScanConfig,
    manifest_fingerprint,
    manifest_metadata,
    ok_indices,
    read_manifest,
    scan,
)
from dpal_cache.data.sources import FolderSource, ListSource, LmdbSource, _read_file
from dpal_cache.parallel import ordered_map

MIN_SIDE_2 = DecodeConfig(min_side=2)  # so a 1x1 image in the corpus is too_small

# key -> (status, reason, width, height); width/height after EXIF orientation
EXPECTED = {
    "a_good.jpg": ("ok", None, 32, 48),
    "b_good.png": ("ok", None, 20, 10),
    "c_rotated.jpg": ("ok", None, 20, 40),  # stored 40 wide x 20 high, EXIF orientation 6
    "d_empty.jpg": ("failed", "empty", None, None),
    "e_text.jpg": ("failed", "not_an_image", None, None),
    "f_truncated.jpg": ("failed", "truncated", None, None),
    "g_huge.png": ("failed", "too_many_pixels", None, None),
    "h_tiny.png": ("failed", "too_small", None, None),
    "i_dangling.jpg": ("failed", "missing", None, None),
    "j_loop.jpg": ("failed", "unreadable", None, None),
    "k_loop.jpg": ("failed", "unreadable", None, None),
    "l_caf\\xe9.jpg": ("ok", None, 8, 6),  # a latin-1 file name, shown escaped
    "sub/m_good.webp": ("ok", None, 7, 5),
}
READ_FAILURES = {"i_dangling.jpg", "j_loop.jpg", "k_loop.jpg"}


def _huge_png_header() -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture()
def corpus(tmp_path: Path, encode, noise_jpeg) -> Path:
    """Good images, every corrupt kind, and files that cannot be read, in one folder."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    (root / "a_good.jpg").write_bytes(noise_jpeg(48, 32, seed=1))
    (root / "b_good.png").write_bytes(encode(rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)))
    rotated = Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6
    (root / "c_rotated.jpg").write_bytes(encode(rotated, "JPEG", exif=exif))
    (root / "d_empty.jpg").write_bytes(b"")
    (root / "e_text.jpg").write_text("this is a text file with a .jpg name\n")
    whole = noise_jpeg(64, 64, seed=2)
    (root / "f_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "g_huge.png").write_bytes(_huge_png_header())
    (root / "h_tiny.png").write_bytes(encode(Image.new("RGB", (1, 1), (9, 9, 9))))
    os.symlink(tmp_path / "deleted.jpg", root / "i_dangling.jpg")
    os.symlink(root / "k_loop.jpg", root / "j_loop.jpg")
    os.symlink(root / "j_loop.jpg", root / "k_loop.jpg")
    with open(os.fsencode(root) + b"/l_caf\xe9.jpg", "wb") as fh:
        fh.write(noise_jpeg(6, 8, seed=3))
    (root / "sub" / "m_good.webp").write_bytes(encode(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), "WEBP"))
    (root / "notes.txt").write_text("ignored")
    return root


def _scan(source, out: Path, **cfg) -> tuple[pa.Table, manifest_mod.ScanSummary]:
    summary = scan(source, out, ScanConfig(decode=MIN_SIDE_2, **cfg))
    return read_manifest(out), summary


def _shown(name: str) -> str:
    """How the manifest shows a file name that is not UTF-8."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class PidPathSource(FolderSource):
    """Records, as each image's ``path``, the id of the process that scanned it."""

    def path(self, index: int) -> str:
        return str(os.getpid())

    def read(self, index: int) -> bytes:
        return _read_file(os.path.join(self.root, self.key(index)))  # the real file, not the pid


class ExplodingSource(FolderSource):
    """A bug (not a read error) on one image: the scan must stop, not record it."""

    def read(self, index: int) -> bytes:
        if index == 5:
            raise RuntimeError("bug while reading image 5")
        return super().read(index)


# ---------------------------------------------------------------------------------------------- rows


def test_rows_record_every_image_and_its_state(corpus: Path, tmp_path: Path):
    src = FolderSource(corpus)
    table, summary = _scan(src, tmp_path / "m.parquet", workers=1)
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == sorted(EXPECTED)  # the keys are the source's order
    assert [r["index"] for r in rows] == list(range(len(EXPECTED)))
    for r in rows:
        status, reason, width, height = EXPECTED[r["key"]]
        assert (r["status"], r["reason"], r["width"], r["height"]) == (status, reason, width, height), r
        assert r["path"] == _shown(src.path(r["index"]))
        if r["key"] in READ_FAILURES:
            assert r["size"] is None and r["hash"] is None
        else:
            data = src.read(r["index"])
            assert r["size"] == len(data) == os.path.getsize(src.path(r["index"]))
            assert r["hash"] == hashlib.blake2b(data, digest_size=16).hexdigest()
        if status == "ok":
            assert r["detail"] is None
        else:
            assert r["detail"]  # always says more than the reason
    detail = {r["key"]: r["detail"] for r in rows}
    assert "100000x100000" in detail["g_huge.png"] or "pixels" in detail["g_huge.png"]
    assert "1x1" in detail["h_tiny.png"]

    failed = [k for k, v in EXPECTED.items() if v[0] == "failed"]
    assert (summary.total, summary.ok, summary.failed) == (len(EXPECTED), len(EXPECTED) - len(failed), len(failed))
    assert summary.failures_by_reason == {"unreadable": 2, **{EXPECTED[k][1]: 1 for k in failed if "loop" not in k}}
    assert summary.bytes_read == sum(r["size"] or 0 for r in rows)
    assert summary.failed_fraction == pytest.approx(len(failed) / len(EXPECTED))
    assert [e[0] for e in summary.examples] == [k for k in sorted(EXPECTED) if k in failed]


def test_schema_and_metadata(corpus: Path, tmp_path: Path):
    src = FolderSource(corpus)
    cfg = ScanConfig(workers=1, chunk_size=4, decode=MIN_SIDE_2)
    scan(src, tmp_path / "m.parquet", cfg)
    table = read_manifest(tmp_path / "m.parquet")
    assert table.schema.remove_metadata() == MANIFEST_SCHEMA
    s, i32, i64 = pa.string(), pa.int32(), pa.int64()
    assert [(f.name, f.type) for f in table.schema] == list(zip(
        ["index", "key", "path", "size", "hash", "width", "height", "status", "reason", "detail"],
        [i64, s, s, i64, s, i32, i32, s, s, s],
    ))  # fmt: skip
    meta = manifest_metadata(table)
    assert meta["version"] == 1 and meta["dpal_cache_version"] == __version__
    assert meta["source"] == {"kind": "folder", "root": str(corpus.resolve()), "count": len(EXPECTED)}
    assert meta["source_fingerprint"] == src.fingerprint()
    assert meta["scan"] == to_dict(cfg)
    assert meta["scan"]["decode"]["min_side"] == 2 and meta["scan"]["chunk_size"] == 4


def test_one_and_two_workers_write_identical_tables(corpus: Path, tmp_path: Path):
    one, s1 = _scan(FolderSource(corpus), tmp_path / "one.parquet", workers=1, chunk_size=2)
    two, s2 = _scan(FolderSource(corpus), tmp_path / "two.parquet", workers=2, chunk_size=2)
    assert one.num_rows == len(EXPECTED)
    assert one.equals(two)  # values and order; metadata differs only in the recorded worker count
    assert manifest_fingerprint(one) == manifest_fingerprint(two)
    assert (s1.ok, s1.failed, s1.failures_by_reason) == (s2.ok, s2.failed, s2.failures_by_reason)
    assert manifest_metadata(two)["scan"]["workers"] == 2


def test_workers_scan_in_other_processes(corpus: Path, tmp_path: Path):
    table, _ = _scan(PidPathSource(corpus), tmp_path / "m.parquet", workers=2, chunk_size=2)
    pids = set(table.column("path").to_pylist())
    assert str(os.getpid()) not in pids and 1 <= len(pids) <= 2
    assert table.column("status").to_pylist() == [EXPECTED[k][0] for k in sorted(EXPECTED)]  # really decoded there
    table, _ = _scan(PidPathSource(corpus), tmp_path / "m1.parquet", workers=1)
    assert set(table.column("path").to_pylist()) == {str(os.getpid())}


def test_lmdb_source_scans_with_workers(tmp_path: Path, make_lmdb, noise_jpeg):
    keys = ["34_01_0341_00001865", "00_00_0000_00000001", "12_03_0007_00000042"]
    items = {k.encode(): noise_jpeg(8 + i, 6, seed=i) for i, k in enumerate(keys)}
    items[b"12_03_0007_00000042"] = b"\xff\xd8\xff"  # a JPEG cut after three bytes
    db = make_lmdb(tmp_path / "lmdb", items)
    (db / "keys.pkl").write_bytes(pickle.dumps(keys + ["99_99_9999_99999999"]))
    table, summary = _scan(LmdbSource(db), tmp_path / "m.parquet", workers=2, chunk_size=1)
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == keys + ["99_99_9999_99999999"]
    assert [(r["status"], r["reason"], r["height"]) for r in rows] == [
        ("ok", None, 8), ("ok", None, 9), ("failed", "not_an_image", None), ("failed", "missing", None)
    ]  # fmt: skip
    assert rows[0]["path"] == f"{db}::34_01_0341_00001865"
    assert summary.failures_by_reason == {"not_an_image": 1, "missing": 1}


def test_empty_source_writes_an_empty_manifest(tmp_path: Path):
    (tmp_path / "empty.txt").write_text("# nothing\n")
    table, summary = _scan(ListSource(tmp_path / "empty.txt"), tmp_path / "m.parquet", workers=2)
    assert table.num_rows == 0 and summary.total == 0 and summary.failed_fraction == 0.0
    assert ok_indices(table).dtype == np.int64 and len(ok_indices(table)) == 0


# ---------------------------------------------------------------------------------------------- streaming


def test_row_groups_are_respected_and_pending_rows_stay_bounded(corpus: Path, tmp_path: Path, monkeypatch):
    written: list[int] = []
    real_writer = pq.ParquetWriter

    class RecordingWriter(real_writer):
        def write_table(self, table, row_group_size=None):
            written.append(table.num_rows)
            super().write_table(table, row_group_size=row_group_size)

    monkeypatch.setattr(manifest_mod.pq, "ParquetWriter", RecordingWriter)
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        # rows not yet handed to the writer never reach a row group: the parent holds at most one group
        assert done[0] - sum(written) < 2

    out = tmp_path / "m.parquet"
    scan(FolderSource(corpus), out, ScanConfig(workers=1, chunk_size=5, row_group_size=2, decode=MIN_SIDE_2), progress)
    assert done[0] == len(EXPECTED) and sum(written) == len(EXPECTED)
    assert max(written) <= 2
    meta = pq.ParquetFile(out).metadata
    assert meta.num_row_groups == -(-len(EXPECTED) // 2)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2] * 6 + [1]


def test_no_partial_file_after_success(corpus: Path, tmp_path: Path):
    out = tmp_path / "deep" / "er" / "m.parquet"  # parents are created
    _scan(FolderSource(corpus), out, workers=1)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.parquet"]


def test_a_crash_mid_scan_leaves_nothing_behind(corpus: Path, tmp_path: Path, monkeypatch):
    real_scan_one = manifest_mod.scan_one

    def scan_one(source, index, decode_cfg):
        if index == 7:
            raise RuntimeError("boom at 7")
        return real_scan_one(source, index, decode_cfg)

    monkeypatch.setattr(manifest_mod, "scan_one", scan_one)
    out = tmp_path / "m.parquet"
    with pytest.raises(RuntimeError, match="boom at 7"):
        scan(FolderSource(corpus), out, ScanConfig(workers=1, chunk_size=2, row_group_size=2))
    assert list(tmp_path.glob("m.parquet*")) == []

    out.write_bytes(b"an earlier manifest")
    with pytest.raises(RuntimeError, match="boom at 7"):
        scan(FolderSource(corpus), out, ScanConfig(workers=1, chunk_size=2, row_group_size=2))
    assert out.read_bytes() == b"an earlier manifest"
    assert not (tmp_path / "m.parquet.partial").exists()


def test_a_crash_in_a_worker_propagates_and_leaves_nothing_behind(corpus: Path, tmp_path: Path):
    out = tmp_path / "m.parquet"
    out.write_bytes(b"an earlier manifest")
    with pytest.raises(RuntimeError, match="bug while reading image 5"):
        scan(ExplodingSource(corpus), out, ScanConfig(workers=2, chunk_size=2, row_group_size=2))
    assert out.read_bytes() == b"an earlier manifest"
    assert sorted(p.name for p in tmp_path.glob("m.parquet*")) == ["m.parquet"]


# ---------------------------------------------------------------------------------------------- readers


def test_ok_indices_sorted_without_failures(corpus: Path, tmp_path: Path):
    table, _ = _scan(FolderSource(corpus), tmp_path / "m.parquet", workers=1)
    expected = [i for i, k in enumerate(sorted(EXPECTED)) if EXPECTED[k][0] == "ok"]
    got = ok_indices(table)
    assert got.dtype == np.int64 and got.tolist() == expected == [0, 1, 2, 11, 12]
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    assert ok_indices(shuffled).tolist() == expected


def test_manifest_fingerprint_stable_and_sensitive_to_bytes(corpus: Path, tmp_path: Path, noise_jpeg):
    first, _ = _scan(FolderSource(corpus), tmp_path / "a.parquet", workers=1)
    again, _ = _scan(FolderSource(corpus), tmp_path / "b.parquet", workers=2, chunk_size=3)
    assert manifest_fingerprint(first) == manifest_fingerprint(again)
    assert len(manifest_fingerprint(first)) == 32
    # the same images somewhere else: the fingerprint ignores where they live
    moved = tmp_path / "moved"
    shutil.copytree(corpus, moved, symlinks=True)
    elsewhere, _ = _scan(FolderSource(moved), tmp_path / "c.parquet", workers=1)
    assert manifest_fingerprint(elsewhere) == manifest_fingerprint(first)

    (corpus / "a_good.jpg").write_bytes(noise_jpeg(48, 32, seed=99))  # same size in pixels, other bytes
    changed, _ = _scan(FolderSource(corpus), tmp_path / "d.parquet", workers=1)
    assert changed.column("status").to_pylist() == first.column("status").to_pylist()
    assert manifest_fingerprint(changed) != manifest_fingerprint(first)


def test_read_manifest_refuses_other_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="dpal-cache scan"):
        read_manifest(tmp_path / "nope.parquet")
    pq.write_table(pa.table({"index": [0], "status": ["ok"]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="version"):
        read_manifest(tmp_path / "other.parquet")
    lacking = pa.table({"index": pa.array([0], pa.int64())}).replace_schema_metadata(
        {"dpal_cache": '{"version": 1}'}
    )
    pq.write_table(lacking, tmp_path / "lacking.parquet")
    with pytest.raises(ValueError, match="lacks column"):
        read_manifest(tmp_path / "lacking.parquet")
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(Exception):
        read_manifest(tmp_path / "text.parquet")


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"workers": -1}, "workers"), ({"chunk_size": 0}, "chunk_size"), ({"row_group_size": 0}, "row_group_size"),
     ({"max_failed_fraction": 1.5}, "max_failed_fraction"), ({"max_failed_fraction": -0.1}, "max_failed_fraction")],
)  # fmt: skip
def test_scan_config_validation(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        ScanConfig(**kwargs)


# ---------------------------------------------------------------------------------------------- ordered_map


def test_ordered_map_keeps_order_and_at_most_window_tasks_in_flight():
    lock = threading.Lock()
    in_flight = [0]
    peak = [0]
    pulled = [0]

    def work(x: int) -> int:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.002 * (x % 3))  # finish out of order
        with lock:
            in_flight[0] -= 1
        return x * x

    def items():
        for i in range(40):
            pulled[0] += 1
            yield i

    with ThreadPoolExecutor(max_workers=8) as pool:
        stream = ordered_map(pool, work, items(), window=3)
        first = next(stream)
        assert first == 0 and pulled[0] == 3  # lazy: only a window's worth was submitted
        rest = list(stream)
    assert [first, *rest] == [i * i for i in range(40)]
    assert 1 <= peak[0] <= 3


def test_ordered_map_propagates_errors():
    def work(x: int) -> int:
        if x == 4:
            raise ValueError("four")
        return x

    with ThreadPoolExecutor(max_workers=2) as pool:
        stream = ordered_map(pool, work, range(10), window=2)
        assert [next(stream) for _ in range(4)] == [0, 1, 2, 3]
        with pytest.raises(ValueError, match="four"):
            next(stream)
