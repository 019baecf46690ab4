"""``extract``: plan or resume a store, calibrate, then fill it block by block on one machine.

Decoding and rendering run in DataLoader workers, the teacher in this process, and block
writes in a writer thread, so compression and I/O overlap teacher compute. Resume is a re-run:
blocks whose done flag is set are skipped; a store made with another config, teacher or
manifest is refused with the differences listed (``overwrite=True`` starts again).

    summary = extract(cfg, source, manifest_table, "feats.zarr", progress=print)
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from torch.utils.data import DataLoader

from dpal_cache import __version__
from dpal_cache.config import differences, to_dict
from dpal_cache.data.backgrounds import Backgrounds
from dpal_cache.data.catalog import Catalog
from dpal_cache.data.manifest import manifest_fingerprint
from dpal_cache.data.sources import FolderSource, ImageSource, SourceError
from dpal_cache.devices import resolve_device
from dpal_cache.extract.compute import BlockBuffer, TeacherStep
from dpal_cache.extract.config import RUNTIME_FIELDS, ExtractConfig
from dpal_cache.extract.items import ExtractItems, block_batches, collate, render_batch, worker_context
from dpal_cache.outputs import OutputRefused, check_apart
from dpal_cache.store import io as store_io
from dpal_cache.store.calibration import Calibration, fit_calibration
from dpal_cache.store.codecs import measure_precision
from dpal_cache.store.layout import FORMAT_VERSION, STATUS_OK, StoreLayout
from dpal_cache.store.lock import StoreLock
from dpal_cache.store.meta import PrecisionInfo, StoreMeta
from dpal_cache.views.batched import BatchRenderer
from dpal_cache.views.crowd import RECIPE_LEN
from dpal_cache.views.params import PARAM_LEN

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (images finished in this step, of which failed)
# crowd images whose teacher maps measure the map codec's error in the calibration pass
CALIBRATION_CROWD_IMAGES = 4


@dataclass
class ExtractSummary:
    out: str
    images: int = 0
    ok: int = 0
    failed: int = 0
    blocks_total: int = 0
    blocks_done_before: int = 0
    blocks_written: int = 0
    seconds: float = 0.0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    bytes_per_image: int = 0


def store_identity(cfg: ExtractConfig) -> dict[str, Any]:
    """The config fields that decide stored values (a resumed run must match them exactly)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_FIELDS}


