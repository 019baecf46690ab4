"""``extract --dry-run``'s estimate as a library call: the layout the run would write and the teacher's time."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dpal_cache.extract.estimate import ExtractEstimate, estimate_extract, random_batch, teacher_seconds_per_image
from dpal_cache.extract.run import make_layout
from dpal_cache.store.layout import STATUS_OK
from dpal_cache.teachers import load_teacher


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("random:vit_tiny", None)


def test_random_batch_holds_ok_images_of_the_configured_sizes(small_config):
    cfg = small_config()
    batch = random_batch(cfg, 3)
    assert batch["views"].shape == (3, cfg.views.views_per_image, 3, 64, 32)
    assert batch["crowds"].shape == (3, cfg.views.crowds_per_image, 3, 64, 64)
    assert batch["views"].dtype == torch.uint8 and (batch["status"] == STATUS_OK).all()


def test_the_estimate_is_the_layout_the_run_writes_and_the_timed_teacher(small_config, teacher, monkeypatch):
    from dpal_cache.extract import estimate as estimate_module

    monkeypatch.setattr(estimate_module, "teacher_seconds_per_image", lambda *a, **k: 0.25)
    cfg = small_config(token_precision="int8")
    estimate = estimate_extract(cfg, 10, teacher)
    assert isinstance(estimate, ExtractEstimate)
    assert estimate.layout == make_layout(cfg, 10, teacher)
    assert (estimate.teacher, estimate.embed_dim, estimate.images) == ("random:vit_tiny", 192, 10)
    assert (estimate.device, estimate.batch_size) == (torch.device("cpu"), cfg.batch_size)
    assert estimate.bytes_per_image == estimate.layout.bytes_per_image() > 0
    assert estimate.total_bytes == 10 * estimate.bytes_per_image
    assert estimate.seconds_per_image == 0.25 and estimate.hours == pytest.approx(2.5 / 3600)


def test_the_estimate_refuses_views_off_the_patch_grid(small_config, teacher):
    cfg = small_config()
    cfg = dataclasses.replace(cfg, views=dataclasses.replace(
        cfg.views, global_view=dataclasses.replace(cfg.views.global_view, size=(60, 32))))
    with pytest.raises(ValueError, match="patch size"):
        estimate_extract(cfg, 10, teacher)


def test_teacher_seconds_per_image_is_the_median_forward_over_the_batch(small_config, teacher, monkeypatch):
    """The clock is faked: forwards of 1, 5 and 2 seconds over a batch of ``batch_size`` images."""
    from dpal_cache.extract import estimate as estimate_module

    ticks = iter([0.0, 1.0, 10.0, 15.0, 20.0, 22.0])
    monkeypatch.setattr(estimate_module.time, "perf_counter", lambda: next(ticks))
    cfg = small_config()
    seconds = teacher_seconds_per_image(teacher, cfg, torch.device("cpu"), repeats=3)
    assert seconds == pytest.approx(2.0 / cfg.batch_size)
