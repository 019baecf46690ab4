"""Crowd recipes: eligible images only, partners differ from the anchor, round trip, rendering, config fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewsConfig
from dpal_cache.views.crowd import (
    RECIPE_LEN,
    CrowdRecipe,
    image_crowd_recipes,
    make_recipe,
    render_crowd,
)
from dpal_cache.views.params import global_view_params
from dpal_cache.views.render import render_view, resize

N = 30
RNG = np.random.default_rng(0)
SIZES = np.stack([RNG.integers(60, 120, N), RNG.integers(24, 60, N)], axis=1)  # (N, 2) = (H, W)
IMAGES = {i: RNG.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for i, (h, w) in enumerate(SIZES)}
FAILED = {2, 5, 6, 11, 17, 29}
OK = np.array([i for i in range(N) if i not in FAILED], dtype=np.int64)
SMALL = dict(size=(96, 96))


def _cfg(**crowd) -> ViewsConfig:
    merged = {**SMALL, **crowd}
    return ViewsConfig(
        global_view=GlobalViewConfig(size=(64, 32)),
        local_crops=LocalCropConfig(size=(40, 30)),
        crowd=CrowdConfig(**merged),
    )


def _recipes(cfg: ViewsConfig, crowds: int = 4, ok: np.ndarray = OK) -> list[CrowdRecipe]:
    return [make_recipe(cfg, 0, int(i), c, ok, SIZES) for i in ok for c in range(crowds)]


@pytest.mark.parametrize("mode", ["copy-paste", "release"])
def test_recipes_only_reference_eligible_images(mode):
    ok_set = set(OK.tolist())
    for r in _recipes(_cfg(mode=mode, persons=(1, 4))):
        assert set(r.dataset_indices()) <= ok_set
        assert r.background_kind == "dataset" and r.background_index in ok_set
    with pytest.raises(ValueError, match="not in ok_indices"):
        make_recipe(_cfg(), 0, 5, 0, OK, SIZES)  # a failed image has no crowd


def test_partners_differ_from_the_anchor_and_each_other():
    for r in _recipes(_cfg(persons=(2, 4))):
        anchor, *partners = [p.index for p in r.pastes]
        assert 2 <= len(r.pastes) <= 4
        assert anchor not in partners and len(set(partners)) == len(partners)
        # the background comes from an image nobody is pasted from, when there is one
        assert r.background_index not in [anchor, *partners]


def test_tiny_pools():
    cfg = _cfg(persons=(3, 3))
    alone = make_recipe(cfg, 0, 4, 0, np.array([4]), SIZES)
    assert [p.index for p in alone.pastes] == [4] and alone.background_index == 4
    pair = make_recipe(cfg, 0, 4, 0, np.array([4, 9]), SIZES)
    assert [p.index for p in pair.pastes] == [4, 9] and pair.background_index in (4, 9)


@pytest.mark.parametrize("mode", ["copy-paste", "release"])
def test_round_trip_through_stored_form(mode):
    for r in _recipes(_cfg(mode=mode, persons=(1, 4)), crowds=2):
        v = r.to_vector()
        assert v.shape == (RECIPE_LEN,) and v.dtype == np.float64
        assert CrowdRecipe.from_vector(v.copy()) == r
    with pytest.raises(ValueError, match="float64"):
        CrowdRecipe.from_vector(v.astype(np.float32))  # float32 would round indices above 2**24


def test_corrupt_vectors_are_refused():
    v = make_recipe(_cfg(persons=(2, 2)), 0, 0, 0, OK, SIZES).to_vector()
    paste0 = 7 + 24  # header, background view
    cases = [
        (0, 2.0, "version"),
        (4, 0.0, "pastes"),
        (RECIPE_LEN - 1, 3.0, "unused"),
        (paste0 + 1, 90.0, "box"),  # top + height beyond the 96-pixel canvas
        (paste0 + 5, 0.0, "alpha"),
    ]
    for slot, value, match in cases:
        bad = v.copy()
        bad[slot] = value
        with pytest.raises(ValueError, match=match):
            CrowdRecipe.from_vector(bad)
    with pytest.raises(ValueError, match="shape"):
        CrowdRecipe.from_vector(v[:-1])


@pytest.mark.parametrize("mode", ["copy-paste", "release"])
def test_render_size_and_bitwise_replay(mode):
    cfg = _cfg(mode=mode)
    for i in OK[:6]:
        r = make_recipe(cfg, 0, int(i), 0, OK, SIZES)
        imgs = {j: IMAGES[j] for j in r.dataset_indices()}  # only what the recipe names is needed
        x = render_crowd(r, imgs)
        assert x.shape == (3, 96, 96) and x.dtype == torch.uint8
        assert torch.equal(render_crowd(r.to_vector(), {j: v.copy() for j, v in imgs.items()}), x)


def test_copy_paste_pixels():
    cfg = _cfg(persons=(2, 2))
    r = make_recipe(cfg, 0, 0, 0, OK, SIZES)
    x = render_crowd(r, IMAGES)
    top, left, h, w = r.pastes[-1].box  # the last paste is on top of everything
    patch = resize(render_view(IMAGES[r.pastes[-1].index], r.pastes[-1].view), (h, w))
    assert torch.equal(x[:, top : top + h, left : left + w], patch)
    # outside every paste the background shows
    bg = render_view(IMAGES[r.background_index], r.background_view)
    mask = torch.ones(96, 96, dtype=torch.bool)
    for p in r.pastes:
        mask[p.box[0] : p.box[0] + p.box[2], p.box[1] : p.box[1] + p.box[3]] = False
    assert mask.any() and torch.equal(x[:, mask], bg[:, mask])


def test_release_mode_blends_a_local_crop_and_the_teachers_global_view():
    cfg = dataclasses.replace(_cfg(mode="release"), views_per_image=3)
    for crowd in range(4):
        r = make_recipe(cfg, 0, 8, crowd, OK, SIZES)
        local, glob = r.pastes
        assert local.index == glob.index == 8 and local.alpha == glob.alpha == pytest.approx(0.7)
        assert local.box[2:] == glob.box[2:] == (40, 30) and local.view.out_size == (40, 30)
        assert local.box[1] + 30 <= glob.box[1]  # side by side, never overlapping
        # the very view the teacher sees for view crowd % views_per_image
        assert glob.view == global_view_params(cfg.global_view, 0, 8, crowd % 3, tuple(SIZES[8]))
    x = render_crowd(r, IMAGES)
    bg = render_view(IMAGES[r.background_index], r.background_view).float()
    top, left, h, w = glob.box
    patch = resize(render_view(IMAGES[8], glob.view), (h, w)).float()
    expected = (patch * glob.alpha + bg[:, top : top + h, left : left + w] * (1 - glob.alpha)).round()
    assert torch.equal(x[:, top : top + h, left : left + w].float(), expected)


def test_mode_and_size_fields():
    r = make_recipe(_cfg(size=(80, 120)), 0, 0, 0, OK, SIZES)
    assert r.mode == "copy-paste" and r.size == (80, 120) and r.background_view.out_size == (80, 120)
    assert render_crowd(r, IMAGES).shape == (3, 80, 120)
    assert make_recipe(_cfg(mode="release"), 0, 0, 0, OK, SIZES).mode == "release"


def test_persons_field():
    counts = {len(r.pastes) for r in _recipes(_cfg(persons=(1, 3)))}
    assert counts == {1, 2, 3}
    assert {len(r.pastes) for r in _recipes(_cfg(persons=(4, 4)))} == {4}


def test_person_height_field():
    for r in _recipes(_cfg(person_height=(0.3, 0.4))):
        for p in r.pastes:
            h, w = p.box[2:]
            assert p.view.out_size == (h, w)
            if w < 96:  # not narrowed to fit the canvas width
                assert round(0.3 * 96) <= h <= round(0.4 * 96)


def _overlap(a, b) -> float:
    ih = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iw = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(ih, 0) * max(iw, 0) / min(a[2] * a[3], b[2] * b[3])


def test_max_overlap_field():
    # small persons on a large canvas: a free spot exists, so the limit must hold exactly
    cfg = _cfg(size=(128, 256), persons=(3, 3), person_height=(0.3, 0.4), max_overlap=0.0)
    for r in _recipes(cfg):
        boxes = [p.box for p in r.pastes]
        assert all(_overlap(a, b) == 0 for k, a in enumerate(boxes) for b in boxes[:k])
    loose = _recipes(dataclasses.replace(cfg, crowd=dataclasses.replace(cfg.crowd, max_overlap=1.0)))
    assert any(_overlap(r.pastes[0].box, r.pastes[1].box) > 0 for r in loose)


def test_flip_p_and_alpha_fields():
    assert all(p.view.flip for r in _recipes(_cfg(flip_p=1.0)) for p in r.pastes)
    assert not any(p.view.flip or r.background_view.flip for r in _recipes(_cfg(flip_p=0.0)) for p in r.pastes)
    assert {p.alpha for r in _recipes(_cfg()) for p in r.pastes} == {1.0}
    assert {p.alpha for r in _recipes(_cfg(alpha=0.5, mode="release")) for p in r.pastes} == {0.5}


def test_background_fields():
    cfg = _cfg(background_scale=(0.3, 0.35), background_ratio=(1.0, 1.0), background_blur_sigma=(2.5, 2.6))
    for r in _recipes(cfg):
        v = r.background_view
        h, w = v.box[2:]
        img_h, img_w = v.img_size
        if (h, w) != (min(img_h, img_w),) * 2:  # not the centred fallback for an impossible draw
            assert 0.28 <= h * w / (img_h * img_w) <= 0.37
        assert abs(h - w) <= 1
        assert v.blur and 2.5 <= v.sigma <= 2.6


def test_background_folder(tmp_path: Path):
    cfg = _cfg(background_dir=tmp_path)
    bg_sizes = [(70, 90), (100, 40), (64, 64)]
    with pytest.raises(ValueError, match="background_sizes"):
        make_recipe(cfg, 0, 0, 0, OK, SIZES)
    recipes = [make_recipe(cfg, 0, int(i), 0, OK, SIZES, bg_sizes) for i in OK]
    assert {r.background_kind for r in recipes} == {"folder"}
    assert {r.background_index for r in recipes} == {0, 1, 2}
    assert not any(r.background_view.blur for r in recipes)  # real backgrounds stay sharp
    r = recipes[0]
    background = RNG.integers(0, 256, (*bg_sizes[r.background_index], 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="background"):
        render_crowd(r, IMAGES)
    assert render_crowd(r, IMAGES, background).shape == (3, 96, 96)


def test_crowds_per_image_and_seed():
    cfg = dataclasses.replace(_cfg(), crowds_per_image=3)
    stored = image_crowd_recipes(cfg, 0, OK, SIZES)
    assert stored.shape == (3, RECIPE_LEN) and len({row.tobytes() for row in stored}) == 3
    other = image_crowd_recipes(dataclasses.replace(cfg, seed=1), 0, OK, SIZES)
    assert not np.array_equal(stored, other)
