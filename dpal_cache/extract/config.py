"""``ExtractConfig``: everything that decides what ``dpal-cache extract`` writes, and how fast.

Fields split in two: those that decide the stored values (teacher, views, precision, blocks,
calibration...) form the store's identity: resuming with a different value is refused. The
runtime fields (``RUNTIME_FIELDS``: batch size, workers, device) may change between runs.

    cfg = load_config(ExtractConfig, "configs/extract.yaml", overrides={"teacher": "path-b"})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dpal_cache.config import check
from dpal_cache.data.decode import DecodeConfig
from dpal_cache.views.config import ViewsConfig

RUNTIME_FIELDS = ("batch_size", "workers", "device", "render", "checkpoint")


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract (teacher, views, precision) and how (batching, workers, device)."""

    teacher: str = ""  # required: path-b, hap-b, sapiens-0.3b, timm:<name>, random:<arch> (random weights)
    checkpoint: Path | None = None  # default: the teacher's file under ~/.cache/dpal-cache/teachers/
    teacher_seed: int = 0  # weights of random: teachers
    pos_embed: Literal["timm", "release"] = "timm"  # how position embeddings are resampled to the view grid
    views: ViewsConfig = field(default_factory=ViewsConfig)
    shard_images: int = 256  # images per block: written whole by one task (one Zarr shard per array)
    token_precision: Literal["fp16", "int8"] = "fp16"
    map_precision: Literal["fp16", "log8"] = "fp16"
    gram: bool = False  # also store the release's gram relation softmax(F F^T / sqrt(D)) of crowd tokens
    calibration_images: int = 256  # ok images, spread over the data, whose views fit the mask and int8 scales
    mask_at_extract: float | None = None  # store tokens multiplied by (mask_score > this) instead of full tokens
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    batch_size: int = 32  # images per teacher batch (x views or crowds per image)
    workers: int = -1  # DataLoader workers decoding/rendering; -1 = one per core minus one, 0 = main process
    device: str = "auto"  # auto = cuda when available, else cpu
    # where views and crowds are rendered: workers (CPU, per image), device (batched where the teacher runs, GPU
    # JPEG decoding on CUDA); auto = device on CUDA. The store records the backend it was made with.
    render: Literal["auto", "workers", "device"] = "auto"

    def __post_init__(self) -> None:
        check(self.shard_images >= 1, "shard_images", "must be >= 1")
        check(self.calibration_images >= 1, "calibration_images", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.workers >= -1, "workers", "must be >= -1 (-1 = one per core minus one)")
        check(self.mask_at_extract is None or 0.0 <= self.mask_at_extract < 1.0, "mask_at_extract",
              "must be in [0, 1) (a threshold on the normalised mask score)")
        check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "device",
              "must be auto, cpu, cuda or cuda:N")
