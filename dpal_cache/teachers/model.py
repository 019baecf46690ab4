"""The frozen teacher: a timm ViT that returns tokens and last-block attention as a dict.

    teacher = load_teacher("path-b", checkpoint="humanbench_vit_base.pth", pos_embed="release")
    out = teacher(images)                    # images (B, 3, H, W), normalised with teacher.normalize
    out["x_norm_clstoken"]                   # (B, D)      class token after the final norm
    out["x_norm_patchtokens"]                # (B, L, D)   patch tokens after the final norm
    out["attn_cls"]                          # (B, L)      last block, head mean, class -> patches, sums to 1
    out["attn_patch"]                        # (B, L, L)   last block, head mean, patch -> patch, rows sum to 1
    teacher(images, gram=True)["gram"]       # (B, L+1, L+1) softmax(F F^T / sqrt(D)), F = [class; patches]

One teacher serves every input grid (16x8 views, 16x16 crowd images): it keeps the
checkpoint's position table at the checkpoint grid and resamples it per input grid with the
recorded method (posembed.py), caching one table per grid. The forward mirrors timm's
``forward_features`` (patch embed, prefix tokens, position table, ``norm_pre``, blocks,
``norm``) so with method ``timm`` it gives timm's own numbers.

Last-block attention is recomputed, not hooked out of timm: the input of the last block is kept,
and q, k come from that block's own ``norm1``, ``attn.qkv``, ``q_norm`` / ``k_norm`` and
``scale``; softmax(q k^T * scale) per head, then the head mean. This runs with autocast off and
the logits and softmax in float32, so the maps are float32 even under bf16 autocast. Register
tokens (timm models that have them) are left out of every map.

Teachers without a class token (Sapiens, as in the DPAL release): ``x_norm_clstoken`` is the mean
of the final patch tokens (the release's ``feats.mean(dim=1)``), ``attn_cls`` is the mean
attention each patch receives from all patches (column mean of ``attn_patch``, sums to 1), and
``gram`` uses the mean token as its class row, so shapes never depend on the teacher.

The teacher is frozen and stays in eval mode (``train()`` is a no-op); device and dtype follow
the module (``teacher.to("cuda")``); the forward runs under ``torch.no_grad``.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from dpal_cache.teachers.checkpoint import file_sha256, load_state_dict, resolve_checkpoint
from dpal_cache.teachers.convert import load_backbone
from dpal_cache.teachers.posembed import POS_EMBED_METHODS, PosEmbedMethod, resample_pos_embed
from dpal_cache.teachers.registry import TeacherSpec, get_teacher_spec

log = logging.getLogger(__name__)


def build_vit(spec: TeacherSpec) -> VisionTransformer:
    """The timm ViT of ``spec`` with fresh init on the current default device (use ``torch.device('meta')``)."""
    if spec.timm_model:
        import timm

        vit = timm.create_model(spec.timm_model, pretrained=False, num_classes=0, dynamic_img_size=True)
    else:
        vit = VisionTransformer(**spec.vit_kwargs(), norm_layer=partial(nn.LayerNorm, eps=spec.norm_eps))
    if spec.patch_padding:
        vit.patch_embed.proj.padding = (spec.patch_padding, spec.patch_padding)
    last = vit.blocks[-1]
    if type(last) is not Block or not isinstance(last.attn, Attention) or vit.pos_embed is None:
        raise ValueError(f"{spec.name}: only plain timm ViT blocks with absolute position embeddings can be teachers")
    return vit


def gram_relation(tokens: torch.Tensor) -> torch.Tensor:
    """The release's relation target softmax(F F^T / sqrt(D)) over tokens (B, N, D) -> (B, N, N), in float32."""
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        f = tokens.float()
        return torch.softmax(f @ f.transpose(1, 2) / math.sqrt(f.shape[-1]), dim=-1)


