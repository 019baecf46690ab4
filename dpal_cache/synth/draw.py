"""Render one synthetic pedestrian crop and its LIP-style part mask, or a person-free scene.

A person is drawn with Pillow shapes (capsule limbs, polygon torso, ellipse head) at 2x the
output size and downsampled with LANCZOS for anti-aliasing; the part mask is drawn with the
very same shape calls at 2x and downsampled with NEAREST, so image and mask line up.

Randomness comes from three independent streams, so any image can be rendered alone:
- identity (clothes, hair, bag, build): ``default_rng([seed, TAG_IDENTITY, person_id])``, see identity.py;
- camera (scene kind and layout, lighting, noise, blur): ``default_rng([seed, TAG_CAMERA, camera])``;
- image (facing, walking phase, lean, scale, position, view of the scene, lighting jitter):
  ``default_rng([seed, TAG_IMAGE, person_id, image_number])``.

Mask labels are LIP ids (:data:`LIP_LABELS`). Sleeves are upper clothes (5) and bare arms
are arms (14/15), as in LIP; trousers and shorts are pants (9) and only bare skin of the
legs is 16/17. The neck counts as face (13). LIP has no bag class and its annotators leave
bags as background, so bag and strap pixels are labelled 0 even where they cover the body.
"Left" and "right" are the person's own sides (a front-facing person's left arm is on the
image's right).

    img, mask = render_image(seed=0, person_id=3, image_number=0, camera=1, height=256, width=128)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from dpal_cache.synth.identity import Identity, draw_identity, identity_for
from dpal_cache.synth.scene import (  # noqa: F401  (camera_style, render_background: re-exported)
    SS,
    TAG_CAMERA,
    CameraStyle,
    camera_style,
    draw_scene,
    draw_style,
    finish_image,
    render_background,
    scale_rgb,
)

TAG_IMAGE = 2
TAG_DISTRACTOR = 4

BACKGROUND, HAT, HAIR, UPPER, PANTS, FACE = 0, 1, 2, 5, 9, 13
LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG, LEFT_SHOE, RIGHT_SHOE = 14, 15, 16, 17, 18, 19
BAG = BACKGROUND  # see the module docstring
LIP_LABELS: dict[int, str] = {
    0: "background", 1: "hat", 2: "hair", 5: "upper_clothes", 9: "pants", 13: "face",
    14: "left_arm", 15: "right_arm", 16: "left_leg", 17: "right_leg", 18: "left_shoe", 19: "right_shoe",
}  # fmt: skip

FACINGS = ("front", "back", "left", "right")

Fill = tuple[int, int, int] | Image.Image  # a colour, or a full-canvas pattern image
Point = tuple[float, float]


# ----------------------------------------------------------------------------- the person


class _Painter:
    """Draws each shape twice with one geometry: the colour on the image, the LIP label on the mask."""

    def __init__(self, img: Image.Image, mask: Image.Image):
        self.img, self.mask = img, mask
        self.draw, self.mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)

    def shape(self, parts: list[tuple[str, tuple]], fill: Fill, label: int | None) -> None:
        """``parts``: ImageDraw calls (method, args) forming one shape; ``label=None`` leaves the mask."""
        if isinstance(fill, Image.Image):  # patterned cloth: stencil the shape, paste the pattern through it
            stencil = Image.new("L", self.img.size, 0)
            sd = ImageDraw.Draw(stencil)
            for method, args in parts:
                getattr(sd, method)(*args, fill=255)
            self.img.paste(fill, (0, 0), stencil)
        else:
            for method, args in parts:
                getattr(self.draw, method)(*args, fill=fill)
        if label is not None:
            for method, args in parts:
                getattr(self.mdraw, method)(*args, fill=label)

    def ellipse(self, c: Point, rx: float, ry: float, fill: Fill, label: int | None) -> None:
        self.shape([("ellipse", ([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry],))], fill, label)

    def polygon(self, pts: list[Point], fill: Fill, label: int | None) -> None:
        self.shape([("polygon", (pts,))], fill, label)

    def capsule(self, p0: Point, p1: Point, r: float, fill: Fill, label: int | None, r1: float | None = None) -> None:
        """A rounded limb segment from p0 (radius r) to p1 (radius r1, default r)."""
        r1 = r if r1 is None else r1
        dx, dy = p1[0] - p0[0], p1[1] - p0[1]
        n = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / n, dx / n
        quad = [(p0[0] + nx * r, p0[1] + ny * r), (p1[0] + nx * r1, p1[1] + ny * r1),
                (p1[0] - nx * r1, p1[1] - ny * r1), (p0[0] - nx * r, p0[1] - ny * r)]  # fmt: skip
        parts = [("polygon", (quad,)), ("ellipse", ([p0[0] - r, p0[1] - r, p0[0] + r, p0[1] + r],)),
                 ("ellipse", ([p1[0] - r1, p1[1] - r1, p1[0] + r1, p1[1] + r1],))]  # fmt: skip
        self.shape(parts, fill, label)


def _along(p: Point, theta: float, length: float) -> Point:
    """The point ``length`` away from ``p`` at angle ``theta`` from straight down (positive = image right)."""
    return p[0] + math.sin(theta) * length, p[1] + math.cos(theta) * length


def _lerp(a: Point, b: Point, t: float) -> Point:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


def _cloth_pattern(ident: Identity, size: tuple[int, int], unit: float, origin: Point) -> Fill:
    """The upper-clothes fill: a colour, or stripes/checks as a full-canvas image anchored on the torso."""
    if ident.upper_texture == "plain":
        return ident.upper_rgb
    w, h = size
    period = max(2, int(round((0.05 if ident.upper_texture == "stripes" else 0.07) * unit)))
    ys = ((np.arange(h) - int(origin[1])) // period)[:, None]
    xs = ((np.arange(w) - int(origin[0])) // period)[None, :]
    on = (ys % 2 == 0) if ident.upper_texture == "stripes" else ((ys + xs) % 2 == 0)
    on = np.broadcast_to(on, (h, w))
    arr = np.where(on[..., None], np.array(ident.upper_rgb, np.uint8), np.array(ident.upper_second_rgb, np.uint8))
    return Image.fromarray(arr.astype(np.uint8))


@dataclass(frozen=True)
class Pose:
    """How the person stands in one photo (all lengths at output size)."""

    facing: str  # front / back / left / right (walking direction in the image)
    phase: float  # walking cycle phase in radians
    lean: float  # torso lean in radians (positive = top towards image right)
    body_height: float  # head top to soles, pixels
    cx: float  # body centre line x, pixels
    foot_y: float  # soles y, pixels


def draw_pose(rng: np.random.Generator, ident: Identity, height: int, width: int, partial: bool = False) -> Pose:
    """A random pose and placement; ``partial`` puts most of the body outside the crop (bad detections)."""
    facing = FACINGS[int(rng.choice(4, p=[0.3, 0.3, 0.2, 0.2]))]
    phase = float(rng.uniform(0, 2 * math.pi))
    lean = float(np.clip(rng.normal(0, 0.03), -0.07, 0.07))
    if facing in ("left", "right"):
        lean += 0.04 if facing == "right" else -0.04  # walkers lean into their step
    foot_y = height * rng.uniform(0.94, 0.99)
    body = min(height * rng.uniform(0.8, 0.92) * ident.height_scale, foot_y - 0.01 * height)
    cx = width * (0.5 + rng.uniform(-0.08, 0.08))
    if partial:
        if rng.random() < 0.5:  # cut by the crop's side
            cx = width * (0.5 + rng.choice([-1, 1]) * rng.uniform(0.45, 0.75))
        else:  # a close-up: only the upper body fits
            body = height * rng.uniform(1.3, 1.8)
            foot_y = body + height * rng.uniform(-0.1, 0.05)
    return Pose(facing, phase, lean, float(body), float(cx), float(foot_y))


_FAR = 0.82  # far-side limbs (side views) are a little darker


@dataclass(frozen=True)
class _Layout:
    """Where the body parts go, at the painter's (supersampled) size; built by :func:`_layout`."""

    facing: str
    lean: float  # torso lean in radians
    H: float  # body height, head top to soles
    cx: float  # body centre line x
    foot: float  # soles y
    side: bool  # a side view (facing left or right)
    d: int  # walking direction in side views: 1 = image right, -1 = image left
    head_h: float
    head_w: float
    sh_half: float  # half widths of shoulders, waist and hips
    waist_half: float
    hip_half: float
    arm_r: float
    leg_r: float
    x_of: dict[str, int] | None  # person's right/left -> image x sign (front and back views only)
    near_side: str  # the side facing the camera in side views
    swing: dict[str, float]  # each leg's stride position, the arms swing against it
    upper_fill: Fill  # upper clothes: a colour or a pattern image

    @property
    def top(self) -> float:
        """The y of the head top."""
        return self.foot - self.H

    def y(self, f: float) -> float:
        """The y of fraction ``f`` of the body height below the head top."""
        return self.top + f * self.H

    def lx(self, f: float, x: float) -> float:
        """Torso lean: ``x`` at height fraction ``f`` shifted sideways (points above the hips)."""
        return x + (self.y(0.52) - self.y(f)) * math.tan(self.lean)

    @property
    def head_c(self) -> Point:
        """The centre of the head (moved by the lean)."""
        return self.lx(0.065, self.cx), self.top + self.head_h / 2


