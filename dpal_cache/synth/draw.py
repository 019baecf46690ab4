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


def _draw_person(p: _Painter, ident: Identity, pose: Pose) -> None:
    """Draw the person at the painter's (supersampled) size: back-to-front, near side last."""
    H = pose.body_height * SS
    cx, foot = pose.cx * SS, pose.foot_y * SS
    top = foot - H
    side = pose.facing in ("left", "right")
    d = 1 if pose.facing == "right" else -1  # walking direction in side views
    broad = ident.broad_build
    wf = 0.55 if side else 1.0  # side views see the body's depth, not its width

    def y(f: float) -> float:
        return top + f * H

    hip_y = y(0.52)

    def lx(f: float, x: float) -> float:  # torso lean: points above the hips shift sideways
        return x + (hip_y - y(f)) * math.tan(pose.lean)

    head_h, head_w = 0.125 * H, (0.096 if broad else 0.09) * H * (1.06 if side else 1.0)
    sh_half = (0.128 if broad else 0.104) * H * wf
    waist_half = (0.094 if broad else 0.078) * H * wf
    hip_half = (0.092 if broad else 0.1) * H * wf
    arm_r, leg_r = (0.037 if broad else 0.033) * H, (0.048 if broad else 0.045) * H
    far = 0.82  # far-side limbs are a little darker

    # person's right/left -> image x sign; "near" is the side facing the camera in side views
    x_of = {"front": {"right": -1, "left": 1}, "back": {"right": 1, "left": -1}}.get(pose.facing)
    near_side = "right" if d == 1 else "left"

    # shadow on the ground, sampled from the background so it darkens whatever is there
    gx, gy = int(min(max(cx, 0), p.img.width - 1)), int(min(max(foot, 0), p.img.height - 1))
    ground = p.img.getpixel((gx, gy))
    p.ellipse((cx, foot), 0.16 * H, 0.022 * H, scale_rgb(ground, 0.6), None)

    s = math.sin(pose.phase)
    swing = {"right": s, "left": -s}  # each leg's stride position, the arms swing against it
    upper_fill = _cloth_pattern(ident, p.img.size, H, (cx, y(0.2)))

    def leg(who: str, darken: float) -> None:
        label, shoe_label = (RIGHT_LEG, RIGHT_SHOE) if who == "right" else (LEFT_LEG, LEFT_SHOE)
        sw = swing[who]
        if side:
            hip = (cx - d * 0.01 * H, y(0.53))
            thigh = d * 0.42 * sw
            shin = thigh - d * 0.5 * (1 - sw) / 2  # the trailing leg bends at the knee
        else:
            sx = x_of[who]
            hip = (cx + sx * hip_half * 0.5, y(0.53))
            thigh = sx * 0.045 + 0.02 * sw
            shin = thigh * 0.4
        knee = _along(hip, thigh, 0.235 * H)
        ankle = _along(knee, shin, 0.225 * H)
        skin, lower = scale_rgb(ident.skin_rgb, darken), scale_rgb(ident.lower_rgb, darken)
        if ident.shorts:
            p.capsule(hip, knee, leg_r, skin, label, leg_r * 0.85)
            p.capsule(knee, ankle, leg_r * 0.85, skin, label, leg_r * 0.7)
            p.capsule(hip, _lerp(hip, knee, 0.6), leg_r * 1.12, lower, PANTS)
        else:
            p.capsule(hip, knee, leg_r, lower, PANTS, leg_r * 0.9)
            p.capsule(knee, ankle, leg_r * 0.9, lower, PANTS, leg_r * 0.8)
        fwd = d * 0.03 * H if side else 0.0
        p.ellipse((ankle[0] + fwd, ankle[1] + 0.012 * H), (0.055 if side else 0.04) * H, 0.02 * H,
                  scale_rgb(ident.shoe_rgb, darken), shoe_label)  # fmt: skip

    def arm(who: str, darken: float) -> Point:
        label = RIGHT_ARM if who == "right" else LEFT_ARM
        carrying = ident.bag == "handbag" and (ident.bag_side == 1) == (who == "right")
        if side:
            sh = (lx(0.18, cx + d * 0.01 * H), y(0.18) + arm_r)
            upper = -d * (0.08 if carrying else 0.45) * swing[who]
            fore = upper + d * (0.1 if carrying else 0.35)
        else:
            sx = x_of[who]
            sh = (lx(0.18, cx + sx * (sh_half - arm_r * 0.6)), y(0.175) + arm_r)
            upper = sx * (0.06 if carrying else 0.13) + 0.04 * swing[who]
            fore = upper - sx * 0.06
        elbow = _along(sh, upper, 0.17 * H)
        wrist = _along(elbow, fore, 0.15 * H)
        skin = scale_rgb(ident.skin_rgb, darken)
        sleeve = upper_fill if isinstance(upper_fill, Image.Image) else scale_rgb(upper_fill, darken)
        if ident.short_sleeves:
            p.capsule(sh, elbow, arm_r, skin, label, arm_r * 0.9)
            p.capsule(elbow, wrist, arm_r * 0.9, skin, label, arm_r * 0.75)
            p.capsule(sh, _lerp(sh, elbow, 0.55), arm_r * 1.15, sleeve, UPPER)
        else:
            p.capsule(sh, elbow, arm_r, sleeve, UPPER, arm_r * 0.95)
            p.capsule(elbow, wrist, arm_r * 0.95, sleeve, UPPER, arm_r * 0.85)
        hand = _along(wrist, fore, 0.03 * H)
        p.ellipse(hand, arm_r * 0.85, arm_r * 0.95, skin, label)
        if carrying:
            bw, bh = 0.05 * H, 0.085 * H
            top_y = hand[1] + 0.035 * H
            bag_rgb = scale_rgb(ident.bag_rgb, darken)
            p.polygon([(hand[0], hand[1]), (hand[0] - bw * 0.6, top_y), (hand[0] + bw * 0.6, top_y)], bag_rgb, BAG)
            p.shape([("rounded_rectangle", ([hand[0] - bw, top_y, hand[0] + bw, top_y + bh], 0.01 * H))], bag_rgb, BAG)
        return hand

    def torso() -> None:
        pel = [(cx - hip_half, y(0.45)), (cx + hip_half, y(0.45)), (cx + hip_half * 1.02, y(0.57)),
               (cx - hip_half * 1.02, y(0.57))]  # fmt: skip
        p.polygon(pel, ident.lower_rgb, PANTS)
        body = [(lx(0.17, cx - sh_half), y(0.17)), (lx(0.17, cx + sh_half), y(0.17)),
                (lx(0.38, cx + waist_half), y(0.38)), (cx + hip_half * 1.05, y(0.5)),
                (cx - hip_half * 1.05, y(0.5)), (lx(0.38, cx - waist_half), y(0.38))]  # fmt: skip
        p.polygon(body, upper_fill, UPPER)
        # rounded shoulders
        p.ellipse((lx(0.19, cx - sh_half * 0.78), y(0.19)), sh_half * 0.25, 0.035 * H, upper_fill, UPPER)
        p.ellipse((lx(0.19, cx + sh_half * 0.78), y(0.19)), sh_half * 0.25, 0.035 * H, upper_fill, UPPER)

    def backpack() -> None:
        col = ident.bag_rgb
        if pose.facing == "back":
            box = [lx(0.3, cx) - sh_half * 0.75, y(0.2), lx(0.3, cx) + sh_half * 0.75, y(0.44)]
            p.shape([("rounded_rectangle", (box, 0.03 * H))], col, BAG)
        elif pose.facing == "front":
            for sx in (-1, 1):
                p.capsule((lx(0.17, cx + sx * sh_half * 0.55), y(0.17)), (lx(0.36, cx + sx * sh_half * 0.5), y(0.36)),
                          0.012 * H, col, BAG)  # fmt: skip
        else:
            back = lx(0.3, cx - d * sh_half)
            box = [min(back, back - d * 0.11 * H), y(0.2), max(back, back - d * 0.11 * H), y(0.43)]
            p.shape([("rounded_rectangle", (box, 0.025 * H))], col, BAG)
            p.capsule((lx(0.18, cx), y(0.18)), (lx(0.34, cx + d * sh_half * 0.6), y(0.34)), 0.01 * H, col, BAG)

    head_c = (lx(0.065, cx), top + head_h / 2)

    def head() -> None:
        neck_w = head_w * 0.26
        neck = [(head_c[0] - neck_w, head_c[1]), (head_c[0] + neck_w, head_c[1]),
                (lx(0.18, cx + neck_w), y(0.18)), (lx(0.18, cx - neck_w), y(0.18))]  # fmt: skip
        p.polygon(neck, ident.skin_rgb, FACE)
        if ident.long_hair:
            if pose.facing == "front":
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
        rx, ry = head_w / 2, head_h / 2
        p.ellipse((head_c[0], head_c[1] - ry * 0.06), rx * 1.06, ry * 1.04, ident.hair_rgb, HAIR)
        eye = scale_rgb(ident.skin_rgb, 0.35)
        if pose.facing == "front":
            p.ellipse((head_c[0], head_c[1] + ry * 0.16), rx * 0.92, ry * 0.84, ident.skin_rgb, FACE)
            for sx in (-1, 1):
                p.ellipse((head_c[0] + sx * rx * 0.38, head_c[1] + ry * 0.12), rx * 0.1, ry * 0.08, eye, None)
            p.ellipse((head_c[0], head_c[1] + ry * 0.55), rx * 0.22, ry * 0.05, scale_rgb(ident.skin_rgb, 0.7), None)
        elif side:
            p.ellipse((head_c[0] + d * rx * 0.22, head_c[1] + ry * 0.2), rx * 0.8, ry * 0.8, ident.skin_rgb, FACE)
            p.ellipse((head_c[0] + d * rx * 0.6, head_c[1] + ry * 0.1), rx * 0.1, ry * 0.08, eye, None)
        if ident.hat:
            hb = [head_c[0] - rx * 1.12, head_c[1] - ry * 1.15, head_c[0] + rx * 1.12, head_c[1] + ry * 0.35]
            p.shape([("chord", (hb, 180, 360))], ident.hat_rgb, HAT)
            brim_x = head_c[0] + (d * rx * 0.55 if side else 0.0)
            p.ellipse((brim_x, head_c[1] - ry * 0.42), rx * (1.0 if side else 1.2), ry * 0.13, ident.hat_rgb, HAT)

    if side:
        far_side = "left" if near_side == "right" else "right"
        arm(far_side, far)
        leg(far_side, far)
        leg(near_side, 1.0)
        torso()
        if ident.bag == "backpack":
            backpack()
        head()
        arm(near_side, 1.0)
    else:
        leg("left", 1.0)
        leg("right", 1.0)
        torso()
        if ident.bag == "backpack" and pose.facing == "back":
            backpack()
        arm("left", 1.0)
        arm("right", 1.0)
        if ident.bag == "backpack" and pose.facing == "front":
            backpack()
        head()


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
