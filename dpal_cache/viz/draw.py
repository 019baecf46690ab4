"""Small Pillow primitives for report figures: labelled image grids, line charts, scatter plots, legends.

No plotting library: every figure is drawn with Pillow on numpy inputs, in the fonts and colours
the ``viz views`` contact sheet uses (``views/preview.py``).

    grid = image_grid([[view, pca], [view2, pca2]], col_titles=["view", "PCA"], row_titles=[["#0"], ["#1"]])
    chart = line_chart({"loss": (steps, loss)}, title="losses", xlabel="step", ylabel="loss", log_y=True)
    dots = scatter_plot(xy, classes, title="class tokens", xlabel="PC1", ylabel="PC2")
    fig = hstack([dots, legend([("id 1", colour(0))])], title="embedding")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from dpal_cache.views.preview import BACKGROUND, BORDER, INK, load_font

RGB = tuple[int, int, int]

# Tableau 20, strong shades first: neighbouring classes get clearly different hues
PALETTE: tuple[RGB, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip
GRID_INK = (225, 225, 225)
MUTED_INK = (90, 90, 90)
FONT_SIZE = 12
TITLE_SIZE = 15
PAD = 10


def colour(i: int) -> RGB:
    """The ``i``-th palette colour (wrapping around after 20)."""
    return PALETTE[int(i) % len(PALETTE)]


def colours_used(img: Image.Image) -> set[RGB]:
    """The distinct RGB colours of a picture (to check which palette entries a figure shows)."""
    arr = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(np.int32)
    packed = np.unique(arr[:, 0] << 16 | arr[:, 1] << 8 | arr[:, 2])
    return {(int(v) >> 16, int(v) >> 8 & 255, int(v) & 255) for v in packed}


def font(size: int = FONT_SIZE):
    """Pillow's scalable default font at ``size`` (a bitmap font when Pillow lacks FreeType)."""
    return load_font(size)


def text_box(text: str, size: int = FONT_SIZE) -> tuple[int, int]:
    """(width, height) of one line of ``text`` in the default font."""
    left, top, right, bottom = font(size).getbbox(text or " ")
    return math.ceil(right - min(left, 0)), math.ceil(bottom - min(top, 0))


def _lines_height(lines: Sequence[str], size: int) -> int:
    return len(lines) * (size + 4)