def _layout(ident: Identity, pose: Pose, size: tuple[int, int]) -> _Layout:
    """Body proportions from the build, placement from the pose, on a supersampled canvas of ``size``."""
    H = pose.body_height * SS
    cx, foot = pose.cx * SS, pose.foot_y * SS
    side = pose.facing in ("left", "right")
    d = 1 if pose.facing == "right" else -1
    broad = ident.broad_build
    wf = 0.55 if side else 1.0  # side views see the body's depth, not its width
    s = math.sin(pose.phase)
    return _Layout(
        facing=pose.facing, lean=pose.lean, H=H, cx=cx, foot=foot, side=side, d=d,
        head_h=0.125 * H, head_w=(0.096 if broad else 0.09) * H * (1.06 if side else 1.0),
        sh_half=(0.128 if broad else 0.104) * H * wf,
        waist_half=(0.094 if broad else 0.078) * H * wf,
        hip_half=(0.092 if broad else 0.1) * H * wf,
        arm_r=(0.037 if broad else 0.033) * H, leg_r=(0.048 if broad else 0.045) * H,
        x_of={"front": {"right": -1, "left": 1}, "back": {"right": 1, "left": -1}}.get(pose.facing),
        near_side="right" if d == 1 else "left",
        swing={"right": s, "left": -s},
        upper_fill=_cloth_pattern(ident, size, H, (cx, (foot - H) + 0.2 * H)),  # anchored at y(0.2)
    )  # fmt: skip


