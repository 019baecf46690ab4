"""Render benchmark: what one CPU core, and the accelerator, turn into training inputs per second.

For a batch of the benchmark's images (``batch_size``, at most 32 on the CPU paths), three ways to make each
input kind (``views``: one global view per sample; ``crops``: the sample's local crops; ``crowds``: one crowd
image per sample; ``sample``: all three, a training sample's inputs), each from decoded pixels and from the
JPEG bytes:

- ``per_sample``: what a DataLoader worker does (``render_view``, the local crops, ``render_crowd`` per sample;
  with decode, Pillow decodes the sample's image and its crowd partners);
- ``batched``: ``BatchRenderer`` on the CPU as the CPU uses it (view by view inside a batch; with decode,
  torchvision's libjpeg decodes each image of the batch once);
- ``whole_batch``: ``BatchRenderer(whole_batch=True)`` on the CPU, the accelerator's strategy on a CPU core
  (why it is not the CPU's default);
- ``device`` (on CUDA only): ``BatchRenderer`` on the GPU, decoding with nvJPEG, timed to the last kernel, on
  the whole ``batch_size`` batch (whose first samples are the CPU paths').

CPU paths run on one torch thread: samples/s per core. Repeats (4 per ``--repeats``) are interleaved and the
fastest repeat of each is kept (other users of a shared machine only ever slow a run down). ``agreement``
compares each path's bytes with the per-sample renderer's: largest grey-level difference and the fraction of
identical values.

    result = run_render_bench(ctx)
    result["ratios"]["batched_over_per_sample"]["sample_decode"]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from dpal_cache.bench.common import BenchContext, ratio, sync

log = logging.getLogger(__name__)

KINDS = ("views", "crops", "crowds", "sample")
CPU_SAMPLES = 32  # samples the CPU paths render per pass (a per-core rate needs no more); the device: the batch
REPEATS_AT_LEAST = 4  # interleaved repeats per --repeats: one pass is a few seconds, single passes are noisy


class _Batch:
    """One batch of the benchmark's images: bytes, decoded pixels and every parameter vector."""

    def __init__(self, ctx: BenchContext, n: int):
        from dpal_cache.data.catalog import Catalog
        from dpal_cache.views.crowd import make_recipe
        from dpal_cache.views.local import local_crop_params
        from dpal_cache.views.params import global_view_params

        views = ctx.settings.views
        cat = Catalog(ctx.source, ctx.manifest)
        self.decode_cfg = cat.decode
        self.index = [int(i) for i in cat.ok[:n]]
        self.sizes = {int(i): (int(cat.sizes[i, 0]), int(cat.sizes[i, 1])) for i in cat.ok}
        self.views = [global_view_params(views.global_view, views.seed, i, 0, self.sizes[i]) for i in self.index]
        self.count = views.local_crops.count
        self.crops = [local_crop_params(views.local_crops, views.seed, 0, i, k, self.sizes[i])
                      for i in self.index for k in range(self.count)]
        self.recipes = [make_recipe(views, views.seed, i, 0, cat.ok, cat.sizes) for i in self.index]
        needed = sorted({j for i, r in zip(self.index, self.recipes) for j in [i, *r.dataset_indices()]})
        self.data = {j: cat.read(j) for j in needed}
        self.local_crop_cfg, self.seed = views.local_crops, views.seed


def _per_sample(b: _Batch, kind: str, decode: bool) -> dict[str, torch.Tensor]:
    from dpal_cache.data.decode import decode_rgb
    from dpal_cache.views.crowd import render_crowd
    from dpal_cache.views.render import render_view

    pixels = {} if decode else {j: decode_rgb(d, b.decode_cfg) for j, d in b.data.items()}

    def run() -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {"views": [], "crops": [], "crowds": []}
        for k, (i, recipe) in enumerate(zip(b.index, b.recipes)):
            image = decode_rgb(b.data[i], b.decode_cfg) if decode else pixels[i]
            if kind in ("views", "sample"):
                out["views"].append(render_view(image, b.views[k]))
            if kind in ("crops", "sample"):
                out["crops"] += [render_view(image, p) for p in b.crops[k * b.count:(k + 1) * b.count]]
            if kind in ("crowds", "sample"):
                partners = {j: (image if j == i else decode_rgb(b.data[j], b.decode_cfg) if decode else pixels[j])
                            for j in recipe.dataset_indices()}
                out["crowds"].append(render_crowd(recipe, partners))
        return {key: torch.stack(v) for key, v in out.items() if v}

    return run