def _draw_lines(draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: Sequence[str], size: int = FONT_SIZE,
                fill: RGB = INK, anchor_centre_width: int | None = None) -> None:
    x, y = xy
    f = font(size)
    for line in lines:
        dx = 0 if anchor_centre_width is None else max(0, (anchor_centre_width - text_box(line, size)[0]) // 2)
        draw.text((x + dx, y), line, fill=fill, font=f)
        y += size + 4


def map_image(values: np.ndarray, height: int, width: int) -> Image.Image:
    """A map on a patch grid, (h, w) in [0, 1] (grey) or (h, w, 3) (RGB), upscaled with visible patches."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    img = Image.fromarray((v * 255.0 + 0.5).astype(np.uint8))
    return img.convert("RGB").resize((width, height), Image.Resampling.NEAREST)


def upscale(img: Image.Image, height: int) -> Image.Image:
    """Resize a picture to ``height`` keeping its aspect (bicubic; nearest for integer enlargements)."""
    if img.height == height:
        return img.convert("RGB")
    width = max(1, round(img.width * height / img.height))
    integer = height % img.height == 0 and height > img.height
    method = Image.Resampling.NEAREST if integer else Image.Resampling.BICUBIC
    return img.convert("RGB").resize((width, height), method)


def titled(img: Image.Image, title: str | Sequence[str], notes: Sequence[str] = ()) -> Image.Image:
    """``img`` under a title line (or lines) and optional smaller note lines."""
    lines = [title] if isinstance(title, str) else list(title)
    width = max([img.width + 2 * PAD] + [text_box(t, TITLE_SIZE)[0] + 2 * PAD for t in lines]
                + [text_box(t)[0] + 2 * PAD for t in notes])
    head = PAD + _lines_height(lines, TITLE_SIZE) + (_lines_height(notes, FONT_SIZE) if notes else 0) + 4
    out = Image.new("RGB", (width, head + img.height + PAD), BACKGROUND)
    draw = ImageDraw.Draw(out)
    _draw_lines(draw, (PAD, PAD), lines, TITLE_SIZE)
    _draw_lines(draw, (PAD, PAD + _lines_height(lines, TITLE_SIZE)), notes, FONT_SIZE, fill=MUTED_INK)
    out.paste(img, ((width - img.width) // 2, head))
    return out


def hstack(images: Sequence[Image.Image], gap: int = PAD, title: str | None = None,
           notes: Sequence[str] = ()) -> Image.Image:
    """Pictures side by side (top-aligned), optionally under a title."""
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, max(im.height for im in images)), BACKGROUND)
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return titled(out, title, notes) if title else out


def vstack(images: Sequence[Image.Image], gap: int = PAD, title: str | None = None,
           notes: Sequence[str] = ()) -> Image.Image:
    """Pictures one under the other (left-aligned), optionally under a title."""
    height = sum(im.height for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (max(im.width for im in images), height), BACKGROUND)
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height + gap
    return titled(out, title, notes) if title else out


def image_grid(rows: Sequence[Sequence[Image.Image | None]], *, col_titles: Sequence[str] | None = None,
               row_titles: Sequence[Sequence[str]] | None = None, title: str | None = None,
               notes: Sequence[str] = (), gap: int = 6) -> Image.Image:
    """A labelled grid of pictures.

    Args:
        rows: the pictures, row by row (None leaves a cell empty); cells are placed as given.
        col_titles: one title per column; ``\\n`` splits a title into lines.
        row_titles: the label lines of each row, drawn in a left column.
        title: the figure title; ``notes`` are smaller lines under it.
    """
    n_cols = max(len(r) for r in rows)
    heads = [t.split("\n") for t in (col_titles or [])] + [[]] * n_cols
    cells = [[r[c] for r in rows if c < len(r) and r[c] is not None] for c in range(n_cols)]  # by column
    col_w = [max([text_box(line)[0] for line in heads[c]] + [im.width for im in cells[c]] + [1]) for c in range(n_cols)]
    row_h = [max([im.height for im in r if im is not None] + [1]) for r in rows]
    labels = [list(t) for t in (row_titles or [])] + [[]] * len(rows)
    label_w = max([text_box(line)[0] for lab in labels for line in lab] + [0])
    label_w = label_w + gap if label_w else 0
    head_h = max(_lines_height(h, FONT_SIZE) for h in heads[:n_cols]) + 4 if col_titles else 0
    width = PAD * 2 + label_w + sum(col_w) + gap * (n_cols - 1)
    height = PAD * 2 + head_h + sum(row_h) + gap * (len(rows) - 1)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    x = PAD + label_w
    for c in range(n_cols):
        _draw_lines(draw, (x, PAD), heads[c], anchor_centre_width=col_w[c])
        x += col_w[c] + gap
    y = PAD + head_h
    for r, cells in enumerate(rows):
        lab_lines = labels[r]
        _draw_lines(draw, (PAD, y + max(0, (row_h[r] - _lines_height(lab_lines, FONT_SIZE)) // 2)), lab_lines)
        x = PAD + label_w
        for c, im in enumerate(cells):
            if im is not None:
                left = x + (col_w[c] - im.width) // 2
                sheet.paste(im, (left, y))
                draw.rectangle((left - 1, y - 1, left + im.width, y + im.height), outline=BORDER)
            x += col_w[c] + gap
        y += row_h[r] + gap
    return titled(sheet, title, notes) if title else sheet


def legend(entries: Sequence[tuple[str, RGB]], *, title: str | None = None, marker: str = "dot",
           max_entries: int = 24) -> Image.Image:
    """A legend box: a coloured dot (``marker="dot"``) or line (``"line"``) per entry."""
    shown = list(entries[:max_entries])
    lines = [label for label, _ in shown]
    if len(entries) > max_entries:
        lines.append(f"... {len(entries) - max_entries} more")
    head = [title] if title else []
    sample = 22 if marker == "line" else 12
    width = max([text_box(t)[0] for t in head] + [sample + 6 + text_box(t)[0] for t in lines] + [20]) + 2 * PAD
    row = FONT_SIZE + 6
    height = 2 * PAD + row * (len(head) + len(lines))
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, width - 1, height - 1), outline=BORDER)
    f = font()
    y = PAD
    for t in head:
        draw.text((PAD, y), t, fill=INK, font=f)
        y += row
    for k, text in enumerate(lines):
        mid = y + row // 2 - 1
        if k < len(shown):
            rgb = shown[k][1]
            if marker == "line":
                draw.line((PAD, mid, PAD + sample, mid), fill=rgb, width=3)
            else:
                draw.ellipse((PAD + 1, mid - 5, PAD + 11, mid + 5), fill=rgb, outline=INK)
        draw.text((PAD + sample + 6, y), text, fill=INK if k < len(shown) else MUTED_INK, font=f)
        y += row
    return img


# ---------------------------------------------------------------------------------------------
# axes


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(1, target)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return [0.0 if abs(t) < step * 1e-9 else t for t in ticks]


def tick_label(value: float, log: bool = False) -> str:
    """Short tick text: ``1e-3`` for log decades, else up to 3 significant digits."""
    if log:
        k = round(math.log10(value))
        return f"1e{k}" if k < -2 or k > 3 else f"{10.0 ** k:g}"
    return tick_labels([value])[0]


def tick_labels(values: Sequence[float]) -> list[str]:
    """Tick texts in one style per axis: plain (``0.25``) or, for tiny or huge values, ``5e-4``."""
    big = max((abs(v) for v in values), default=0.0)
    if big == 0 or 1e-3 <= big < 1e5:
        return [f"{v:.3g}" for v in values]
    out = []
    for v in values:
        mantissa, exp = f"{v:.2e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        out.append("0" if v == 0 else f"{mantissa}e{int(exp)}")
    return out


def _padded_range(values: np.ndarray, log: bool) -> tuple[float, float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    if hi - lo < 1e-12:  # one value (or a flat line): open a window around it
        half = 0.5 if log else (abs(lo) * 0.5 if lo else 1.0)
        return lo - half, hi + half
    margin = 0.05 * (hi - lo)
    return lo - margin, hi + margin


def _rotated(text: str) -> Image.Image:
    w, h = text_box(text)
    img = Image.new("RGB", (w + 4, h + 6), BACKGROUND)
    ImageDraw.Draw(img).text((2, 1), text, fill=INK, font=font())
    return img.rotate(90, expand=True)


class Axes:
    """A plot area with ticks, grid, labels and title, mapping data to pixels (linear or log10 y)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, title: str, xlabel: str, ylabel: str,
                 size: tuple[int, int], log_y: bool = False, integer_x: bool = False):
        self.log_y = log_y
        self.x0, self.x1 = _padded_range(x, False)
        self.y0, self.y1 = _padded_range(y, log_y)
        xt = [t for t in nice_ticks(self.x0, self.x1) if not integer_x or float(t).is_integer()]
        if log_y:
            yt = [float(k) for k in range(math.ceil(self.y0), math.floor(self.y1) + 1)]
            ylabels = [tick_label(10.0 ** k, log=True) for k in yt]
        else:
            yt = nice_ticks(self.y0, self.y1)
            ylabels = tick_labels(yt)
        xlabels = tick_labels(xt)
        ytick_w = max([text_box(t)[0] for t in ylabels] + [0])
        ylab = _rotated(ylabel)
        left = PAD + ylab.width + 4 + ytick_w + 6
        top = PAD + TITLE_SIZE + 10
        bottom = PAD + 2 * (FONT_SIZE + 6) + 4
        self.width, self.height = size
        self.box = (left, top, self.width - PAD, self.height - bottom)  # plot area (l, t, r, b)
        self.image = Image.new("RGB", size, BACKGROUND)
        d = self.draw = ImageDraw.Draw(self.image)
        f = font()
        x0, y0, x1, y1 = self.box
        d.text((left, PAD), title, fill=INK, font=font(TITLE_SIZE))
        for v, lab in zip(xt, xlabels, strict=True):
            px = self.px(v)
            d.line((px, y0, px, y1), fill=GRID_INK)
            d.line((px, y1, px, y1 + 4), fill=INK)
            d.text((px - text_box(lab)[0] // 2, y1 + 6), lab, fill=INK, font=f)
        for v, lab in zip(yt, ylabels, strict=True):
            py = self._py_raw(v)
            d.line((x0, py, x1, py), fill=GRID_INK)
            d.line((x0 - 4, py, x0, py), fill=INK)
            d.text((x0 - 6 - text_box(lab)[0], py - FONT_SIZE // 2 - 1), lab, fill=INK, font=f)
        d.rectangle(self.box, outline=INK)
        d.text(((x0 + x1 - text_box(xlabel)[0]) // 2, y1 + 8 + FONT_SIZE + 4), xlabel, fill=INK, font=f)
        self.image.paste(ylab, (PAD, (y0 + y1 - ylab.height) // 2))

    def px(self, x: float) -> float:
        left, _, right, _ = self.box
        return left + (x - self.x0) / (self.x1 - self.x0) * (right - left)

    def _py_raw(self, y: float) -> float:
        _, top, _, bottom = self.box
        return bottom - (y - self.y0) / (self.y1 - self.y0) * (bottom - top)

    def py(self, y: float) -> float:
        return self._py_raw(math.log10(y) if self.log_y else y)


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str, xlabel: str,
               ylabel: str, size: tuple[int, int] = (640, 340), log_y: bool = False,
               colours: Mapping[str, RGB] | None = None, integer_x: bool = True,
               show_legend: bool | None = None) -> Image.Image:
    """Lines of (x, y) per named series, with axes, ticks, a title and a legend on the right
    (by default only when there are several series).

    Non-finite points (and, with ``log_y``, non-positive ones) are left out. Series of at most 30
    points also get dots, so a single logged step is still visible.
    """
    clean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (xs, ys) in series.items():
        x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        keep = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
        if keep.any():
            clean[name] = (x[keep], y[keep])
    if not clean:
        raise ValueError(f"{title}: nothing to plot (no finite values)")
    cols = {name: (colours or {}).get(name, colour(k)) for k, name in enumerate(clean)}
    if show_legend is None:
        show_legend = len(clean) > 1
    key = legend([(name, cols[name]) for name in clean], marker="line") if show_legend else None
    key_w = key.width + PAD if key is not None else 0
    all_x = np.concatenate([x for x, _ in clean.values()])
    all_y = np.concatenate([y for _, y in clean.values()])
    ax = Axes(all_x, all_y, title=title, xlabel=xlabel, ylabel=ylabel, size=(size[0] - key_w, size[1]),
              log_y=log_y, integer_x=integer_x)
    for name, (x, y) in clean.items():
        pts = [(ax.px(a), ax.py(b)) for a, b in zip(x, y, strict=True)]
        if len(pts) > 1:
            ax.draw.line(pts, fill=cols[name], width=2, joint="curve")
        if len(pts) <= 30:
            for px, py in pts:
                ax.draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=cols[name])
    if key is None:
        return ax.image
    out = Image.new("RGB", (size[0], max(size[1], key.height + 2 * PAD)), BACKGROUND)
    out.paste(ax.image, (0, 0))
    out.paste(key, (ax.width, ax.box[1]))
    return out


def scatter_plot(points: np.ndarray, classes: Sequence[int], *, title: str, xlabel: str, ylabel: str,
                 size: tuple[int, int] = (440, 420), hollow: Sequence[bool] | None = None) -> Image.Image:
    """Dots at ``points`` (N, 2), filled with ``colour(classes[i])`` (hollow rings where ``hollow[i]``)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"scatter_plot takes (N, 2) points with N > 0, got {pts.shape}")
    ax = Axes(pts[:, 0], pts[:, 1], title=title, xlabel=xlabel, ylabel=ylabel, size=size)
    rings = np.zeros(len(pts), dtype=bool) if hollow is None else np.asarray(hollow, dtype=bool)
    for (x, y), c, ring in zip(pts, classes, rings, strict=True):
        px, py, r = ax.px(x), ax.py(y), 5
        if ring:
            ax.draw.ellipse((px - r, py - r, px + r, py + r), outline=colour(c), width=2)
        else:
            ax.draw.ellipse((px - r, py - r, px + r, py + r), fill=colour(c), outline=INK)
    return ax.image
