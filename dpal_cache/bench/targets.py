"""The benchmark targets (docs/benchmarks.md), judged on a suite result: one row per target, met or missed.

    rows = judge(result["sections"])    # [{"target", "value", "limit", "met"}, ...]
"""

from __future__ import annotations

from typing import Any


def _row(name: str, value: float | None, op: str, limit: float, note: str = "") -> dict[str, Any]:
    if value is None or value != value:
        met = None
    else:
        met = value >= limit if op == ">=" else value <= limit
    return {"target": name, "value": value, "op": op, "limit": limit, "met": met, "note": note}


def judge(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for every target whose section was run (``met`` is None when the value is missing)."""
    rows = []
    training = sections.get("training")
    if training:
        best = "fastest step of each mode"
        rows.append(_row("cached / online training steps/s", training["best_ratios"]["cached_over_online"], ">=",
                         3.0, best))
        rows.append(_row("cached / in-memory training steps/s", training["best_ratios"]["cached_over_in_memory"],
                         ">=", 0.90, best))
        if training.get("device", "cpu").startswith("cuda"):
            rows.append(_row("cached training data-wait fraction (CUDA)", training["data_wait_fraction_cached"], "<=",
                             0.05, "share of step time the loop waited for its batch"))
    render = sections.get("render")
    if render:
        r = render["ratios"]["batched_over_per_sample"]
        rows.append(_row("batched / per-sample renderer per CPU core (sample inputs)", r["sample"], ">=", 1.0,
                         "global view, local crops and crowd per sample, from decoded pixels"))
        rows.append(_row("batched / per-sample renderer per CPU core (with JPEG decode)", r["sample_decode"], ">=",
                         1.0))
        # from the same pixels (a GPU JPEG decoder's own rounding is reported under *_decode, not judged here)
        same_pixels = [a for name, a in render["agreement"].items() if not name.endswith("_decode")]
        rows.append(_row("renderers: largest grey-level difference to per-sample",
                         max(a["max_grey_diff"] for a in same_pixels), "<=", 2, "same decoded pixels"))
        rows.append(_row("renderers: fraction of values identical to per-sample",
                         min(a["identical_fraction"] for a in same_pixels), ">=", 0.999, "same decoded pixels"))
    extraction = sections.get("extraction")
    if extraction:
        rows.append(_row("extract / bare teacher images/s", extraction["best_ratio_extract_over_teacher"], ">=",
                         0.90, "fastest of each; whole extract() incl. calibration and start-up"))
    loader = sections.get("loader")
    if loader:
        rates = {name: loader["samples_per_s"].get(name, {}).get("0")
                 for name in ("store_targets", "memmap_targets", "zarr_targets")}
        if rates["store_targets"] and rates["memmap_targets"]:
            rows.append(_row("store / memmap target reads, 0 workers", rates["store_targets"] / rates["memmap_targets"],
                             ">=", 0.5, "rows read by byte range vs gathered from numpy memmaps"))
        if rates["store_targets"] and rates["zarr_targets"]:
            rows.append(_row("store / zarr per-row target reads, 0 workers",
                             rates["store_targets"] / rates["zarr_targets"], ">=", 10.0))
    if loader and training:
        two = loader["samples_per_s"]["store"].get("2")
        consumed = training["best_samples_per_s"]["cached"]
        rows.append(_row("loader (2 workers) / cached training samples/s",
                         two / consumed if two and consumed else None, ">=", 5.0))
    store = sections.get("store")
    if store:
        compact = store["options"][store["compact"]]
        kl = max(compact.get("attn_cls_kl_per_row", 0.0), compact.get("crowd_attn_kl_per_row", 0.0))
        rows.append(_row("int8+log8 bytes / fp16 bytes per image", compact["ratio_to_fp16"], "<=", 0.40))
        rows.append(_row("int8 token relative L2", compact["tokens_rel_l2"], "<=", 0.01))
        rows.append(_row("log8 attention KL per row (worst kind)", kl, "<=", 1e-3))
    scaling = sections.get("scaling")
    if scaling:
        r = scaling["ratios_largest_over_smallest"]
        sizes = sorted(scaling["sizes"], key=int)
        span = f"{sizes[0]} -> {sizes[-1]} images"
        for stage in ("extract", "train"):
            for key, what in ((f"{stage}_per_image", "whole stage"), (f"{stage}_steady_per_image", "steady part")):
                value = r.get(key)
                rows.append(_row(f"{stage} time per image, {what} ({span}): |ratio - 1|",
                                 abs(value - 1) if value is not None and value == value else None, "<=", 0.15))
            if scaling.get("isolated", True):
                rows.append(_row(f"{stage} peak RSS ({span}): ratio", r.get(f"{stage}_peak_rss"), "<=", 1.20))
            else:  # one process's high-water mark only rises from stage to stage: not a per-stage peak
                rows.append(_row(f"{stage} peak RSS ({span}): ratio", None, "<=", 1.20,
                                 "not judged: run without --no-isolate"))
    return rows
