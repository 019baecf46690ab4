"""The extraction benchmark on a tiny teacher: result structure and consistency (never timings)."""

import math

from dpal_cache.bench.extraction import run_extraction_bench
from dpal_cache.store import io as store_io


def test_extraction_bench_reports_ratio_breakdown_and_makes_the_store(bench_ctx):
    res = run_extraction_bench(bench_ctx)
    assert res["images"] == 8
    assert res["ratio_extract_over_teacher"] > 0
    assert math.isclose(res["ratio_extract_over_teacher"],
                        res["extract_images_per_s"] / res["bare_teacher_images_per_s"], rel_tol=1e-9)
    for part in ("decode", "render", "teacher", "encode", "compress", "write", "extract_total"):
        assert res["seconds"][part] >= 0, part
    timeline = res["extract_timelines"][-1]
    assert timeline["batches"] == 2  # 8 images in batches of 4
    assert timeline["calibration"] is not None and 0 < timeline["calibration"] < timeline["total"]
    assert timeline["teacher_in_calibration"] > 0 and timeline["teacher_in_blocks"] > 0
    assert 0 < res["ratios"]["teacher_busy_in_blocks"] <= 1
    # the timed extract is the store the other benchmarks reuse, with the teacher outputs of its batches
    meta = store_io.read_meta(store_io.open_store(str(bench_ctx.store()), "r"))
    assert meta.complete and meta.images_ok == 8
    outs = bench_ctx.teacher_outputs()
    assert sum(len(o["tokens"]) for o in outs) == 8 * 2  # two views per image