def _draw_shadow(p: _Painter, b: _Layout) -> None:
    """A shadow on the ground, sampled from the background so it darkens whatever is there."""
    gx, gy = int(min(max(b.cx, 0), p.img.width - 1)), int(min(max(b.foot, 0), p.img.height - 1))
    ground = p.img.getpixel((gx, gy))
    p.ellipse((b.cx, b.foot), 0.16 * b.H, 0.022 * b.H, scale_rgb(ground, 0.6), None)


@dataclass(frozen=True)
class _LimbTaper:
    """Radius factors of a two-segment limb, bare (with a cuff of cloth at the root) or clothed."""

    bare_mid: float  # radius at the joint, then at the end, of bare skin
    bare_end: float
    cuff_len: float  # the cuff covers this fraction of the first segment...
    cuff_r: float  # ...with this radius factor
    clothed_mid: float
    clothed_end: float


_LEG_TAPER = _LimbTaper(bare_mid=0.85, bare_end=0.7, cuff_len=0.6, cuff_r=1.12, clothed_mid=0.9, clothed_end=0.8)
_ARM_TAPER = _LimbTaper(bare_mid=0.9, bare_end=0.75, cuff_len=0.55, cuff_r=1.15, clothed_mid=0.95, clothed_end=0.85)


def _draw_limb(p: _Painter, joints: tuple[Point, Point, Point], r: float, taper: _LimbTaper, bare: bool,
               skin: Fill, skin_label: int, cloth: Fill, cloth_label: int) -> None:  # fmt: skip
    """Root-joint-end limb of root radius ``r``: bare skin under a short cuff (shorts, short sleeves) or clothed."""
    root, joint, end = joints
    if bare:
        p.capsule(root, joint, r, skin, skin_label, r * taper.bare_mid)
        p.capsule(joint, end, r * taper.bare_mid, skin, skin_label, r * taper.bare_end)
        p.capsule(root, _lerp(root, joint, taper.cuff_len), r * taper.cuff_r, cloth, cloth_label)
    else:
        p.capsule(root, joint, r, cloth, cloth_label, r * taper.clothed_mid)
        p.capsule(joint, end, r * taper.clothed_mid, cloth, cloth_label, r * taper.clothed_end)


