"""``TrainConfig``: the student, decoder, losses, optimiser and loop of ``dpal-cache train``.

    cfg = load_config(TrainConfig, "configs/train.yaml", sets=["student.name=swin_tiny"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dpal_cache.config import check
from dpal_cache.train.decoders.config import DecoderConfig
from dpal_cache.train.losses import LossConfig
from dpal_cache.train.students import StudentConfig
from dpal_cache.views.config import LocalCropConfig


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and per-iteration cosine decay (the paper's; clip_grad and min_lr are dpal-cache's
    defaults, the release uses neither: configs/recipes/train-release-pathb-vit_tiny.yaml)."""

    base_lr: float = 2.5e-4  # scaled by global batch / 256
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05  # not applied to norms, biases, position embeddings, tokens
    warmup_epochs: float = 10.0
    min_lr: float = 1e-6
    clip_grad: float | None = 3.0  # max global grad norm; null = no clipping
    accum_steps: int = 1  # batches per optimizer step

    def __post_init__(self) -> None:
        check(self.base_lr > 0, "base_lr", "must be > 0")
        check(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        check(self.clip_grad is None or self.clip_grad > 0, "clip_grad", "must be > 0 or null")
        check(self.accum_steps >= 1, "accum_steps", "must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: what learns from which targets, and how."""

    student: StudentConfig = field(default_factory=StudentConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 100
    max_steps: int | None = None  # stop after this many optimizer steps (the schedule still spans `epochs`)
    batch_size: int = 256  # per process
    workers: int = 4  # DataLoader workers per process
    shuffle_window: int = 64  # store blocks whose images are shuffled together each epoch; 0 = one order over all
    seed: int = 0  # model init and data order (views come from the store's own seed)
    amp: bool = True  # bf16 autocast on CUDA
    ema_decay: float | None = None  # keep an EMA of the student (e.g. 0.996); null = none
    ema_schedule: Literal["constant", "cosine"] = "constant"  # cosine: from ema_decay to 1 over the run (release)
    checkpoint_every: int = 500  # optimizer steps between checkpoints (and one at the end)
    log_every: int = 10  # optimizer steps between metric lines
    device: str = "auto"
    render: Literal["auto", "workers", "device"] = "auto"  # inputs rendered by the data workers (CPU) or on the
    # training device in batches (GPU decode + batched renderer); auto = device on CUDA, workers on the CPU
    local_crops: LocalCropConfig | None = None  # student-only crops; null = the store's views config
    background_dir: Path | None = None  # crowd backgrounds on this machine; null = the path stored at extract
    skip_changed: bool = False  # drop images whose bytes changed since the scan instead of failing
    fresh_views: bool = False  # online mode only: epoch e trains global view e and crowd e of every image (new
    # augmentations each epoch, the paper's training) instead of replaying the V views a store would hold
    tensorboard: bool = False  # also write TensorBoard scalars (needs the tensorboard package)

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1 or null")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.workers >= 0, "workers", "must be >= 0")
        check(self.shuffle_window >= 0, "shuffle_window", "must be >= 0 (0 = one random order over all images)")
        check(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay", "must be in (0, 1) or null")
        check(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        check(self.log_every >= 1, "log_every", "must be >= 1")