def make_layout(cfg: ExtractConfig, n_images: int, teacher) -> StoreLayout:
    patch = teacher.patch_size
    (vh, vw), (ch, cw) = cfg.views.global_view.size, cfg.views.crowd.size
    for what, (h, w) in (("global_view.size", (vh, vw)), ("crowd.size", (ch, cw))):
        if h % patch or w % patch:
            raise ValueError(f"views.{what} {h}x{w} is not a multiple of the teacher's patch size {patch}")
    return StoreLayout(
        n_images=n_images,
        views_per_image=cfg.views.views_per_image,
        crowds_per_image=cfg.views.crowds_per_image,
        shard_images=min(cfg.shard_images, n_images),
        view_grid=(vh // patch, vw // patch),
        crowd_grid=(ch // patch, cw // patch),
        dim=teacher.embed_dim,
        param_len=PARAM_LEN,
        recipe_len=RECIPE_LEN,
        token_precision=cfg.token_precision,
        map_precision=cfg.map_precision,
        gram=cfg.gram,
    )


def render_backend(render: str, device: torch.device) -> str:
    """What renders a store's views, as its identity records it: ``per-sample/cpu`` (the data workers) or
    ``batched/<device type>`` (the batched renderer where the teacher runs; GPU JPEG decoding on CUDA)."""
    return "per-sample/cpu" if render == "workers" else f"batched/{device.type}"


def new_store_meta(cfg: ExtractConfig, layout: StoreLayout, teacher, manifest: pa.Table, source: ImageSource,
                   autocast: str = "none", render: str = "per-sample/cpu") -> StoreMeta:
    """The metadata of a new store. ``autocast`` (bf16 on CUDA, else none) and ``render`` (the renderer's
    backend) join the identity: a store must not mix blocks computed in bf16 with blocks in fp32, nor views
    of two renderers."""
    return StoreMeta(
        format_version=FORMAT_VERSION,
        dpal_cache_version=__version__,
        layout=layout,
        teacher=teacher.describe(),
        views=to_dict(cfg.views),
        precision=PrecisionInfo(cfg.token_precision, cfg.map_precision, cfg.mask_at_extract),
        identity={**store_identity(cfg), "autocast": autocast, "render": render},
        extract_config=to_dict(cfg),
        manifest_fingerprint=manifest_fingerprint(manifest),
        source=source.describe(),
    )


def check_resumable(stored: StoreMeta, new: StoreMeta) -> None:
    """Refuse to resume a store whose stored values would differ from this run's."""
    def what(meta: StoreMeta) -> dict[str, Any]:
        return {"config": meta.identity, "layout": to_dict(meta.layout), "teacher": meta.teacher,
                "manifest_fingerprint": meta.manifest_fingerprint}

    diffs = differences(what(stored), what(new), labels=("store has", "this run has"))
    if diffs:
        raise store_io.StoreError(
            "the existing store was made differently; resume would mix targets:\n  "
            + "\n  ".join(diffs)
            + "\nUse the original settings, a new --out, or --overwrite to start again."
        )


def check_store_apart(out, image_folder: Path | None) -> None:
    """Refuse a local store inside the folder of the images (``ImageSource.folder``), or one that holds it."""
    local = store_io.local_store_path(out)
    try:
        if local is not None:
            check_apart(local, {"--data": image_folder})
    except OutputRefused as exc:
        raise store_io.StoreError(str(exc)) from None


def open_or_create_store(out: str, meta: StoreMeta, manifest: pa.Table, image_folder: Path | None,
                         overwrite: bool = False, storage_options: dict | None = None):
    """Open the store at ``out`` to resume it (refusing a mismatch), or create it with ``meta``; the caller
    holds its lock.

    Refused before anything is written: ``out`` inside ``image_folder`` (or holding it), and a location that
    holds something other than a dpal-cache store (``store_io.check_store_location``).
    """
    check_store_apart(out, image_folder)
    group = None
    if not overwrite:
        try:
            group = store_io.open_store(out, mode="r+", storage_options=storage_options)
        except store_io.StoreMissing:
            pass
    if group is None:
        group = store_io.create_store(out, meta, storage_options, files={"manifest.parquet": _manifest_bytes(manifest)})
    else:
        check_resumable(store_io.read_meta(group, out), meta)
        store_io.remove_partial_files(out)  # the caller holds the writer lock
        log.info("resuming %s", out)
    # the resolved config of this run, readable next to the arrays (any store: local or remote)
    store_io.put_bytes(group, "extract.yaml", yaml.safe_dump(meta.extract_config, sort_keys=False).encode())
    return group


def _manifest_bytes(manifest: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(manifest, buf, compression="zstd")
    return buf.getvalue()


def _worker_count(cfg: ExtractConfig) -> int:
    return max(1, (os.cpu_count() or 2) - 1) if cfg.workers < 0 else cfg.workers


class ExtractSession:
    """Everything needed to compute blocks of one store: built the same way by a single-process
    run and by each dask worker, so both compute identical values.

    Args:
        teacher: an already built teacher (default: built from ``cfg.teacher``/``cfg.checkpoint``).
    """

    def __init__(self, cfg: ExtractConfig, source: ImageSource, manifest: pa.Table, teacher=None):
        from dpal_cache.teachers import load_teacher

        self.cfg = cfg
        self.source = source
        self.manifest = manifest
        self.device = resolve_device(cfg.device)
        if teacher is None:
            teacher = load_teacher(cfg.teacher, cfg.checkpoint, pos_embed=cfg.pos_embed, seed=cfg.teacher_seed)
        self.teacher = teacher.to(self.device).eval()
        catalog = Catalog(source, manifest, cfg.decode)
        bg_dir = cfg.views.crowd.background_dir
        backgrounds = Backgrounds(FolderSource(bg_dir), cfg.decode) if bg_dir is not None else None
        self.render = cfg.render if cfg.render != "auto" else ("device" if self.device.type == "cuda" else "workers")
        self.renderer = BatchRenderer(self.device)
        self.dataset = ExtractItems(catalog, cfg.views, backgrounds, render=self.render)
        self.layout = make_layout(cfg, len(catalog), self.teacher)
        self.step = TeacherStep(self.teacher, self.device, amp=cfg.amp, gram=cfg.gram)
        autocast = "bf16" if self.step.amp else "none"
        self.meta = new_store_meta(cfg, self.layout, self.teacher, manifest, source, autocast,
                                   render_backend(self.render, self.device))

    def open_or_create(self, out: str, overwrite: bool = False, storage_options: dict | None = None):
        """``open_or_create_store`` for this session's layout, attributes, manifest and images."""
        return open_or_create_store(out, self.meta, self.manifest, self.source.folder(), overwrite,
                                    storage_options)

    def calibrate(self, workers: int = 0) -> Calibration:
        """Fit the mask component and int8 scales on the views of the first usable images."""
        cfg = self.cfg
        ok = self.dataset.catalog.ok
        if not len(ok):
            raise SourceError("no usable image to calibrate on: every image failed the scan (see the manifest's "
                              "reasons)")
        # spread over the data set, not its first images: folders sorted by identity or video would
        # otherwise calibrate on a handful of people
        chosen = np.unique(np.linspace(0, len(ok) - 1, min(cfg.calibration_images, len(ok))).round().astype(int))
        chosen = ok[chosen].tolist()
        batches = [chosen[i : i + cfg.batch_size] for i in range(0, len(chosen), cfg.batch_size)]
        outs, crowd_outs, crowd_images = [], [], 0
        for batch in self._loader(batches, workers):
            batch = render_batch(batch, self.cfg.views, self.renderer)
            # the fit needs the views only; crowd maps only measure the map codec's error, which the
            # first CALIBRATION_CROWD_IMAGES images measure as well (each map is Lc attention rows),
            # instead of paying crowd forwards for every calibration image (about half of the pass)
            out = self.step({**batch, "crowds": batch["crowds"][:, :0]})
            if "tokens" in out:
                outs.append(out)
            need = CALIBRATION_CROWD_IMAGES - crowd_images
            if need > 0:
                status = batch["status"][:need]
                crowd = self.step({"status": status, "views": batch["views"][:need, :0],
                                   "crowds": batch["crowds"][:need]})
                if "crowd_attn" in crowd:
                    crowd_outs.append(crowd)
                    crowd_images += int((status == STATUS_OK).sum())
        if not outs:
            raise SourceError(
                f"none of the {len(chosen)} calibration images could be read from {self.source}: they are missing "
                "or changed since the scan. Pass the --manifest made from these images (or let extract scan them)")
        tokens = np.concatenate([o["tokens"] for o in outs])
        calib = fit_calibration(tokens, self.layout.view_grid, images=len(chosen))
        maps = {"attn_cls": np.concatenate([o["attn_cls"] for o in outs])}
        for key in ("crowd_attn", "crowd_gram"):
            if crowd_outs and key in crowd_outs[0]:
                maps[key] = np.concatenate([o[key] for o in crowd_outs])
        measured = measure_precision(self.layout, calib.token_scales, tokens, maps)
        calib = dataclasses.replace(calib, measured=measured)
        log.info("calibration on %d images: mask component explains %.1f%% of patch variance; codec error %s",
                 len(chosen), 100 * calib.explained, {k: f"{v:.2e}" for k, v in measured.items()})
        return calib

    def ensure_calibration(self, group, workers: int = 0) -> Calibration:
        """The store's calibration, fitted and written first if it has none yet."""
        calib = store_io.read_calibration(group)
        if calib is None:
            calib = self.calibrate(workers)
            store_io.write_calibration(group, calib)
        return calib

    def _loader(self, batches: list[list[int]], workers: int) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            # forkserver with torch preloaded: clean workers that start in ~0.1 s (items.worker_context)
            multiprocessing_context=worker_context() if workers else None,
            prefetch_factor=4 if workers else None,
        )

    def run_blocks(self, group, blocks: list[int], calib: Calibration, workers: int,
                   progress: Progress | None = None) -> Counter[str]:
        """Compute and write ``blocks``; returns the not-cached images counted by reason.

        Rendering runs in ``workers`` DataLoader processes, the teacher here, and writes in a
        writer thread with at most two blocks in flight (bounded memory, overlapped I/O).
        """
        layout = self.layout
        reasons: Counter[str] = Counter()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer") as writer:
            pending: list[Future] = []
            buffers: dict[int, BlockBuffer] = {}
            for batch in self._loader(block_batches(layout, blocks, self.cfg.batch_size), workers):
                batch = render_batch(batch, self.cfg.views, self.renderer)
                block = int(batch["index"][0]) // layout.shard_images
                buf = buffers.setdefault(block, BlockBuffer(layout, block, self.cfg.mask_at_extract))
                buf.add(batch, self.step(batch), calib)
                if progress is not None:
                    progress(len(batch["index"]), int((batch["status"] != STATUS_OK).sum()))
                if buf.complete:
                    del buffers[block]
                    for index, reason in buf.failures:
                        reasons[reason] += 1
                        log.debug("image %d not cached: %s", index, reason)
                    while len(pending) >= 2:
                        pending.pop(0).result()
                    pending.append(writer.submit(write_block_and_failures, group, layout, block, buf.arrays,
                                                 self.failure_records(buf.failures)))
            for fut in pending:
                fut.result()
        return reasons


    def failure_records(self, failures: list[tuple[int, str]]) -> list[dict[str, Any]]:
        """(index, reason) of a block's not-cached images -> the records kept in the store (scan reasons
        come from the manifest)."""
        keys, scan_reasons = self.manifest.column("key"), self.manifest.column("reason")
        return [{"index": i, "key": keys[i].as_py(), "stage": "scan" if reason == "failed_scan" else "extract",
                 "reason": scan_reasons[i].as_py() if reason == "failed_scan" else reason}
                for i, reason in failures]


def write_block_and_failures(group, layout: StoreLayout, block: int, arrays: dict[str, np.ndarray],
                             failures: list[dict[str, Any]]) -> None:
    """The block's failure records, then its arrays and done flag (``store_io.write_block``)."""
    store_io.write_failures(group, block, failures)
    store_io.write_block(group, layout, block, arrays)


def finalize(group) -> bool:
    """Once every block is done: record completion and consolidate metadata. Returns completeness."""
    if not store_io.done_blocks(group).all():
        return False
    status = group["images/status"][:]
    store_io.write_meta(group, store_io.read_meta(group).replace(
        complete=True, images_ok=int((status == STATUS_OK).sum()), images_not_cached=int((status != STATUS_OK).sum())))
    store_io.consolidate(group)
    return True


def extract(
    cfg: ExtractConfig,
    source: ImageSource,
    manifest: pa.Table,
    out: str,
    teacher=None,
    overwrite: bool = False,
    progress: Progress | None = None,
    storage_options: dict | None = None,
    max_blocks: int | None = None,
) -> ExtractSummary:
    """Extract (or resume extracting) teacher features of ``source`` into the store at ``out``.

    Args:
        teacher: an already built teacher (default: built from the config).
        max_blocks: stop after this many blocks (time-boxed runs and tests; re-run to resume).
    """
    start = time.perf_counter()
    with StoreLock(out):  # one writer per store; a dead holder's lock is released by the kernel
        session = ExtractSession(cfg, source, manifest, teacher)
        layout = session.layout
        workers = _worker_count(cfg)
        group = session.open_or_create(out, overwrite, storage_options)
        calib = session.ensure_calibration(group, workers)
        done = store_io.done_blocks(group)
        todo = [b for b in range(layout.n_shards) if not done[b]][:max_blocks]
        log.info("extracting %d of %d blocks (%d images each) with %d worker(s) on %s",
                 len(todo), layout.n_shards, layout.shard_images, workers, session.device)
        summary = ExtractSummary(out=out, blocks_total=layout.n_shards, blocks_done_before=int(done.sum()),
                                 blocks_written=len(todo), bytes_per_image=layout.bytes_per_image())

        def count(n: int, failed: int) -> None:
            summary.images += n
            summary.failed += failed
            if progress is not None:
                progress(n, failed)

        reasons = session.run_blocks(group, todo, calib, workers, count)
        summary.ok = summary.images - summary.failed
        summary.failures_by_reason = dict(reasons.most_common())
        finalize(group)
        summary.seconds = time.perf_counter() - start
        log.info("wrote %d blocks (%d images, %d not cached) in %.1fs", summary.blocks_written, summary.images,
                 summary.failed, summary.seconds)
        return summary
