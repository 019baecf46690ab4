"""``StudyConfig``: what the cache-fidelity study (``dpal-cache study``) generates, trains and probes."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpal_cache.config import check
from dpal_cache.demo.teacher import DemoTeacherConfig

PROBES = ("reid", "attributes", "parsing")


@dataclass(frozen=True)
class StudyConfig:
    """One study: a data set and a teacher, stores of each ``views`` count, the same student trained from each
    (and online with fresh views) for each seed, every student probed next to the teacher.

    The defaults are the study in docs/fidelity.md (about 40 minutes on 2 CPU cores); configs/study-smoke.yaml is
    the few-minute version the test suite runs.
    """

    # data: generated persons in Market-1501 layout, at Market's own 128x64
    ids: int = 40
    images_per_id: int = 10
    train_fraction: float = 0.5
    distractors: int = 10
    crowd_backgrounds: int = 8
    image_size: tuple[int, int] = (128, 64)  # (h, w) of the generated persons
    data_seed: int = 0  # data, teacher and views: the same for every run of the study
    teacher: DemoTeacherConfig = field(default_factory=lambda: DemoTeacherConfig(img_size=(128, 64)))
    # another teacher instead of pretraining the demo one: a registry name (path-b, timm:<model>, random:<arch>...)
    # and its weights file; the teacher settings above are then unused
    teacher_name: str | None = None
    teacher_checkpoint: str | None = None
    # views: global view, local crops and crowd sizes of every store
    view_size: tuple[int, int] = (128, 64)
    local_crop_size: tuple[int, int] = (64, 32)
    crowd_size: tuple[int, int] = (64, 64)
    views: tuple[int, ...] = (1, 2, 4, 8)  # stores with V views (and V crowd images) per image
    fresh: bool = True  # also train online with fresh views every epoch (the paper's training)
    # training: the same schedule for every run
    student: str = "vit_tiny_patch16"
    epochs: int = 16
    batch_size: int = 16
    lr: float = 1.5e-2  # base lr, scaled by batch / 256
    warmup_epochs: float = 1.0
    seeds: tuple[int, ...] = (0, 1, 2)  # student init and data order
    probes: tuple[str, ...] = PROBES

    def __post_init__(self) -> None:
        check(len(self.views) >= 1 and all(v >= 1 for v in self.views), "views", "must be counts >= 1")
        check(len(set(self.views)) == len(self.views), "views", "must not repeat a count")
        check(len(self.seeds) >= 1, "seeds", "must hold at least one seed")
        check(len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat a seed")
        check(set(self.probes) <= set(PROBES) and len(self.probes) >= 1, "probes",
              f"must be some of {', '.join(PROBES)}, got {list(self.probes)}")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.batch_size >= 2, "batch_size", "must be >= 2")
        check(self.teacher_checkpoint is None or self.teacher_name is not None, "teacher_checkpoint",
              "goes with teacher_name (the teacher it holds)")

    @property
    def arms(self) -> list[str]:
        """The compared settings, in table order: ``V=1``, ``V=2``..., then ``fresh``."""
        return [f"V={v}" for v in self.views] + (["fresh"] if self.fresh else [])
