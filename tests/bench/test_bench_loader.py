"""The loader benchmark: the memmap floor serves the same targets as the store; every count is measured."""

import numpy as np
import torch

from dpal_cache.bench.loader import MemmapStoreDataset, TargetsOnly, export_memmaps, run_loader_bench
from dpal_cache.train.data import StoreDataset


def test_memmap_dataset_reads_the_same_targets_as_the_store(bench_ctx, tmp_path):
    store = str(bench_ctx.store())
    memmaps = export_memmaps(store, tmp_path / "mm")
    zarr_ds = StoreDataset(store, bench_ctx.source)
    mm_ds = MemmapStoreDataset(store, bench_ctx.source, memmaps)
    keys = [3, 0, len(zarr_ds) + 5, 2 * len(zarr_ds) + 1]  # several epochs: other views and crowds
    a, b = zarr_ds.__getitems__(keys), mm_ds.__getitems__(keys)
    for key in ("t_tokens", "t_attn_cls", "t_mask_score", "t_relation", "global_view", "crowd"):
        assert torch.equal(a[key], b[key]), key
    targets = TargetsOnly(zarr_ds).__getitems__(keys)
    assert set(targets) == {"t_tokens", "t_attn_cls", "t_mask_score", "t_relation"}
    assert torch.equal(targets["t_tokens"], a["t_tokens"])
    assert np.load(memmaps["views/tokens"]).dtype == np.float16


def test_loader_bench_measures_every_dataset_and_worker_count(bench_ctx):
    res = run_loader_bench(bench_ctx)
    assert set(res["samples_per_s"]) == {"store", "memmap", "store_targets", "memmap_targets"}
    for rates in res["samples_per_s"].values():
        assert set(rates) == {"0", "1"}
        assert all(v > 0 for v in rates.values())
