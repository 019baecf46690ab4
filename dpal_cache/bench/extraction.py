"""Extraction benchmark: ``extract`` images/s next to the bare teacher forward on the same batches.

Measured in one run, repeats interleaved:

- bare teacher: ``TeacherStep`` alone on extract's own batches, already rendered (the ceiling);
- extract: the whole ``extract()`` of the same images into a fresh store (calibration, render
  workers, teacher, encode, compress and write in the writer thread, finalize);
- where the time goes: decode, render, teacher, encode (mask score and codecs), compress (zstd,
  the store's codecs, one chunk at a time) and write (the rest of ``write_block``), each timed
  alone on the same data in this process, plus extract's own timeline: calibration, start-up to
  the first batch, steady batches and the tail after the last one.

    result = run_extraction_bench(ctx)
    result["ratio_extract_over_teacher"]
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from dpal_cache.bench.common import STORE_PATH, BenchContext, median, ratio, sync

log = logging.getLogger(__name__)


class _Timeline(logging.Handler):
    """Timestamps of extract's progress calls and of its log lines (calibration done, blocks start)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.start = time.perf_counter()
        self.batches: list[float] = []
        self.events: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        for key, prefix in (("calibrated", "calibration on"), ("blocks_started", "extracting")):
            if msg.startswith(prefix) and key not in self.events:
                self.events[key] = time.perf_counter() - self.start

    def progress(self, n: int, failed: int) -> None:
        self.batches.append(time.perf_counter() - self.start)


@contextlib.contextmanager
def _teacher_calls(timeline: _Timeline) -> Iterator[list[tuple[float, float]]]:
    """Record (start, seconds) of every ``TeacherStep`` call meanwhile (extract builds its own step)."""
    from dpal_cache.extract.compute import TeacherStep

    calls: list[tuple[float, float]] = []
    original = TeacherStep.__call__

    def timed(self, batch):
        start = time.perf_counter()
        out = original(self, batch)
        sync(self.device)
        calls.append((start - timeline.start, time.perf_counter() - start))
        return out

    TeacherStep.__call__ = timed
    try:
        yield calls
    finally:
        TeacherStep.__call__ = original


def _timed_extract(ctx: BenchContext, out) -> tuple[float, dict[str, Any]]:
    from dpal_cache.extract.run import extract

    timeline = _Timeline()
    logger = logging.getLogger("dpal_cache.extract.run")
    old_level = logger.level
    logger.setLevel(min(old_level or logging.INFO, logging.INFO))
    logger.addHandler(timeline)
    try:
        with _teacher_calls(timeline) as calls:
            timeline.start = time.perf_counter()
            extract(ctx.session.cfg, ctx.source, ctx.manifest, str(out), teacher=ctx.session.teacher,
                    overwrite=True, progress=timeline.progress)
            total = time.perf_counter() - timeline.start
    finally:
        logger.removeHandler(timeline)
        logger.setLevel(old_level)
    b = timeline.batches
    calibrated = timeline.events.get("calibrated")
    blocks_from = timeline.events.get("blocks_started", calibrated or 0.0)
    phases = {
        "total": total,
        "calibration": calibrated,
        "start_to_first_batch": b[0] - timeline.events.get("blocks_started", calibrated or 0.0) if b else None,
        "first_to_last_batch": b[-1] - b[0] if b else None,
        "after_last_batch": total - b[-1] if b else None,
        "batches": len(b),
        # the teacher inside extract: in the calibration pass, and on the block batches (same batches as
        # the bare pass, so their ratio is the slowdown from sharing the machine with render workers)
        "teacher_in_calibration": sum(d for t, d in calls if t < blocks_from),
        "teacher_in_blocks": sum(d for t, d in calls if t >= blocks_from),
    }
    return total, phases


def _bare_teacher(ctx: BenchContext) -> tuple[float, list[dict[str, np.ndarray]]]:
    step, device = ctx.session.step, ctx.session.device
    sync(device)
    start = time.perf_counter()
    outs = [step(batch) for batch in ctx.rendered]
    sync(device)
    return time.perf_counter() - start, outs


def _decode_render_seconds(ctx: BenchContext) -> tuple[float, float]:
    """(decode, decode + render) seconds for every image of the benchmark, in this process.

    Rendering is timed on a fresh render of extract's batches (kept for later sections); decoding alone is
    timed again on every image an item decoded (itself and its crowd partners).
    """
    from dpal_cache.views.crowd import CrowdRecipe

    start = time.perf_counter()
    rendered = ctx.render()  # always rendered here, also when another section filled ctx.rendered already
    both = time.perf_counter() - start
    ctx.__dict__.setdefault("rendered", rendered)  # the cached_property's slot: later sections reuse these
    loads = []
    for batch in rendered:
        for i, recipes in zip(batch["index"].tolist(), batch["recipes"]):
            loads.append(i)
            for vec in recipes:
                loads += [j for j in set(CrowdRecipe.from_vector(vec).dataset_indices()) if j != i]
    catalog = ctx.session.dataset.catalog
    start = time.perf_counter()
    for j in loads:
        catalog.load(j)
    return time.perf_counter() - start, both


