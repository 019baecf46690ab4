"""Synthetic multi-person ("crowd") images: a recipe drawn purely from (seed, index, crowd), then rendered.

    ok = manifest_ok_indices                                   # sorted int64, failed images left out
    r = make_recipe(cfg, cfg.seed, index=17, crowd=0, ok_indices=ok, sizes=sizes)
    vec = r.to_vector()                                        # float64 (RECIPE_LEN,): the stored form
    imgs = {i: decode_rgb(src.read(i)) for i in r.dataset_indices()}
    x = render_crowd(CrowdRecipe.from_vector(vec), imgs, background=None)  # uint8 (3, 256, 256)

Modes (``CrowdConfig.mode``):
- ``copy-paste`` (the paper): the anchor and K-1 partners (K drawn from ``persons``; partners
  drawn without replacement from ``ok_indices`` minus the anchor) pasted whole, each at a
  drawn height, flipped with ``flip_p``, at positions whose pairwise overlap stays under
  ``max_overlap`` when one of 16 drawn candidates allows it (else the least-overlapping one).
  Anchor first, partners on top.
- ``release`` (parity with the authors' code): one local crop of the anchor (its own stream)
  on the left, and the anchor's global view ``crowd % views_per_image`` (the very view the
  teacher sees, rendered at its size, then resized to the local-crop size) to its right,
  both blended ``alpha`` / ``1 - alpha`` (0.7 / 0.3) onto the background. Unlike the code,
  the global view is resized bicubic with antialias (the code uses nearest).
Background: a crop of image ``background_index`` of ``background_dir`` (a FolderSource)
when configured, else a blurred crop of another eligible dataset image.

``sizes`` is anything indexable by a dataset index giving its decoded (H, W) (an (N, 2)
array or a mapping); ``background_sizes`` the same for the background folder, with len().
Recipes only ever reference indices in ``ok_indices`` (or the anchor itself when it is the
only eligible image), so failed images never reach rendering. Drawing recipes needs numpy
only (cheap in data workers); ``render_crowd`` imports torch.

Recipe vector layout (``RECIPE_LEN`` = 151, float64; keep float64: indices above 2**24 are
not exact in float32):

    slot        meaning
    0           layout version, currently 1
    1           mode: 0 copy-paste, 1 release
    2, 3        output height, width
    4           number of pastes used (1..MAX_PASTES)
    5           background kind: 0 dataset image, 1 background-folder image
    6           background index (dataset index, or index into the background folder)
    7..30       background view parameters (params.ViewParams layout, PARAM_LEN = 24)
    31 + 30 k   paste k (k < MAX_PASTES = 4), 30 slots: dataset index, top, left, height,
                width (box on the canvas), alpha, then 24 view parameters of the source
                (rendered at the view's out size, resized to the box if that differs).
                Unused paste blocks are all zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dpal_cache.views.config import MAX_PASTES, CrowdConfig, ViewAugConfig, ViewsConfig
from dpal_cache.views.params import (
    PARAM_LEN,
    STREAM_CROWD,
    STREAM_CROWD_LOCAL,
    VIEW_DRAWS,
    ViewParams,
    draw_view,
    f32,
    full_frame,
    global_view_params,
    uniforms,
)

if TYPE_CHECKING:
    import torch

LAYOUT_VERSION = 1
MODES = ("copy-paste", "release")
BACKGROUND_KINDS = ("dataset", "folder")
PLACE_ATTEMPTS = 16
HEADER_LEN = 7
PASTE_HEAD = 6
PASTE_LEN = PASTE_HEAD + PARAM_LEN
RECIPE_LEN = HEADER_LEN + PARAM_LEN + MAX_PASTES * PASTE_LEN


@dataclass(frozen=True)
class Paste:
    """One pasted patch: source image, how it is rendered, where it lands, how opaque it is."""

    index: int  # dataset index of the source image
    box: tuple[int, int, int, int]  # top, left, height, width on the canvas
    alpha: float
    view: ViewParams


@dataclass(frozen=True)
class CrowdRecipe:
    """Everything needed to render one crowd image from its source images (see module table)."""

    mode: str
    size: tuple[int, int]
    background_kind: str
    background_index: int
    background_view: ViewParams
    pastes: tuple[Paste, ...]

    def dataset_indices(self) -> list[int]:
        """Sorted dataset indices whose decoded images ``render_crowd`` needs."""
        needed = {p.index for p in self.pastes}
        if self.background_kind == "dataset":
            needed.add(self.background_index)
        return sorted(needed)

    def to_vector(self) -> np.ndarray:
        """The stored form: float64 (RECIPE_LEN,)."""
        v = np.zeros(RECIPE_LEN, dtype=np.float64)
        v[:HEADER_LEN] = (
            LAYOUT_VERSION,
            MODES.index(self.mode),
            *self.size,
            len(self.pastes),
            BACKGROUND_KINDS.index(self.background_kind),
            self.background_index,
        )
        v[HEADER_LEN : HEADER_LEN + PARAM_LEN] = self.background_view.to_vector()
        for k, p in enumerate(self.pastes):
            at = HEADER_LEN + PARAM_LEN + k * PASTE_LEN
            v[at : at + PASTE_HEAD] = (p.index, *p.box, p.alpha)
            v[at + PASTE_HEAD : at + PASTE_LEN] = p.view.to_vector()
        return v

    @classmethod
    def from_vector(cls, vec: np.ndarray) -> CrowdRecipe:
        """Inverse of :meth:`to_vector`, validating the layout."""
        v = np.asarray(vec)
        if v.dtype != np.float64:
            raise ValueError(f"crowd recipes are stored as float64 (indices must stay exact), got {v.dtype}")
        if v.shape != (RECIPE_LEN,):
            raise ValueError(f"crowd recipe vector must have shape ({RECIPE_LEN},), got {v.shape}")
        head = v[:HEADER_LEN]
        if head[0] != LAYOUT_VERSION:
            raise ValueError(f"crowd recipe layout version {head[0]} is not {LAYOUT_VERSION}")
        if not np.all(head == np.round(head)) or np.any(head < 0):
            raise ValueError("crowd recipe header holds non-integer or negative values")
        mode, kind, n = int(head[1]), int(head[5]), int(head[4])
        if mode >= len(MODES) or kind >= len(BACKGROUND_KINDS) or not 1 <= n <= MAX_PASTES:
            raise ValueError(f"crowd recipe header out of range: mode {mode}, background kind {kind}, pastes {n}")
        canvas_h, canvas_w = int(head[2]), int(head[3])
        pastes = []
        for k in range(MAX_PASTES):
            at = HEADER_LEN + PARAM_LEN + k * PASTE_LEN
            block = v[at : at + PASTE_LEN]
            if k >= n:
                if np.any(block != 0):
                    raise ValueError(f"crowd recipe paste block {k} is unused but not zero")
                continue
            index, top, left, h, w = (int(x) for x in block[:5])
            integral = np.all(block[:5] == np.round(block[:5]))
            fits = min(index, top, left) >= 0 and min(h, w) >= 1 and top + h <= canvas_h and left + w <= canvas_w
            if not integral or not fits or not 0.0 < block[5] <= 1.0:
                raise ValueError(f"crowd recipe paste {k} has a bad index, box or alpha: {block[:6].tolist()}")
            pastes.append(
                Paste(index, (top, left, h, w), float(block[5]), ViewParams.from_vector(block[PASTE_HEAD:]))
            )
        return cls(
            mode=MODES[mode],
            size=(canvas_h, canvas_w),
            background_kind=BACKGROUND_KINDS[kind],
            background_index=int(head[6]),
            background_view=ViewParams.from_vector(v[HEADER_LEN : HEADER_LEN + PARAM_LEN]),
            pastes=tuple(pastes),
        )


def _size_of(sizes: Any, i: int) -> tuple[int, int]:
    h, w = sizes[i]
    return int(h), int(w)


def _pick(n: int, taken: list[int], u: float) -> int | None:
    """Position floor(u * m) among the n positions not in ``taken`` (m of them); None if m = 0."""
    m = n - len(taken)
    if m <= 0:
        return None
    r = min(int(u * m), m - 1)
    for t in sorted(taken):  # step over taken positions in increasing order
        if t <= r:
            r += 1
    return r


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area."""
    ih = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iw = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if ih <= 0 or iw <= 0:
        return 0.0
    return ih * iw / min(a[2] * a[3], b[2] * b[3])


