"""The training benchmark: the three runs go through the loop and the ratios are theirs."""

import math

import torch

from dpal_cache.bench.training import InMemoryBatches, run_training_bench
from dpal_cache.train.data import StoreDataset


def test_training_bench_reports_three_runs_and_their_ratios(bench_ctx):
    res = run_training_bench(bench_ctx)
    rates = res["steps_per_s"]
    assert set(rates) == {"cached", "online", "in_memory"}
    assert all(math.isfinite(v) and v > 0 for v in rates.values())
    assert math.isclose(res["ratios"]["cached_over_online"], rates["cached"] / rates["online"], rel_tol=1e-9)
    assert math.isclose(res["ratios"]["cached_over_in_memory"], rates["cached"] / rates["in_memory"], rel_tol=1e-9)
    assert res["samples_per_s"]["cached"] == rates["cached"] * 4
    assert 0 <= res["data_wait_fraction_cached"] <= 1
    for mode in rates:  # each run trained its steps and wrote its metrics
        lines = (bench_ctx.workdir / "training" / f"{mode}_0" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 2  # warm-up + timed steps, one line each


def test_in_memory_batches_serve_prefetched_batches_with_the_sampled_epoch(bench_ctx):
    dataset = StoreDataset(str(bench_ctx.store()), bench_ctx.source)
    batch = dataset.__getitems__([0, 1, 2, 3])
    mem = InMemoryBatches(dataset, [batch])
    got = mem.__getitems__([len(dataset) * 3 + k for k in range(4)])
    assert torch.equal(got["epoch"], torch.full((4,), 3))
    assert torch.equal(got["t_tokens"], batch["t_tokens"])
    assert len(mem) == len(dataset) and mem.token_stats is dataset.token_stats
