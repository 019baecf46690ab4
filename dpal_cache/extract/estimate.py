"""Estimate for ``extract --dry-run``: the store's layout and size, and the teacher's time per image, measured on
random batches.

Only the teacher forward is timed (decode, render and write overlap it in a healthy run), so the
estimate is a lower bound on the wall time: `dpal-cache bench` measures the rest.

    estimate = estimate_extract(cfg, len(source), teacher)   # what `extract --dry-run` prints
    seconds = teacher_seconds_per_image(teacher, cfg, torch.device("cpu"))
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from dpal_cache.devices import resolve_device
from dpal_cache.extract.compute import TeacherStep
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.extract.run import make_layout
from dpal_cache.store.layout import STATUS_OK, StoreLayout


def random_batch(cfg: ExtractConfig, images: int, seed: int = 0) -> dict:
    """A collated batch of ``images`` ok images with random uint8 views and crowds."""
    g = torch.Generator().manual_seed(seed)
    v, c = cfg.views.views_per_image, cfg.views.crowds_per_image
    (vh, vw), (ch, cw) = cfg.views.global_view.size, cfg.views.crowd.size
    return {
        "index": np.arange(images, dtype=np.int64),
        "status": np.full(images, STATUS_OK, dtype=np.uint8),
        "reason": [""] * images,
        "views": torch.randint(0, 256, (images, v, 3, vh, vw), generator=g, dtype=torch.uint8),
        "crowds": torch.randint(0, 256, (images, c, 3, ch, cw), generator=g, dtype=torch.uint8),
    }


def teacher_seconds_per_image(teacher, cfg: ExtractConfig, device: torch.device, repeats: int = 2) -> float:
    """Median seconds of teacher compute per image (its views and crowds) at ``cfg.batch_size``."""
    step = TeacherStep(teacher.to(device).eval(), device, amp=cfg.amp, gram=cfg.gram)
    batch = random_batch(cfg, cfg.batch_size)
    step(batch)  # warm-up: allocation, kernel selection, position-table resampling
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / cfg.batch_size


@dataclass(frozen=True)
class ExtractEstimate:
    """What ``extract --dry-run`` reports: the store a run would write and the teacher's share of its time."""

    teacher: str  # the teacher's name, as configured
    embed_dim: int
    layout: StoreLayout
    device: torch.device  # where the teacher was timed
    batch_size: int
    seconds_per_image: float  # teacher compute only (see teacher_seconds_per_image)

    @property
    def images(self) -> int:
        return self.layout.n_images

    @property
    def bytes_per_image(self) -> int:
        """Uncompressed bytes of one image's rows."""
        return self.layout.bytes_per_image()

    @property
    def total_bytes(self) -> int:
        """Uncompressed bytes of the whole store."""
        return self.bytes_per_image * self.images

    @property
    def hours(self) -> float:
        """Teacher hours for every image (a lower bound on the run's wall time)."""
        return self.seconds_per_image * self.images / 3600


def estimate_extract(cfg: ExtractConfig, n_images: int, teacher) -> ExtractEstimate:
    """The layout of the store ``cfg`` makes of ``n_images`` images, and the teacher timed on ``cfg.device``
    (ValueError: views that do not fit the teacher's patch size; RuntimeError: a device that is not here)."""
    layout = make_layout(cfg, n_images, teacher)
    device = resolve_device(cfg.device)
    return ExtractEstimate(teacher=cfg.teacher, embed_dim=teacher.embed_dim, layout=layout, device=device,
                           batch_size=cfg.batch_size, seconds_per_image=teacher_seconds_per_image(teacher, cfg, device))
