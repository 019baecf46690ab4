"""Rendering: deterministic, mask aligned with the drawn person, LIP label conventions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dpal_cache.synth.draw import (
    FACE,
    HAIR,
    HAT,
    LEFT_ARM,
    LEFT_LEG,
    LIP_LABELS,
    PANTS,
    RIGHT_ARM,
    RIGHT_LEG,
    UPPER,
    camera_style,
    draw_pose,
    render_background,
    render_distractor,
    render_image,
    render_person,
)
from dpal_cache.synth.identity import identity_for

H, W = 192, 96


def _neutral(camera: int = 1):
    """A camera without exposure, tint, contrast, blur or noise: drawn colours come out unchanged."""
    return dataclasses.replace(
        camera_style(0, camera), gain=1.0, contrast=1.0, tint=(1.0, 1.0, 1.0), noise=0.0, blur=0.0,
        exposure_jitter=0.0,
    )  # fmt: skip


def _rng_facing(ident, facing: str) -> int:
    """An rng seed whose pose faces ``facing`` (the pose is the first thing render_person draws)."""
    return next(k for k in range(500) if draw_pose(np.random.default_rng(k), ident, H, W).facing == facing)


def _interior(mask: np.ndarray, label: int, margin: int = 2) -> np.ndarray:
    """Pixels of ``label`` whose whole (2*margin+1)^2 neighbourhood has the same label."""
    inside = mask == label
    out = inside.copy()
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            out &= np.roll(np.roll(inside, dy, 0), dx, 1)
    return out


def test_render_is_deterministic_and_well_formed():
    img, mask = render_image(0, 5, 2, 3, H, W)
    img2, mask2 = render_image(0, 5, 2, 3, H, W)
    assert img.size == (W, H) and img.mode == "RGB"
    assert mask.shape == (H, W) and mask.dtype == np.uint8
    assert np.array_equal(np.asarray(img), np.asarray(img2)) and np.array_equal(mask, mask2)
    assert set(np.unique(mask)) <= set(LIP_LABELS)
    other, _ = render_image(1, 5, 2, 3, H, W)
    assert not np.array_equal(np.asarray(img), np.asarray(other))


def test_person_area_is_plausible():
    for pid in range(1, 9):
        _, mask = render_image(0, pid, pid % 3, pid % 6 + 1, H, W)
        fg = mask > 0
        assert 0.08 < fg.mean() < 0.5
        rows = np.flatnonzero(fg.any(axis=1))
        assert rows[-1] - rows[0] > 0.6 * H  # a whole standing person
        labels = set(np.unique(mask))
        assert {UPPER, PANTS} <= labels and labels & {FACE, HAIR, HAT}


@pytest.mark.parametrize("pid", [p for p in range(1, 40) if identity_for(0, p).upper_texture == "plain"][:4])
def test_mask_labels_sit_on_their_drawn_colours(pid):
    ident = identity_for(0, pid)
    img, mask = render_person(ident, np.random.default_rng(_rng_facing(ident, "front")), H, W, _neutral())
    pixels = np.asarray(img).astype(int)
    # the face holds unlabelled eyes and mouth, so fewer of its pixels are plain skin
    expected = ((UPPER, ident.upper_rgb, 0.9), (PANTS, ident.lower_rgb, 0.9), (FACE, ident.skin_rgb, 0.5))
    for label, rgb, share in expected:
        inner = _interior(mask, label)
        assert inner.sum() >= 10, label
        close = np.abs(pixels[inner] - np.array(rgb)).max(axis=1) <= 4
        assert close.mean() > share, (label, close.mean())
    bg = pixels[_interior(mask, 0, margin=3)]
    assert (np.abs(bg - np.array(ident.upper_rgb)).max(axis=1) <= 4).mean() < 0.2  # the person is not the scene


def test_appearance_is_stable_within_an_id_and_differs_across_ids():
    def upper_colour(pid: int, image: int) -> np.ndarray:
        img, mask = render_person(identity_for(0, pid), np.random.default_rng([pid, image]), H, W, _neutral())
        return np.median(np.asarray(img)[_interior(mask, UPPER)], axis=0)

    plain = [p for p in range(1, 60) if identity_for(0, p).upper_texture == "plain"]
    colour = {p: identity_for(0, p).upper_colour for p in plain}
    a, b = next((p, q) for p in plain for q in plain if colour[p] != colour[q])
    same = np.abs(upper_colour(a, 0) - upper_colour(a, 1)).max()
    diff = np.abs(upper_colour(a, 0) - upper_colour(b, 0)).max()
    assert same <= 20 < diff  # 20: the darker far arm of a side view may sway the median a little


@pytest.mark.parametrize("facing,sign", [("front", 1), ("back", -1)])
def test_left_and_right_are_the_persons_own_sides(facing, sign):
    ident = identity_for(0, 2)
    _, mask = render_person(ident, np.random.default_rng(_rng_facing(ident, facing)), H, W, _neutral())
    xs = np.arange(W)[None, :]

    def mean_x(label: int) -> float:
        return float((xs * (mask == label)).sum() / max((mask == label).sum(), 1))

    # a person facing the camera has their left arm on the image's right
    assert sign * (mean_x(LEFT_ARM) - mean_x(RIGHT_ARM)) > 0
    if ident.shorts:
        assert sign * (mean_x(LEFT_LEG) - mean_x(RIGHT_LEG)) > 0


def test_same_camera_shares_its_scene_and_cameras_differ():
    s1, s2 = camera_style(0, 1), camera_style(0, 2)
    assert s1 == camera_style(0, 1) and s1 != s2
    a = np.asarray(render_background(np.random.default_rng(1), 64, 64, s1)).astype(int)
    b = np.asarray(render_background(np.random.default_rng(2), 64, 64, s1)).astype(int)
    c = np.asarray(render_background(np.random.default_rng(1), 64, 64, s2)).astype(int)
    assert np.abs(a - b).mean() < np.abs(a - c).mean()


def test_background_and_distractors():
    bg = render_background(np.random.default_rng(0), 40, 72)
    assert bg.size == (72, 40)
    assert np.asarray(bg).std() > 5  # textured, not a flat colour
    kinds = set()
    for i in range(12):
        img, mask = render_distractor(0, i, 1 + i % 3, H, W)
        assert img.size == (W, H) and mask.shape == (H, W)
        if mask.any():
            fg = mask > 0
            touches = fg[0].any() or fg[-1].any() or fg[:, 0].any() or fg[:, -1].any()
            assert touches, "a distractor person must be cut by the crop"
            kinds.add("partial")
        else:
            kinds.add("empty")
    assert kinds == {"partial", "empty"}