def _leg_joints(b: _Layout, who: str) -> tuple[Point, Point, Point]:
    """Hip, knee and ankle of the ``who`` ("left"/"right") leg at its stride position."""
    H, sw = b.H, b.swing[who]
    if b.side:
        hip = (b.cx - b.d * 0.01 * H, b.y(0.53))
        thigh = b.d * 0.42 * sw
        shin = thigh - b.d * 0.5 * (1 - sw) / 2  # the trailing leg bends at the knee
    else:
        sx = b.x_of[who]
        hip = (b.cx + sx * b.hip_half * 0.5, b.y(0.53))
        thigh = sx * 0.045 + 0.02 * sw
        shin = thigh * 0.4
    knee = _along(hip, thigh, 0.235 * H)
    return hip, knee, _along(knee, shin, 0.225 * H)


def _draw_leg(p: _Painter, ident: Identity, b: _Layout, who: str, darken: float) -> None:
    """One leg (trousers, or bare under shorts) and its shoe, colours scaled by ``darken``."""
    label, shoe_label = (RIGHT_LEG, RIGHT_SHOE) if who == "right" else (LEFT_LEG, LEFT_SHOE)
    joints = _leg_joints(b, who)
    skin, lower = scale_rgb(ident.skin_rgb, darken), scale_rgb(ident.lower_rgb, darken)
    _draw_limb(p, joints, b.leg_r, _LEG_TAPER, ident.shorts, skin, label, lower, PANTS)
    ankle = joints[2]
    fwd = b.d * 0.03 * b.H if b.side else 0.0
    p.ellipse((ankle[0] + fwd, ankle[1] + 0.012 * b.H), (0.055 if b.side else 0.04) * b.H, 0.02 * b.H,
              scale_rgb(ident.shoe_rgb, darken), shoe_label)  # fmt: skip


def _arm_joints(b: _Layout, who: str, carrying: bool) -> tuple[tuple[Point, Point, Point], float]:
    """Shoulder, elbow and wrist of the ``who`` arm, and the forearm angle; a carrying arm swings less."""
    H = b.H
    if b.side:
        sh = (b.lx(0.18, b.cx + b.d * 0.01 * H), b.y(0.18) + b.arm_r)
        upper = -b.d * (0.08 if carrying else 0.45) * b.swing[who]
        fore = upper + b.d * (0.1 if carrying else 0.35)
    else:
        sx = b.x_of[who]
        sh = (b.lx(0.18, b.cx + sx * (b.sh_half - b.arm_r * 0.6)), b.y(0.175) + b.arm_r)
        upper = sx * (0.06 if carrying else 0.13) + 0.04 * b.swing[who]
        fore = upper - sx * 0.06
    elbow = _along(sh, upper, 0.17 * H)
    return (sh, elbow, _along(elbow, fore, 0.15 * H)), fore


