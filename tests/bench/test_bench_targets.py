"""``targets.judge`` on hand-built section results: limits, directions, missing values, |ratio - 1|."""

from __future__ import annotations

import math

from dpal_cache.bench.targets import judge


def _sections(isolated: bool = True) -> dict:
    return {
        "training": {"best_ratios": {"cached_over_online": 2.9, "cached_over_in_memory": 0.95},
                     "best_samples_per_s": {"cached": 5.0}, "device": "cuda", "data_wait_fraction_cached": 0.07},
        "render": {"ratios": {"batched_over_per_sample": {"sample": 1.02, "sample_decode": 0.98}},
                   "agreement": {"batched": {"max_grey_diff": 0, "identical_fraction": 1.0},
                                 "device": {"max_grey_diff": 2, "identical_fraction": 0.9995},
                                 "device_decode": {"max_grey_diff": 9, "identical_fraction": 0.8}}},
        "extraction": {"best_ratio_extract_over_teacher": math.nan},
        "loader": {"samples_per_s": {"store": {"2": 30.0}, "store_targets": {"0": 900.0},
                                     "memmap_targets": {"0": 2000.0}, "zarr_targets": {"0": 100.0}}},
        "store": {"compact": "int8+log8", "options": {"int8+log8": {
            "ratio_to_fp16": 0.45, "tokens_rel_l2": 0.009, "attn_cls_kl_per_row": 2e-4,
            "crowd_attn_kl_per_row": 2e-3}}},
        "scaling": {"isolated": isolated, "sizes": {"256": {}, "64": {}},
                    "ratios_largest_over_smallest": {"extract_per_image": 0.83, "extract_steady_per_image": 1.10,
                                                     "extract_peak_rss": 1.13, "train_per_image": 1.2,
                                                     "train_steady_per_image": None, "train_peak_rss": 1.25}},
    }


def test_each_target_is_judged_in_its_direction():
    rows = {r["target"]: r for r in judge(_sections())}
    met = {name: r["met"] for name, r in rows.items()}
    assert met["cached / online training steps/s"] is False  # 2.9 < 3.0
    assert met["cached / in-memory training steps/s"] is True
    assert met["cached training data-wait fraction (CUDA)"] is False  # 0.07 > 0.05
    assert met["batched / per-sample renderer per CPU core (sample inputs)"] is True
    assert met["batched / per-sample renderer per CPU core (with JPEG decode)"] is False
    # judged from the same pixels: the GPU JPEG decoder's own rounding (device_decode) is reported, not judged
    assert rows["renderers: largest grey-level difference to per-sample"]["value"] == 2
    assert rows["renderers: fraction of values identical to per-sample"]["value"] == 0.9995
    assert met["extract / bare teacher images/s"] is None  # NaN: not measured
    assert rows["loader (2 workers) / cached training samples/s"]["value"] == 6.0 and met[
        "loader (2 workers) / cached training samples/s"]
    assert rows["store / memmap target reads, 0 workers"]["value"] == 0.45 and not met[
        "store / memmap target reads, 0 workers"]  # 0.45 < 0.5
    assert rows["store / zarr per-row target reads, 0 workers"]["value"] == 9.0 and not met[
        "store / zarr per-row target reads, 0 workers"]  # 9 < 10
    assert met["int8+log8 bytes / fp16 bytes per image"] is False  # 0.45 > 0.40
    assert met["int8 token relative L2"] is True
    kl = rows["log8 attention KL per row (worst kind)"]
    assert kl["value"] == 2e-3 and kl["met"] is False  # the worse of the two kinds
    whole = rows["extract time per image, whole stage (64 -> 256 images): |ratio - 1|"]
    assert math.isclose(whole["value"], 0.17) and whole["met"] is False
    assert met["extract time per image, steady part (64 -> 256 images): |ratio - 1|"] is True
    assert met["train time per image, steady part (64 -> 256 images): |ratio - 1|"] is None
    assert met["extract peak RSS (64 -> 256 images): ratio"] is True
    assert met["train peak RSS (64 -> 256 images): ratio"] is False


def test_only_sections_that_ran_are_judged_and_peaks_need_isolation():
    assert judge({}) == []
    cpu = {**_sections()["training"], "device": "cpu"}
    assert not any("data-wait" in r["target"] for r in judge({"training": cpu}))  # a CUDA target only
    rows = judge({"scaling": _sections(isolated=False)["scaling"]})
    peaks = [r for r in rows if "peak RSS" in r["target"]]
    assert len(peaks) == 2 and all(r["met"] is None and "--no-isolate" in r["note"] for r in peaks)
