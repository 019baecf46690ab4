"""Checkpoint key layouts -> timm ``VisionTransformer`` weights, loaded strictly.

Every real teacher file is rewritten into timm's names (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.{i}.norm1`` / ``attn.qkv`` / ``attn.proj`` / ``norm2`` /
``mlp.fc1`` / ``mlp.fc2``, ``norm``) and then loaded with NO slack: a missing or unexpected
backbone key, or a shape that does not fit (a ViT-S file for a ViT-B teacher), is a
:class:`CheckpointError` listing them. The DPAL release loads with ``strict=False`` and can
silently keep a random teacher; this module is the guard against that.

Layouts handled (key names verified against the public code, see registry.py):
- ``timm`` / MAE-style: the keys above, e.g. MAE's ``mae_pretrain_vit_base.pth`` and PATH's
  conversion ``{'model': ...}`` with a class token and a (1, 197, D) ``pos_embed``.
- PATH raw training checkpoint ``{'state_dict': {'module.backbone_module.*', 'module.neck_module.*',
  'module.decoder_module.*'}}``: the backbone keeps timm names but a (1, 196, D) ``pos_embed``
  and a separate (1, 1, D) ``cls_token_pos_embed``; the two are joined into timm's (1, 197, D)
  exactly as PATH's own conversion script does (class position first).
- HAP ``{'model': ..., 'optimizer': ...}``: MAE keys plus the MAE decoder (``decoder_*``,
  ``mask_token``), dropped; its fixed sin-cos ``pos_embed`` is stored for a 16x8 grid.
- Sapiens / mmpretrain ``{'state_dict': {'backbone.*', 'neck.*'}}``: ``patch_embed.projection``,
  ``layers.{i}.ln1`` / ``attn.qkv`` / ``attn.proj`` / ``ln2`` / ``ffn.layers.0.0`` /
  ``ffn.layers.1`` and the final norm ``ln1``. The MAE-pretrained file has a class token and a
  class position that Sapiens-as-teacher does not use; both are dropped (logged).

Containers and prefixes: ``module.`` (DDP) is stripped when every key has it; when a backbone
prefix (``backbone_module.``, ``backbone.``) is present, everything outside it (necks, decoders,
heads) is dropped and logged. Keys that are never backbone (``decoder_*``, ``mask_token``,
``head.``, ``neck.``, ``data_preprocessor.``) are dropped too. Nothing else is.

The position embedding keeps the checkpoint's own grid (inferred from its length, with the
teacher's pretraining grid as hint); posembed.py resamples it per input grid.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from dpal_cache.teachers.checkpoint import CheckpointError
from dpal_cache.teachers.posembed import infer_grid
from dpal_cache.teachers.registry import TeacherSpec
from dpal_cache.weights import state_dict_differences

log = logging.getLogger(__name__)

BACKBONE_PREFIXES = ("backbone_module.", "backbone.")
NON_BACKBONE = ("decoder_", "mask_token", "head.", "head_dist.", "neck.", "data_preprocessor.")
MAX_LISTED = 30

# mmpretrain VisionTransformer (Sapiens) -> timm VisionTransformer
_MMPRETRAIN_RULES = [
    (re.compile(r"^patch_embed\.projection\."), "patch_embed.proj."),
    (re.compile(r"^layers\.(\d+)\.ln1\."), r"blocks.\1.norm1."),
    (re.compile(r"^layers\.(\d+)\.ln2\."), r"blocks.\1.norm2."),
    (re.compile(r"^layers\.(\d+)\.attn\.(qkv|proj)\."), r"blocks.\1.attn.\2."),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.0\.0\."), r"blocks.\1.mlp.fc1."),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.1\."), r"blocks.\1.mlp.fc2."),
    (re.compile(r"^ln1\."), "norm."),
    (re.compile(r"^pre_norm\."), "norm_pre."),
]


@dataclass(frozen=True)
class LoadReport:
    """What loading did: the layout read, the checkpoint pos-embed grid, and the keys left out."""

    layout: str  # "timm", "path-raw" or "mmpretrain"
    grid: tuple[int, int]
    dropped: tuple[str, ...]


def _strip_containers(weights: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip ``module.``, keep only the backbone when a backbone prefix exists; return (kept, dropped)."""
    sd = dict(weights)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    dropped: list[str] = []
    for prefix in BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            dropped = sorted(k for k in sd if not k.startswith(prefix))
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    for key in [k for k in sd if k.startswith(NON_BACKBONE)]:
        dropped.append(key)
        del sd[key]
    return sd, dropped


