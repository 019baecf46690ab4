"""The store benchmark: byte counts are the files on disk, the compact option is smaller, errors are sane."""

import math

from dpal_cache.bench.common import dir_bytes
from dpal_cache.bench.store import OPTIONS, run_store_bench


def test_store_bench_bytes_match_the_files_and_errors_are_ordered(bench_ctx):
    res = run_store_bench(bench_ctx)
    assert set(res["options"]) == {f"{t}+{m}" for t, m in OPTIONS}
    root = bench_ctx.workdir / "store"
    for name, opt in res["options"].items():
        assert opt["bytes_total"] == dir_bytes(root / f"{name}.zarr")
        assert opt["bytes_total"] == sum(opt["bytes_arrays"].values()) + opt["bytes_metadata"]
        assert math.isclose(opt["bytes_per_image"], opt["bytes_total"] / res["images"])
        assert opt["bytes_arrays"]["views/tokens"] > 0
        for key in ("tokens_rel_l2", "attn_cls_kl_per_row", "crowd_attn_kl_per_row"):
            assert math.isfinite(opt[key]) and opt[key] >= 0, (name, key)
    fp16, compact = res["options"]["fp16+fp16"], res["options"]["int8+log8"]
    assert compact["bytes_per_image"] < fp16["bytes_per_image"]
    assert fp16["ratio_to_fp16"] == 1.0
    assert fp16["tokens_rel_l2"] < 1e-3 < compact["tokens_rel_l2"] < 0.1
    assert fp16["crowd_attn_kl_per_row"] < compact["crowd_attn_kl_per_row"] < 1e-2
    # int8 halves the token bytes before compression
    assert compact["bytes_arrays"]["views/tokens"] < 0.75 * fp16["bytes_arrays"]["views/tokens"]
