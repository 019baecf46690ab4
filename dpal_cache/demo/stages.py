"""The demo's stages as functions, shared by ``run_demo`` and the cache-fidelity study (``dpal_cache.study``):
generate and scan data, pretrain the demo teacher, extract a store, configure a training run, probe models.

Each takes a ``progress(stage, completed, total)`` callback and logs; none prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpal_cache.config import load_config
from dpal_cache.demo.teacher import DemoTeacherConfig, train_demo_teacher
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.synth import SynthConfig
from dpal_cache.train.config import TrainConfig

# (stage, completed, total): called as each stage advances; total is the stage's own unit count
Progress = Callable[[str, float, float], None]


def no_progress(stage: str, completed: float, total: float) -> None:
    pass


def counting(progress: Progress, stage: str, total: float) -> Callable[..., None]:
    """A callback for per-item reports (``step(n, ...)``): adds up ``n`` and reports ``(stage, sum, total)``."""
    count = 0

    def step(n: int, *_: Any) -> None:
        nonlocal count
        count += n
        progress(stage, count, total)

    return step


@dataclass(frozen=True)
class DemoData:
    """Generated persons in Market-1501 layout and their scan."""

    root: Path  # query / gallery / train folders, masks, attributes.parquet
    manifest: Path  # the scan of train_dir

    @property
    def train_dir(self) -> Path:
        return self.root / "bounding_box_train"

    @property
    def backgrounds(self) -> Path:
        return self.root / "backgrounds"

    def source(self):
        from dpal_cache.data.sources import open_source

        return open_source(self.train_dir)


def make_data(root: Path, manifest: Path, cfg: SynthConfig, progress: Progress = no_progress,
              done: Callable[[str], None] = lambda stage: None) -> DemoData:
    """Synthesise ``cfg`` into ``root`` (stage ``synth``), then scan its train folder into ``manifest`` (``scan``)."""
    from dpal_cache.data.manifest import ScanConfig, scan
    from dpal_cache.synth import synthesize
    from dpal_cache.synth.market import plan

    synthesize(root, cfg, progress=counting(progress, "synth", len(plan(cfg))), overwrite=True)
    done("synth")
    data = DemoData(root, manifest)
    source = data.source()
    scan(source, manifest, ScanConfig(), progress=counting(progress, "scan", len(source)))
    done("scan")
    return data


def make_teacher(data: DemoData, checkpoint: Path, cfg: DemoTeacherConfig,
                 progress: Progress = no_progress) -> dict[str, Any]:
    """Pretrain the demo teacher on the train identities (stage ``teacher``); its info (``train_demo_teacher``)."""
    return train_demo_teacher(data.train_dir, checkpoint, cfg, progress=lambda f: progress("teacher", f * 100, 100))


def extract_config(teacher: dict[str, Any], data: DemoData, seed: int, crowd_size: tuple[int, int],
                   **overrides: Any) -> ExtractConfig:
    """The demo's extraction of ``teacher`` (its info) on CPU: 32-image shards, in-process; ``overrides`` by
    dotted key (e.g. ``views.views_per_image``)."""
    return load_config(ExtractConfig, overrides={
        "teacher": teacher["teacher"], "checkpoint": teacher["checkpoint"],
        "views.crowd.background_dir": data.backgrounds, "views.seed": seed, "views.crowd.size": crowd_size,
        "shard_images": 32, "calibration_images": 32, "workers": 0, "device": "cpu", **overrides})


def make_store(cfg: ExtractConfig, data: DemoData, store: Path, progress: Progress = no_progress) -> Any:
    """Extract ``cfg`` over the data's train images into ``store`` (replaced; stage ``extract``); the summary."""
    from dpal_cache.data.manifest import read_manifest
    from dpal_cache.extract.run import extract
    from dpal_cache.teachers import load_teacher

    source = data.source()
    teacher = load_teacher(cfg.teacher, cfg.checkpoint, pos_embed=cfg.pos_embed)
    return extract(cfg, source, read_manifest(data.manifest), str(store), teacher=teacher, overwrite=True,
                   progress=counting(progress, "extract", len(source)))


def train_config(student: str, epochs: int, batch_size: int, lr: float, warmup_epochs: float, seed: int,
                 **overrides: Any) -> TrainConfig:
    """The demo's training on CPU, in-process, every step logged; ``overrides`` by dotted key."""
    return load_config(TrainConfig, overrides={
        "student.name": student, "epochs": epochs, "batch_size": batch_size, "workers": 0, "optim.base_lr": lr,
        "optim.warmup_epochs": warmup_epochs, "log_every": 1, "seed": seed, "device": "cpu", **overrides})
