"""Benchmark (not a test): CPU cost of rendering / replaying views, per core.

Prints views rendered per second on one core (torch and the process pinned to one thread)
for: global views, local crops, copy-paste crowds and release crowds, each with the images
already decoded and with JPEG decoding included. This is what replaying cached views costs
stage two per sample on the CPU side.

    .venv/bin/python pipelines/bench_views.py [--seconds 3] [--data PATH] [--threads 1]

Without --data it encodes synthetic person-crop-sized JPEGs (LUPerson crops are roughly
100-200 px wide and 200-400 px high).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from dpal_cache.data.decode import decode_rgb
from dpal_cache.data.sources import open_source
from dpal_cache.views.config import CrowdConfig, ViewsConfig
from dpal_cache.views.crowd import make_recipe, render_crowd
from dpal_cache.views.local import local_crops
from dpal_cache.views.params import global_view_params
from dpal_cache.views.render import render_view


def synthetic_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """Smooth gradients with a few blobs: compresses and resizes like photos, not like noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = int(rng.integers(200, 400)), int(rng.integers(100, 200))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([yy / h, xx / w, (yy + xx) / (h + w)], axis=-1) * 255
        for _ in range(4):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 60)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def rate(fn: Callable[[int], int], seconds: float) -> float:
    """Items per second of ``fn(i)`` (returns items done) over about ``seconds`` of wall time."""
    fn(0)  # warm-up: first calls pay for lazy initialisation
    done, i, start = 0, 1, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += fn(i)
        i += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="wall time per case")
    parser.add_argument("--data", default=None, help="image source to use instead of synthetic JPEGs")
    parser.add_argument("--images", type=int, default=64, help="images to load")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = per core)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.data:
        src = open_source(args.data)
        blobs = [src.read(i) for i in range(min(args.images, len(src)))]
    else:
        blobs = synthetic_jpegs(args.images)
    decoded = [decode_rgb(b) for b in blobs]
    n = len(decoded)
    ok = np.arange(n, dtype=np.int64)
    sizes = np.array([d.shape[:2] for d in decoded])
    cfg = ViewsConfig()
    g = cfg.global_view

    def global_view(i: int, decode: bool) -> int:
        img = decode_rgb(blobs[i % n]) if decode else decoded[i % n]
        render_view(img, global_view_params(g, cfg.seed, i % n, i // n, img.shape[:2]))
        return 1

    def local(i: int, decode: bool) -> int:
        img = decode_rgb(blobs[i % n]) if decode else decoded[i % n]
        return len(local_crops(cfg.local_crops, cfg.seed, i // n, i % n, img))

    def crowd(mode: str) -> Callable[[int, bool], int]:
        ccfg = replace(cfg, crowd=CrowdConfig(mode=mode))  # type: ignore[arg-type]

        def run(i: int, decode: bool) -> int:
            r = make_recipe(ccfg, ccfg.seed, i % n, i // n, ok, sizes)
            imgs = {j: decode_rgb(blobs[j]) if decode else decoded[j] for j in r.dataset_indices()}
            render_crowd(r, imgs)
            return 1

        return run

    cases = [
        ("global view 256x128", global_view),
        (f"local crop 128x96 (x{cfg.local_crops.count})", local),
        ("crowd copy-paste 256x256", crowd("copy-paste")),
        ("crowd release 256x256", crowd("release")),
    ]
    print(
        f"views per second per core (torch threads {torch.get_num_threads()}, {n} images, "
        f"{'source ' + args.data if args.data else 'synthetic JPEGs'}, cpu count {os.cpu_count()})"
    )
    print(f"{'case':<30} {'decoded':>10} {'+ decode':>10}")
    for name, fn in cases:
        warm = rate(lambda i, f=fn: f(i, False), args.seconds)
        cold = rate(lambda i, f=fn: f(i, True), args.seconds)
        print(f"{name:<30} {warm:>10.1f} {cold:>10.1f}")


if __name__ == "__main__":
    main()
