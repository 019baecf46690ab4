"""The loader benchmark: the memmap floor and zarr's per-row reads serve the same targets as the store; every
dataset and worker count is measured, in samples/s and MB/s."""

import os

import numpy as np
import torch

from dpal_cache.bench.loader import (
    MemmapStoreDataset,
    RawBytes,
    TargetsOnly,
    ZarrTargets,
    export_memmaps,
    run_loader_bench,
    sample_bytes,
    shard_files,
)
from dpal_cache.train.data import StoreDataset


def test_memmap_and_zarr_datasets_read_the_same_targets_as_the_store(bench_ctx, tmp_path):
    store = str(bench_ctx.store())
    memmaps = export_memmaps(store, tmp_path / "mm")
    store_ds = StoreDataset(store, bench_ctx.source)
    mm_ds = MemmapStoreDataset(store, bench_ctx.source, memmaps)
    keys = [3, 0, len(store_ds) + 5, 2 * len(store_ds) + 1]  # several epochs: other views and crowds
    a, b = store_ds.__getitems__(keys), mm_ds.__getitems__(keys)
    for key in ("t_tokens", "t_attn_cls", "t_mask_score", "t_relation", "global_view", "crowd"):
        assert torch.equal(a[key], b[key]), key
    targets = TargetsOnly(store_ds).__getitems__(keys)
    assert set(targets) == {"t_tokens", "t_attn_cls", "t_mask_score", "t_relation"}
    via_zarr = ZarrTargets(store_ds).__getitems__(keys)
    for key in targets:
        assert torch.equal(targets[key], a[key]) and torch.equal(via_zarr[key], a[key]), key
    assert np.load(memmaps["views/tokens"]).dtype == np.float16
    files = shard_files(store)
    raw = RawBytes(files, store_ds.groups).__getitems__(list(range(len(files))))
    assert int(raw["bytes"].sum()) == sum(os.path.getsize(f) for f in files)  # each file read whole
    assert sample_bytes(store_ds) == sum(int(v[0].numel()) * v.element_size() for v in targets.values())


def test_loader_bench_measures_every_dataset_and_worker_count(bench_ctx):
    res = run_loader_bench(bench_ctx)
    names = {"store", "memmap", "store_targets", "memmap_targets", "zarr_targets", "raw_bytes"}
    assert set(res["samples_per_s"]) == set(res["mb_per_s"]) == names
    for name in names:
        assert set(res["samples_per_s"][name]) == {"0", "1"}
        assert all(v > 0 for v in res["samples_per_s"][name].values())
        for w in ("0", "1"):
            mb = res["samples_per_s"][name][w] * res["bytes_per_sample"] / 1e6
            assert abs(res["mb_per_s"][name][w] - mb) <= 1e-9 * mb