class Teacher(nn.Module):
    """A frozen teacher built from a spec and its checkpoint weights (or seeded random weights).

    Args:
        spec: the teacher (registry.py).
        state_dict: checkpoint weights in any supported layout (convert.py); None for random teachers.
        pos_embed_method: ``timm`` or ``release`` (posembed.py).
        seed: seed of the random weights of a ``random`` spec (deterministic on CPU).
        checkpoint_sha256: recorded in :meth:`describe`.
        source: the checkpoint's file name, for error messages.
    """

    def __init__(
        self,
        spec: TeacherSpec,
        state_dict: dict[str, torch.Tensor] | None = None,
        *,
        pos_embed_method: PosEmbedMethod = "timm",
        seed: int = 0,
        checkpoint_sha256: str | None = None,
        source: str = "",
    ) -> None:
        super().__init__()
        if pos_embed_method not in POS_EMBED_METHODS:
            known = ", ".join(POS_EMBED_METHODS)
            raise ValueError(f"pos_embed_method must be one of {known}, got {pos_embed_method!r}")
        if spec.random:
            if state_dict is not None:
                raise ValueError(f"{spec.name} is a random teacher; it takes no weights")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                vit = build_vit(spec)
            layout = "random"
        else:
            if state_dict is None:
                raise ValueError(f"{spec.name} needs checkpoint weights (see load_teacher)")
            with torch.device("meta"):
                vit = build_vit(spec)
            layout = load_backbone(vit, state_dict, spec, source=source).layout
        still_meta = [n for n, t in [*vit.named_parameters(), *vit.named_buffers()] if t.is_meta]
        if still_meta:
            raise RuntimeError(f"{spec.name}: tensors left without weights: {', '.join(still_meta)}")
        self.vit = vit
        self.spec = spec
        self.pos_embed_method = pos_embed_method
        self.seed = seed if spec.random else None
        self.checkpoint_sha256 = checkpoint_sha256
        self.checkpoint_layout = layout
        self._pos_tables: dict[tuple[int, int], torch.Tensor] = {}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """Always eval: a teacher never trains (no dropout, no patch dropout)."""
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def patch_size(self) -> int:
        """Pixels per patch side; input sides must be multiples of it."""
        return int(self.vit.patch_embed.patch_size[0])

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(self.spec.mean)  # type: ignore[return-value]

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self.spec.std)  # type: ignore[return-value]

    @property
    def pos_embed_grid(self) -> tuple[int, int]:
        """Grid of the checkpoint's position table."""
        return tuple(self.vit.patch_embed.grid_size)  # type: ignore[return-value]

    @property
    def normalize(self) -> dict[str, tuple[float, float, float]]:
        """Input normalisation: ``(image / 255 - mean) / std`` per RGB channel."""
        return {"mean": self.mean, "std": self.std}

    def _pos_table(self, grid: tuple[int, int]) -> torch.Tensor:
        pos = self.vit.pos_embed
        table = self._pos_tables.get(grid)
        if table is None or table.device != pos.device or table.dtype != pos.dtype:
            prefix = 0 if self.vit.no_embed_class else self.vit.num_prefix_tokens
            table = resample_pos_embed(pos.detach(), self.pos_embed_grid, grid, prefix, self.pos_embed_method)
            self._pos_tables[grid] = table
        return table

    def _last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Head-mean attention of the last block for its input ``x`` (B, N, D) -> (B, N, N), float32."""
        blk = self.vit.blocks[-1]
        attn = blk.attn
        B, N, _ = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = blk.norm1(x.to(attn.qkv.weight.dtype))
            qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, nh, N, hd)
            logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)  # (B, nh, N, N)
            return logits.softmax(dim=-1).mean(dim=1)  # (B, N, N)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, gram: bool = False) -> dict[str, torch.Tensor]:
        vit = self.vit
        B = images.shape[0]
        x = vit.patch_embed(images)  # (B, h, w, D)
        grid = (x.shape[1], x.shape[2])
        x = x.reshape(B, grid[0] * grid[1], x.shape[-1])  # (B, L, D)
        pos = self._pos_table(grid)
        prefix = [t.expand(B, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if vit.no_embed_class:
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos  # (B, P + L, D)
        x = vit.norm_pre(x)
        for blk in vit.blocks[:-1]:
            x = blk(x)
        attn = self._last_attention(x)  # (B, P + L, P + L)
        x = vit.norm(vit.blocks[-1](x))  # (B, P + L, D)

        P = vit.num_prefix_tokens
        patches = x[:, P:]  # (B, L, D)
        to_patch = attn[:, P:, P:]
        attn_patch = to_patch / to_patch.sum(dim=-1, keepdim=True)  # (B, L, L)
        if vit.cls_token is not None:
            cls = x[:, 0]  # (B, D)
            row = attn[:, 0, P:]
            attn_cls = row / row.sum(dim=-1, keepdim=True)  # (B, L)
        else:
            cls = patches.mean(dim=1)  # (B, D)
            attn_cls = attn_patch.mean(dim=1)  # (B, L): mean attention received
        out = {"x_norm_clstoken": cls, "x_norm_patchtokens": patches, "attn_cls": attn_cls, "attn_patch": attn_patch}
        if gram:
            out["gram"] = gram_relation(torch.cat([cls[:, None], patches], dim=1))  # (B, L+1, L+1)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-safe record of what this teacher is, for store attrs and run configs."""
        vit = self.vit
        return {
            "name": self.spec.name,
            "random": self.spec.random,
            "seed": self.seed,
            "checkpoint_sha256": self.checkpoint_sha256,
            "checkpoint_layout": self.checkpoint_layout,
            "timm_model": self.spec.timm_model,
            "embed_dim": self.embed_dim,
            "depth": len(vit.blocks),
            "num_heads": int(vit.blocks[-1].attn.num_heads),
            "patch_size": self.patch_size,
            "patch_padding": int(self.spec.patch_padding),
            "class_token": "token" if vit.cls_token is not None else "mean_patch_token",
            "num_prefix_tokens": int(vit.num_prefix_tokens),
            "pos_embed_kind": self.spec.pos_embed,
            "pos_embed_grid": list(self.pos_embed_grid),
            "pos_embed_method": self.pos_embed_method,
            "normalize": {"mean": list(self.mean), "std": list(self.std)},
        }


def load_teacher(
    teacher: str | TeacherSpec,
    checkpoint: str | Path | None = None,
    *,
    pos_embed: PosEmbedMethod = "timm",
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Teacher:
    """Resolve, read, convert and build a teacher by name or spec; random teachers need no file.

    Args:
        teacher: a registry name (``path-b``, ``random:vit_tiny``...) or a spec.
        checkpoint: the weight file (``--checkpoint``); default: the teacher's file in the cache.
        pos_embed: position-table resampling method, ``timm`` or ``release`` (posembed.py).
        seed: seed of random teachers.
        device: where to put the teacher (default: stays on CPU).
    """
    spec = get_teacher_spec(teacher) if isinstance(teacher, str) else teacher
    if spec.random:
        model = Teacher(spec, pos_embed_method=pos_embed, seed=seed)
        log.info("teacher %s: RANDOM weights (seed %d)", spec.name, seed)
    else:
        path = resolve_checkpoint(spec, checkpoint)
        sha = file_sha256(path)
        model = Teacher(spec, load_state_dict(path), pos_embed_method=pos_embed, checkpoint_sha256=sha,
                        source=str(path))
        log.info("teacher %s from %s (sha256 %s)", spec.name, path, sha[:12])
    return model.to(device) if device is not None else model
