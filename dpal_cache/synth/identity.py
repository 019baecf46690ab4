"""Stable per-person appearance for the synthetic data set, and its binary attributes.

An identity is everything about a person that does not change between photos: clothing
colours and texture, hair, hat, bag, build. It is drawn from
``numpy.random.default_rng([seed, TAG_IDENTITY, person_id])``, so it depends only on the
seed and the id, never on how many ids or images are generated or in which process.

    ident = identity_for(seed=0, person_id=7)
    ident.attributes()  # {"upper_black": False, ..., "hat": True, "bag": False, ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TAG_IDENTITY = 1  # rng stream tags keep identity, image and camera draws independent

# Named clothing colours (sRGB). Names follow the Market-1501 attribute annotation.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "white": (232, 232, 228),
    "red": (196, 36, 40),
    "blue": (40, 76, 186),
    "green": (44, 142, 64),
    "yellow": (230, 200, 40),
    "grey": (128, 128, 128),
    "purple": (120, 56, 150),
    "pink": (236, 140, 176),
    "brown": (120, 78, 44),
}
UPPER_COLOURS = ("black", "white", "red", "purple", "yellow", "grey", "blue", "green")
LOWER_COLOURS = ("black", "white", "pink", "purple", "yellow", "grey", "blue", "green", "brown")
TEXTURES = ("plain", "stripes", "checks")
BAGS = ("none", "backpack", "handbag")

SKIN_TONES = ((250, 214, 184), (234, 190, 150), (204, 152, 112), (160, 110, 74), (112, 74, 48), (80, 54, 38))
HAIR_COLOURS = ((20, 16, 14), (70, 44, 26), (120, 84, 46), (200, 164, 100), (150, 150, 150))
SHOE_COLOURS = ((20, 20, 20), (235, 235, 235), (96, 64, 40), (60, 60, 70), (170, 30, 30))

# Column order of the attribute table: one-hot colours first, then the binary traits.
ATTRIBUTE_NAMES: tuple[str, ...] = (
    *(f"upper_{c}" for c in UPPER_COLOURS),
    *(f"lower_{c}" for c in LOWER_COLOURS),
    "upper_pattern",
    "short_sleeves",
    "shorts",
    "long_hair",
    "hat",
    "bag",
    "backpack",
    "handbag",
    "broad_build",
)

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Identity:
    """What one person looks like in every photo of them."""

    person_id: int
    upper_colour: str
    upper_rgb: RGB  # the named colour with a small per-person shade shift
    upper_texture: str  # plain / stripes / checks
    upper_second_rgb: RGB  # the other colour of stripes or checks
    short_sleeves: bool
    lower_colour: str
    lower_rgb: RGB
    shorts: bool  # shorts (bare shins) vs trousers
    skin_rgb: RGB
    hair_rgb: RGB
    long_hair: bool
    hat: bool
    hat_rgb: RGB
    bag: str  # none / backpack / handbag
    bag_rgb: RGB
    bag_side: int  # +1: the handbag hangs from the person's right hand, -1: left
    broad_build: bool  # broad shoulders / narrow hips vs slim shoulders / wider hips
    shoe_rgb: RGB
    height_scale: float  # body height relative to the average person (0.9..1.06)

    def attributes(self) -> dict[str, bool]:
        """Binary attributes in :data:`ATTRIBUTE_NAMES` order (the columns of attributes.parquet)."""
        out = {f"upper_{c}": c == self.upper_colour for c in UPPER_COLOURS}
        out.update({f"lower_{c}": c == self.lower_colour for c in LOWER_COLOURS})
        out.update(
            upper_pattern=self.upper_texture != "plain",
            short_sleeves=self.short_sleeves,
            shorts=self.shorts,
            long_hair=self.long_hair,
            hat=self.hat,
            bag=self.bag != "none",
            backpack=self.bag == "backpack",
            handbag=self.bag == "handbag",
            broad_build=self.broad_build,
        )
        return out


def _shade(rng: np.random.Generator, rgb: RGB, spread: int) -> RGB:
    """The colour moved by a small random offset: same name, but a person-specific shade."""
    jitter = rng.integers(-spread, spread + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + jitter, 0, 255))  # type: ignore[return-value]


def _pick(rng: np.random.Generator, options: tuple, p: list[float] | None = None):
    return options[int(rng.choice(len(options), p=p))]


def draw_identity(rng: np.random.Generator, person_id: int = 0) -> Identity:
    """Draw a random appearance from ``rng`` (distractor scenes use this for anonymous people)."""
    upper = _pick(rng, UPPER_COLOURS)
    lower = _pick(rng, LOWER_COLOURS)
    texture = _pick(rng, TEXTURES, [0.55, 0.25, 0.2])
    # the second pattern colour must contrast with the first or the pattern is invisible
    second = _pick(rng, tuple(c for c in ("black", "white", "grey", "red", "blue", "yellow") if c != upper))
    broad = bool(rng.random() < 0.5)
    # "gender-like" correlations, as in real pedestrians: slim builds more often have long hair
    long_hair = bool(rng.random() < (0.2 if broad else 0.65))
    bag = _pick(rng, BAGS, [0.45, 0.3, 0.25])
    return Identity(
        person_id=person_id,
        upper_colour=upper,
        upper_rgb=_shade(rng, PALETTE[upper], 14),
        upper_texture=texture,
        upper_second_rgb=_shade(rng, PALETTE[second], 10),
        short_sleeves=bool(rng.random() < 0.4),
        lower_colour=lower,
        lower_rgb=_shade(rng, PALETTE[lower], 14),
        shorts=bool(rng.random() < 0.25),
        skin_rgb=_shade(rng, _pick(rng, SKIN_TONES), 8),
        hair_rgb=_shade(rng, _pick(rng, HAIR_COLOURS), 8),
        long_hair=long_hair,
        hat=bool(rng.random() < 0.2),
        hat_rgb=_shade(rng, PALETTE[_pick(rng, tuple(PALETTE))], 10),
        bag=bag,
        bag_rgb=_shade(rng, PALETTE[_pick(rng, ("black", "brown", "grey", "blue", "red", "white"))], 12),
        bag_side=1 if rng.random() < 0.5 else -1,
        broad_build=broad,
        shoe_rgb=_shade(rng, _pick(rng, SHOE_COLOURS), 8),
        height_scale=float(rng.uniform(0.9, 1.06)),
    )


def identity_for(seed: int, person_id: int) -> Identity:
    """The appearance of ``person_id`` under ``seed``: the same in every image and every run."""
    return draw_identity(np.random.default_rng([seed, TAG_IDENTITY, person_id]), person_id)
