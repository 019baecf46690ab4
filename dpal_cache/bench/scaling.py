"""Scaling benchmark: extraction and training time per 1k images, and peak memory, at several sizes.

For each size a fresh synthetic data set is extracted (``extract``) and trained on for one epoch
(``train`` from the store), each stage in its own spawned process so that its peak resident
memory is its own (``run_isolated``). Time per 1k images is reported twice: over the whole
stage (start-up, calibration and the tail included) and over its steady part (between the first
and last batch or optimizer step). Linear scaling means a constant time per image; bounded
memory means a flat peak. Block size is ``scaling_shard_images`` so every size has several blocks.

    result = run_scaling_bench(ctx)
    result["ratios"]["extract_steady_per_image"]     # largest size over smallest
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from dpal_cache.bench.common import BenchContext, make_dataset, ratio, run_isolated

log = logging.getLogger(__name__)


def extract_stage(cfg, folder: str, manifest: str, out: str) -> dict[str, Any]:
    """Extract ``folder`` into ``out``: seconds and the times of each batch (run in a fresh process)."""
    from dpal_cache.data.manifest import read_manifest
    from dpal_cache.data.sources import open_source
    from dpal_cache.extract.run import extract

    start = time.perf_counter()
    times: list[float] = []
    summary = extract(cfg, open_source(folder), read_manifest(manifest), out, overwrite=True,
                      progress=lambda n, failed: times.append(time.perf_counter() - start))
    return {"seconds": time.perf_counter() - start, "images": summary.images, "marks": times}


def train_stage(cfg, store: str, folder: str, run_dir: str) -> dict[str, Any]:
    """Train one run from ``store``: seconds and the time of each optimizer step (run in a fresh process)."""
    import shutil

    from dpal_cache.data.sources import open_source
    from dpal_cache.train.loop import train

    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    times: list[float] = []
    summary = train(cfg, store, open_source(folder), Path(run_dir),
                    progress=lambda record: times.append(time.perf_counter() - start))
    return {"seconds": time.perf_counter() - start, "steps": summary.steps, "marks": times}


def _per_1k(res: dict[str, Any], units: int, per_mark: int) -> dict[str, Any]:
    """Seconds per 1k images, whole stage and steady (first to last mark, each mark ``per_mark`` images)."""
    marks = res.pop("marks")
    steady = None
    if len(marks) > 1 and marks[-1] > marks[0]:
        steady = (marks[-1] - marks[0]) / ((len(marks) - 1) * per_mark) * 1000
    return {**res, "seconds_per_1k": res["seconds"] / units * 1000, "steady_seconds_per_1k": steady}


def run_scaling_bench(ctx: BenchContext) -> dict[str, Any]:
    """Per size: extract and train seconds per 1k images and peak memory; ratios of the largest to the smallest."""
    from dpal_cache.train.config import TrainConfig
    from dpal_cache.train.students import StudentConfig

    s = ctx.settings
    root = ctx.workdir / "scaling"
    sizes: dict[str, dict[str, Any]] = {}
    for n in s.scaling_sizes:
        folder, manifest = make_dataset(root / f"data_{n}", n, s.seed)
        ecfg = ctx.extract_config(teacher=s.scaling_teacher, shard_images=s.scaling_shard_images)
        store = str(root / f"feats_{n}.zarr")
        res, mem = run_isolated(extract_stage, ecfg, str(folder), str(manifest), store, isolate=s.isolate)
        extract = {**_per_1k(res, res["images"], s.batch_size), "memory": mem}
        images = res["images"]
        tcfg = TrainConfig(student=StudentConfig(name=s.student), batch_size=s.batch_size, epochs=1,
                           workers=s.scaling_workers, device=s.device, log_every=1, checkpoint_every=10**9,
                           seed=s.seed)
        res, mem = run_isolated(train_stage, tcfg, store, str(folder), str(root / f"run_{n}"), isolate=s.isolate)
        train = {**_per_1k(res, res["steps"] * s.batch_size, s.batch_size), "memory": mem}
        sizes[str(images)] = {"extract": extract, "train": train}
        log.info("scaling %d images: extract %.1fs, train %.1fs", images, extract["seconds"], train["seconds"])
    small, large = sizes[min(sizes, key=int)], sizes[max(sizes, key=int)]
    ratios = {}
    for stage in ("extract", "train"):
        a, b = small[stage], large[stage]
        ratios[f"{stage}_per_image"] = ratio(b["seconds_per_1k"], a["seconds_per_1k"])
        ratios[f"{stage}_steady_per_image"] = ratio(b["steady_seconds_per_1k"] or float("nan"),
                                                    a["steady_seconds_per_1k"] or float("nan"))
        ratios[f"{stage}_peak_rss"] = ratio(b["memory"]["peak_rss_mib"], a["memory"]["peak_rss_mib"])
    return {"teacher": s.scaling_teacher, "student": s.student, "batch_size": s.batch_size,
            "shard_images": s.scaling_shard_images, "isolated": s.isolate, "sizes": sizes,
            "ratios_largest_over_smallest": ratios}