def _background(
    c: CrowdConfig,
    ok: np.ndarray,
    taken: list[int],
    u: np.ndarray,
    bg_u: np.ndarray,
    sizes: Any,
    background_sizes: Any,
) -> tuple[str, int, ViewParams]:
    """Background kind, index and view. ``u``: 1 uniform for the pick; ``bg_u``: a view's draws."""
    if c.background_dir is not None:
        if background_sizes is None or len(background_sizes) == 0:
            raise ValueError("crowd.background_dir is set: pass background_sizes (one (H, W) per background image)")
        kind, index = "folder", min(int(u[0] * len(background_sizes)), len(background_sizes) - 1)
        size = _size_of(background_sizes, index)
    else:
        # prefer an image nobody is pasted from; with tiny pools fall back to a partner, then the anchor
        pos = _pick(len(ok), taken, u[0])
        if pos is None:
            pos = _pick(len(ok), taken[:1], u[0])
        kind, index = "dataset", int(ok[taken[0] if pos is None else pos])
        size = _size_of(sizes, index)
    aug = ViewAugConfig(
        size=c.size,
        scale=c.background_scale,
        ratio=c.background_ratio,
        flip_p=c.flip_p,
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=1.0 if kind == "dataset" else 0.0,
        blur_sigma=c.background_blur_sigma,
    )
    return kind, index, draw_view(aug, size, bg_u)


