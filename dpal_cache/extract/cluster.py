"""``extract`` on a dask.distributed cluster: one task per block, the teacher loaded once per worker.

The coordinator (the process holding the ``Client``) never needs the teacher's weights or the
images: a first task builds the worker's session and returns the store layout and attributes,
the coordinator creates (or checks and resumes) the store and writes every attribute itself
(attrs are one JSON document: one writer), a second task fits the calibration when the store
has none, and then one task per unfinished block computes that block and writes it whole
(``run_blocks`` with one block: one writer per shard, then the done flag). Blocks use exactly
the batches a single-process run uses, so the store is bitwise identical to ``extract``'s.

Every worker must reach the data (``data``/``root`` paths), the manifest file, the teacher
checkpoint (``cfg.checkpoint`` or the default cache location) and the store (a shared
filesystem path or an fsspec URL, with ``storage_options`` sent to the tasks) under the same
names as the coordinator. Run workers with one thread each (``--nthreads 1``) and one per GPU;
declare GPUs with ``--resources GPU=1`` and the tasks will ask for one.

    with Client("tcp://scheduler:8786") as client:
        summary = extract_distributed(cfg, "/data/LUP1M", None, "lup.manifest.parquet", "s3://b/feats.zarr", client)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpal_cache.config import to_dict
from dpal_cache.data.manifest import manifest_fingerprint, read_manifest
from dpal_cache.data.sources import data_folder, open_source
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.extract.run import (
    ExtractSession,
    ExtractSummary,
    Progress,
    check_resumable,
    finalize,
    open_or_create_store,
)
from dpal_cache.store import io as store_io
from dpal_cache.store.calibration import Calibration
from dpal_cache.store.lock import StoreLock
from dpal_cache.store.meta import StoreMeta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractJob:
    """What a worker needs to rebuild the coordinator's session: the config and where the inputs are."""

    cfg: ExtractConfig
    data: str
    root: str | None
    manifest_path: str

    def session_key(self) -> str:
        """Identity of the worker session: the config, the paths, and the manifest file's version."""
        st = os.stat(self.manifest_path)
        return json.dumps([to_dict(self.cfg), self.data, self.root, self.manifest_path, st.st_size, st.st_mtime_ns],
                          sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------
# worker side


@dataclass
class _WorkerSession:
    key: str
    session: ExtractSession
    lock: threading.Lock  # a worker started with several threads still runs one block at a time


# one session per worker, dropped with the worker (in-process workers share this module)
_SESSIONS: weakref.WeakKeyDictionary[Any, _WorkerSession] = weakref.WeakKeyDictionary()
_SESSIONS_LOCK = threading.Lock()


class _NoWorker:
    """Stands for the worker when a task function is called directly (tests, debugging)."""

    name = address = "local"


_NO_WORKER = _NoWorker()


def _current_worker():
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return _NO_WORKER


def _worker_config(cfg: ExtractConfig, worker) -> ExtractConfig:
    """Spread the workers of one machine over its GPUs when none was pinned (``--dask-workers N``).

    Workers started with their own ``CUDA_VISIBLE_DEVICES`` see one GPU and are left alone.
    """
    if cfg.device not in ("auto", "cuda") or not isinstance(worker.name, int):
        return cfg
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count <= 1:
        return cfg
    return dataclasses.replace(cfg, device=f"cuda:{worker.name % count}")


def _session(job: ExtractJob) -> _WorkerSession:
    """This worker's session for ``job``, built on first use (teacher, source, manifest loaded once)."""
    worker = _current_worker()
    key = job.session_key()
    with _SESSIONS_LOCK:
        entry = _SESSIONS.get(worker)
        if entry is None or entry.key != key:
            _SESSIONS.pop(worker, None)  # free the previous job's teacher before loading this one
            source = open_source(job.data, job.root)
            manifest = read_manifest(job.manifest_path)
            session = ExtractSession(_worker_config(job.cfg, worker), source, manifest)
            log.info("worker %s: teacher %s on %s, %d images", worker.address, job.cfg.teacher, session.device,
                     len(source))
            entry = _SESSIONS[worker] = _WorkerSession(key, session, threading.Lock())
    return entry


def _plan_task(job: ExtractJob) -> StoreMeta:
    """The metadata of the store this job writes (as seen by a worker)."""
    session = _session(job).session
    # the worker may have been given another GPU; record the config as asked (device is a runtime field)
    return session.meta.replace(extract_config=to_dict(job.cfg))


def _calibrate_task(job: ExtractJob) -> Calibration:
    entry = _session(job)
    with entry.lock:
        return entry.session.calibrate(workers=0)


def _block_task(block: int, job: ExtractJob, out: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Compute and write one block; returns its image and failure counts."""
    entry = _session(job)
    group = store_io.open_store(out, mode="r+", storage_options=storage_options)
    # a worker that sees other weights, config or manifest than the coordinator must not write into the store
    check_resumable(store_io.read_meta(group, out), entry.session.meta)
    calib = store_io.read_calibration(group)
    if calib is None:
        raise store_io.StoreError(f"{out} has no calibration yet; the coordinator writes it before any block")
    counts: Counter[str] = Counter()

    def count(n: int, failed: int) -> None:
        counts["images"] += n
        counts["failed"] += failed

    with entry.lock:
        reasons = entry.session.run_blocks(group, [block], calib, workers=0, progress=count)
    return {"block": block, "images": counts["images"], "failed": counts["failed"], "reasons": dict(reasons)}


# ---------------------------------------------------------------------------------------------
# coordinator side


def workers_have_gpus(client) -> bool:
    """Whether any worker of the cluster declares a ``GPU`` resource."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in workers)


def extract_distributed(
    cfg: ExtractConfig,
    data: str | Path,
    root: str | Path | None,
    manifest_path: str | Path,
    out: str,
    client,
    overwrite: bool = False,
    progress: Progress | None = None,
    storage_options: dict | None = None,
    gpu: bool | None = None,
    retries: int = 2,
) -> ExtractSummary:
    """Extract (or resume) the store at ``out`` with one dask task per unfinished block.

    Args:
        cfg: as for ``extract``; ``cfg.workers`` is not used (each task renders its block in-process).
        data, root, manifest_path: the images and their manifest, as paths every worker can open.
        client: a connected ``distributed.Client``.
        progress: called with (images, of which failed) as each block finishes.
        storage_options: fsspec options of a remote ``out``, used by the coordinator and every task.
        gpu: tasks ask for ``resources={"GPU": 1}`` (default: when some worker declares GPUs).
        retries: extra attempts of a task that raised (a lost worker's tasks are rescheduled anyway).
    """
    from distributed import as_completed

    start = time.perf_counter()
    # workers may run elsewhere (shared filesystem): send absolute paths, not this process's cwd
    if cfg.checkpoint is not None:
        cfg = dataclasses.replace(cfg, checkpoint=Path(os.path.abspath(cfg.checkpoint)))
    job = ExtractJob(cfg, os.path.abspath(data), None if root is None else os.path.abspath(root),
                     os.path.abspath(manifest_path))
    if gpu is None:
        gpu = workers_have_gpus(client)
    opts: dict[str, Any] = {"pure": False, "retries": retries, "resources": {"GPU": 1} if gpu else None}

    # the coordinator holds the writer lock for its workers: they write disjoint blocks under it
    with StoreLock(out):
        meta = client.submit(_plan_task, job, **opts).result()
        layout = meta.layout
        manifest = read_manifest(manifest_path)
        if manifest_fingerprint(manifest) != meta.manifest_fingerprint:
            raise store_io.StoreError(f"the workers read another manifest at {manifest_path} than this process")
        group = open_or_create_store(out, meta, manifest, data_folder(data), overwrite, storage_options)
        if store_io.read_calibration(group) is None:
            store_io.write_calibration(group, client.submit(_calibrate_task, job, **opts).result())

        done = store_io.done_blocks(group)
        todo = [b for b in range(layout.n_shards) if not done[b]]
        log.info("extracting %d of %d blocks (%d images each) on %d dask worker(s)%s", len(todo), layout.n_shards,
                 layout.shard_images, len(client.scheduler_info(n_workers=-1)["workers"]), " (GPU)" if gpu else "")
        summary = ExtractSummary(out=out, blocks_total=layout.n_shards, blocks_done_before=int(done.sum()),
                                 bytes_per_image=layout.bytes_per_image())
        reasons: Counter[str] = Counter()
        errors: list[tuple[int, BaseException]] = []
        futures = client.map(_block_task, todo, job=job, out=out, storage_options=storage_options, **opts)
        block_of = {f.key: b for f, b in zip(futures, todo)}
        try:
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except Exception as exc:  # raised on every attempt: let the other blocks finish first
                    errors.append((block_of[fut.key], exc))
                    continue
                summary.blocks_written += 1
                summary.images += res["images"]
                summary.failed += res["failed"]
                reasons.update(res["reasons"])
                if progress is not None:
                    progress(res["images"], res["failed"])
        finally:
            client.cancel([f for f in futures if not f.done()])  # an interrupted coordinator leaves no work behind
        summary.ok = summary.images - summary.failed
        summary.failures_by_reason = dict(reasons.most_common())
        if errors:
            blocks = sorted(b for b, _ in errors)
            exc = errors[0][1]
            exc.add_note(f"{len(blocks)} block(s) failed after {retries} retries: {blocks}; "
                         f"{summary.blocks_written} written now; re-run to resume")
            raise exc
        finalize(group)
        summary.seconds = time.perf_counter() - start
        log.info("wrote %d blocks (%d images, %d not cached) in %.1fs", summary.blocks_written, summary.images,
                 summary.failed, summary.seconds)
        return summary
