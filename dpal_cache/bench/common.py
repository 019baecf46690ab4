"""What every benchmark shares: settings, the generated data and teacher session, clocks, isolation.

A ``BenchContext`` builds things once per suite run and hands them to each benchmark: the
synthetic person images and their manifest, an ``ExtractSession`` (teacher loaded once), the
rendered block batches, their float32 teacher outputs and an extracted store. Whichever
benchmark runs first pays for them (timed where that is its job, untimed otherwise).

Timings on shared machines are noisy: benchmarks report ratios measured within one run, with
repeats interleaved. ``run_isolated`` runs a stage in a fresh spawned process and returns its
peak resident memory (``ru_maxrss``), so stages measured one after the other do not share a
high-water mark.

    ctx = BenchContext(BenchSettings(teacher="random:vit_tiny", images=8), Path("/tmp/bench_x"))
    folder, manifest = ctx.data
    outs = ctx.teacher_outputs()           # one dict of float32 numpy outputs per block batch
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import os
import platform
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpal_cache.outputs import check_output_folder
from dpal_cache.views.config import ViewsConfig

log = logging.getLogger(__name__)

SECTIONS = ("training", "extraction", "store", "loader", "render", "scaling")
STORE_PATH = Path("extraction") / "feats.zarr"  # the benchmark store, inside the workdir


@dataclass(frozen=True)
class BenchSettings:
    """Sizes and models of one suite run (the CLI options of ``dpal-cache bench``)."""

    device: str = "cpu"
    teacher: str = "random:vit_base"
    student: str = "vit_tiny_patch16"
    batch_size: int = 16
    images: int = 32  # synthetic person images of the training, extraction, store and loader benchmarks
    repeats: int = 1  # interleaved repeats of each timed comparison
    steps: int = 3  # timed optimizer steps per training run
    warmup_steps: int = 1  # optimizer steps before the timing starts
    train_workers: int = 1  # DataLoader workers of the cached and online training runs
    extract_workers: int = -1  # extract's render workers (-1: cores - 1, as extract's default)
    calibration_images: int = 16
    shard_images: int = 256  # images per store block (extract's default)
    loader_workers: tuple[int, ...] = (0, 1, 2, 4)
    loader_batches: int = 6  # timed batches per loader measurement (after one warm-up batch)
    scaling_sizes: tuple[int, ...] = (64, 256)
    scaling_teacher: str = "random:vit_tiny"
    scaling_shard_images: int = 32
    scaling_workers: int = 1  # training DataLoader workers in the scaling runs
    isolate: bool = True  # scaling stages in their own process (peak memory per stage)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.images < self.batch_size:
            raise ValueError(f"need images >= batch_size >= 1, got images {self.images}, batch {self.batch_size} "
                             "(raise --images)")
        if self.steps < 1 or self.warmup_steps < 1 or self.repeats < 1:
            raise ValueError("steps, warmup_steps and repeats must be >= 1")
        if any(n < self.batch_size for n in self.scaling_sizes):
            raise ValueError(f"scaling sizes {self.scaling_sizes} must each hold a batch of {self.batch_size}")


def machine() -> dict[str, Any]:
    """The machine and software a result was measured with."""
    import timm
    import zarr

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    out = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "zarr": zarr.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }
    if torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(0)
        out["cuda"] = torch.version.cuda
    return out


def make_dataset(root: Path, images: int, seed: int = 0) -> tuple[Path, Path]:
    """(image folder, manifest): ``images`` synthetic 256x128 persons (4 per id), scanned; reused if present."""
    from dpal_cache.data.manifest import ScanConfig, scan
    from dpal_cache.data.sources import open_source
    from dpal_cache.synth import SynthConfig, synthesize

    folder, manifest = root / "bounding_box_train", root / "manifest.parquet"
    ids = -(-images // 4)
    if not manifest.exists():
        synthesize(root, SynthConfig(ids=ids, images_per_id=4, train_fraction=1.0, masks=False, seed=seed))
        scan(open_source(folder), manifest, ScanConfig())
    return folder, manifest


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """A training ``progress`` callback that timestamps optimizer steps and keeps their records."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.times: list[float] = []
        self.records: list[dict[str, Any]] = []

    def __call__(self, record: dict[str, Any]) -> None:
        self.times.append(time.perf_counter())
        self.records.append(record)

    def durations(self) -> list[float]:
        """Seconds of each timed step (from the end of the last warm-up step on)."""
        t = self.times[self.warmup - 1 :]
        return [b - a for a, b in zip(t, t[1:])]

    def steps_per_s(self) -> float:
        """Steps per second over the timed steps."""
        d = self.durations()
        return len(d) / sum(d) if d and sum(d) > 0 else float("nan")

    def best_steps_per_s(self) -> float:
        """Steps per second of the fastest timed step: on a shared machine, the closest to this run's own
        speed (other users' load only ever slows a step down)."""
        d = self.durations()
        return 1.0 / min(d) if d and min(d) > 0 else float("nan")

    def data_wait(self) -> float | None:
        """Mean fraction of step time spent waiting for data, over the timed steps."""
        waits = [r["data_wait"] for r in self.records[self.warmup :] if r.get("data_wait") is not None]
        return float(np.mean(waits)) if waits else None


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return float(np.median(values)) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started (``VmHWM``; ``ru_maxrss`` would carry the
    high-water mark of the process it was forked from across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _isolated_child(conn, fn: Callable, args: tuple, kwargs: dict) -> None:
    try:
        result, error = fn(*args, **kwargs), None
    except BaseException:  # report it in the parent, with the child's traceback
        result, error = None, traceback.format_exc()
    usage = {
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        usage["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    conn.send((result, error, usage))
    conn.close()


def run_isolated(fn: Callable, *args: Any, isolate: bool = True, **kwargs: Any) -> tuple[Any, dict[str, float]]:
    """``fn(*args, **kwargs)`` in a fresh spawned process: (its result, its peak memory).

    ``peak_rss_mib`` is the process's own high-water mark; ``peak_rss_children_mib`` the largest
    of its waited-for children (fork DataLoader workers; it counts the pages they share with the
    stage process at fork, and forkserver workers are not its children). With ``isolate=False`` it runs here and
    the memory figures are this process's high-water mark so far (not per stage).
    """
    if not isolate:
        result = fn(*args, **kwargs)
        return result, {"peak_rss_mib": peak_rss_mib(),
                        "peak_rss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                        "isolated": False}
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_isolated_child, args=(child, fn, args, kwargs))
    proc.start()
    child.close()
    try:
        result, error, usage = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"benchmark stage {getattr(fn, '__name__', fn)} died (exit code {proc.exitcode})") from None
    proc.join()
    if error is not None:
        raise RuntimeError(f"benchmark stage {getattr(fn, '__name__', fn)} failed:\n{error}")
    return result, {**usage, "isolated": True}


# everything the suite writes into its workdir (one data folder per size and seed, one folder per section)
BENCH_ENTRIES = ("data_*", "extraction", "loader", "scaling", "store", "training")


def check_workdir(workdir: Path) -> None:
    """A reused workdir is written into again: refuse (OutputRefused) one that holds anything else."""
    check_output_folder(workdir, "a dpal-cache bench workdir", BENCH_ENTRIES, "choose a new or empty --workdir")


class BenchContext:
    """Data, teacher session, rendered batches, teacher outputs and a store, built once per suite run."""

    def __init__(self, settings: BenchSettings, workdir: Path):
        self.settings = settings
        self.workdir = Path(workdir)
        check_workdir(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(settings.device)
        self._outputs: list[dict[str, np.ndarray]] | None = None
        self._store: Path | None = None

    @functools.cached_property
    def data(self) -> tuple[Path, Path]:
        """(image folder, manifest path) of the benchmark's images."""
        s = self.settings  # one folder per size and seed: a reused --workdir never measures other images
        return make_dataset(self.workdir / f"data_{s.images}_seed{s.seed}", s.images, s.seed)

    @functools.cached_property
    def source(self):
        from dpal_cache.data.sources import open_source

        return open_source(self.data[0])

    @functools.cached_property
    def manifest(self):
        from dpal_cache.data.manifest import read_manifest

        return read_manifest(self.data[1])

    def extract_config(self, **overrides: Any):
        """The extract config of the benchmark (its teacher, views, batch, device, workers)."""
        from dpal_cache.extract.config import ExtractConfig

        s = self.settings
        args = dict(teacher=s.teacher, views=s.views, batch_size=s.batch_size, device=s.device,
                    workers=s.extract_workers, calibration_images=s.calibration_images,
                    shard_images=s.shard_images)
        return ExtractConfig(**{**args, **overrides})

    @functools.cached_property
    def session(self):
        """The ``ExtractSession`` (teacher built once, on the device)."""
        from dpal_cache.extract.run import ExtractSession

        log.info("loading teacher %s on %s", self.settings.teacher, self.device)
        return ExtractSession(self.extract_config(), self.source, self.manifest)

    @functools.cached_property
    def batch_indices(self) -> list[list[int]]:
        """Image indices of extract's teacher batches (whole blocks, ``batch_size`` each)."""
        from dpal_cache.extract.items import block_batches

        layout = self.session.layout
        return block_batches(layout, list(range(layout.n_shards)), self.settings.batch_size)

    def render(self) -> list[dict[str, Any]]:
        """Extract's collated teacher batches (uint8 views and crowds), rendered here in order (each call anew)."""
        from dpal_cache.extract.items import collate

        return [collate([self.session.dataset[i] for i in batch]) for batch in self.batch_indices]

    @functools.cached_property
    def rendered(self) -> list[dict[str, Any]]:
        """``render()``, once."""
        return self.render()

    def set_teacher_outputs(self, outputs: list[dict[str, np.ndarray]]) -> None:
        self._outputs = outputs

    def teacher_outputs(self) -> list[dict[str, np.ndarray]]:
        """The teacher's outputs on ``rendered`` (untimed unless the extraction benchmark set them)."""
        if self._outputs is None:
            self._outputs = [self.session.step(b) for b in self.rendered]
        return self._outputs

    def set_store(self, path: Path) -> None:
        self._store = Path(path)

    def store(self) -> Path:
        """A complete default (fp16) store of the benchmark's images (untimed unless extraction made it)."""
        if self._store is None:
            from dpal_cache.extract.run import extract
            from dpal_cache.store.io import StoreError

            path = self.workdir / STORE_PATH
            log.info("extracting the benchmark store %s (or resuming one of the same settings)", path)
            args = (self.session.cfg, self.source, self.manifest, str(path))
            try:
                extract(*args, teacher=self.session.teacher)
            except StoreError:  # another run's store in this workdir: start again
                extract(*args, teacher=self.session.teacher, overwrite=True)
            self._store = path
        return self._store


def as_dict(obj: Any) -> Any:
    """Dataclasses (nested) -> plain JSON-able dicts; tuples -> lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): as_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None  # JSON has no NaN
    return obj
