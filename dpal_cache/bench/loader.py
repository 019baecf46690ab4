"""Loader benchmark: samples/s and MB/s of the training data path with 0, 1, 2... DataLoader workers.

Each worker count is measured for these datasets over the same images and rows, in training's order
(``EpochSampler`` with the default shuffle window), through training's own ``make_loader``:

- ``store``: ``StoreDataset`` samples as training gets them (target rows read from the store, views,
  local crops and crowd image re-rendered);
- ``memmap``: the same samples with the target rows gathered from plain numpy memmaps of the same arrays;
- ``store_targets`` / ``memmap_targets``: the target rows alone, no rendering: what reading costs, and its
  floor (the targets stay as stored in both: training decodes them on its device);
- ``zarr_targets``: the same rows through zarr's own API, one gathered async read per row (how training
  read before format 2);
- ``raw_bytes``: the target arrays' shard files read whole to nowhere, in 8 MiB reads: what the bytes
  cost (its samples/s is its MB/s over the target bytes of one sample).

MB/s counts the target bytes of the samples served (a sample's view rows and crowd row, as stored). The
first batch of every loader (worker start-up) is left out of the timing.

    result = run_loader_bench(ctx)
    result["samples_per_s"]["store_targets"]["0"], result["mb_per_s"]["raw_bytes"]["2"]
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dpal_cache.bench.common import BenchContext
from dpal_cache.store.codecs import TARGET_ARRAYS, as_targets
from dpal_cache.train.data import StoreDataset, sample_keys

log = logging.getLogger(__name__)

RELATION = "attention"  # the relation the bench trains with
ARRAYS = (*TARGET_ARRAYS.values(), "crowds/attn")
CHUNK = 8 << 20  # bytes per read of the raw-bytes pass


def export_memmaps(store: str, out: Path) -> dict[str, str]:
    """Write each target array of ``store`` to ``out/<name>.npy`` (as stored: fp16 / int8 / uint8)."""
    import zarr

    group = zarr.open_group(store, mode="r")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ARRAYS:
        path = out / (name.replace("/", "__") + ".npy")
        np.save(path, group[name][:])
        paths[name] = str(path)
    return paths


class MemmapStoreDataset(StoreDataset):
    """``StoreDataset`` whose target rows come from numpy memmaps instead of the store."""

    def __init__(self, url: str, source, memmaps: dict[str, str]):
        super().__init__(url, source, relation=RELATION)
        self.memmap_paths = memmaps
        self._maps: dict[str, np.ndarray] | None = None
        self._maps_pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"], state["_maps_pid"] = None, -1
        return state

    def read_targets(self, view_rows: list[int], crowd_rows: list[int]) -> dict[str, torch.Tensor]:
        if self._maps is None or self._maps_pid != os.getpid():
            self._maps = {name: np.load(path, mmap_mode="r") for name, path in self.memmap_paths.items()}
            self._maps_pid = os.getpid()
        rows = {name: np.asarray(view_rows if name.startswith("views/") else crowd_rows) for name in ARRAYS}
        return as_targets({name: self._maps[name][r] for name, r in rows.items()}, RELATION)  # one gather each


class TargetsOnly(Dataset):
    """The target half of a ``StoreDataset`` batch (rows chosen as training chooses them), no rendering."""

    def __init__(self, dataset: StoreDataset):
        self.dataset = dataset
        self.groups = dataset.groups

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list[int]) -> dict[str, Any]:
        images, epochs = sample_keys(keys, self.dataset.images)
        return self.dataset.read_targets(*self.dataset.target_rows(images, epochs))


class ZarrTargets(TargetsOnly):
    """``TargetsOnly`` with every row read through zarr (``AsyncArray.getitem`` per row, gathered per batch)."""

    def __init__(self, dataset: StoreDataset):
        super().__init__(dataset)
        self._group = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_group": None, "_pid": -1}

    def __getitems__(self, keys: list[int]) -> dict[str, Any]:
        import asyncio

        import zarr
        from zarr.core.sync import sync

        if self._group is None or self._pid != os.getpid():
            self._group, self._pid = zarr.open_group(self.dataset.url, mode="r"), os.getpid()
        images, epochs = sample_keys(keys, self.dataset.images)
        view_rows, crowd_rows = self.dataset.target_rows(images, epochs)
        rows = {name: view_rows if name.startswith("views/") else crowd_rows for name in ARRAYS}
        arrays = {name: self._group[name]._async_array for name in ARRAYS}

        async def gather():
            return await asyncio.gather(*(arrays[name].getitem(r) for name, rs in rows.items() for r in rs))

        flat, got, k = sync(gather()), {}, 0
        for name, rs in rows.items():
            got[name] = np.stack(flat[k:k + len(rs)])
            k += len(rs)
        return as_targets(got, RELATION)


class RawBytes(Dataset):
    """Key k reads shard file ``k % len(files)`` whole, to nowhere; a batch returns the bytes it read."""

    def __init__(self, files: list[str], groups: np.ndarray):
        self.files = files
        self.groups = groups  # the sampler's groups: batches are as many as the other datasets'

    def __len__(self) -> int:
        return len(self.groups)

    def __getitems__(self, keys: list[int]) -> dict[str, torch.Tensor]:
        done = 0
        for key in keys:
            with open(self.files[int(key) % len(self.files)], "rb", buffering=0) as fh:
                while chunk := fh.read(CHUNK):
                    done += len(chunk)
        return {"bytes": torch.tensor([done])}


def sample_bytes(dataset: StoreDataset) -> int:
    """Target bytes one training sample reads: one row of each view array and one crowd row, as stored."""
    specs = dataset.layout.arrays()
    return sum(specs[name].row_bytes for name in ARRAYS)


def shard_files(store: str) -> list[str]:
    """The shard files of the target arrays of a local store."""
    return sorted(str(p) for name in ARRAYS for p in (Path(store) / name / "c").rglob("*") if p.is_file())


def rate(dataset, batch_size: int, workers: int, batches: int, seed: int = 0) -> tuple[float, int]:
    """(samples/s, bytes read by RawBytes) of ``batches`` batches after a first (warm-up, start-up) batch."""
    from dpal_cache.train.data import make_loader
    from dpal_cache.train.sampler import EpochSampler

    per_epoch = max(1, len(dataset) // batch_size)
    sampler = EpochSampler(dataset.groups, batch_size, end_epoch=-(-(batches + 1) // per_epoch) + 1, seed=seed,
                           window=64)
    loader = make_loader(dataset, sampler, workers)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    done = raw = 0
    for _ in range(batches):
        batch = next(it)
        if "bytes" in batch:
            raw += int(batch["bytes"].sum())
        else:
            done += len(next(iter(batch.values())))
    elapsed = time.perf_counter() - start
    del it
    return done / elapsed, raw / elapsed


def run_loader_bench(ctx: BenchContext) -> dict[str, Any]:
    """Samples/s and MB/s per dataset kind and worker count (the inner dicts are keyed by worker count)."""
    s = ctx.settings
    store = str(ctx.store())
    source = ctx.source
    memmaps = export_memmaps(store, ctx.workdir / "loader" / "memmap")
    datasets: dict[str, Any] = {"store": StoreDataset(store, source, relation=RELATION),
                                "memmap": MemmapStoreDataset(store, source, memmaps)}
    datasets["store_targets"] = TargetsOnly(datasets["store"])
    datasets["memmap_targets"] = TargetsOnly(datasets["memmap"])
    datasets["zarr_targets"] = ZarrTargets(datasets["store"])
    per_sample = sample_bytes(datasets["store"])
    datasets["raw_bytes"] = RawBytes(shard_files(store), datasets["store"].groups)
    rates: dict[str, dict[str, float]] = {name: {} for name in datasets}
    mb: dict[str, dict[str, float]] = {name: {} for name in datasets}
    for workers in s.loader_workers:
        for name, dataset in datasets.items():  # interleaved: each worker count sees the same machine load
            samples, raw = rate(dataset, s.batch_size, workers, s.loader_batches, s.seed)
            if name == "raw_bytes":
                samples = raw / per_sample
            rates[name][str(workers)] = samples
            mb[name][str(workers)] = samples * per_sample / 1e6
            log.info("loader %s, %d workers: %.1f samples/s, %.1f MB/s", name, workers, samples,
                     mb[name][str(workers)])
    return {"images": len(datasets["store"]), "batch_size": s.batch_size, "timed_batches": s.loader_batches,
            "workers": list(s.loader_workers), "bytes_per_sample": per_sample, "samples_per_s": rates,
            "mb_per_s": mb}
