"""Tiny teachers and checkpoints written in every real key layout, with the exact key names.

``make_checkpoint(layout, spec)`` seeds a timm ViT for ``spec`` (the reference the outputs are
compared against), writes its weights the way the real files are keyed, and returns
``(path, reference_vit)``. Layouts:

- ``timm``: flat timm keys (``.pth`` or ``.safetensors``).
- ``path-mae``: PATH's conversion ``{'model': {...}}``, timm/MAE keys, (1, 1 + H*W, D) pos_embed.
- ``path-raw``: PATH training checkpoint ``{'state_dict': {'module.backbone_module.*', ...}}`` with
  a (1, H*W, D) ``pos_embed``, a separate ``cls_token_pos_embed`` and neck/decoder keys.
- ``hap``: HAP/MAE snapshot ``{'model': encoder + decoder_* + mask_token, 'optimizer', ...}``.
- ``sapiens``: mmengine ``{'state_dict': {'backbone.*' mmpretrain keys, 'neck.*'}, 'meta'}`` from MAE
  pretraining: class token and class position present although the teacher uses neither.
- ``sapiens-finetuned``: Sapiens downstream keys: no class token, no class position, a head.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dpal_cache.teachers.model import build_vit
from dpal_cache.teachers.registry import TeacherSpec, get_teacher_spec

TINY = dict(embed_dim=64, depth=2, num_heads=4, patch_size=8)

# timm -> mmpretrain (the inverse of convert.py's table, written out independently)
_TO_MMPRETRAIN = [
    (r"^patch_embed\.proj\.", "patch_embed.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."),
    (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
    (r"^blocks\.(\d+)\.attn\.", r"layers.\1.attn."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1."),
    (r"^norm\.", "ln1."),
]


def _mm_key(key: str) -> str:
    for pattern, repl in _TO_MMPRETRAIN:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def tiny(name: str, **overrides) -> TeacherSpec:
    """A real teacher's spec shrunk to 64 dims, 2 blocks, 4 heads, patch 8 (same layout and class token)."""
    base = get_teacher_spec(name)
    sizes = {"path-b": (32, 32), "hap-b": (32, 16), "sapiens-0.3b": (32, 32)}
    return dataclasses.replace(base, **{**TINY, "img_size": sizes.get(name, (32, 32)), **overrides})


@pytest.fixture
def tiny_spec():
    return tiny


def reference_vit(spec: TeacherSpec, seed: int = 0):
    """The seeded timm ViT whose weights a test checkpoint holds (random pos_embed, biases and norms too)."""
    g = torch.Generator().manual_seed(seed)
    vit = build_vit(spec)
    with torch.no_grad():
        for name, p in vit.named_parameters():  # timm inits biases 0 and norms 1: randomise every key
            scale = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(scale + torch.randn(p.shape, generator=g) * 0.2)
    return vit.eval()


def write_layout(layout: str, sd: dict[str, torch.Tensor], path: Path) -> Path:
    """Write timm-keyed weights ``sd`` to ``path`` keyed the way ``layout``'s real files are."""
    sd = {k: v.detach().clone() for k, v in sd.items()}
    g = torch.Generator().manual_seed(123)
    dim = sd["patch_embed.proj.weight"].shape[0]
    if layout == "timm":
        if path.suffix == ".safetensors":
            save_file(sd, str(path))
        else:
            torch.save(sd, path)
        return path
    if layout == "path-mae":
        obj = {"model": sd}
    elif layout == "path-raw":
        pos = sd.pop("pos_embed")
        raw = {f"module.backbone_module.{k}": v for k, v in sd.items()}
        raw["module.backbone_module.pos_embed"] = pos[:, 1:].clone()  # (1, H*W, D)
        raw["module.backbone_module.cls_token_pos_embed"] = pos[:, :1].clone()  # (1, 1, D)
        raw["module.neck_module.ladder.0.weight"] = torch.randn(8, dim, generator=g)
        raw["module.decoder_module.final_layer.weight"] = torch.randn(17, 8, generator=g)
        obj = {"state_dict": raw, "step": 80000}
    elif layout == "hap":
        model = dict(sd)
        model["mask_token"] = torch.randn(1, 1, 32, generator=g)
        model["decoder_embed.weight"] = torch.randn(32, dim, generator=g)
        model["decoder_pos_embed"] = torch.randn(1, sd["pos_embed"].shape[1], 32, generator=g)
        model["decoder_blocks.0.norm1.weight"] = torch.ones(32)
        model["decoder_norm.weight"] = torch.ones(32)
        model["decoder_pred.weight"] = torch.randn(8 * 8 * 3, 32, generator=g)
        obj = {"epoch": 399, "arch": "pose_mae_vit_base_patch16", "model": model,
               "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}, "scaler": {"scale": 1.0}}
    elif layout in ("sapiens", "sapiens-finetuned"):
        state = {f"backbone.{_mm_key(k)}": v for k, v in sd.items()}
        if layout == "sapiens":  # MAE pretraining: class token and class position, unused by the teacher
            state["backbone.cls_token"] = torch.randn(1, 1, dim, generator=g)
            state["backbone.pos_embed"] = torch.cat([torch.zeros(1, 1, dim), sd["pos_embed"]], dim=1)
            state["neck.mask_token"] = torch.randn(1, 1, 32, generator=g)
            state["neck.decoder_embed.weight"] = torch.randn(32, dim, generator=g)
        else:
            state["head.final_layer.weight"] = torch.randn(17, dim, 1, 1, generator=g)
        obj = {"state_dict": state, "meta": {"epoch": 1600, "iter": 1, "mmengine_version": "0.10.3"}}
    else:
        raise ValueError(layout)
    torch.save(obj, path)
    return path


@pytest.fixture
def make_checkpoint(tmp_path):
    """``make_checkpoint(layout, spec, seed=0, suffix='.pth') -> (path, reference_vit)``."""

    def make(layout: str, spec: TeacherSpec, seed: int = 0, suffix: str = ".pth"):
        ref = reference_vit(spec, seed)
        path = write_layout(layout, ref.state_dict(), tmp_path / f"{layout}-{seed}{suffix}")
        return path, ref

    return make