def _draw_handbag(p: _Painter, ident: Identity, b: _Layout, hand: Point, darken: float) -> None:
    """A handbag hanging from ``hand``: handle triangle and rounded body (labelled as background)."""
    bw, bh = 0.05 * b.H, 0.085 * b.H
    top_y = hand[1] + 0.035 * b.H
    bag_rgb = scale_rgb(ident.bag_rgb, darken)
    p.polygon([(hand[0], hand[1]), (hand[0] - bw * 0.6, top_y), (hand[0] + bw * 0.6, top_y)], bag_rgb, BAG)
    p.shape([("rounded_rectangle", ([hand[0] - bw, top_y, hand[0] + bw, top_y + bh], 0.01 * b.H))], bag_rgb, BAG)


def _draw_arm(p: _Painter, ident: Identity, b: _Layout, who: str, darken: float) -> None:
    """One arm (sleeve, or bare under a short sleeve), its hand and a handbag if carried on this side."""
    label = RIGHT_ARM if who == "right" else LEFT_ARM
    carrying = ident.bag == "handbag" and (ident.bag_side == 1) == (who == "right")
    joints, fore = _arm_joints(b, who, carrying)
    skin = scale_rgb(ident.skin_rgb, darken)
    sleeve = b.upper_fill if isinstance(b.upper_fill, Image.Image) else scale_rgb(b.upper_fill, darken)
    _draw_limb(p, joints, b.arm_r, _ARM_TAPER, ident.short_sleeves, skin, label, sleeve, UPPER)
    hand = _along(joints[2], fore, 0.03 * b.H)
    p.ellipse(hand, b.arm_r * 0.85, b.arm_r * 0.95, skin, label)
    if carrying:
        _draw_handbag(p, ident, b, hand, darken)


def _draw_torso(p: _Painter, ident: Identity, b: _Layout) -> None:
    """Pelvis (pants), then the upper-clothes torso with rounded shoulders."""
    cx, y, lx, H = b.cx, b.y, b.lx, b.H
    sh_half, waist_half, hip_half = b.sh_half, b.waist_half, b.hip_half
    pel = [(cx - hip_half, y(0.45)), (cx + hip_half, y(0.45)), (cx + hip_half * 1.02, y(0.57)),
           (cx - hip_half * 1.02, y(0.57))]  # fmt: skip
    p.polygon(pel, ident.lower_rgb, PANTS)
    body = [(lx(0.17, cx - sh_half), y(0.17)), (lx(0.17, cx + sh_half), y(0.17)),
            (lx(0.38, cx + waist_half), y(0.38)), (cx + hip_half * 1.05, y(0.5)),
            (cx - hip_half * 1.05, y(0.5)), (lx(0.38, cx - waist_half), y(0.38))]  # fmt: skip
    p.polygon(body, b.upper_fill, UPPER)
    p.ellipse((lx(0.19, cx - sh_half * 0.78), y(0.19)), sh_half * 0.25, 0.035 * H, b.upper_fill, UPPER)
    p.ellipse((lx(0.19, cx + sh_half * 0.78), y(0.19)), sh_half * 0.25, 0.035 * H, b.upper_fill, UPPER)


