"""Teachers: the frozen human-centric ViTs whose outputs dpal-cache stores.

- ``registry``: :class:`TeacherSpec` and :func:`get_teacher_spec` (PATH-B/L, HAP-B, Sapiens,
  ``timm:<name>``, ``random:<arch>``).
- ``checkpoint``: finding and safely reading weight files (:class:`CheckpointError`).
- ``convert``: every real key layout -> timm ``VisionTransformer`` weights, loaded strictly.
- ``posembed``: position-table resampling per input grid (``timm`` or ``release``).
- ``model``: :class:`Teacher` (tokens and last-block attention as a dict) and :func:`load_teacher`.

    teacher = load_teacher("random:vit_tiny", seed=0)
    out = teacher(images)  # x_norm_clstoken, x_norm_patchtokens, attn_cls, attn_patch
"""

from dpal_cache.teachers.checkpoint import (
    CheckpointError,
    cache_root,
    default_checkpoint_path,
    file_sha256,
    load_state_dict,
    resolve_checkpoint,
)
from dpal_cache.teachers.convert import LoadReport, convert_keys, load_backbone
from dpal_cache.teachers.model import Teacher, build_vit, gram_relation, load_teacher
from dpal_cache.teachers.posembed import POS_EMBED_METHODS, infer_grid, resample_pos_embed
from dpal_cache.teachers.registry import TeacherSpec, get_teacher_spec, known_teachers

__all__ = [
    "POS_EMBED_METHODS",
    "CheckpointError",
    "LoadReport",
    "Teacher",
    "TeacherSpec",
    "build_vit",
    "cache_root",
    "convert_keys",
    "default_checkpoint_path",
    "file_sha256",
    "get_teacher_spec",
    "gram_relation",
    "infer_grid",
    "known_teachers",
    "load_backbone",
    "load_state_dict",
    "load_teacher",
    "resample_pos_embed",
    "resolve_checkpoint",
]
