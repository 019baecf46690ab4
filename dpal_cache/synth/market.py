"""Write a deterministic synthetic data set in the Market-1501 layout.

    out/
      bounding_box_train/0001_c3s1_000001_01.jpg   train ids 1..round(ids * train_fraction)
      bounding_box_test/0011_c1s1_000061_01.jpg    gallery of the test ids, plus 0000_* distractors
      query/0011_c4s1_000062_01.jpg                one per (test id, camera)
      masks/<same folder>/<same stem>.png          LIP part masks (mode L), when cfg.masks
      backgrounds/bg_00000.jpg                     person-free scenes (cfg.crowd_backgrounds)
      attributes.parquet                           image, split, person_id, camera, one bool per attribute
      synth.yaml                                   the resolved SynthConfig

File names follow Market-1501: ``{pid:04d}_c{camera}s1_{frame:06d}_{box:02d}.jpg`` with 1-based
cameras; frame numbers are a running count over all files, so every name is unique.

Every file is a pure function of the seed, the config's sizes and its own task, so worker
processes render and write files independently and the output is byte-identical for any
worker count. Library use:

    summary = synthesize(Path("data/synth"), SynthConfig(ids=100, images_per_id=10))
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dpal_cache.config import dump_yaml, load_config
from dpal_cache.outputs import check_output_folder
from dpal_cache.synth.config import SynthConfig
from dpal_cache.synth.draw import render_background, render_distractor, render_image
from dpal_cache.synth.identity import ATTRIBUTE_NAMES, identity_for

log = logging.getLogger(__name__)

TAG_LAYOUT = 5  # which cameras see which person
TAG_CROWD = 6  # crowd backgrounds

TRAIN_DIR, GALLERY_DIR, QUERY_DIR = "bounding_box_train", "bounding_box_test", "query"
MASK_DIR, BACKGROUND_DIR = "masks", "backgrounds"
ATTRIBUTES_FILE, CONFIG_FILE = "attributes.parquet", "synth.yaml"
# everything synth writes at the top of its output folder; only these are ever removed
OUTPUT_NAMES = (TRAIN_DIR, GALLERY_DIR, QUERY_DIR, MASK_DIR, BACKGROUND_DIR, ATTRIBUTES_FILE, CONFIG_FILE)
SPLIT_OF_FOLDER = {TRAIN_DIR: "train", GALLERY_DIR: "gallery", QUERY_DIR: "query"}


@dataclass(frozen=True)
class SynthTask:
    """One file to render: small enough to send to a worker process."""

    kind: str  # person / distractor / background
    folder: str  # output sub-folder
    name: str  # file name (.jpg)
    person_id: int  # 0 for distractors and backgrounds
    index: int  # the person's image number, or the distractor / background number
    camera: int  # 1-based; 0 for backgrounds


@dataclass(frozen=True)
class SynthSummary:
    """What ``synthesize`` wrote."""

    out_dir: Path
    train_ids: int
    test_ids: int
    train: int  # images per split (gallery without distractors)
    gallery: int
    query: int
    distractors: int
    masks: int
    backgrounds: int
    seconds: float

    @property
    def images(self) -> int:
        """All person crops, distractors included (backgrounds not)."""
        return self.train + self.gallery + self.query + self.distractors


def market_name(person_id: int, camera: int, frame: int, box: int = 1) -> str:
    """A Market-1501 file name, e.g. ``0002_c1s1_000451_01.jpg``."""
    return f"{person_id:04d}_c{camera}s1_{frame:06d}_{box:02d}.jpg"


def cameras_of(cfg: SynthConfig, person_id: int) -> list[int]:
    """The camera (1-based) of each of the person's images: at least two different cameras per person."""
    rng = np.random.default_rng([cfg.seed, TAG_LAYOUT, person_id])
    k = int(rng.integers(2, min(cfg.cameras, cfg.images_per_id) + 1))
    seen = sorted(int(c) + 1 for c in rng.choice(cfg.cameras, size=k, replace=False))
    rest = [int(c) for c in rng.choice(seen, size=cfg.images_per_id - k)]
    return seen + rest


