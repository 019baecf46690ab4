"""The manifest: one Parquet row per source image, written by ``dpal-cache scan``.

Columns (``MANIFEST_SCHEMA``): ``index`` (position in the source; joins manifest and store),
``key``, ``path``, ``size`` (bytes), ``hash`` (blake2b-128 hex of the encoded bytes), ``width``
and ``height`` (after EXIF orientation), ``status`` (``ok``/``failed``), ``reason`` (a decode
reason from ``decode.DECODE_REASONS`` or a read reason ``missing``/``unreadable``) and
``detail``. Corrupt images are recorded, never fatal. The Parquet schema metadata holds the
source description, the decode config and the scan config under ``dpal_cache``.

The scan streams: worker processes read and decode chunks of indices and return only the
small rows; the parent writes 64k-row groups to ``OUT.partial`` and renames it at the end.

    summary = scan(open_source("imgs/"), Path("manifest.parquet"), ScanConfig())
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpal_cache import __version__
from dpal_cache.config import check, to_dict
from dpal_cache.data.decode import DecodeConfig, ImageDecodeError, decode_rgb
from dpal_cache.data.sources import ImageSource, SourceReadError
from dpal_cache.parallel import ordered_map, process_pool

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MANIFEST_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("key", pa.string()),
        ("path", pa.string()),
        ("size", pa.int64()),
        ("hash", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


@dataclass(frozen=True)
class ScanConfig:
    """How ``dpal-cache scan`` reads, decodes and records a source."""

    workers: int = 0  # 0: one per CPU core; 1: no worker processes
    chunk_size: int = 128  # images per task sent to a worker
    row_group_size: int = 65_536
    max_failed_fraction: float = 0.01  # the CLI exits non-zero above this
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        check(self.workers >= 0, "workers", "must be >= 0")
        check(self.chunk_size >= 1, "chunk_size", "must be >= 1")
        check(self.row_group_size >= 1, "row_group_size", "must be >= 1")
        check(0.0 <= self.max_failed_fraction <= 1.0, "max_failed_fraction", "must be in [0, 1]")


@dataclass
class ScanSummary:
    """What a scan found; ``failed_fraction`` decides the CLI's exit code."""

    out: Path
    total: int = 0
    ok: int = 0
    failed: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # (key, reason, detail), first few

    @property
    def failed_fraction(self) -> float:
        return self.failed / self.total if self.total else 0.0

    @property
    def images_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


def content_hash(data: bytes) -> str:
    """Fast content hash recorded per image (blake2b, 128 bits, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _utf8(name: str) -> str:
    """``name`` as valid UTF-8: a file name that is not UTF-8 (surrogate-escaped) is shown with backslash escapes,
    as LMDB keys are; Parquet strings must be UTF-8, and one odd name must not abort the scan."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def scan_one(source: ImageSource, index: int, decode_cfg: DecodeConfig) -> tuple:
    """Read, hash and decode image ``index``; return its manifest row as a tuple (schema order)."""
    key = _utf8(source.key(index))
    path = _utf8(source.path(index))
    try:
        data = source.read(index)
    except SourceReadError as exc:
        return (index, key, path, None, None, None, None, "failed", exc.reason, exc.detail)
    digest = content_hash(data)
    try:
        arr = decode_rgb(data, decode_cfg)
    except ImageDecodeError as exc:
        return (index, key, path, len(data), digest, None, None, "failed", exc.reason, exc.detail)
    return (index, key, path, len(data), digest, arr.shape[1], arr.shape[0], "ok", None, None)


# Worker-process state, set once per worker by the pool initializer (the source is pickled once).
_WORKER: dict[str, Any] = {}


def _init_worker(source: ImageSource, decode_cfg: DecodeConfig) -> None:
    _WORKER["source"] = source
    _WORKER["decode"] = decode_cfg


def _scan_range(bounds: tuple[int, int]) -> list[tuple]:
    source, decode_cfg = _WORKER["source"], _WORKER["decode"]
    return [scan_one(source, i, decode_cfg) for i in range(*bounds)]


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _rows_to_table(rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows)) if rows else [[] for _ in MANIFEST_SCHEMA]
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, MANIFEST_SCHEMA)], schema=MANIFEST_SCHEMA
    )


def _schema_with_metadata(source: ImageSource, cfg: ScanConfig) -> pa.Schema:
    meta = {
        "version": MANIFEST_VERSION,
        "dpal_cache_version": __version__,
        "source": source.describe(),
        "source_fingerprint": source.fingerprint(),
        "scan": to_dict(cfg),
    }
    return MANIFEST_SCHEMA.with_metadata({"dpal_cache": json.dumps(meta, sort_keys=True)})


