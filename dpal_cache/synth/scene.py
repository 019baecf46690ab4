"""Person-free scenes and camera styles of the synthetic data set.

A camera fixes a scene kind (street, indoor, park), its layout, lighting, noise and blur,
drawn from ``default_rng([seed, TAG_CAMERA, camera])``; every image then sees another part of
its camera's scene with its own lighting jitter. Scenes are drawn at ``SS`` x the output size
and downsampled, like the persons drawn on them (draw.py).

    bg = render_background(np.random.default_rng(0), height=256, width=256)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dpal_cache.synth.identity import PALETTE, RGB

TAG_CAMERA = 3
SS = 2  # supersampling factor: shapes are drawn at SS x the output size
SCENE_KINDS = ("street", "indoor", "park")


@dataclass(frozen=True)
class CameraStyle:
    """What one camera sees and how it images it: every photo from it shares these."""

    kind: str  # street / indoor / park
    sky_top: RGB  # sky, or the wall of an indoor scene
    sky_bottom: RGB
    ground_far: RGB
    ground_near: RGB
    horizon: float  # fraction of the image height where ground meets the scene
    gain: float
    contrast: float
    tint: tuple[float, float, float]
    noise: float  # sensor noise sigma in grey levels
    blur: float  # Gaussian blur radius at output size
    exposure_jitter: float  # each photo's gain varies by up to this fraction (auto-exposure)
    layout_seed: int  # fixed scene layout: the same buildings/trees behind every person of this camera


def _jitter(rng: np.random.Generator, rgb: tuple[int, ...] | np.ndarray, spread: float) -> RGB:
    out = np.clip(np.asarray(rgb, dtype=np.float64) + rng.uniform(-spread, spread, 3), 0, 255)
    return tuple(int(v) for v in out)  # type: ignore[return-value]


def _muted(rng: np.random.Generator, lo: int, hi: int, spread: float = 18) -> RGB:
    """A desaturated colour: walls, asphalt, floors."""
    return _jitter(rng, np.full(3, rng.uniform(lo, hi)), spread)


def scale_rgb(rgb: RGB, f: float) -> RGB:
    return tuple(int(min(255, max(0, v * f))) for v in rgb)  # type: ignore[return-value]


def draw_style(rng: np.random.Generator) -> CameraStyle:
    """A random camera: scene kind, colours, lighting and image quality."""
    kind = SCENE_KINDS[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    if kind == "indoor":  # a wall above a floor
        top, far = _muted(rng, 150, 230, 20), _muted(rng, 70, 170, 30)
    else:  # blue or overcast sky above asphalt or grass
        top = _jitter(rng, (120, 160, 215) if rng.random() < 0.6 else (175, 180, 190), 25)
        far = _muted(rng, 80, 150) if kind == "street" else _jitter(rng, (80, 130, 60), 25)
    bottom, near = scale_rgb(top, rng.uniform(0.85, 1.1)), scale_rgb(far, rng.uniform(0.8, 1.15))
    return CameraStyle(
        kind=kind,
        sky_top=top,
        sky_bottom=bottom,
        ground_far=far,
        ground_near=near,
        horizon=float(rng.uniform(0.42, 0.68)),
        gain=float(rng.uniform(0.78, 1.15)),
        contrast=float(rng.uniform(0.8, 1.1)),
        tint=tuple(float(t) for t in 1.0 + rng.uniform(-0.07, 0.07, 3)),  # type: ignore[arg-type]
        noise=float(rng.uniform(1.5, 6.0)),
        blur=float(rng.uniform(0.0, 0.8)),
        exposure_jitter=float(rng.uniform(0.06, 0.14)),
        layout_seed=int(rng.integers(0, 2**31)),
    )


def camera_style(seed: int, camera: int) -> CameraStyle:
    """The style of camera number ``camera`` (1-based, as in file names) under ``seed``."""
    return draw_style(np.random.default_rng([seed, TAG_CAMERA, camera]))


def _gradient(h: int, w: int, horizon: int, style: CameraStyle) -> Image.Image:
    """Sky/wall gradient above the horizon, ground gradient below it."""
    t_sky = np.linspace(0.0, 1.0, max(horizon, 1))[:, None]
    t_gnd = np.linspace(0.0, 1.0, max(h - horizon, 1))[:, None]
    sky = (1 - t_sky) * np.array(style.sky_top) + t_sky * np.array(style.sky_bottom)
    gnd = (1 - t_gnd) * np.array(style.ground_far) + t_gnd * np.array(style.ground_near)
    rows = np.concatenate([sky, gnd])[:h].astype(np.uint8)  # (h, 3)
    return Image.fromarray(rows[:, None, :]).resize((w, h), Image.Resampling.NEAREST)


def _draw_street(d: ImageDraw.ImageDraw, lay: np.random.Generator, ox: float, w: int, h: int, hy: int) -> None:
    x = -ox
    while x < w:  # a row of buildings, always generated from x=0 so the layout does not depend on ox
        bw, bh = lay.uniform(0.25, 0.7) * h, lay.uniform(0.12, 0.45) * h
        wall = _muted(lay, 60, 200, 30)
        win = scale_rgb(wall, lay.choice([0.55, 1.35]))
        gap = lay.uniform(0.0, 0.06) * h
        if x + bw > 0:
            top = hy - bh
            d.rectangle([x, top, x + bw, hy], fill=wall)
            step = 0.07 * h
            for wy in np.arange(top + 0.03 * h, hy - 0.05 * h, step):
                for wx in np.arange(x + 0.03 * h, x + bw - 0.04 * h, step):
                    d.rectangle([wx, wy, wx + 0.035 * h, wy + 0.04 * h], fill=win)
        x += bw + gap
    curb = hy + 0.08 * (h - hy)
    d.rectangle([0, hy, w, curb], fill=_muted(lay, 120, 190, 10))
    for _ in range(int(lay.integers(1, 4))):  # road markings converging to a vanishing point
        x0 = lay.uniform(-0.5, 1.5) * w
        d.line([(x0, h), (w / 2 + (x0 - w / 2) * 0.2, curb)], fill=(210, 210, 200), width=max(1, int(0.012 * h)))


def _draw_indoor(d: ImageDraw.ImageDraw, lay: np.random.Generator, ox: float, w: int, h: int, hy: int) -> None:
    x = -ox
    while x < w:
        kind, pw = lay.integers(0, 3), lay.uniform(0.3, 0.6) * h
        if x + pw > 0:
            if kind == 0:  # door
                d.rectangle([x + 0.05 * h, hy - 0.4 * h, x + 0.25 * h, hy], fill=_muted(lay, 40, 140, 30))
            elif kind == 1:  # pillar
                d.rectangle([x, 0, x + 0.08 * h, hy], fill=_muted(lay, 150, 240, 10))
            else:  # poster
                col = PALETTE[list(PALETTE)[int(lay.integers(len(PALETTE)))]]
                d.rectangle([x + 0.05 * h, hy - 0.35 * h, x + 0.2 * h, hy - 0.15 * h], fill=col)
        x += pw
    d.rectangle([0, hy - 0.02 * h, w, hy], fill=_muted(lay, 30, 90))
    y, gap = float(hy), 0.02 * h
    while y < h:  # floor tiles: rows get further apart towards the camera
        d.line([(0, y), (w, y)], fill=_muted(lay, 40, 110), width=max(1, h // 200))
        y, gap = y + gap, gap * 1.5
    for k in range(-4, 5):
        d.line([(w / 2 + k * 0.08 * h, hy), (w / 2 + k * 0.5 * h, h)], fill=_muted(lay, 40, 110), width=1)


def _draw_park(d: ImageDraw.ImageDraw, lay: np.random.Generator, ox: float, w: int, h: int, hy: int) -> None:
    x = -ox
    while x < w:
        tw, th = lay.uniform(0.12, 0.3) * h, lay.uniform(0.2, 0.5) * h
        leaf = _jitter(lay, (50, 110, 45), 30)
        if x + tw > 0:
            d.rectangle([x + tw * 0.42, hy - th * 0.5, x + tw * 0.58, hy + 0.02 * h], fill=_muted(lay, 50, 100))
            d.ellipse([x, hy - th, x + tw, hy - th * 0.35], fill=leaf)
        x += tw * lay.uniform(0.7, 1.6)
    path = _muted(lay, 140, 190, 20)
    px = lay.uniform(0.2, 0.8) * w
    d.polygon([(px - 0.05 * h, hy), (px + 0.05 * h, hy), (px + 0.6 * h, h), (px - 0.6 * h, h)], fill=path)


_SCENES = {"street": _draw_street, "indoor": _draw_indoor, "park": _draw_park}


def _draw_clutter(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, hy: int) -> None:
    """Per-image objects in clothing colours (signs, boxes, bins) so colour alone does not separate the person."""
    names = list(PALETTE)
    for _ in range(int(rng.integers(0, 4))):
        col = _jitter(rng, PALETTE[names[int(rng.integers(len(names)))]], 20)
        cw, ch = rng.uniform(0.04, 0.2) * h, rng.uniform(0.04, 0.25) * h
        cx, base = rng.uniform(0, w), rng.uniform(hy, h * 1.05)
        if rng.random() < 0.5:
            d.rectangle([cx - cw / 2, base - ch, cx + cw / 2, base], fill=col)
        else:
            d.ellipse([cx - cw / 2, base - ch, cx + cw / 2, base], fill=col)
    for _ in range(int(rng.integers(0, 3))):  # thin poles
        px = rng.uniform(0, w)
        d.rectangle([px, rng.uniform(0.05, 0.4) * h, px + 0.015 * h, rng.uniform(hy, h)], fill=_muted(rng, 40, 120))


def draw_scene(style: CameraStyle, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """The background at the working (supersampled) size; ``rng`` picks this photo's view of the scene.

    A camera keeps its scene kind, layout and light, but each photo sees another stretch of a
    long scene under a shifted sky and ground colour: otherwise the background alone would tell
    the camera, and whole-image features would match cameras instead of people.
    """
    hy = int(h * float(np.clip(style.horizon + rng.normal(0, 0.05), 0.3, 0.8)))
    sky, gnd = rng.uniform(-30, 30, 3), rng.uniform(-30, 30, 3)
    style = dataclasses.replace(
        style,
        sky_top=_jitter(rng, np.add(style.sky_top, sky), 6),
        sky_bottom=_jitter(rng, np.add(style.sky_bottom, sky), 6),
        ground_far=_jitter(rng, np.add(style.ground_far, gnd), 6),
        ground_near=_jitter(rng, np.add(style.ground_near, gnd), 6),
    )
    img = _gradient(h, w, hy, style)
    d = ImageDraw.Draw(img)
    layout = np.random.default_rng(style.layout_seed)
    _SCENES[style.kind](d, layout, rng.uniform(0, 10) * h, w, h, hy)
    _draw_clutter(d, rng, w, h, hy)
    return img


def finish_image(img: Image.Image, style: CameraStyle, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Downsample to the output size and apply the camera's optics: blur, exposure, tint, noise."""
    img = img.resize((w, h), Image.Resampling.LANCZOS)
    if style.blur > 0.1:
        img = img.filter(ImageFilter.GaussianBlur(style.blur))
    arr = np.asarray(img, dtype=np.float32)
    gain = style.gain * (1.0 + style.exposure_jitter * rng.uniform(-1.0, 1.0))
    arr = ((arr - 128.0) * style.contrast + 128.0) * (gain * np.asarray(style.tint, dtype=np.float32))
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(style.noise)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def render_background(
    rng: np.random.Generator, height: int, width: int, style: CameraStyle | None = None
) -> Image.Image:
    """A person-free scene (crowd backgrounds, distractors); a random camera style unless one is given."""
    style = style or draw_style(rng)
    canvas = draw_scene(style, rng, width * SS, height * SS)
    return finish_image(canvas, style, rng, width, height)