def _draw_backpack(p: _Painter, ident: Identity, b: _Layout) -> None:
    """The pack seen from behind, its straps from the front, or pack and strap from the side."""
    cx, y, lx, H, d, sh_half = b.cx, b.y, b.lx, b.H, b.d, b.sh_half
    col = ident.bag_rgb
    if b.facing == "back":
        box = [lx(0.3, cx) - sh_half * 0.75, y(0.2), lx(0.3, cx) + sh_half * 0.75, y(0.44)]
        p.shape([("rounded_rectangle", (box, 0.03 * H))], col, BAG)
    elif b.facing == "front":
        for sx in (-1, 1):
            p.capsule((lx(0.17, cx + sx * sh_half * 0.55), y(0.17)), (lx(0.36, cx + sx * sh_half * 0.5), y(0.36)),
                      0.012 * H, col, BAG)  # fmt: skip
    else:
        back = lx(0.3, cx - d * sh_half)
        box = [min(back, back - d * 0.11 * H), y(0.2), max(back, back - d * 0.11 * H), y(0.43)]
        p.shape([("rounded_rectangle", (box, 0.025 * H))], col, BAG)
        p.capsule((lx(0.18, cx), y(0.18)), (lx(0.34, cx + d * sh_half * 0.6), y(0.34)), 0.01 * H, col, BAG)


def _draw_neck_and_long_hair(p: _Painter, ident: Identity, b: _Layout) -> None:
    """The neck, then long hair falling to the shoulders (drawn before the head covers its top)."""
    head_c, head_w, head_h, y, side, d = b.head_c, b.head_w, b.head_h, b.y, b.side, b.d
    neck_w = head_w * 0.26
    neck = [(head_c[0] - neck_w, head_c[1]), (head_c[0] + neck_w, head_c[1]),
            (b.lx(0.18, b.cx + neck_w), y(0.18)), (b.lx(0.18, b.cx - neck_w), y(0.18))]  # fmt: skip
    p.polygon(neck, ident.skin_rgb, FACE)
    if not ident.long_hair:
        return
    if b.facing == "front":
        for sx in (-1, 1):
            x0 = head_c[0] + sx * head_w * 0.42
            p.polygon([(x0, head_c[1] - head_h * 0.2), (x0 + sx * head_w * 0.2, head_c[1]),
                       (x0 + sx * head_w * 0.16, y(0.25)), (x0 - sx * head_w * 0.1, y(0.25))],
                      ident.hair_rgb, HAIR)  # fmt: skip
    else:
        bx = head_c[0] - (d * head_w * 0.25 if side else 0.0)
        hw = head_w * (0.4 if side else 0.52)
        p.polygon([(bx - hw, head_c[1]), (bx + hw, head_c[1]), (bx + hw * 1.1, y(0.28)),
                   (bx - hw * 1.1, y(0.28))], ident.hair_rgb, HAIR)  # fmt: skip


def _draw_face(p: _Painter, ident: Identity, b: _Layout) -> None:
    """The head as hair, with the face (eyes, mouth) over it where the view shows one."""
    (hx, hy), rx, ry, d = b.head_c, b.head_w / 2, b.head_h / 2, b.d
    p.ellipse((hx, hy - ry * 0.06), rx * 1.06, ry * 1.04, ident.hair_rgb, HAIR)
    eye = scale_rgb(ident.skin_rgb, 0.35)
    if b.facing == "front":
        p.ellipse((hx, hy + ry * 0.16), rx * 0.92, ry * 0.84, ident.skin_rgb, FACE)
        for sx in (-1, 1):
            p.ellipse((hx + sx * rx * 0.38, hy + ry * 0.12), rx * 0.1, ry * 0.08, eye, None)
        p.ellipse((hx, hy + ry * 0.55), rx * 0.22, ry * 0.05, scale_rgb(ident.skin_rgb, 0.7), None)
    elif b.side:
        p.ellipse((hx + d * rx * 0.22, hy + ry * 0.2), rx * 0.8, ry * 0.8, ident.skin_rgb, FACE)
        p.ellipse((hx + d * rx * 0.6, hy + ry * 0.1), rx * 0.1, ry * 0.08, eye, None)