def _worker_count(cfg: ScanConfig, n_images: int) -> int:
    workers = cfg.workers or (os.cpu_count() or 1)
    return max(1, min(workers, -(-n_images // cfg.chunk_size)))


def scan(
    source: ImageSource,
    out: Path,
    cfg: ScanConfig = ScanConfig(),
    progress: Callable[[int], None] | None = None,
) -> ScanSummary:
    """Scan every image of ``source`` into a manifest at ``out`` (replaced atomically).

    Args:
        source: the images.
        out: the Parquet file to write.
        cfg: workers, chunking and decode settings.
        progress: called with the number of images finished after each chunk.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    summary = ScanSummary(out=out)
    reasons: Counter[str] = Counter()
    n = len(source)
    workers = _worker_count(cfg, n)
    log.info("scanning %d images from %s with %d worker(s)", n, source.describe().get("root", source.kind), workers)
    start = time.perf_counter()
    pending: list[tuple] = []

    def consume(rows: list[tuple], writer: pq.ParquetWriter) -> None:
        for row in rows:
            summary.total += 1
            summary.bytes_read += row[3] or 0
            if row[7] == "ok":
                summary.ok += 1
            else:
                summary.failed += 1
                reasons[row[8]] += 1
                if len(summary.examples) < 10:
                    summary.examples.append((row[1], row[8], row[9]))
        pending.extend(rows)
        while len(pending) >= cfg.row_group_size:  # a chunk may hold several row groups
            writer.write_table(_rows_to_table(pending[: cfg.row_group_size]), row_group_size=cfg.row_group_size)
            del pending[: cfg.row_group_size]
        if progress is not None:
            progress(len(rows))

    try:
        with pq.ParquetWriter(partial, _schema_with_metadata(source, cfg), compression="zstd") as writer:
            if workers == 1:
                for bounds in _chunks(n, cfg.chunk_size):
                    consume([scan_one(source, i, cfg.decode) for i in range(*bounds)], writer)
            else:
                # the source is pickled once per worker through the initializer, not once per task
                with process_pool(workers, _init_worker, (source, cfg.decode)) as pool:
                    for rows in ordered_map(pool, _scan_range, _chunks(n, cfg.chunk_size), window=4 * workers):
                        consume(rows, writer)
            if pending:
                writer.write_table(_rows_to_table(pending), row_group_size=cfg.row_group_size)
        os.replace(partial, out)
    finally:
        if partial.exists():
            partial.unlink()
    summary.seconds = time.perf_counter() - start
    summary.failures_by_reason = dict(reasons.most_common())
    log.info(
        "scanned %d images (%d failed) in %.1fs, %.0f images/s",
        summary.total,
        summary.failed,
        summary.seconds,
        summary.images_per_second,
    )
    return summary


def read_manifest(path: str | Path) -> pa.Table:
    """Read a manifest, refusing files that are not dpal-cache manifests of a known version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist (create it with `dpal-cache scan`)")
    table = pq.read_table(path)
    meta = manifest_metadata(table)
    if meta.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {meta.get('version')!r}, this dpal-cache reads {MANIFEST_VERSION}")
    missing = [f.name for f in MANIFEST_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    return table


def manifest_metadata(table: pa.Table) -> dict[str, Any]:
    """The ``dpal_cache`` metadata a scan stored in the Parquet schema ({} if absent)."""
    raw = (table.schema.metadata or {}).get(b"dpal_cache")
    return json.loads(raw) if raw else {}


def ok_indices(table: pa.Table) -> np.ndarray:
    """Sorted int64 indices of the images that decoded fine (the only ones later stages use)."""
    status = table.column("status").to_numpy(zero_copy_only=False)
    index = table.column("index").to_numpy()
    return np.sort(index[status == "ok"]).astype(np.int64)


def manifest_fingerprint(table: pa.Table) -> str:
    """Hash of (index, key, hash, status) of every row: stores record it to detect a changed manifest."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(table.column("index").to_numpy(), dtype="<i8").tobytes())
    for name in ("key", "hash", "status"):
        # values, not Arrow buffers: buffers carry padding and null slots that are not data
        h.update(b"\1" + "\0".join(table.column(name).fill_null("").to_pylist()).encode("utf-8"))
    return h.hexdigest()