def _person_paste(
    c: CrowdConfig, index: int, img_size: tuple[int, int], placed: list[tuple[int, int, int, int]], u: np.ndarray
) -> Paste:
    """Paste one whole person image at a drawn height and a position that limits overlap."""
    ch, cw = c.size
    sh, sw = img_size
    frac = c.person_height[0] + (c.person_height[1] - c.person_height[0]) * u[0]
    ph = max(1, min(ch, round(frac * ch)))
    pw = max(1, round(ph * sw / sh))  # keep the person's aspect
    if pw > cw:
        pw = cw
        ph = max(1, min(ch, round(pw * sh / sw)))
    best, best_overlap = None, math.inf
    for a in range(PLACE_ATTEMPTS):
        box = (int(u[2 + 2 * a] * (ch - ph + 1)), int(u[3 + 2 * a] * (cw - pw + 1)), ph, pw)
        worst = max((_overlap(box, other) for other in placed), default=0.0)
        if worst <= c.max_overlap:
            best = box
            break
        if worst < best_overlap:
            best, best_overlap = box, worst
    assert best is not None
    return Paste(index, best, f32(c.paste_alpha), full_frame(img_size, (ph, pw), flip=bool(u[1] < c.flip_p)))


def _anchor_position(ok: np.ndarray, index: int) -> int:
    pos = int(np.searchsorted(ok, index))
    if pos >= len(ok) or ok[pos] != index:
        raise ValueError(f"image {index} is not in ok_indices: failed or missing images have no crowd recipe")
    return pos


