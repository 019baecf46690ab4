"""Loader benchmark: samples/s the store dataset delivers with 0, 1, 2, 4 DataLoader workers.

Each worker count is measured for four datasets over the same images and rows, through
training's own ``make_loader`` and ``EpochSampler``:

- ``store``: ``StoreDataset`` samples as training gets them (target reads from the Zarr store,
  decode, re-rendered views, local crops and crowd image);
- ``memmap``: the same samples with the target rows read from plain numpy memmaps of the same
  arrays instead of the store;
- ``store_targets`` / ``memmap_targets``: the target reads and decode alone, no rendering: what
  reading costs, and its floor.

The first batch of every loader (worker start-up) is left out of the timing.

    result = run_loader_bench(ctx)
    result["samples_per_s"]["store"]["2"]
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from dpal_cache.bench.common import BenchContext
from dpal_cache.train.data import StoreDataset, sample_keys

log = logging.getLogger(__name__)

# the target arrays of the attention relation (the one the bench trains with)
TARGET_ARRAYS = ("views/tokens", "views/attn_cls", "views/mask_score", "crowds/attn")


def export_memmaps(store: str, out: Path) -> dict[str, str]:
    """Write each target array of ``store`` to ``out/<name>.npy`` (as stored: fp16 / int8 / uint8)."""
    import zarr

    group = zarr.open_group(store, mode="r")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in TARGET_ARRAYS:
        path = out / (name.replace("/", "__") + ".npy")
        np.save(path, group[name][:])
        paths[name] = str(path)
    return paths


class MemmapStoreDataset(StoreDataset):
    """``StoreDataset`` whose target rows come from numpy memmaps instead of the Zarr store."""

    def __init__(self, url: str, source, memmaps: dict[str, str]):
        super().__init__(url, source)
        self.memmap_paths = memmaps
        self._maps: dict[str, np.ndarray] | None = None
        self._maps_pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_maps"], state["_maps_pid"] = None, -1
        return state

    def _read_rows(self, rows: dict[str, list[int]]) -> dict[str, np.ndarray]:
        if self._maps is None or self._maps_pid != os.getpid():
            self._maps = {name: np.load(path, mmap_mode="r") for name, path in self.memmap_paths.items()}
            self._maps_pid = os.getpid()
        return {name: self._maps[name][np.asarray(rs, dtype=np.int64)] for name, rs in rows.items()}  # one gather


class TargetsOnly(Dataset):
    """The target half of a ``StoreDataset`` batch (rows chosen as training chooses them), no rendering."""

    def __init__(self, dataset: StoreDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list[int]) -> dict[str, Any]:
        images, epochs = sample_keys(keys, self.dataset.images)
        return self.dataset.read_targets(*self.dataset.target_rows(images, epochs))


def samples_per_s(dataset, batch_size: int, workers: int, batches: int, seed: int = 0) -> float:
    """Samples/s of ``batches`` batches after a first (warm-up, worker start-up) batch."""
    from dpal_cache.train.data import EpochSampler, make_loader

    per_epoch = max(1, len(dataset) // batch_size)
    sampler = EpochSampler(len(dataset), batch_size, end_epoch=-(-(batches + 1) // per_epoch) + 1, seed=seed)
    loader = make_loader(dataset, sampler, workers)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    done = 0
    for _ in range(batches):
        batch = next(it)
        done += len(next(iter(batch.values())))
    elapsed = time.perf_counter() - start
    del it
    return done / elapsed


def run_loader_bench(ctx: BenchContext) -> dict[str, Any]:
    """Samples/s per dataset kind and worker count (keys of the inner dicts are worker counts)."""
    s = ctx.settings
    store = str(ctx.store())
    source = ctx.source
    memmaps = export_memmaps(store, ctx.workdir / "loader" / "memmap")
    datasets = {"store": StoreDataset(store, source), "memmap": MemmapStoreDataset(store, source, memmaps)}
    datasets["store_targets"] = TargetsOnly(datasets["store"])
    datasets["memmap_targets"] = TargetsOnly(datasets["memmap"])
    rates: dict[str, dict[str, float]] = {name: {} for name in datasets}
    for workers in s.loader_workers:
        for name, dataset in datasets.items():  # interleaved: each worker count sees the same machine load
            rates[name][str(workers)] = samples_per_s(dataset, s.batch_size, workers, s.loader_batches, s.seed)
            log.info("loader %s, %d workers: %.1f samples/s", name, workers, rates[name][str(workers)])
    return {"images": len(datasets["store"]), "batch_size": s.batch_size, "timed_batches": s.loader_batches,
            "workers": list(s.loader_workers), "samples_per_s": rates}
