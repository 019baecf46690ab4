"""Students: timm ViT / Swin backbones (``pretrained=False``) behind one adapter.

    student = build_student("vit_tiny_patch16", img_size=(256, 128))
    out = student(images)                  # images (B, 3, H, W), any training size
    out["global"]                          # (B, Ds)        class token (ViT) or mean pool (Swin)
    out["patches"]                         # (B, h * w, Ds) on the teacher grid (H/16, W/16)
    student(crowd, grid=(16, 16))          # ask for a grid explicitly
    timm.create_model(student.timm_name, **student.timm_kwargs)   # an identical backbone (export)

Short names are the paper's students (Table 5), as timm models plus kwargs:

| short name | timm model | dims | heads | blocks |
|---|---|---|---|---|
| ``vit_tiny_patch16`` | ``vit_tiny_patch16_224`` + ``num_heads=6`` | 192 | 6 (timm's own ViT-Ti has 3) | 12 |
| ``vit_small_patch16`` | ``vit_small_patch16_224`` | 384 | 6 | 12 |
| ``swin_tiny`` | ``swin_tiny_patch4_window7_224`` (window 8, below) | 96 | 3, 6, 12, 24 | 2, 2, 6, 2 |
| ``swin_small`` | ``swin_small_patch4_window7_224`` (window 8) | 96 | 3, 6, 12, 24 | 2, 2, 18, 2 |

Any other timm ``VisionTransformer`` or ``SwinTransformer`` name is accepted as is. Reduced models for
tests pass timm kwargs through (``build_student("vit_tiny_patch16", depth=2)``); they are recorded in
``timm_kwargs`` like every other architecture kwarg.

The authors' release trains its ViT students with more heads in the last block (12 for ViT-Ti, 16 with
a 1024-dim teacher): ``last_block_heads``. The weights have the same shapes (only the split of the
192 channels into heads changes), so the backbone is timm's model with three attributes of the last
block's attention set after ``timm.create_model``; ``set_attributes`` names them, and ``export`` writes
them into the student's JSON (``apply_attributes`` or four lines of plain Python apply them).

One backbone serves every input size used in training (256x128 views, 256x256 crowd images,
128x96 local crops):

- ViT: built at ``img_size`` with ``dynamic_img_size=True``. The position table stays at the
  build grid (16x8) and timm resamples it per input grid (bicubic) on every forward, with the
  class token's position entry kept out of the interpolation (``num_prefix_tokens``). Patch
  tokens exclude every prefix token (class, register, distillation).
- Swin: built at ``img_size`` (256x128) with ``dynamic_img_size=True`` (attention masks built per
  forward, inputs padded to whole windows) and window size 8 instead of the checkpoint name's 7,
  so the 64x32 / 32x16 / 16x8 stage grids of a 256x128 view divide into windows without padding;
  the last stage (8x4) clamps its window to (8, 4) and uses no shift. Stage windows and shifts
  are fixed at build time from the 256x128 grid: a 256x256 crowd image runs stage 3 with a
  height-only shift and stage 4 as two (8, 4) windows; a 128x96 crop pads stages 2-4 with zero
  tokens (timm's behaviour, unmasked; only its global token is used in training). The final
  H/32 x W/32 grid is upsampled to the teacher's H/16 x W/16 grid with bilinear interpolation
  (``align_corners=False``; ``upsample="bicubic"`` is the other choice). The global token is the
  mean of the final (normed) tokens before upsampling, as timm's average pool.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from dpal_cache.config import check
from dpal_cache.train.student_names import DEFAULT_STUDENT, STUDENT_ALIASES, STUDENT_KWARGS

SWIN_WINDOW = 8  # divides every stage grid of a 256x128 view (see the module docstring)

Family = Literal["vit", "swin"]


@dataclass(frozen=True)
class StudentConfig:
    """Which student to train and how its tokens are brought to the teacher grid."""

    name: str = DEFAULT_STUDENT  # a short name (STUDENT_ALIASES) or any timm ViT / Swin name
    img_size: tuple[int, int] = (256, 128)  # (height, width) the backbone is built at
    drop_path_rate: float | None = None  # None: timm's default for the model (ViT 0.0, Swin 0.1)
    window_size: int | None = None  # Swin only; None: SWIN_WINDOW
    target_stride: int = 16  # teacher patch size: patch tokens come out on (H / stride, W / stride)
    upsample: Literal["bilinear", "bicubic"] = "bilinear"  # Swin (or any coarser grid) -> teacher grid
    last_block_heads: int | None = None  # ViT only: the release's variant (12 for ViT-Ti; 16 with a 1024-dim
    # teacher); null = every block has the model's own head count

    def __post_init__(self) -> None:
        check(bool(self.name.strip()), "name", "must name a student, e.g. vit_tiny_patch16")
        check(self.img_size[0] > 0 and self.img_size[1] > 0, "img_size", f"must be positive, got {self.img_size}")
        check(self.target_stride > 0, "target_stride", f"must be positive, got {self.target_stride}")
        check(
            self.img_size[0] % self.target_stride == 0 and self.img_size[1] % self.target_stride == 0,
            "img_size",
            f"{self.img_size} must be a multiple of target_stride {self.target_stride}",
        )
        if self.drop_path_rate is not None:
            check(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}")
        if self.window_size is not None:
            check(self.window_size > 0, "window_size", f"must be positive, got {self.window_size}")
        if self.last_block_heads is not None:
            check(self.last_block_heads >= 1, "last_block_heads", f"must be >= 1 or null, got {self.last_block_heads}")


def resolve_timm_name(name: str) -> str:
    """The timm model name behind a student name (short names are mapped, timm names pass through)."""
    timm_name = STUDENT_ALIASES.get(name, name)
    if not timm.is_model(timm_name):
        raise ValueError(
            f"unknown student {name!r}: use one of {', '.join(STUDENT_ALIASES)} or a timm ViT / Swin model name "
            f"(timm.list_models('vit_*') / timm.list_models('swin_*'))"
        )
    return timm_name


def _family_of(timm_name: str) -> Family:
    module = timm.models.model_entrypoint(timm_name).__module__
    if module.endswith(".vision_transformer"):
        return "vit"
    if module.endswith(".swin_transformer"):
        return "swin"
    raise ValueError(f"student {timm_name!r} is neither a timm VisionTransformer nor a SwinTransformer ({module})")


def resample_grid(tokens: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """Tokens (B, h', w', C) on one grid -> (B, h * w, C) on ``grid`` (no-op when the grids match)."""
    B, h0, w0, C = tokens.shape
    if (h0, w0) != tuple(grid):
        x = tokens.permute(0, 3, 1, 2)  # (B, C, h', w')
        x = F.interpolate(x, size=tuple(grid), mode=mode, align_corners=False)  # (B, C, h, w)
        tokens = x.permute(0, 2, 3, 1)  # (B, h, w, C)
    return tokens.reshape(B, -1, C)  # (B, h * w, C)


def last_block_attributes(backbone: nn.Module, heads: int) -> dict[str, Any]:
    """The attributes that give a timm ViT's last block ``heads`` attention heads over the same weights."""
    if not isinstance(backbone, VisionTransformer):
        raise ValueError("last_block_heads applies to ViT students only")
    attn = backbone.blocks[-1].attn
    width = attn.num_heads * attn.head_dim
    if width % heads:
        raise ValueError(f"last_block_heads {heads} does not divide the attention width {width}")
    name = f"blocks.{len(backbone.blocks) - 1}.attn"
    head_dim = width // heads
    return {f"{name}.num_heads": heads, f"{name}.head_dim": head_dim, f"{name}.scale": head_dim ** -0.5}


