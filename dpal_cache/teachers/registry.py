"""Teacher registry: every teacher dpal-cache knows, as a frozen :class:`TeacherSpec`.

A spec says how to build the teacher as a timm ``VisionTransformer`` (dims, patch size, class
token, pretraining input size), how its checkpoint is keyed (``layout``), how inputs are
normalised, which file holds its weights by default and where such weights are published
(text for error messages; nothing is ever downloaded).

    spec = get_teacher_spec("path-b")            # PATH ViT-B/16 (HumanBench)
    spec = get_teacher_spec("timm:vit_small_patch16_224")
    spec = get_teacher_spec("random:vit_tiny")    # seeded random weights, for demos and tests
    small = dataclasses.replace(spec, embed_dim=64, depth=2, num_heads=4, patch_size=8)

Names: ``path-b``, ``path-l``, ``hap-b``, ``sapiens-0.3b`` / ``-0.6b`` / ``-1b`` / ``-2b``,
``timm:<model_name>`` (any plain timm ViT) and ``random:<arch>`` where ``<arch>`` is
``vit_tiny`` / ``vit_small`` / ``vit_base`` / ``vit_large``, a teacher name above, or a timm
ViT name. Random teachers carry ``random=True`` and their name keeps the ``random:`` prefix,
so they are marked as such wherever a spec is recorded.

Sources for the real teachers (checked against the public code):
- PATH (github.com/OpenGVLab/HumanBench, ``vitdet_for_ladder_attention_share_pos_embed.py``):
  ViT-B 768/12/12 and ViT-L 1024/24/16, patch 16, qkv bias, LayerNorm eps 1e-6, learnable
  pos-embed at 224x224 (14x14), ImageNet mean/std.
- HAP (github.com/junkunyuan/HAP, ``models_mae_pose.py``): MAE ViT-B/16 at 256x128 (16x8 grid),
  fixed sin-cos pos-embed stored in the checkpoint, eps 1e-6, ImageNet mean/std.
- Sapiens (github.com/facebookresearch/sapiens, mmpretrain ``VisionTransformer`` arch_zoo):
  0.3b 1024/24/16, 0.6b 1280/32/16, 1b 1536/40/24, 2b 1920/48/32, mlp ratio 4, patch 16, MAE
  pretraining at 1024x1024 with a class token; used as teacher WITHOUT a class token
  (``with_cls_token=False``) and with ``patch_cfg=dict(padding=2)`` as in the DPAL release's
  ``ExpertSapiens`` and Sapiens' own downstream configs. Final norm is ``ln1``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal, get_args

from dpal_cache.config import check
from dpal_cache.normalization import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


# the one spelling of each: the Literal types the fields, the tuples made from it check them
Layout = Literal["timm", "path", "hap", "sapiens"]  # checkpoint key layouts, see convert.py
LAYOUTS: tuple[str, ...] = get_args(Layout)
PosEmbedKind = Literal["learned", "sincos"]
POS_EMBED_KINDS: tuple[str, ...] = get_args(PosEmbedKind)


@dataclass(frozen=True)
class TeacherSpec:
    """How to build, load and feed one teacher."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    class_token: bool = True  # False: x_norm_clstoken is the mean patch token (see model.py)
    img_size: tuple[int, int] = (224, 224)  # pretraining input (H, W): the checkpoint pos-embed grid
    patch_padding: int = 0  # zero padding of the patch conv (Sapiens as used downstream: 2)
    pos_embed: PosEmbedKind = "learned"  # informational: both kinds are read from the checkpoint
    layout: Layout = "timm"  # checkpoint key layout, see convert.py
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    checkpoint_file: str = ""  # default file name under the teacher cache directory
    published: str = ""  # where such weights are published (error messages only)
    random: bool = False  # seeded random weights: no checkpoint, marked everywhere
    timm_model: str | None = None  # build with timm.create_model(timm_model) instead of the fields

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "must not be empty")
        for key in ("embed_dim", "depth", "num_heads", "patch_size"):
            check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        check(self.embed_dim % self.num_heads == 0, "num_heads", f"must divide embed_dim {self.embed_dim}")
        check(self.mlp_ratio > 0, "mlp_ratio", f"must be > 0, got {self.mlp_ratio}")
        check(self.norm_eps > 0, "norm_eps", f"must be > 0, got {self.norm_eps}")
        check(0 <= self.patch_padding < self.patch_size, "patch_padding", "must be in [0, patch_size)")
        check(min(self.img_size) >= self.patch_size, "img_size", f"must be >= patch_size, got {self.img_size}")
        check(self.layout in LAYOUTS, "layout", f"must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        check(self.pos_embed in POS_EMBED_KINDS, "pos_embed", f"must be {' or '.join(map(repr, POS_EMBED_KINDS))}")
        check(all(s > 0 for s in self.std), "std", f"must be positive, got {self.std}")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of the pretraining input: the checkpoint pos-embed grid."""
        return patch_grid(self.img_size, self.patch_size, self.patch_padding)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token)

    def vit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of timm's ``VisionTransformer`` for this spec (``timm_model`` specs excluded)."""
        return dict(
            img_size=(self.grid[0] * self.patch_size, self.grid[1] * self.patch_size),
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            class_token=self.class_token,
            global_pool="",
            fc_norm=False,
            num_classes=0,
            dynamic_img_size=True,
        )


def patch_grid(size: tuple[int, int], patch_size: int, padding: int = 0) -> tuple[int, int]:
    """Token grid (rows, cols) a ``patch_size`` conv with stride ``patch_size`` and ``padding`` gives."""
    return tuple((s + 2 * padding - patch_size) // patch_size + 1 for s in size)  # type: ignore[return-value]


def _path(name: str, dim: int, depth: int, heads: int, file: str, where: str) -> TeacherSpec:
    return TeacherSpec(
        name=name, embed_dim=dim, depth=depth, num_heads=heads, img_size=(224, 224), layout="path",
        checkpoint_file=file,
        published=f"{where}, linked from github.com/OpenGVLab/HumanBench (PATH/README.md). Both the MAE-keyed "
        "conversion {'model': ...} with a class token (197 positions) and the raw training checkpoint "
        "(module.backbone_module.* with cls_token_pos_embed) load.",
    )


def _sapiens(size: str, dim: int, depth: int, heads: int, file: str) -> TeacherSpec:
    return TeacherSpec(
        name=f"sapiens-{size}", embed_dim=dim, depth=depth, num_heads=heads, img_size=(1024, 1024),
        class_token=False, patch_padding=2, pos_embed="sincos", layout="sapiens", checkpoint_file=file,
        published=f"huggingface.co/facebook/sapiens (pretrain/checkpoints/sapiens_{size}/{file}), "
        "see github.com/facebookresearch/sapiens",
    )


_TEACHERS: dict[str, TeacherSpec] = {
    spec.name: spec
    for spec in (
        _path("path-b", 768, 12, 12, "humanbench_vit_base.pth", "Hugging Face OpenGVLab/PATH-ViTB"),
        _path("path-l", 1024, 24, 16, "humanbench_vit_large.pth",
              "Hugging Face OpenGVLab (vitlarge_size224_..._SharePosEmbed.pth)"),
        TeacherSpec(
            name="hap-b", embed_dim=768, depth=12, num_heads=12, img_size=(256, 128), pos_embed="sincos",
            layout="hap", checkpoint_file="hap_vit_base.pth",
            published="the pre-trained HAP checkpoint linked from github.com/junkunyuan/HAP (README, Google Drive); "
            "an MAE training snapshot {'model': ..., 'optimizer': ...} whose decoder keys are dropped",
        ),
        _sapiens("0.3b", 1024, 24, 16, "sapiens_0.3b_epoch_1600_clean.pth"),
        _sapiens("0.6b", 1280, 32, 16, "sapiens_0.6b_epoch_1600_clean.pth"),
        _sapiens("1b", 1536, 40, 24, "sapiens_1b_epoch_173_clean.pth"),
        _sapiens("2b", 1920, 48, 32, "sapiens_2b_epoch_660_clean.pth"),
    )
}

# short names for random teachers; any other timm ViT name works too
_RANDOM_ALIASES = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
}


def known_teachers() -> list[str]:
    """Every name :func:`get_teacher_spec` accepts, with the open-ended forms spelled as patterns."""
    return [*_TEACHERS, "timm:<model_name>", *(f"random:{a}" for a in _RANDOM_ALIASES), "random:<teacher or timm name>"]


def _timm_spec(name: str, model_name: str, random: bool) -> TeacherSpec:
    """Spec mirroring a timm ViT's own configuration (the model is built on the meta device)."""
    import timm
    import torch
    from timm.models.vision_transformer import Block, VisionTransformer

    if not timm.is_model(model_name.split(".")[0]):
        raise ValueError(f"timm has no model named {model_name!r}; known teachers: {', '.join(known_teachers())}")
    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
    except Exception:  # some inits need real storage
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    if type(model) is not VisionTransformer or model.pos_embed is None or not isinstance(model.blocks[-1], Block):
        raise ValueError(
            f"timm model {model_name!r} is a {type(model).__name__}, not a plain VisionTransformer with absolute "
            "position embeddings and standard blocks; only those can be teachers"
        )
    block = model.blocks[0]
    cfg = model.pretrained_cfg or {}
    patch = model.patch_embed.patch_size
    if patch[0] != patch[1]:
        raise ValueError(f"timm model {model_name!r} has non-square patches {patch}")
    return TeacherSpec(
        name=name,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=block.attn.num_heads,
        patch_size=patch[0],
        mlp_ratio=block.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=block.attn.qkv.bias is not None,
        norm_eps=float(getattr(model.norm, "eps", 1e-6)),
        class_token=model.cls_token is not None,
        img_size=tuple(model.patch_embed.img_size),
        layout="timm",
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        checkpoint_file="" if random else f"{model_name}.safetensors",
        published="" if random else f"Hugging Face hub, timm/{model_name} (model.safetensors), saved under this name",
        random=random,
        timm_model=model_name,
    )


def get_teacher_spec(name: str) -> TeacherSpec:
    """The spec of a teacher by name; unknown names raise ``ValueError`` listing the known ones."""
    name = name.strip()
    if not name:
        raise ValueError(f"no teacher given (--teacher): one of {', '.join(known_teachers())}")
    if name in _TEACHERS:
        return _TEACHERS[name]
    kind, sep, arch = name.partition(":")
    if sep and kind == "timm" and arch:
        return _timm_spec(name, arch, random=False)
    if sep and kind == "random" and arch:
        if arch in _TEACHERS:
            return dataclasses.replace(_TEACHERS[arch], name=name, random=True, checkpoint_file="", published="")
        return _timm_spec(name, _RANDOM_ALIASES.get(arch, arch), random=True)
    raise ValueError(f"unknown teacher {name!r}; known teachers: {', '.join(known_teachers())}")
