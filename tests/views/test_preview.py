"""Preview contact sheet: one labelled row per image, failures shown rather than raised."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpal_cache.data.sources import open_source
from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewsConfig
from dpal_cache.views.params import ViewParams
from dpal_cache.views.preview import preview_grid, preview_indices, view_label

SMALL = ViewsConfig(
    global_view=GlobalViewConfig(size=(64, 32)),
    local_crops=LocalCropConfig(size=(32, 24)),
    crowd=CrowdConfig(size=(64, 64)),
)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (70 + 5 * i, 30 + 3 * i, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "9_broken.jpg").write_bytes(b"not an image")
    return tmp_path


def test_grid_has_a_row_per_image_and_grows_with_settings(folder: Path):
    src = open_source(folder)
    one = preview_grid(src, [0], SMALL)
    three = preview_grid(src, [0, 1, 2], SMALL)
    assert one.mode == "RGB" and three.height > 2.5 * one.height and three.width == one.width
    wider = preview_grid(src, [0], dataclasses.replace(SMALL, views_per_image=4, crowds_per_image=2))
    assert wider.width > one.width + 3 * 64
    assert np.asarray(one).std() > 10  # something was drawn


def test_failures_become_tiles_not_exceptions(folder: Path):
    src = open_source(folder)
    broken = len(src) - 1  # 9_broken.jpg sorts last
    seen = []
    img = preview_grid(src, [0, broken], SMALL, ok_indices=np.array([0, 1]), on_row=seen.append)
    assert seen == [0, broken] and img.height > 0
    # image 2 is not eligible: its crowd becomes an error tile, the rest of the row still renders
    assert preview_grid(src, [2], SMALL, ok_indices=np.array([0, 1])).width > 0


def test_background_folder_is_used(folder: Path, tmp_path_factory):
    bg_dir = tmp_path_factory.mktemp("bg")
    Image.new("RGB", (90, 70), (10, 200, 30)).save(bg_dir / "green.png")
    cfg = dataclasses.replace(SMALL, crowd=dataclasses.replace(SMALL.crowd, background_dir=bg_dir))
    sheet = np.asarray(preview_grid(open_source(folder), [1], cfg, ok_indices=np.arange(5)))
    assert (np.abs(sheet.astype(int) - [10, 200, 30]).sum(axis=-1) < 10).sum() > 100  # the green shows


def test_labels_show_the_parameters():
    p = ViewParams(
        img_size=(100, 50), box=(1, 2, 90, 40), out_size=(64, 32), flip=True, jitter=True, brightness=1.25,
        hue=-0.05, order=(3, 0, 1, 2), grayscale=True, blur=True, sigma=1.5, kernel=11,
    )  # fmt: skip
    text = " ".join(view_label(p))
    assert "90x40" in text and "flip" in text and "gray" in text and "blur 1.50" in text
    assert "jitter h-0.05 b1.25" in text  # applied order; identity factors are printed too


def test_preview_indices_spread_over_the_dataset():
    assert preview_indices(5, 16) == [0, 1, 2, 3, 4]
    spread = preview_indices(1000, 4)
    assert spread[0] == 0 and spread[-1] == 999 and len(spread) == 4
