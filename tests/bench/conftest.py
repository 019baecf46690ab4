"""Shared fixtures of the benchmark tests: one tiny suite context per test session.

Tiny sizes only (random ViT-Ti teacher, 8 images of 64x32 views and 64x64 crowds, batch 4, no
worker processes): the tests check structure and consistency, never timings.
"""

from __future__ import annotations

import pytest

from dpal_cache.bench.common import BenchContext, BenchSettings
from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewsConfig

TINY_VIEWS = ViewsConfig(global_view=GlobalViewConfig(size=(64, 32)), local_crops=LocalCropConfig(size=(32, 16)),
                         crowd=CrowdConfig(size=(64, 64)))
TINY = BenchSettings(teacher="random:vit_tiny", images=8, batch_size=4, steps=1, warmup_steps=1, train_workers=0,
                     extract_workers=0, calibration_images=4, shard_images=4, loader_workers=(0, 1),
                     loader_batches=1, scaling_sizes=(4, 8), scaling_shard_images=4, scaling_workers=0,
                     isolate=False, views=TINY_VIEWS)
# the same, as `dpal-cache bench` options
_TINY_ARGS = ["--teacher", "random:vit_tiny", "--images", "8", "--batch-size", "4", "--steps", "1", "--workers", "0",
             "--extract-workers", "0", "--calibration-images", "4", "--loader-workers", "0,1", "--loader-batches", "1",
             "--scaling-sizes", "4,8", "--scaling-shard-images", "4", "--no-isolate", "--view-size", "64x32",
             "--crowd-size", "64x64", "--local-size", "32x16"]


@pytest.fixture(scope="session")
def bench_ctx(tmp_path_factory) -> BenchContext:
    """The tiny context, shared: the first benchmark that needs the store or teacher outputs makes them."""
    return BenchContext(TINY, tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="session")
def tiny_bench_args() -> list[str]:
    """The tiny settings as ``dpal-cache bench`` options."""
    return list(_TINY_ARGS)
