"""Pillow drawing primitives: grid placement and sizes, nearest-neighbour maps, charts with any number of
points (one included), log axes, scatter colours per class, legends, tick values and labels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dpal_cache.viz import draw


def solid(rgb, size=(20, 10)) -> Image.Image:
    return Image.new("RGB", size, rgb)  # size is (width, height)


def test_image_grid_places_every_tile_at_its_size():
    tiles = [[solid((255, 0, 0)), solid((0, 255, 0)), None], [solid((0, 0, 255)), solid((255, 0, 255)),
                                                             solid((0, 255, 255), (30, 40))]]
    grid = draw.image_grid(tiles, col_titles=["a", "b\nsecond line", "c"], row_titles=[["row 0"], ["row 1"]])
    arr = np.asarray(grid)
    for rgb, (w, h) in [((255, 0, 0), (20, 10)), ((0, 0, 255), (20, 10)), ((0, 255, 255), (30, 40))]:
        ys, xs = np.nonzero((arr == rgb).all(axis=2))
        assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (w, h)
    # two rows of heights 10 and 40, a two-line header, margins: nothing larger than needed
    assert 50 < grid.height < 50 + 2 * draw.PAD + 3 * (draw.FONT_SIZE + 4) + 20
    titled = draw.image_grid(tiles, title="a title", notes=["a note"])
    assert titled.height > draw.image_grid(tiles).height


def test_map_image_upscales_patches_without_blending():
    values = np.zeros((4, 2, 3))
    values[0, 0] = (1, 0, 0)
    values[3, 1] = (0, 0, 1)
    img = draw.map_image(values, 12, 6)
    arr = np.asarray(img)
    assert img.size == (6, 12)
    assert (arr[:3, :3] == (255, 0, 0)).all() and (arr[9:, 3:] == (0, 0, 255)).all() and (arr[3:9] == 0).all()
    grey = draw.map_image(np.array([[0.0, 1.0]]), 2, 4)
    assert np.asarray(grey)[0].tolist() == [[0, 0, 0]] * 2 + [[255, 255, 255]] * 2


@pytest.mark.parametrize("n", [1, 2, 200])
def test_line_chart_draws_any_number_of_points(n):
    x = np.arange(1, n + 1)
    chart = draw.line_chart({"a": (x, np.exp(-x / 50.0)), "b": (x, 0.5 * np.exp(-x / 50.0))}, title="t",
                            xlabel="step", ylabel="loss", size=(500, 300))
    assert chart.size == (500, 300)
    seen = draw.colours_used(chart)
    assert draw.colour(0) in seen and draw.colour(1) in seen


def test_line_chart_log_scale_skips_non_positive_and_non_finite():
    x = np.arange(5)
    chart = draw.line_chart({"a": (x, [1e-4, 1e-2, 0.0, np.nan, 1.0])}, title="t", xlabel="x", ylabel="y",
                            log_y=True)
    assert draw.colour(0) in draw.colours_used(chart)
    with pytest.raises(ValueError, match="nothing to plot"):
        draw.line_chart({"a": ([0, 1], [0.0, -1.0])}, title="t", xlabel="x", ylabel="y", log_y=True)


def test_scatter_colours_each_class():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(30, 2))
    classes = np.repeat(np.arange(3), 10)
    img = draw.scatter_plot(pts, classes, title="t", xlabel="x", ylabel="y")
    seen = draw.colours_used(img)
    assert all(draw.colour(c) in seen for c in range(3)) and draw.colour(3) not in seen
    counts = [int((np.asarray(img) == draw.colour(c)).all(axis=2).sum()) for c in range(3)]
    assert min(counts) > 10 * 20  # ten dots of each class, none hidden
    rings = draw.scatter_plot(pts, classes, title="t", xlabel="x", ylabel="y", hollow=np.ones(30, bool))
    assert draw.colour(0) in draw.colours_used(rings)
    with pytest.raises(ValueError):
        draw.scatter_plot(np.zeros((0, 2)), [], title="t", xlabel="x", ylabel="y")


def test_legend_lists_entries_and_caps_them():
    small = draw.legend([("id 1", draw.colour(0)), ("id 2", draw.colour(1))], title="identity")
    big = draw.legend([(f"id {i}", draw.colour(i)) for i in range(40)], max_entries=5)
    assert draw.colour(1) in draw.colours_used(small)
    assert big.height < small.height * 3  # 5 entries and a "... 35 more" line, not 40


def test_nice_ticks_and_labels():
    assert draw.nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert draw.nice_ticks(0.13, 0.61) == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6])
    assert draw.nice_ticks(3, 3) == [3]
    assert draw.tick_labels([0.0, 0.0005, 0.001]) == ["0", "0.0005", "0.001"]
    assert draw.tick_labels([0.0, 1e-5, 2e-5]) == ["0", "1e-5", "2e-5"]
    assert draw.tick_labels([50.0, 100.0]) == ["50", "100"]
    assert draw.tick_label(1e-3, log=True) == "1e-3" and draw.tick_label(10.0, log=True) == "10"


def test_colours_used():
    img = solid((1, 2, 3))
    img.putpixel((0, 0), (250, 0, 7))
    assert draw.colours_used(img) == {(1, 2, 3), (250, 0, 7)}


def test_stacks_and_palette():
    a, b = solid((1, 2, 3), (10, 20)), solid((4, 5, 6), (30, 5))
    assert draw.hstack([a, b], gap=4).size == (44, 20)
    assert draw.vstack([a, b], gap=4).size == (30, 29)
    assert len(set(draw.PALETTE)) == len(draw.PALETTE) and draw.colour(len(draw.PALETTE)) == draw.colour(0)
