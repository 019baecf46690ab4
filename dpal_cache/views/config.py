"""Configs of the view machinery: teacher global views, student local crops, crowd images.

Defaults follow the official DPAL release's inputs per training sample (docs/method.md lists where
paper, release and dpal-cache differ); every range and probability is a field so a run can change it and record it. The
YAML twin of these defaults is ``configs/views.yaml``:

    cfg = load_config(ViewsConfig, "configs/views.yaml", sets=["crowd.mode=release"])

Sizes are ``(height, width)`` in pixels. Aspect ratios are crop ``width / height`` (the
torchvision RandomResizedCrop convention), drawn log-uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dpal_cache.config import check

# A crowd recipe is a fixed-size record, so the number of pasted persons has a hard ceiling.
MAX_PASTES = 4


def _check_range(lo: float, hi: float, key: str, low: float, high: float | None = None, open_low: bool = False) -> None:
    ok_low = lo > low if open_low else lo >= low
    check(ok_low and lo <= hi, key, f"must be [lo, hi] with {low} {'<' if open_low else '<='} lo <= hi, got {lo}, {hi}")
    if high is not None:
        check(hi <= high, key, f"upper end must be <= {high}, got {hi}")


def _check_p(p: float, key: str) -> None:
    check(0.0 <= p <= 1.0, key, f"is a probability, must be in [0, 1], got {p}")


def _check_size(size: tuple[int, int], key: str) -> None:
    check(size[0] >= 8 and size[1] >= 8, key, f"(height, width) must both be >= 8 pixels, got {size}")


@dataclass(frozen=True)
class ViewAugConfig:
    """One RandomResizedCrop + photometric pipeline (crop -> flip -> jitter -> grayscale -> blur)."""

    size: tuple[int, int] = (256, 128)  # output (height, width)
    scale: tuple[float, float] = (0.8, 1.0)  # crop area / image area
    ratio: tuple[float, float] = (0.4, 0.6)  # crop width / height, log-uniform
    flip_p: float = 0.5
    jitter_p: float = 0.8  # colour jitter is applied as a whole with this probability
    brightness: float = 0.4  # factor drawn from [max(0, 1 - b), 1 + b]
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1  # shift drawn from [-hue, hue], in turns of the colour wheel
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels of the output view

    def __post_init__(self) -> None:
        _check_size(self.size, "size")
        _check_range(*self.scale, "scale", 0.0, 1.0, open_low=True)
        _check_range(*self.ratio, "ratio", 0.0, open_low=True)
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            _check_p(getattr(self, name), name)
        for name in ("brightness", "contrast", "saturation"):
            check(getattr(self, name) >= 0.0, name, f"must be >= 0, got {getattr(self, name)}")
        check(0.0 <= self.hue <= 0.5, "hue", f"must be in [0, 0.5], got {self.hue}")
        _check_range(*self.blur_sigma, "blur_sigma", 0.0, 50.0, open_low=True)


@dataclass(frozen=True)
class GlobalViewConfig(ViewAugConfig):
    """The view the teacher sees (and the student too): cached, so replayed bit for bit."""


@dataclass(frozen=True)
class LocalCropConfig(ViewAugConfig):
    """Student-only local crops, drawn fresh every epoch and never cached."""

    size: tuple[int, int] = (128, 96)
    scale: tuple[float, float] = (0.05, 0.8)
    blur_p: float = 0.5
    count: int = 2  # local crops per sample and epoch

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.count <= 64, "count", f"must be in 0..64, got {self.count}")


@dataclass(frozen=True)
class CrowdConfig:
    """Synthetic multi-person images for the relation pattern.

    ``copy-paste`` (the paper): the anchor plus partner images pasted whole at different
    heights and positions onto a background. ``release`` (the authors' code): one local crop
    and the global view of the anchor, resized to the local-crop size, blended side by side
    onto a background. The background is a crop of a ``background_dir`` image when given,
    else a blurred crop of another dataset image.
    """

    mode: Literal["copy-paste", "release"] = "copy-paste"
    size: tuple[int, int] = (256, 256)  # output (height, width)
    persons: tuple[int, int] = (2, 3)  # copy-paste: persons per image incl. the anchor, inclusive
    person_height: tuple[float, float] = (0.5, 0.9)  # copy-paste: pasted height / crowd height
    # copy-paste: at most this fraction of the smaller of two pasted boxes may be covered by the other
    max_overlap: float = 0.25
    flip_p: float = 0.5  # copy-paste: each pasted person and the background are flipped with this p
    alpha: float | None = None  # paste opacity; None: 1.0 for copy-paste, 0.7 for release (as the code)
    background_dir: Path | None = None  # folder of background images (sorted like a FolderSource)
    background_scale: tuple[float, float] = (0.2, 1.0)  # background crop area / image area
    background_ratio: tuple[float, float] = (0.75, 4 / 3)  # background crop width / height
    # dataset-image backgrounds are blurred so they read as scenery, not as another person
    background_blur_sigma: tuple[float, float] = (1.5, 3.0)

    def __post_init__(self) -> None:
        _check_size(self.size, "size")
        check(
            1 <= self.persons[0] <= self.persons[1] <= MAX_PASTES,
            "persons",
            f"must be [lo, hi] with 1 <= lo <= hi <= {MAX_PASTES}, got {self.persons}",
        )
        _check_range(*self.person_height, "person_height", 0.0, 1.0, open_low=True)
        check(0.0 <= self.max_overlap <= 1.0, "max_overlap", f"must be in [0, 1], got {self.max_overlap}")
        _check_p(self.flip_p, "flip_p")
        if self.alpha is not None:
            check(0.0 < self.alpha <= 1.0, "alpha", f"must be in (0, 1], got {self.alpha}")
        _check_range(*self.background_scale, "background_scale", 0.0, 1.0, open_low=True)
        _check_range(*self.background_ratio, "background_ratio", 0.0, open_low=True)
        _check_range(*self.background_blur_sigma, "background_blur_sigma", 0.0, 50.0, open_low=True)

    @property
    def paste_alpha(self) -> float:
        """The opacity pastes actually use (the mode's default when ``alpha`` is None)."""
        if self.alpha is not None:
            return self.alpha
        return 1.0 if self.mode == "copy-paste" else 0.7


@dataclass(frozen=True)
class ViewsConfig:
    """Everything that decides the pixels of a training sample; saved with every store."""

    seed: int = 0
    views_per_image: int = 2  # cached global views per image
    crowds_per_image: int = 1  # cached crowd images per image
    global_view: GlobalViewConfig = field(default_factory=GlobalViewConfig)
    local_crops: LocalCropConfig = field(default_factory=LocalCropConfig)
    crowd: CrowdConfig = field(default_factory=CrowdConfig)

    def __post_init__(self) -> None:
        check(0 <= self.seed < 2**63, "seed", f"must be in 0..2**63-1, got {self.seed}")
        check(1 <= self.views_per_image <= 1024, "views_per_image", f"must be in 1..1024, got {self.views_per_image}")
        check(
            0 <= self.crowds_per_image <= 1024, "crowds_per_image", f"must be in 0..1024, got {self.crowds_per_image}"
        )
        if self.crowd.mode == "release":
            (ch, cw), (lh, lw) = self.crowd.size, self.local_crops.size
            # the release pastes two local-crop-sized patches side by side
            check(
                lh <= ch and 2 * lw <= cw,
                "crowd.size",
                f"release mode pastes two {lh}x{lw} patches side by side; {ch}x{cw} is too small",
            )