def _batched(b: _Batch, kind: str, decode: bool, device: torch.device, whole_batch: bool | None):
    from dpal_cache.data.device_decode import decode_sources, pack_source
    from dpal_cache.views.batched import BatchRenderer

    renderer = BatchRenderer(device, whole_batch=whole_batch)
    packed = {j: pack_source(d, b.decode_cfg, True, b.sizes[j]) for j, d in b.data.items()}  # what workers send
    ready = None if decode else dict(zip(packed, decode_sources(list(packed.values()), device)))
    if kind in ("views", "crops"):  # the crowd partners are not needed
        packed = {i: packed[i] for i in b.index}

    def run() -> dict[str, torch.Tensor]:
        if decode:
            moved = [p.to(device, non_blocking=True) if p.ndim == 1 else p for p in packed.values()]
            images = dict(zip(packed, decode_sources(moved, device)))
        else:
            images = ready
        out: dict[str, torch.Tensor] = {}
        if kind in ("views", "sample"):
            out["views"] = renderer.views([images[i] for i in b.index], b.views)
        if kind in ("crops", "sample"):
            out["crops"] = renderer.views([images[i] for i in b.index for _ in range(b.count)], b.crops)
        if kind in ("crowds", "sample"):
            out["crowds"] = renderer.crowds(b.recipes, images)
        return out

    return run


def _time(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def _agreement(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, float]:
    """Over the reference's samples (the first ones of a larger device batch)."""
    diffs = [(got[k][:len(want[k])].cpu().int() - want[k].int()).abs().flatten() for k in want]
    diff = torch.cat(diffs)
    return {"max_grey_diff": int(diff.max()), "identical_fraction": float((diff == 0).float().mean())}


def run_render_bench(ctx: BenchContext) -> dict[str, Any]:
    """Samples/s of each path, kind and decode choice; their ratios to the per-sample path; agreement."""
    s = ctx.settings
    b = _Batch(ctx, min(s.batch_size, CPU_SAMPLES))
    cpu = torch.device("cpu")
    paths: dict[str, Callable[[str, bool], Callable[[], Any]]] = {
        "per_sample": lambda kind, decode: _per_sample(b, kind, decode),
        "batched": lambda kind, decode: _batched(b, kind, decode, cpu, None),
        "whole_batch": lambda kind, decode: _batched(b, kind, decode, cpu, True),
    }
    whole = b
    if ctx.device.type == "cuda":
        whole = _Batch(ctx, s.batch_size)  # its first samples are b's
        paths["device"] = lambda kind, decode: _batched(whole, kind, decode, ctx.device, None)
    cases = [(kind, decode) for kind in KINDS for decode in (False, True)]
    runs = {(name, kind, decode): make(kind, decode) for name, make in paths.items() for kind, decode in cases}
    best: dict[tuple[str, str, bool], float] = {}
    outputs: dict[tuple[str, bool], dict[str, dict[str, torch.Tensor]]] = {}
    threads = torch.get_num_threads()
    try:
        for rep in range(REPEATS_AT_LEAST * s.repeats + 1):  # the first pass warms up (caches, nvJPEG) and is not kept
            for (name, kind, decode), fn in runs.items():
                torch.set_num_threads(1 if name != "device" else threads)
                seconds, out = _time(fn, ctx.device if name == "device" else cpu)
                if rep == 0:
                    if kind == "sample":
                        outputs.setdefault((name, decode), out)
                    continue
                key = (name, kind, decode)
                best[key] = min(best.get(key, float("inf")), seconds)
            log.info("render repeat %d done", rep)
    finally:
        torch.set_num_threads(threads)
    def label(kind: str, decode: bool) -> str:
        return f"{kind}_decode" if decode else kind

    sizes = {name: len((whole if name == "device" else b).index) for name in paths}
    samples_per_s = {name: {label(k, d): sizes[name] / best[(name, k, d)] for k, d in cases} for name in paths}
    ratios = {f"{name}_over_per_sample": {label(k, d): ratio(samples_per_s[name][label(k, d)],
                                                              samples_per_s["per_sample"][label(k, d)])
                                          for k, d in cases}
              for name in paths if name != "per_sample"}
    reference = outputs[("per_sample", False)]
    agreement = {f"{name}{'_decode' if d else ''}": _agreement(outputs[(name, d)], reference)
                 for name in paths for d in (False, True)}
    return {
        "device": str(ctx.device),
        "batch_size": len(b.index),
        "device_batch_size": len(whole.index) if "device" in paths else None,
        "local_crops": b.count,
        "images_decoded": len(b.data),
        "repeats": REPEATS_AT_LEAST * s.repeats,
        "per_core": [name for name in paths if name != "device"],
        "samples_per_s": samples_per_s,
        "ratios": ratios,
        "agreement": agreement,
    }
