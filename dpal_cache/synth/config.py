"""``SynthConfig``: what ``dpal-cache synth`` generates (sizes, counts, splits, seed).

Loaded like every stage config (defaults < ``configs/synth.yaml`` < ``--set`` < CLI options):

    cfg = load_config(SynthConfig, "configs/synth.yaml", overrides={"ids": 100})
"""

from __future__ import annotations

from dataclasses import dataclass

from dpal_cache.config import check

# Market-1501 file names hold one camera digit (``c1``..``c9``) and a four-digit person id.
MAX_CAMERAS = 9
MAX_IDS = 9999


@dataclass(frozen=True)
class SynthConfig:
    """A deterministic synthetic Market-1501-style data set; the output folder is an argument."""

    ids: int = 20  # person identities, numbered 1..ids
    images_per_id: int = 6
    cameras: int = 6
    seed: int = 0
    height: int = 256  # person crop size (Market-1501 is 128 x 64; 2x gives ViTs more pixels)
    width: int = 128
    train_fraction: float = 0.5  # the first round(ids * train_fraction) ids train, the rest are test ids
    distractors: int = 0  # gallery images with id 0000: empty or partial-person scenes
    crowd_backgrounds: int = 0  # person-free scenes for copy-paste / crowd augmentation
    background_size: tuple[int, int] = (256, 256)  # (h, w) of the crowd backgrounds
    jpeg_quality: int = 90
    masks: bool = True  # write LIP-style part masks next to the images
    workers: int = 0  # render processes; 0 = os.cpu_count()

    def __post_init__(self) -> None:
        check(1 <= self.ids <= MAX_IDS, "ids", f"must be in 1..{MAX_IDS} (four-digit Market person ids)")
        # a test id needs a query and a gallery image from another camera
        check(self.images_per_id >= 2, "images_per_id", "must be >= 2 (a query needs a gallery match)")
        check(2 <= self.cameras <= MAX_CAMERAS, "cameras", f"must be in 2..{MAX_CAMERAS} (one digit in c<cam>)")
        check(self.seed >= 0, "seed", "must be >= 0")
        check(self.height >= 32, "height", "must be >= 32")
        check(self.width >= 16, "width", "must be >= 16")
        check(0.0 <= self.train_fraction <= 1.0, "train_fraction", "must be in [0, 1]")
        check(self.distractors >= 0, "distractors", "must be >= 0")
        check(self.crowd_backgrounds >= 0, "crowd_backgrounds", "must be >= 0")
        check(min(self.background_size) >= 16, "background_size", "both sides (h, w) must be >= 16")
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in 1..100")
        check(self.workers >= 0, "workers", "must be >= 0 (0 = one per CPU)")

    @property
    def n_train_ids(self) -> int:
        """Ids 1..n_train_ids go to bounding_box_train; the rest are query/gallery ids."""
        return int(round(self.ids * self.train_fraction))
