"""Every real checkpoint layout loads strictly into a timm ViT and gives the reference model's tokens."""

from __future__ import annotations

import re

import pytest
import torch

from dpal_cache.teachers.checkpoint import CheckpointError, load_state_dict
from dpal_cache.teachers.convert import convert_keys, load_backbone
from dpal_cache.teachers.model import Teacher, build_vit

# layout written by conftest -> (teacher it belongs to, layout convert.py reports)
LAYOUTS = {
    "timm": ("path-b", "timm"),
    "path-mae": ("path-b", "timm"),
    "path-raw": ("path-b", "path-raw"),
    "hap": ("hap-b", "timm"),
    "sapiens": ("sapiens-0.3b", "mmpretrain"),
    "sapiens-finetuned": ("sapiens-0.3b", "mmpretrain"),
}


def _images(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_loads_and_matches_reference(layout, make_checkpoint, tiny_spec):
    name, read_as = LAYOUTS[layout]
    spec = tiny_spec(name)
    path, ref = make_checkpoint(layout, spec)
    teacher = Teacher(spec, load_state_dict(path), source=str(path))
    assert teacher.checkpoint_layout == read_as
    assert teacher.pos_embed_grid == spec.grid
    # every weight arrived: the teacher's ViT equals the reference key by key
    ref_sd = ref.state_dict()
    for key, value in teacher.vit.state_dict().items():
        torch.testing.assert_close(value, ref_sd[key], rtol=0, atol=0, msg=key)
    # and computes the reference's tokens, at the pretraining grid and at another one (timm resampling)
    for h, w in [spec.img_size, (32, 16)]:
        x = _images(h, w)
        tokens = ref.forward_features(x)
        out = teacher(x)
        P = ref.num_prefix_tokens
        torch.testing.assert_close(out["x_norm_patchtokens"], tokens[:, P:], rtol=1e-5, atol=1e-5)
        expected_cls = tokens[:, 0] if spec.class_token else tokens.mean(dim=1)
        torch.testing.assert_close(out["x_norm_clstoken"], expected_cls, rtol=1e-5, atol=1e-5)


def test_safetensors_timm_file(make_checkpoint, tiny_spec):
    spec = tiny_spec("path-b")
    path, ref = make_checkpoint("timm", spec, suffix=".safetensors")
    teacher = Teacher(spec, load_state_dict(path))
    x = _images(32, 32)
    torch.testing.assert_close(teacher(x)["x_norm_patchtokens"], ref.forward_features(x)[:, 1:])


def test_path_raw_joins_class_position_first(make_checkpoint, tiny_spec):
    spec = tiny_spec("path-b")
    path, ref = make_checkpoint("path-raw", spec)
    raw = load_state_dict(path)
    assert raw["module.backbone_module.pos_embed"].shape[1] == 16  # (1, 196, D) in the real ViT-B file
    sd, layout, dropped = convert_keys(raw)
    assert layout == "path-raw" and "cls_token_pos_embed" not in sd
    assert torch.equal(sd["pos_embed"], ref.pos_embed.detach())  # (1, 1 + 16, D), class position first
    assert set(dropped) == {"neck_module.ladder.0.weight", "decoder_module.final_layer.weight"}


def test_hap_decoder_is_dropped_and_16x8_grid_kept(make_checkpoint, tiny_spec):
    spec = tiny_spec("hap-b")
    assert spec.grid == (4, 2)  # the tiny twin of HAP's 16x8
    path, _ = make_checkpoint("hap", spec)
    sd, _, dropped = convert_keys(load_state_dict(path))
    assert all(k.startswith(("decoder_", "mask_token")) for k in dropped) and "decoder_pos_embed" in dropped
    assert not any(k.startswith("decoder") for k in sd)
    assert Teacher(spec, load_state_dict(path)).pos_embed_grid == (4, 2)


def test_sapiens_keys_and_unused_class_token(make_checkpoint, tiny_spec):
    spec = tiny_spec("sapiens-0.3b")
    assert not spec.class_token and spec.patch_padding == 2
    path, _ = make_checkpoint("sapiens", spec)
    raw = load_state_dict(path)
    assert {"backbone.layers.0.ln1.weight", "backbone.layers.1.ffn.layers.0.0.weight", "backbone.ln1.bias",
            "backbone.patch_embed.projection.weight", "backbone.cls_token"} <= set(raw)
    vit = _meta_vit(spec)
    report = load_backbone(vit, raw, spec)
    assert "cls_token" in report.dropped and "neck.mask_token" in report.dropped
    assert vit.pos_embed.shape == (1, 16, 64)  # class position stripped: 4x4 grid only
    assert vit.patch_embed.proj.padding == (2, 2)


def _meta_vit(spec):
    with torch.device("meta"):
        return build_vit(spec)


def _load_error(sd, spec) -> str:
    with pytest.raises(CheckpointError) as err:
        load_backbone(_meta_vit(spec), sd, spec, source="f.pth")
    return str(err.value)


def test_missing_key_is_listed(make_checkpoint, tiny_spec):
    spec = tiny_spec("path-b")
    path, _ = make_checkpoint("path-mae", spec)
    sd = load_state_dict(path)
    del sd["blocks.1.mlp.fc2.bias"], sd["norm.weight"]
    msg = _load_error(sd, spec)
    assert "missing keys (2)" in msg and "blocks.1.mlp.fc2.bias" in msg and "norm.weight" in msg and "f.pth" in msg


def test_unexpected_key_is_listed(make_checkpoint, tiny_spec):
    spec = tiny_spec("sapiens-0.3b")
    path, _ = make_checkpoint("sapiens", spec)
    sd = load_state_dict(path)
    sd["backbone.layers.0.attn.gamma1.weight"] = torch.ones(64)  # layer scale this teacher does not have
    msg = _load_error(sd, spec)
    assert "unexpected keys (1): layers.0.attn.gamma1.weight" in msg  # named as in the file


def test_wrong_architecture_lists_shape_mismatches(make_checkpoint, tiny_spec):
    small = tiny_spec("path-b", embed_dim=32, num_heads=2)  # the "ViT-S file"
    path, _ = make_checkpoint("path-mae", small)
    msg = _load_error(load_state_dict(path), tiny_spec("path-b"))
    assert "other shapes" in msg
    assert re.search(r"blocks\.0\.attn\.qkv\.weight \(96, 32\) \(expected \(192, 64\)\)", msg)
    assert "pos_embed (1, 17, 32) (expected (1, 17, 64))" in msg


def test_wrong_depth_lists_missing_blocks(make_checkpoint, tiny_spec):
    path, _ = make_checkpoint("timm", tiny_spec("path-b"))
    msg = _load_error(load_state_dict(path), tiny_spec("path-b", depth=3))
    assert "blocks.2.attn.qkv.weight" in msg and "missing keys" in msg


def test_checkpoint_without_class_position_fails_for_class_token_teacher(make_checkpoint, tiny_spec):
    spec = tiny_spec("path-b")
    path, _ = make_checkpoint("path-mae", spec)
    sd = load_state_dict(path)
    sd["pos_embed"] = sd["pos_embed"][:, 1:]  # PATH's wo_cls_token conversion: (1, 196, D)
    with pytest.raises(CheckpointError, match="no position for the 1 prefix token"):
        load_backbone(_meta_vit(spec), sd, spec)


def test_random_weights_are_never_silently_kept(make_checkpoint, tiny_spec):
    # the release's strict=False failure mode: keys under an unknown prefix would load nothing
    spec = tiny_spec("path-b")
    path, _ = make_checkpoint("path-mae", spec)
    sd = {f"teacher_model.{k}": v for k, v in load_state_dict(path).items()}
    msg = _load_error(sd, spec)
    assert "missing keys" in msg and "unexpected keys" in msg


def test_timm_model_teacher_loads_a_timm_file_with_its_head(tmp_path):
    import timm
    from safetensors.torch import save_file

    from dpal_cache.teachers.model import load_teacher

    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True).eval()
    path = tmp_path / "vit_tiny_patch16_224.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))  # includes head.weight/bias
    teacher = load_teacher("timm:vit_tiny_patch16_224", checkpoint=path)
    x = _images(32, 16)
    torch.testing.assert_close(teacher(x)["x_norm_patchtokens"], src.forward_features(x)[:, 1:])
    assert teacher.describe()["timm_model"] == "vit_tiny_patch16_224"