def apply_attributes(model: nn.Module, attributes: dict[str, Any]) -> nn.Module:
    """Set dotted ``module.attribute`` paths (an exported student's ``set_attributes``) on a timm model."""
    for path, value in attributes.items():
        *parents, attr = path.split(".")
        obj = model
        for part in parents:
            obj = getattr(obj, part)
        if not hasattr(obj, attr):
            raise ValueError(f"{type(model).__name__} has no attribute {path!r}: not the model these were made for")
        setattr(obj, attr, value)
    return model


def create_backbone(timm_name: str, timm_kwargs: dict[str, Any], set_attributes: dict[str, Any] | None = None,
                    **train_kwargs: Any) -> nn.Module:
    """``timm.create_model(timm_name, **timm_kwargs)`` (no pretrained weights), then ``set_attributes``."""
    model = timm.create_model(timm_name, pretrained=False, **timm_kwargs, **train_kwargs)
    return apply_attributes(model, dict(set_attributes or {}))


class Student(nn.Module):
    """A timm backbone that returns a global token and patch tokens on the teacher grid.

    Args:
        backbone: the timm ViT or Swin (``num_classes=0``).
        timm_name: its timm model name.
        timm_kwargs: the ``timm.create_model`` kwargs that rebuild it (architecture only).
        set_attributes: attributes set after ``timm.create_model`` (``apply_attributes``), e.g. the release's
            last-block head count.
        target_stride: teacher patch size; the default grid of an (H, W) input is (H / stride, W / stride).
        upsample: interpolation mode from a coarser (or finer) native grid to the requested one.
    """

    def __init__(
        self,
        backbone: nn.Module,
        timm_name: str,
        timm_kwargs: dict[str, Any],
        target_stride: int = 16,
        upsample: str = "bilinear",
        set_attributes: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(backbone, VisionTransformer):
            self.family: Family = "vit"
            self.native_stride = backbone.patch_embed.patch_size[0]
        elif isinstance(backbone, SwinTransformer):
            self.family = "swin"
            self.native_stride = backbone.patch_embed.patch_size[0] * 2 ** (len(backbone.layers) - 1)
        else:
            raise TypeError(f"{timm_name}: only timm VisionTransformer and SwinTransformer students are supported")
        self.backbone = backbone
        self.timm_name = timm_name
        self.timm_kwargs = dict(timm_kwargs)
        self.set_attributes = dict(set_attributes or {})
        self.embed_dim: int = backbone.num_features
        self.target_stride = target_stride
        self.upsample = upsample

    def default_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """The teacher grid of an (H, W) input."""
        H, W = size
        if H % self.target_stride or W % self.target_stride:
            raise ValueError(f"input {H}x{W} is not a multiple of the teacher stride {self.target_stride}")
        return H // self.target_stride, W // self.target_stride

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Images (B, 3, H, W) -> ``global`` (B, Ds) and ``patches`` (B, h * w, Ds) on ``grid``."""
        B, _, H, W = x.shape
        grid = self.default_grid((H, W)) if grid is None else (int(grid[0]), int(grid[1]))
        if H % self.native_stride or W % self.native_stride:
            # a ViT would silently drop the border pixels; Swin would pad: both are surprises
            raise ValueError(f"{self.timm_name}: input {H}x{W} is not a multiple of its stride {self.native_stride}")
        feats = self.backbone.forward_features(x)
        if self.family == "vit":
            n_prefix = self.backbone.num_prefix_tokens
            patches = feats[:, n_prefix:]  # (B, h' * w', Ds)
            if self.backbone.cls_token is not None:
                glob = feats[:, 0]  # (B, Ds)
            else:
                glob = patches.mean(dim=1)
            patches = patches.reshape(B, H // self.native_stride, W // self.native_stride, -1)  # (B, h', w', Ds)
        else:
            patches = feats  # (B, h', w', Ds), timm Swin is NHWC
            glob = feats.mean(dim=(1, 2))  # (B, Ds)
        return {"global": glob, "patches": resample_grid(patches, grid, self.upsample)}


def build_student(
    name: str | StudentConfig = "vit_tiny_patch16",
    img_size: tuple[int, int] | None = None,
    **timm_overrides: Any,
) -> Student:
    """Build a fresh student (``pretrained=False``).

    Args:
        name: a short name, a timm ViT / Swin name, or a :class:`StudentConfig`.
        img_size: (height, width) to build at; overrides the config's (default (256, 128)).
        **timm_overrides: extra ``timm.create_model`` kwargs (e.g. ``depth=2`` for tests); recorded
            in ``student.timm_kwargs``.
    """
    cfg = name if isinstance(name, StudentConfig) else StudentConfig(name=name)
    if img_size is not None:
        cfg = dataclasses.replace(cfg, img_size=tuple(img_size))
    timm_name = resolve_timm_name(cfg.name)
    family = _family_of(timm_name)
    timm_kwargs: dict[str, Any] = {"img_size": tuple(cfg.img_size), "num_classes": 0, "dynamic_img_size": True,
                                   **STUDENT_KWARGS.get(cfg.name, {})}
    if family == "swin":
        timm_kwargs["window_size"] = cfg.window_size or SWIN_WINDOW
    elif cfg.window_size is not None:
        raise ValueError(f"window_size applies to Swin students only, not {timm_name}")
    timm_kwargs.update(timm_overrides)
    train_kwargs = {} if cfg.drop_path_rate is None else {"drop_path_rate": cfg.drop_path_rate}
    backbone = create_backbone(timm_name, timm_kwargs, **train_kwargs)
    attributes = last_block_attributes(backbone, cfg.last_block_heads) if cfg.last_block_heads else {}
    apply_attributes(backbone, attributes)
    return Student(backbone, timm_name, timm_kwargs, target_stride=cfg.target_stride, upsample=cfg.upsample,
                   set_attributes=attributes)
