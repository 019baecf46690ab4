"""A demo teacher with real signal, trained in about a minute on CPU without any download.

A ``random:`` teacher shows the mechanics of caching but carries no knowledge, so a student
distilled from it does not beat an untrained one. The demo instead trains a plain timm ViT for a
fixed time budget with identity classification on the synthetic ``bounding_box_train`` images,
saves its backbone in timm layout and loads it through the normal teacher path
(``load_teacher("timm:<model>", checkpoint=...)``). It is NOT PATH-B: every output says so.

    info = train_demo_teacher("runs/demo/synth/bounding_box_train", "runs/demo/teacher.safetensors")
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dpal_cache.config import check
from dpal_cache.eval.features import read_images
from dpal_cache.eval.reid import load_market_split
from dpal_cache.normalization import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoTeacherConfig:
    """How the demo teacher is pretrained (identity cross-entropy on the class token)."""

    model: str = "test_vit"  # timm's 64-dim, 6-block plain ViT: ~0.1 s a step on CPU; loads as ``timm:test_vit``
    img_size: tuple[int, int] = (256, 128)  # (H, W) it trains at; the 224 position table is resampled
    steps: int = 400  # ~35 s on 2 CPU cores; a fixed count keeps the teacher reproducible
    # optional wall-clock cap: stop at this or at ``steps``. None (default): always ``steps``, so the
    # teacher, and every number after it, is the same on a fast and on a busy machine
    seconds: float | None = None
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 10
    label_smoothing: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.seconds is None or self.seconds > 0, "seconds", f"must be > 0 or null, got {self.seconds}")
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.batch_size >= 2, "batch_size", f"must be >= 2, got {self.batch_size}")

    @property
    def teacher_name(self) -> str:
        return f"timm:{self.model}"


def _augment(images: torch.Tensor, generator: torch.Generator, pad: int = 8) -> torch.Tensor:
    """Random horizontal flip and a random shift (pad + crop) per image; (B, 3, H, W) -> same."""
    b, _, h, w = images.shape
    flip = torch.rand(b, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def load_train_images(data_dir: str | Path, img_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N, 3, H, W) and identity labels 0..K-1 (N,) of a Market-layout train folder."""
    split = load_market_split(data_dir)
    images = read_images(split.paths)  # list of uint8 (3, h, w)
    x = torch.stack([F.interpolate(im[None].float() / 255, size=img_size, mode="bilinear", align_corners=False)[0]
                     for im in images])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    _, labels = np.unique(split.pids, return_inverse=True)
    return (x - mean) / std, torch.as_tensor(labels, dtype=torch.long)


def train_demo_teacher(data_dir: str | Path, out: str | Path, cfg: DemoTeacherConfig = DemoTeacherConfig(),
                       progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Train the demo teacher on ``data_dir`` for ``cfg.steps`` (and at most ``cfg.seconds`` if set); save it.

    Args:
        data_dir: a Market-layout train folder (``bounding_box_train``): names carry the identity.
        out: ``.safetensors`` file for the backbone (timm keys, classifier head dropped).
        progress: called with the fraction of the training done after each step.

    Returns:
        ``teacher`` (the registry name to load it with), ``checkpoint``, ``seconds``, ``steps``,
        ``ids``, ``images``, ``first_loss`` / ``last_loss`` and ``train_accuracy`` (last 10 steps), ``label``.
    """
    import timm
    from safetensors.torch import save_file

    out = Path(out)
    x, y = load_train_images(data_dir, cfg.img_size)
    n_ids = int(y.max()) + 1
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = timm.create_model(cfg.model, pretrained=False, num_classes=n_ids, dynamic_img_size=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = time.perf_counter()
    losses: list[float] = []
    correct: list[float] = []
    step = 0
    cap = math.inf if cfg.seconds is None else cfg.seconds
    while step < cfg.steps:
        elapsed = time.perf_counter() - start
        if elapsed >= cap:
            break
        # warmup, then cosine over the steps (or over the time cap, when that comes first)
        frac = min(max(step / cfg.steps, elapsed / cap), 1.0)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randperm(len(x), generator=generator)[: cfg.batch_size]
        logits = model(_augment(x[idx], generator))  # (B, n_ids)
        loss = F.cross_entropy(logits, y[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        correct.append(float((logits.argmax(-1) == y[idx]).float().mean()))
        step += 1
        if progress is not None:
            progress(min(max(step / cfg.steps, (time.perf_counter() - start) / cap), 1.0))
    seconds = time.perf_counter() - start
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    info = {
        "teacher": cfg.teacher_name, "checkpoint": str(out), "seconds": seconds, "steps": step, "ids": n_ids,
        "images": len(x), "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "train_accuracy": float(np.mean(correct[-10:])) if correct else None,
        "label": f"demo teacher: {cfg.teacher_name} trained {seconds:.0f} s ({step} steps) on {n_ids} synthetic ids, "
                 "not PATH-B",
    }
    log.info("%s (%d steps, loss %.3f -> %.3f)", info["label"], step, info["first_loss"] or 0, info["last_loss"] or 0)
    return info