def query_images(cams: list[int]) -> list[bool]:
    """Which images of a test id are queries: the first image of each camera, up to a quarter
    of the id's images (at least one), the rest gallery: Market-1501 has ~1 query per 5 images.

    Every query must keep a gallery image from another camera. That fails only when every
    other camera has a single image (which became a query); turning one such query back
    into gallery fixes all queries from the other cameras at once.
    """
    first: dict[int, int] = {}
    for i, c in enumerate(cams):
        first.setdefault(c, i)
    chosen = set(sorted(first.values())[: max(1, len(cams) // 4)])
    is_query = [i in chosen for i in range(len(cams))]

    def matched(q: int) -> bool:
        return any(not is_query[g] and cams[g] != cams[q] for g in range(len(cams)))

    for q in range(len(cams)):
        if is_query[q] and not matched(q):
            other = max(i for i in range(len(cams)) if is_query[i] and cams[i] != cams[q])
            is_query[other] = False
    return is_query


def plan(cfg: SynthConfig) -> list[SynthTask]:
    """Every file ``synthesize`` renders, in a fixed order."""
    tasks: list[SynthTask] = []
    frame = 0
    for pid in range(1, cfg.ids + 1):
        cams = cameras_of(cfg, pid)
        is_query = query_images(cams) if pid > cfg.n_train_ids else [False] * len(cams)
        for n, (cam, q) in enumerate(zip(cams, is_query)):
            frame += 1
            folder = TRAIN_DIR if pid <= cfg.n_train_ids else QUERY_DIR if q else GALLERY_DIR
            tasks.append(SynthTask("person", folder, market_name(pid, cam, frame), pid, n, cam))
    for i in range(cfg.distractors):
        frame += 1
        cam = i % cfg.cameras + 1
        tasks.append(SynthTask("distractor", GALLERY_DIR, market_name(0, cam, frame), 0, i, cam))
    for i in range(cfg.crowd_backgrounds):
        tasks.append(SynthTask("background", BACKGROUND_DIR, f"bg_{i:05d}.jpg", 0, i, 0))
    return tasks


def render_task(out_dir: Path, cfg: SynthConfig, task: SynthTask) -> int:
    """Render and write one task's files (runs in a worker); returns the number of masks written."""
    if task.kind == "background":
        h, w = cfg.background_size
        img = render_background(np.random.default_rng([cfg.seed, TAG_CROWD, task.index]), h, w)
        img.save(out_dir / task.folder / task.name, "JPEG", quality=cfg.jpeg_quality)
        return 0
    if task.kind == "person":
        img, mask = render_image(cfg.seed, task.person_id, task.index, task.camera, cfg.height, cfg.width)
    else:
        img, mask = render_distractor(cfg.seed, task.index, task.camera, cfg.height, cfg.width)
    img.save(out_dir / task.folder / task.name, "JPEG", quality=cfg.jpeg_quality)
    if not cfg.masks:
        return 0
    path = (out_dir / MASK_DIR / task.folder / task.name).with_suffix(".png")
    Image.fromarray(mask).save(path, "PNG", compress_level=6)
    return 1


def is_synth_output(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a synth.yaml that loads as a SynthConfig (an earlier run's output)."""
    try:
        load_config(SynthConfig, out_dir / CONFIG_FILE)
    except (ValueError, OSError):
        return False
    return True


def _prepare(out_dir: Path, cfg: SynthConfig, overwrite: bool) -> None:
    # --overwrite may write into any folder, but replaces only synth's own entries there
    check_output_folder(out_dir, f"the output of an earlier `dpal-cache synth` (no valid {CONFIG_FILE})",
                        lambda folder: overwrite or is_synth_output(folder),
                        f"choose an empty or new folder, or pass --overwrite to replace synth's own entries there "
                        f"({', '.join(OUTPUT_NAMES)}) and leave the rest")
    for name in OUTPUT_NAMES:  # stale files of a bigger earlier run must not leak into this one
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    folders = [TRAIN_DIR, GALLERY_DIR, QUERY_DIR]
    if cfg.masks:
        folders += [f"{MASK_DIR}/{f}" for f in (TRAIN_DIR, GALLERY_DIR, QUERY_DIR)]
    if cfg.crowd_backgrounds:
        folders.append(BACKGROUND_DIR)
    for folder in folders:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    # written first so an interrupted run is still recognised (and replaced) by the next one
    dump_yaml(cfg, out_dir / CONFIG_FILE)


def _write_attributes(out_dir: Path, cfg: SynthConfig, tasks: list[SynthTask]) -> None:
    # imported here so worker processes, which import this module, do not pay for pyarrow
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(
        (SPLIT_OF_FOLDER[t.folder], t.name, t.person_id, t.camera) for t in tasks if t.kind == "person"
    )
    attrs = {pid: identity_for(cfg.seed, pid).attributes() for pid in range(1, cfg.ids + 1)}
    columns: dict[str, pa.Array] = {
        "image": pa.array([r[1] for r in rows], pa.string()),
        "split": pa.array([r[0] for r in rows], pa.string()),
        "person_id": pa.array([r[2] for r in rows], pa.int32()),
        "camera": pa.array([r[3] for r in rows], pa.int32()),
    }
    for name in ATTRIBUTE_NAMES:
        columns[name] = pa.array([attrs[r[2]][name] for r in rows], pa.bool_())
    pq.write_table(pa.table(columns), out_dir / ATTRIBUTES_FILE)


def _resolve_workers(cfg: SynthConfig, n_tasks: int) -> int:
    return max(1, min(cfg.workers or os.cpu_count() or 1, n_tasks))


def synthesize(
    out_dir: Path,
    cfg: SynthConfig,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> SynthSummary:
    """Render the whole data set described by ``cfg`` into ``out_dir``.

    Args:
        out_dir: created if missing. A non-empty folder is refused unless it is an earlier synth
            output (its synth entries are replaced) or ``overwrite`` is set (synth's entries are
            replaced, anything else in it is left alone).
        cfg: what to generate.
        progress: called with the number of files just finished, as they finish.
        overwrite: write into a non-empty folder that is not a synth output.

    With more than one worker the pool starts processes with forkserver (spawn off Linux), so
    a calling script needs the usual ``if __name__ == "__main__":`` guard.

    Raises:
        ValueError: ``out_dir`` is a file, or a non-empty non-synth folder without ``overwrite``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    tasks = plan(cfg)
    _prepare(out_dir, cfg, overwrite)
    workers = _resolve_workers(cfg, len(tasks))
    log.info("synth: rendering %d files into %s with %d worker(s)", len(tasks), out_dir, workers)
    job = functools.partial(render_task, out_dir, cfg)
    masks = 0
    if workers == 1:
        results = map(job, tasks)
        for n in results:
            masks += n
            if progress:
                progress(1)
    else:
        # forkserver/spawn: workers never inherit the parent's threads or open files; they get
        # the tiny task and write their own files
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        chunk = max(1, min(16, len(tasks) // (workers * 8)))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            for n in pool.map(job, tasks, chunksize=chunk):
                masks += n
                if progress:
                    progress(1)
    _write_attributes(out_dir, cfg, tasks)  # last: its presence means the run finished

    def count(folder: str, kind: str = "person") -> int:
        return sum(t.folder == folder and t.kind == kind for t in tasks)

    summary = SynthSummary(
        out_dir=out_dir,
        train_ids=cfg.n_train_ids,
        test_ids=cfg.ids - cfg.n_train_ids,
        train=count(TRAIN_DIR),
        gallery=count(GALLERY_DIR),
        query=count(QUERY_DIR),
        distractors=count(GALLERY_DIR, "distractor"),
        masks=masks,
        backgrounds=count(BACKGROUND_DIR, "background"),
        seconds=time.perf_counter() - start,
    )
    log.info("synth: wrote %d images and %d masks in %.1f s", summary.images, summary.masks, summary.seconds)
    return summary
