"""Teacher registry: real teachers have their published dims; timm and random names resolve; typos fail."""

from __future__ import annotations

import dataclasses

import pytest

from dpal_cache.config import ConfigError
from dpal_cache.normalization import IMAGENET_MEAN, IMAGENET_STD
from dpal_cache.teachers.registry import (
    LAYOUTS,
    POS_EMBED_KINDS,
    TeacherSpec,
    get_teacher_spec,
    known_teachers,
    patch_grid,
)

# name: (embed_dim, depth, num_heads, pretraining (H, W), class token, patch padding, layout)
REAL = {
    "path-b": (768, 12, 12, (224, 224), True, 0, "path"),
    "path-l": (1024, 24, 16, (224, 224), True, 0, "path"),
    "hap-b": (768, 12, 12, (256, 128), True, 0, "hap"),
    "sapiens-0.3b": (1024, 24, 16, (1024, 1024), False, 2, "sapiens"),
    "sapiens-0.6b": (1280, 32, 16, (1024, 1024), False, 2, "sapiens"),
    "sapiens-1b": (1536, 40, 24, (1024, 1024), False, 2, "sapiens"),
    "sapiens-2b": (1920, 48, 32, (1024, 1024), False, 2, "sapiens"),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_teachers_match_published_architectures(name):
    spec = get_teacher_spec(name)
    dim, depth, heads, img, cls, pad, layout = REAL[name]
    assert (spec.embed_dim, spec.depth, spec.num_heads, spec.img_size) == (dim, depth, heads, img)
    assert (spec.class_token, spec.patch_padding, spec.layout) == (cls, pad, layout)
    assert spec.patch_size == 16 and spec.mlp_ratio == 4.0 and spec.qkv_bias and spec.norm_eps == 1e-6
    assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert not spec.random and spec.timm_model is None
    assert spec.checkpoint_file and spec.published


def test_checkpoint_grids_and_view_grids():
    assert get_teacher_spec("path-b").grid == (14, 14)
    assert get_teacher_spec("hap-b").grid == (16, 8)  # non-square sin-cos table
    assert get_teacher_spec("sapiens-1b").grid == (64, 64)
    assert patch_grid((256, 128), 16) == (16, 8) and patch_grid((256, 256), 16) == (16, 16)
    assert patch_grid((256, 128), 16, padding=2) == (16, 8)  # Sapiens' padded patch conv keeps the grid


def test_release_file_names():
    # the DPAL release's teacher files (scripts/train_kd_path*_moe_vit_*.sh)
    assert get_teacher_spec("path-b").checkpoint_file == "humanbench_vit_base.pth"
    assert get_teacher_spec("path-l").checkpoint_file == "humanbench_vit_large.pth"
    assert get_teacher_spec("sapiens-0.3b").checkpoint_file == "sapiens_0.3b_epoch_1600_clean.pth"


def test_timm_teacher_takes_timm_config():
    spec = get_teacher_spec("timm:vit_small_patch16_224")
    assert (spec.embed_dim, spec.depth, spec.num_heads, spec.patch_size) == (384, 12, 6, 16)
    assert spec.class_token and spec.layout == "timm" and spec.timm_model == "vit_small_patch16_224"
    assert spec.img_size == (224, 224) and not spec.random
    assert spec.checkpoint_file == "vit_small_patch16_224.safetensors"


@pytest.mark.parametrize(
    "name,timm_model,dim",
    [("random:vit_tiny", "vit_tiny_patch16_224", 192), ("random:vit_small", "vit_small_patch16_224", 384),
     ("random:vit_base", "vit_base_patch16_224", 768), ("random:deit_tiny_patch16_224", "deit_tiny_patch16_224", 192)],
)
def test_random_teachers_are_marked(name, timm_model, dim):
    spec = get_teacher_spec(name)
    assert spec.random and spec.name == name and spec.timm_model == timm_model and spec.embed_dim == dim
    assert spec.checkpoint_file == ""


def test_random_version_of_a_real_teacher():
    spec = get_teacher_spec("random:hap-b")
    assert spec.random and spec.name == "random:hap-b" and spec.grid == (16, 8) and spec.embed_dim == 768


@pytest.mark.parametrize("name", ["path_b", "sapiens-3b", "timm:", "random:", "random:not_a_model", "timm:nope"])
def test_unknown_names_list_the_known_ones(name):
    with pytest.raises(ValueError) as err:
        get_teacher_spec(name)
    assert "path-b" in str(err.value) and "sapiens-0.3b" in str(err.value) and "timm:<model_name>" in str(err.value)


def test_non_vit_timm_models_are_refused():
    with pytest.raises(ValueError, match="not a plain VisionTransformer"):
        get_teacher_spec("timm:resnet18")


def test_known_teachers_lists_every_family():
    names = known_teachers()
    assert {"path-b", "path-l", "hap-b", "sapiens-0.3b", "sapiens-0.6b", "sapiens-1b", "sapiens-2b"} <= set(names)
    assert any(n.startswith("timm:") for n in names) and any(n.startswith("random:") for n in names)


def test_spec_validation_names_the_key():
    spec = get_teacher_spec("path-b")
    with pytest.raises(ConfigError, match="num_heads"):
        dataclasses.replace(spec, num_heads=5)
    with pytest.raises(ConfigError, match="patch_padding"):
        dataclasses.replace(spec, patch_padding=16)
    with pytest.raises(ConfigError, match="layout"):
        dataclasses.replace(spec, layout="onnx")


@pytest.mark.parametrize("name", ["path-b", "sapiens-1b", "random:vit_tiny"])
def test_spec_round_trips_through_config_dicts(name):
    from dpal_cache.config import from_dict, to_dict

    spec = get_teacher_spec(name)
    assert from_dict(type(spec), to_dict(spec)) == spec


@pytest.mark.parametrize("key,known", [("layout", LAYOUTS), ("pos_embed", POS_EMBED_KINDS)])
def test_layouts_and_pos_embed_kinds_have_one_spelling(key, known):
    # the spec's check and the config loader's Literal accept the same names, and name them all on a typo
    from dpal_cache.config import from_dict, to_dict

    spec = get_teacher_spec("path-b")
    for value in known:
        assert from_dict(TeacherSpec, {**to_dict(spec), key: value}) == dataclasses.replace(spec, **{key: value})
    for refuse in (lambda: dataclasses.replace(spec, **{key: "onnx"}),
                   lambda: from_dict(TeacherSpec, {**to_dict(spec), key: "onnx"})):
        with pytest.raises(ConfigError, match=key) as err:
            refuse()
        assert all(value in str(err.value) for value in known)
