"""The render benchmark: every path, input kind and decode choice is measured, and each path's inputs are the
per-sample renderer's (the same bytes on AVX2 CPUs; within the stated tolerance anywhere)."""

from __future__ import annotations

import torch

from dpal_cache.bench.render import KINDS, run_render_bench
from dpal_cache.bench.targets import judge
from dpal_cache.cli.bench import _tables


def test_render_bench_measures_every_path_and_kind_and_checks_the_bytes(bench_ctx):
    r = run_render_bench(bench_ctx)
    labels = {*KINDS, *(f"{k}_decode" for k in KINDS)}
    assert set(r["samples_per_s"]) == {"per_sample", "batched", "whole_batch"}  # no CUDA here: no device path
    for rates in r["samples_per_s"].values():
        assert set(rates) == labels and all(v > 0 for v in rates.values())
    assert set(r["ratios"]) == {"batched_over_per_sample", "whole_batch_over_per_sample"}
    ratio = r["ratios"]["batched_over_per_sample"]["sample"]
    assert ratio == r["samples_per_s"]["batched"]["sample"] / r["samples_per_s"]["per_sample"]["sample"]
    assert r["batch_size"] == bench_ctx.settings.batch_size and r["local_crops"] == 2
    assert r["images_decoded"] >= r["batch_size"]  # the batch and its crowd partners
    for name, a in r["agreement"].items():
        assert a["max_grey_diff"] <= 2 and a["identical_fraction"] >= 0.999, name
        if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
            assert a["max_grey_diff"] == 0, name
    rows = {row["target"]: row for row in judge({"render": r})}
    assert rows["renderers: largest grey-level difference to per-sample"]["met"] is True
    assert rows["batched / per-sample renderer per CPU core (sample inputs)"]["value"] == ratio
    table = _tables({"sections": {"render": r}, "targets": []})[0]
    assert table.row_count == len(labels)
