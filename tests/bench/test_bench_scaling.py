"""The scaling benchmark and the stage isolation it uses for peak memory."""

import math

import pytest

from dpal_cache.bench.common import run_isolated
from dpal_cache.bench.scaling import run_scaling_bench


def _allocate(mib: int) -> int:
    block = bytearray(mib * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
    return len(block)


def test_run_isolated_reports_the_stage_peak_and_its_result():
    small, mem_small = run_isolated(_allocate, 8)
    big, mem_big = run_isolated(_allocate, 200)
    assert (small, big) == (8 * 2**20, 200 * 2**20)
    assert mem_small["isolated"] and mem_big["isolated"]
    assert mem_big["peak_rss_mib"] - mem_small["peak_rss_mib"] > 150  # its own peak, not the parent's


def test_run_isolated_raises_with_the_child_traceback():
    with pytest.raises(RuntimeError, match="MemoryError|negative"):
        run_isolated(_allocate, -1)


def test_scaling_bench_reports_each_size_and_the_ratios(bench_ctx):
    res = run_scaling_bench(bench_ctx)
    assert set(res["sizes"]) == {"4", "8"}
    for n, stages in res["sizes"].items():
        assert stages["extract"]["images"] == int(n)
        assert stages["train"]["steps"] == int(n) // 4  # one epoch at batch 4
        for stage in stages.values():
            assert stage["seconds_per_1k"] > 0 and stage["memory"]["peak_rss_mib"] > 0
    ratios = res["ratios_largest_over_smallest"]
    assert math.isclose(ratios["extract_per_image"], res["sizes"]["8"]["extract"]["seconds_per_1k"]
                        / res["sizes"]["4"]["extract"]["seconds_per_1k"], rel_tol=1e-9)
    assert ratios["train_peak_rss"] > 0