def make_recipe(
    cfg: ViewsConfig,
    seed: int,
    index: int,
    crowd: int,
    ok_indices: np.ndarray,
    sizes: Any,
    background_sizes: Any = None,
) -> CrowdRecipe:
    """Draw crowd image ``crowd`` of anchor image ``index``; a pure function of its arguments.

    Args:
        cfg: the views config (its crowd section, plus global-view and local-crop sections in release mode).
        seed: the run seed (normally ``cfg.seed``).
        index: the anchor's dataset index; must be in ``ok_indices``.
        crowd: which crowd image of this anchor (0 .. crowds_per_image - 1).
        ok_indices: sorted, unique int64 dataset indices eligible as partners and backgrounds.
        sizes: decoded (H, W) per dataset index, indexable by index.
        background_sizes: (H, W) per background-folder image; required when ``crowd.background_dir`` is set.
    """
    ok = np.asarray(ok_indices, dtype=np.int64)
    anchor_pos = _anchor_position(ok, index)
    c = cfg.crowd
    head = uniforms(seed, STREAM_CROWD, index, crowd, 0, 1 + MAX_PASTES)  # K, partner picks, background pick
    bg_u = uniforms(seed, STREAM_CROWD, index, crowd, 1, VIEW_DRAWS)
    anchor_size = _size_of(sizes, index)
    if c.mode == "copy-paste":
        lo, hi = c.persons
        k = lo + min(int(head[0] * (hi - lo + 1)), hi - lo)
        taken = [anchor_pos]
        for j in range(k - 1):
            pos = _pick(len(ok), taken, head[1 + j])
            if pos is None:  # fewer eligible images than persons: paste fewer
                break
            taken.append(pos)
        kind, bg_index, bg_view = _background(c, ok, taken, head[MAX_PASTES:], bg_u, sizes, background_sizes)
        pastes: list[Paste] = []
        for slot, pos in enumerate(taken):
            u = uniforms(seed, STREAM_CROWD, index, crowd, 2 + slot, 2 + 2 * PLACE_ATTEMPTS)
            src = int(ok[pos])
            pastes.append(_person_paste(c, src, _size_of(sizes, src), [p.box for p in pastes], u))
    else:
        kind, bg_index, bg_view = _background(c, ok, [anchor_pos], head[MAX_PASTES:], bg_u, sizes, background_sizes)
        ch, cw = c.size
        lh, lw = cfg.local_crops.size
        local = draw_view(cfg.local_crops, anchor_size, uniforms(seed, STREAM_CROWD_LOCAL, index, crowd, 0, VIEW_DRAWS))
        glob = global_view_params(cfg.global_view, seed, index, crowd % cfg.views_per_image, anchor_size)
        u = uniforms(seed, STREAM_CROWD, index, crowd, 2, 4)
        top1, left1 = int(u[0] * (ch - lh + 1)), int(u[1] * (cw - 2 * lw + 1))
        top2, left2 = int(u[2] * (ch - lh + 1)), left1 + lw + int(u[3] * (cw - left1 - 2 * lw + 1))
        alpha = f32(c.paste_alpha)
        pastes = [
            Paste(index, (top1, left1, lh, lw), alpha, local),
            Paste(index, (top2, left2, lh, lw), alpha, glob),
        ]
    return CrowdRecipe(c.mode, c.size, kind, bg_index, bg_view, tuple(pastes))


def image_crowd_recipes(
    cfg: ViewsConfig, index: int, ok_indices: np.ndarray, sizes: Any, background_sizes: Any = None
) -> np.ndarray:
    """All cached crowd recipes of one anchor as stored vectors: float64 (crowds_per_image, RECIPE_LEN)."""
    out = np.zeros((cfg.crowds_per_image, RECIPE_LEN), dtype=np.float64)
    for c in range(cfg.crowds_per_image):
        out[c] = make_recipe(cfg, cfg.seed, index, c, ok_indices, sizes, background_sizes).to_vector()
    return out


def render_crowd(
    recipe: CrowdRecipe | np.ndarray,
    images: Mapping[int, np.ndarray | torch.Tensor],
    background: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Render a crowd image.

    Args:
        recipe: a CrowdRecipe or its stored vector.
        images: decoded RGB uint8 (H, W, 3) per dataset index, at least ``recipe.dataset_indices()``.
        background: the decoded background-folder image, required when ``background_kind == "folder"``.

    Returns:
        torch.uint8 (3, H, W) with (H, W) = recipe.size.
    """
    from dpal_cache.views.batched import BatchRenderer  # here, so drawing recipes in data workers never imports torch
    from dpal_cache.views.render import to_chw

    r = recipe if isinstance(recipe, CrowdRecipe) else CrowdRecipe.from_vector(recipe)
    if r.background_kind == "folder":
        if background is None:
            raise ValueError(f"this recipe's background is background-folder image {r.background_index}: pass it")
        backgrounds = {r.background_index: to_chw(background)}
    else:
        backgrounds = None
    sources = {i: to_chw(images[i]) for i in r.dataset_indices()}
    return BatchRenderer("cpu").crowds([r], sources, backgrounds)[0]