def _draw_hat(p: _Painter, ident: Identity, b: _Layout) -> None:
    """A cap: crown over the top of the head and a brim (pointing forward in side views)."""
    (hx, hy), rx, ry = b.head_c, b.head_w / 2, b.head_h / 2
    hb = [hx - rx * 1.12, hy - ry * 1.15, hx + rx * 1.12, hy + ry * 0.35]
    p.shape([("chord", (hb, 180, 360))], ident.hat_rgb, HAT)
    brim_x = hx + (b.d * rx * 0.55 if b.side else 0.0)
    p.ellipse((brim_x, hy - ry * 0.42), rx * (1.0 if b.side else 1.2), ry * 0.13, ident.hat_rgb, HAT)


def _draw_head(p: _Painter, ident: Identity, b: _Layout) -> None:
    """Neck, long hair, head and face, then the hat if any."""
    _draw_neck_and_long_hair(p, ident, b)
    _draw_face(p, ident, b)
    if ident.hat:
        _draw_hat(p, ident, b)


def _draw_person(p: _Painter, ident: Identity, pose: Pose) -> None:
    """Draw the person at the painter's (supersampled) size: back-to-front, near side last."""
    b = _layout(ident, pose, p.img.size)
    _draw_shadow(p, b)
    if b.side:
        far_side = "left" if b.near_side == "right" else "right"
        _draw_arm(p, ident, b, far_side, _FAR)
        _draw_leg(p, ident, b, far_side, _FAR)
        _draw_leg(p, ident, b, b.near_side, 1.0)
        _draw_torso(p, ident, b)
        if ident.bag == "backpack":
            _draw_backpack(p, ident, b)
        _draw_head(p, ident, b)
        _draw_arm(p, ident, b, b.near_side, 1.0)
    else:
        _draw_leg(p, ident, b, "left", 1.0)
        _draw_leg(p, ident, b, "right", 1.0)
        _draw_torso(p, ident, b)
        if ident.bag == "backpack" and pose.facing == "back":
            _draw_backpack(p, ident, b)
        _draw_arm(p, ident, b, "left", 1.0)
        _draw_arm(p, ident, b, "right", 1.0)
        if ident.bag == "backpack" and pose.facing == "front":
            _draw_backpack(p, ident, b)
        _draw_head(p, ident, b)


def render_person(
    ident: Identity,
    rng: np.random.Generator,
    height: int,
    width: int,
    style: CameraStyle,
    partial: bool = False,
) -> tuple[Image.Image, np.ndarray]:
    """One photo of ``ident`` by a camera of ``style``.

    Returns:
        The RGB image (``width`` x ``height``) and its part mask, uint8 (height, width) of LIP ids.
    """
    pose = draw_pose(rng, ident, height, width, partial)
    canvas = draw_scene(style, rng, width * SS, height * SS)
    mask = Image.new("L", canvas.size, BACKGROUND)
    _draw_person(_Painter(canvas, mask), ident, pose)
    img = finish_image(canvas, style, rng, width, height)
    return img, np.asarray(mask.resize((width, height), Image.Resampling.NEAREST))


def render_image(
    seed: int, person_id: int, image_number: int, camera: int, height: int, width: int
) -> tuple[Image.Image, np.ndarray]:
    """Photo ``image_number`` of ``person_id`` taken by ``camera``: a pure function of its arguments."""
    rng = np.random.default_rng([seed, TAG_IMAGE, person_id, image_number])
    return render_person(identity_for(seed, person_id), rng, height, width, camera_style(seed, camera))


def render_distractor(seed: int, index: int, camera: int, height: int, width: int) -> tuple[Image.Image, np.ndarray]:
    """A Market-style junk detection (id 0000): an empty scene or a stranger mostly outside the crop."""
    rng = np.random.default_rng([seed, TAG_DISTRACTOR, index])
    style = camera_style(seed, camera)
    if rng.random() < 0.5:
        return render_background(rng, height, width, style), np.zeros((height, width), np.uint8)
    return render_person(draw_identity(rng), rng, height, width, style, partial=True)
