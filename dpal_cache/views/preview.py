"""A PNG contact sheet of what the teacher and the student will see, for checking augmentations by eye.

One row per image: the decoded source, its cached global views, its crowd image(s) and one
epoch of student local crops, each tile labelled with its parameters (crop box, flip, jitter
factors in application order, grayscale, blur sigma; for crowds the mode, sources and
background). Rendering goes through the same functions extract and train use.

    img = preview_grid(open_source("data/LUP1M"), [0, 5, 9], ViewsConfig())
    img.save("grid.png")            # or: dpal-cache viz views --data data/LUP1M --out grid.png
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dpal_cache.data.decode import decode_rgb
from dpal_cache.data.sources import ImageSource, open_source
from dpal_cache.views.config import ViewsConfig
from dpal_cache.views.crowd import CrowdRecipe, make_recipe, render_crowd
from dpal_cache.views.local import local_crop_params
from dpal_cache.views.params import ViewParams, global_view_params
from dpal_cache.views.render import render_view

log = logging.getLogger(__name__)

MARGIN = 10
GAP = 8
MIN_COLUMN = 136  # wide enough for ~22 characters of label at FONT_SIZE
FONT_SIZE = 11
HEADER_SIZE = 13
BACKGROUND = (250, 250, 250)
INK = (20, 20, 20)
ERROR_INK = (180, 20, 20)
BORDER = (170, 170, 170)

Tile = tuple[Image.Image, list[str]]


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` (its fixed bitmap font where Pillow has no FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


class _Images:
    """Decoded images of a source, decoded once on first use (a preview touches few images)."""

    def __init__(self, source: ImageSource):
        self.source = source
        self._cache: dict[int, np.ndarray] = {}

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if index not in self._cache:
            self._cache[index] = decode_rgb(self.source.read(index))
        return self._cache[index]

    def __len__(self) -> int:
        return len(self.source)


class _Sizes:
    """(H, W) per index, as ``make_recipe`` wants, backed by lazy decoding."""

    def __init__(self, images: _Images):
        self.images = images

    def __getitem__(self, index: int) -> tuple[int, int]:
        h, w = self.images[index].shape[:2]
        return h, w

    def __len__(self) -> int:
        return len(self.images)


def to_pil(x: torch.Tensor) -> Image.Image:
    """A rendered uint8 (3, H, W) tensor as a Pillow RGB image."""
    return Image.fromarray(x.permute(1, 2, 0).numpy())  # (3, H, W) uint8 -> (H, W, 3)


def view_label(p: ViewParams) -> list[str]:
    """Label lines for a view: box, flags, jitter factors in the order they were applied."""
    top, left, h, w = p.box
    lines = [f"box {h}x{w} at ({top},{left})"]
    flags = [name for name, on in (("flip", p.flip), ("gray", p.grayscale)) if on]
    if p.blur:
        flags.append(f"blur {p.sigma:.2f}")
    lines.append("  ".join(flags) if flags else "no flip/gray/blur")
    if p.jitter:
        names = {0: f"b{p.brightness:.2f}", 1: f"c{p.contrast:.2f}", 2: f"s{p.saturation:.2f}", 3: f"h{p.hue:+.2f}"}
        lines.append("jitter " + " ".join(names[op] for op in p.order))
    return lines


def crowd_label(r: CrowdRecipe) -> list[str]:
    """Label lines for a crowd recipe: mode, sources, opacity, background."""
    sources = " ".join(f"#{p.index}" for p in r.pastes)
    bg = f"bg {'folder ' if r.background_kind == 'folder' else ''}#{r.background_index}"
    if r.background_view.blur:
        bg += f" blur {r.background_view.sigma:.1f}"
    return [f"{r.mode}  alpha {r.pastes[0].alpha:.2f}", f"from {sources}", bg]


def _error_tile(size: tuple[int, int], message: str) -> Tile:
    return Image.new("RGB", (size[1], size[0]), (225, 225, 225)), ["!" + message]


def _wrap(lines: list[str], font: Any, width: int) -> list[str]:
    """Break lines wider than the column at spaces (or anywhere, for long error messages)."""
    out: list[str] = []
    for line in lines:
        error = line.startswith("!")
        current = ""
        for word in line.split(" "):
            candidate = f"{current} {word}" if current else word
            if current and font.getlength(candidate) > width:
                out.append(current)
                current = ("!" if error else "  ") + word
            else:
                current = candidate
            while font.getlength(current) > width and len(current) > 2:  # a single word too wide
                cut = max(2, next(i for i in range(len(current), 0, -1) if font.getlength(current[:i]) <= width))
                out.append(current[:cut])
                current = ("!" if error else "") + current[cut:]
        out.append(current)
    return out


def _row_tiles(
    index: int, images: _Images, cfg: ViewsConfig, epoch: int, ok: np.ndarray, backgrounds: _Images | None
) -> tuple[str, list[Tile]]:
    try:
        rgb = images[index]
    except Exception as exc:  # decode or read failure: show it instead of the row
        return f"#{index}  {images.source.key(index)}", [_error_tile((64, 256), f"{type(exc).__name__}: {exc}")]
    size = (rgb.shape[0], rgb.shape[1])
    header = f"#{index}  {images.source.key(index)}  ({size[0]}x{size[1]})"
    tile_h = cfg.global_view.size[0]
    thumb_w = max(1, min(2 * tile_h, round(size[1] * tile_h / size[0])))
    tiles: list[Tile] = [(Image.fromarray(rgb).resize((thumb_w, tile_h), Image.Resampling.BICUBIC), ["source"])]
    for v in range(cfg.views_per_image):
        p = global_view_params(cfg.global_view, cfg.seed, index, v, size)
        tiles.append((to_pil(render_view(rgb, p)), [f"view {v}", *view_label(p)]))
    bg_sizes = _Sizes(backgrounds) if backgrounds is not None else None
    for c in range(cfg.crowds_per_image):
        try:
            r = make_recipe(cfg, cfg.seed, index, c, ok, _Sizes(images), bg_sizes)
            bg = backgrounds[r.background_index] if backgrounds is not None and r.background_kind == "folder" else None
            x = render_crowd(r, {i: images[i] for i in r.dataset_indices()}, bg)
            tiles.append((to_pil(x), [f"crowd {c}", *crowd_label(r)]))
        except Exception as exc:  # e.g. a partner that does not decode when no manifest filtered it out
            log.warning("crowd %d of image %d: %s", c, index, exc)
            tiles.append(_error_tile(cfg.crowd.size, f"crowd {c}: {type(exc).__name__}: {exc}"))
    for k in range(cfg.local_crops.count):
        p = local_crop_params(cfg.local_crops, cfg.seed, epoch, index, k, size)
        tiles.append((to_pil(render_view(rgb, p)), [f"local {k} (epoch {epoch})", *view_label(p)]))
    return header, tiles


def _layout(rows: list[tuple[str, list[Tile]]]) -> Image.Image:
    font, header_font = load_font(FONT_SIZE), load_font(HEADER_SIZE)
    line_h = FONT_SIZE + 3
    header_h = HEADER_SIZE + 6
    placed = []  # per row: header, [(image, lines, column width)], row height
    width = 0
    for header, tiles in rows:
        cols = []
        for img, label in tiles:
            col_w = max(img.width, MIN_COLUMN)
            cols.append((img, _wrap(label, font, col_w), col_w))
        tile_h = max(img.height for img, _, _ in cols)
        label_h = max(len(lines) for _, lines, _ in cols) * line_h
        placed.append((header, cols, header_h + tile_h + 4 + label_h))
        width = max(width, 2 * MARGIN + sum(w for _, _, w in cols) + GAP * (len(cols) - 1))
    height = 2 * MARGIN + sum(h for _, _, h in placed) + GAP * (len(placed) - 1)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = MARGIN
    for header, cols, row_h in placed:
        draw.text((MARGIN, y), header, fill=INK, font=header_font)
        x, tile_top = MARGIN, y + header_h
        tile_h = max(img.height for img, _, _ in cols)
        for img, lines, col_w in cols:
            sheet.paste(img, (x, tile_top))
            draw.rectangle((x - 1, tile_top - 1, x + img.width, tile_top + img.height), outline=BORDER)
            for j, line in enumerate(lines):
                error = line.startswith("!")
                draw.text(
                    (x, tile_top + tile_h + 4 + j * line_h),
                    line[1:] if error else line,
                    fill=ERROR_INK if error else INK,
                    font=font,
                )
            x += col_w + GAP
        y += row_h + GAP
        draw.line((MARGIN, y - GAP // 2, width - MARGIN, y - GAP // 2), fill=BORDER)
    return sheet


def preview_indices(n_images: int, n: int) -> list[int]:
    """``n`` indices spread evenly over the dataset (all of them when it is small)."""
    if n >= n_images:
        return list(range(n_images))
    return sorted({int(round(x)) for x in np.linspace(0, n_images - 1, n)})


def preview_grid(
    source: ImageSource,
    indices: Sequence[int],
    cfg: ViewsConfig,
    epoch: int = 0,
    ok_indices: np.ndarray | None = None,
    on_row: Callable[[int], None] | None = None,
) -> Image.Image:
    """Render the contact sheet.

    Args:
        source: the dataset.
        indices: the images to show, one row each.
        cfg: the views config (seed, sizes, counts, augmentation ranges, crowd mode).
        epoch: which epoch's local crops to show.
        ok_indices: images eligible as crowd partners/backgrounds (from the manifest); default all.
        on_row: called with each row's index once it is rendered (progress bars).
    """
    images = _Images(source)
    backgrounds = _Images(open_source(cfg.crowd.background_dir)) if cfg.crowd.background_dir is not None else None
    ok = np.arange(len(source), dtype=np.int64) if ok_indices is None else np.asarray(ok_indices, dtype=np.int64)
    rows = []
    for index in indices:
        rows.append(_row_tiles(int(index), images, cfg, epoch, ok, backgrounds))
        if on_row is not None:
            on_row(int(index))
    if not rows:
        raise ValueError("nothing to preview: no indices given")
    return _layout(rows)