def _encode_compress_write(ctx: BenchContext, outs: list[dict[str, np.ndarray]], store) -> dict[str, float]:
    """Seconds to encode the outputs into blocks, to zstd-compress their compressed (per-block) chunks, and to
    write them."""
    import numcodecs

    from dpal_cache.extract.compute import BlockBuffer
    from dpal_cache.store import io as store_io

    layout, session = ctx.session.layout, ctx.session
    calib = store_io.read_calibration(store_io.open_store(str(store), "r"))
    start = time.perf_counter()
    buffers: dict[int, BlockBuffer] = {}
    for batch, out in zip(ctx.rendered, outs):
        block = int(batch["index"][0]) // layout.shard_images
        buffers.setdefault(block, BlockBuffer(layout, block, session.cfg.mask_at_extract)).add(batch, out, calib)
    encode = time.perf_counter() - start

    specs = layout.arrays()
    start = time.perf_counter()
    for buf in buffers.values():
        for name, data in buf.arrays.items():
            if not specs[name].compressed:  # the row arrays are stored raw
                continue
            codec = numcodecs.Zstd(level=3)
            rows = specs[name].chunks[0]
            for r in range(0, len(data), rows):
                codec.encode(np.ascontiguousarray(data[r : r + rows]))
    compress = time.perf_counter() - start

    scratch = store_io.create_store(str(ctx.workdir / "extraction" / "write.zarr"), session.meta)
    start = time.perf_counter()
    for block, buf in buffers.items():
        store_io.write_block(scratch, layout, block, buf.arrays)
    write_total = time.perf_counter() - start
    return {"encode": encode, "compress": compress, "write": max(0.0, write_total - compress),
            "compress_and_write": write_total}


def _repeat_ratios(t_teacher: float, t_extract: float, phases: dict[str, Any], batches: int) -> dict[str, float]:
    """The ratios of one repeat (bare teacher and extract measured one after the other)."""
    blocks = t_extract - (phases["calibration"] or 0.0)  # calibration: calibration_images through the teacher
    steady = None
    if phases["batches"] > 1 and phases["first_to_last_batch"]:
        # batches 2..n of extract against the same batches of the bare teacher
        steady = t_teacher / batches * (phases["batches"] - 1) / phases["first_to_last_batch"]
    return {
        "extract_over_teacher": ratio(t_teacher, t_extract),
        "without_calibration": ratio(t_teacher, blocks),
        "steady_batches": steady,
        # in the same run, so immune to load drift: how busy the teacher kept the block phase, and how much
        # slower its forward ran there than in the bare pass (sharing the cores with render workers)
        "teacher_busy_in_blocks": ratio(phases["teacher_in_blocks"], blocks),
        "teacher_slowdown_in_extract": ratio(phases["teacher_in_blocks"], t_teacher),
    }


def run_extraction_bench(ctx: BenchContext) -> dict[str, Any]:
    """Images/s of extract and of the bare teacher on the same batches, their ratios and the breakdown."""
    s = ctx.settings
    images = sum(len(b) for b in ctx.batch_indices)
    decode, decode_render = _decode_render_seconds(ctx)
    ctx.session.step(ctx.rendered[0])  # warm-up: allocation, kernel choice, position tables
    store = ctx.workdir / STORE_PATH
    teacher_s, extract_s, repeats, timelines = [], [], [], []
    outs = None
    for r in range(s.repeats):
        t_teacher, outs = _bare_teacher(ctx)
        t_extract, timeline = _timed_extract(ctx, store)
        teacher_s.append(t_teacher)
        extract_s.append(t_extract)
        timelines.append(timeline)
        repeats.append(_repeat_ratios(t_teacher, t_extract, timeline, len(ctx.rendered)))
        log.info("extraction repeat %d: teacher %.1fs, extract %.1fs", r, t_teacher, t_extract)
    ctx.set_teacher_outputs(outs)
    ctx.set_store(store)
    rest = _encode_compress_write(ctx, outs, store)
    t_teacher, t_extract = median(teacher_s), median(extract_s)
    ratios = {key: median([r[key] for r in repeats if r[key] is not None]) for key in repeats[0]}
    return {
        "teacher": s.teacher,
        "device": str(ctx.session.device),
        "amp_bf16": bool(ctx.session.step.amp),
        "images": images,
        "batch_size": s.batch_size,
        "calibration_images": ctx.session.cfg.calibration_images,
        "workers": ctx.session.cfg.workers,
        "repeats": s.repeats,
        "bare_teacher_images_per_s": images / t_teacher,
        "extract_images_per_s": images / t_extract,
        "ratio_extract_over_teacher": ratios.pop("extract_over_teacher"),
        # fastest bare pass over fastest extract: the other users of a shared machine removed
        "best_ratio_extract_over_teacher": ratio(min(teacher_s), min(extract_s)),
        "ratios": ratios,
        "ratios_by_repeat": repeats,
        "seconds": {"decode": decode, "render": max(0.0, decode_render - decode), "teacher": t_teacher, **rest,
                    "extract_total": t_extract},
        "seconds_by_repeat": {"teacher": teacher_s, "extract": extract_s},
        "extract_timelines": timelines,
    }