def _rename_mmpretrain(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        for pattern, repl in _MMPRETRAIN_RULES:
            new, n = pattern.subn(repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def convert_keys(weights: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Rename a checkpoint's keys to timm's; returns (weights, layout read, dropped keys).

    The class position of raw PATH checkpoints is joined here; the position table is otherwise
    left as stored (see :func:`load_backbone` for its grid).
    """
    sd, dropped = _strip_containers(weights)
    layout = "timm"
    if any(re.match(r"^layers\.\d+\.", k) for k in sd):
        sd, layout = _rename_mmpretrain(sd), "mmpretrain"
    if "cls_token_pos_embed" in sd:
        cls_pos = sd.pop("cls_token_pos_embed")  # (1, 1, D)
        if "pos_embed" in sd:
            sd["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)  # (1, 1 + H*W, D)
        layout = "path-raw"
    return sd, layout, dropped


def _fit_pos_embed(
    sd: dict[str, torch.Tensor], model: nn.Module, spec: TeacherSpec, dropped: list[str]
) -> tuple[int, int] | None:
    """Align the checkpoint's prefix rows with the model's and return the checkpoint grid (None: no pos_embed)."""
    if "cls_token" in sd and getattr(model, "cls_token", None) is None:
        # Sapiens' MAE pretraining has a class token; as a teacher it runs without one (DPAL release)
        dropped.append("cls_token")
        del sd["cls_token"]
        log.info("%s: dropped the checkpoint's class token (this teacher has none)", spec.name)
    pos = sd.get("pos_embed")
    if pos is None or pos.ndim != 3:
        return None
    grid_model = tuple(model.patch_embed.grid_size)
    prefix = model.pos_embed.shape[1] - grid_model[0] * grid_model[1]
    rows = pos.shape[1]
    try:
        return infer_grid(rows - prefix, hint=spec.grid)
    except ValueError:
        pass
    if prefix == 0:
        try:
            grid = infer_grid(rows - 1, hint=spec.grid)
        except ValueError:
            grid = None
        if grid is not None:  # a class position for the unused class token
            sd["pos_embed"] = pos[:, 1:]
            log.info("%s: dropped the class position of the checkpoint's pos_embed", spec.name)
            return grid
    try:
        infer_grid(rows, hint=spec.grid)
        why = f"no position for the {prefix} prefix token(s) (class token) this teacher has"
    except ValueError:
        why = f"a length that is not {prefix} prefix row(s) plus a patch grid"
    raise CheckpointError(
        f"checkpoint does not fit teacher {spec.name}: pos_embed {tuple(pos.shape)} has {why}; a checkpoint saved "
        "without a class token (e.g. PATH's wo_cls_token conversion) cannot serve a teacher with one"
    )


def _set_grid(model: nn.Module, grid: tuple[int, int], rows: int) -> None:
    """Give the (meta) model a pos_embed table of ``rows`` rows for the checkpoint ``grid``."""
    pe = model.patch_embed
    pe.grid_size = tuple(grid)
    pe.num_patches = grid[0] * grid[1]
    pe.img_size = (grid[0] * pe.patch_size[0], grid[1] * pe.patch_size[1])
    model.pos_embed = nn.Parameter(torch.empty(1, rows, model.pos_embed.shape[-1], device=model.pos_embed.device))


def load_backbone(
    model: nn.Module, weights: Mapping[str, torch.Tensor], spec: TeacherSpec, source: str = ""
) -> LoadReport:
    """Convert ``weights`` and load them into the timm ``model`` strictly (``assign=True``: build it on meta).

    Raises:
        CheckpointError: listing missing keys, unexpected keys and other shapes.
    """
    sd, layout, dropped = convert_keys(weights)
    grid = _fit_pos_embed(sd, model, spec, dropped)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    pos, want_pos = got.get("pos_embed"), expected.get("pos_embed")
    if grid is not None and pos and want_pos and len(pos) == 3 and pos[2] == want_pos[2]:
        got["pos_embed"] = want_pos  # any grid is fine; it is resampled per input
    if parts := state_dict_differences(expected, got, limit=MAX_LISTED):
        where = f" ({source})" if source else ""
        raise CheckpointError(
            f"checkpoint{where} does not fit teacher {spec.name} (expected layout {spec.layout}, read as {layout})"
            + "".join(f"\n  {part}" for part in parts)
        )
    if grid is None:  # a model without a position table cannot be a teacher here; registry refuses those
        raise CheckpointError(f"checkpoint for {spec.name} has no usable pos_embed")
    if tuple(sd["pos_embed"].shape) != expected["pos_embed"] or tuple(model.patch_embed.grid_size) != grid:
        _set_grid(model, grid, sd["pos_embed"].shape[1])
    floats = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    model.load_state_dict(floats, strict=True, assign=True)
    if dropped:
        shown = ", ".join(dropped[:8]) + (", ..." if len(dropped) > 8 else "")
        log.info("%s: left out %d keys the teacher does not use (%s)", spec.name, len(dropped), shown)
    log.info("%s: loaded %d tensors (layout %s, pos-embed grid %dx%d)", spec.name, len(sd), layout, *grid)
    return LoadReport(layout=layout, grid=grid, dropped=tuple(dropped))
