"""Students: shapes on the teacher grid at every training input size, rebuild from timm kwargs, errors.

Reduced models keep the suite fast: ViTs keep their real widths with one block; Swin-T keeps its
window size, stage layout and shifted blocks (two per stage) at a narrower width. The real Swin-T
and Swin-S (which differ only in stage depths) run at full size on the meta device: every layer
and shape is exercised without the arithmetic.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from dpal_cache.config import ConfigError
from dpal_cache.train.students import StudentConfig, build_student

SIZES = [(256, 128), (256, 256), (128, 96)]  # global view, crowd image, local crop
STUDENTS = {
    "vit_tiny_patch16": (dict(depth=1), 192),
    "vit_small_patch16": (dict(depth=1), 384),
    "swin_tiny": (dict(depths=(2, 2, 2, 2), embed_dim=32, num_heads=(1, 2, 4, 8)), 256),
}



@pytest.fixture(scope="module")
def students():
    torch.manual_seed(0)
    return {name: build_student(name, **kw).eval() for name, (kw, _) in STUDENTS.items()}


@pytest.mark.parametrize("name", list(STUDENTS))
def test_shapes_on_the_teacher_grid_at_every_size(students, name):
    student, dim = students[name], STUDENTS[name][1]
    assert student.embed_dim == dim
    for H, W in SIZES:
        with torch.no_grad():
            out = student(torch.randn(2, 3, H, W))
        assert out["global"].shape == (2, dim), (name, H, W)
        assert out["patches"].shape == (2, (H // 16) * (W // 16), dim), (name, H, W)
        assert torch.isfinite(out["patches"]).all()
    with torch.no_grad():
        assert student(torch.randn(1, 3, 256, 128), grid=(4, 4))["patches"].shape == (1, 16, dim)


@pytest.mark.parametrize("name", list(STUDENTS))
def test_rebuilt_from_timm_kwargs_gives_the_same_outputs(students, name):
    """The export contract: timm.create_model(timm_name, **timm_kwargs) loads the state dict strictly."""
    student = students[name]
    plain = timm.create_model(student.timm_name, pretrained=False, **student.timm_kwargs).eval()
    plain.load_state_dict(student.backbone.state_dict(), strict=True)
    for H, W in SIZES:
        x = torch.randn(1, 3, H, W)
        with torch.no_grad():
            ref = plain.forward_head(plain.forward_features(x), pre_logits=True)
            ours = student(x)["global"]
        assert (ours - ref).abs().max().item() < 1e-5, (name, H, W)


def test_vit_class_token_keeps_its_position_entry_at_other_grids(students):
    vit = students["vit_tiny_patch16"].backbone
    assert vit.pos_embed.shape == (1, 1 + 16 * 8, 192)  # built for the 256x128 view, class entry included
    x = vit.patch_embed(torch.randn(1, 3, 128, 96))  # (1, 8, 6, D): a local crop's grid
    with torch.no_grad():
        tokens = vit._pos_embed(x)
    expected_cls = vit.cls_token[0, 0] + vit.pos_embed[0, 0]
    assert tokens.shape == (1, 1 + 48, 192)
    assert torch.allclose(tokens[0, 0], expected_cls)


def test_swin_patches_are_the_bilinear_upsampled_final_grid(students):
    student = students["swin_tiny"]
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        native = student.backbone.forward_features(x)  # (2, 8, 8, Ds)
        out = student(x)
        at_native = student(x, grid=(8, 8))["patches"]
    ref = F.interpolate(native.permute(0, 3, 1, 2), size=(16, 16), mode="bilinear", align_corners=False)
    ref = ref.flatten(2).transpose(1, 2)  # (2, 256, Ds)
    assert (out["patches"] - ref).abs().max().item() < 1e-5
    assert torch.allclose(out["global"], at_native.mean(dim=1), atol=1e-5)
    assert student.timm_kwargs["window_size"] == 8


@pytest.mark.parametrize("name", ["swin_tiny", "swin_small"])
def test_full_size_swin_shapes(name):
    with torch.device("meta"):
        student = build_student(name)
        assert student.timm_name == f"{name}_patch4_window7_224" and student.embed_dim == 768
        for H, W in SIZES:
            out = student(torch.empty(1, 3, H, W))
            assert out["global"].shape == (1, 768)
            assert out["patches"].shape == (1, (H // 16) * (W // 16), 768)


def test_gradients_reach_the_backbone(students):
    student = build_student("vit_tiny_patch16", depth=1).train()
    out = student(torch.randn(2, 3, 128, 96))
    (out["global"].sum() + out["patches"].sum()).backward()
    assert student.backbone.patch_embed.proj.weight.grad is not None
    assert student.backbone.cls_token.grad is not None


def test_config_and_names():
    cfg = StudentConfig(name="vit_small_patch16", drop_path_rate=0.1)
    student = build_student(cfg, depth=1)
    assert student.timm_name == "vit_small_patch16_224"
    assert "drop_path_rate" not in student.timm_kwargs  # training-only: not needed to rebuild
    assert student.timm_kwargs["depth"] == 1 and student.timm_kwargs["img_size"] == (256, 128)
    assert build_student("vit_tiny_patch16", img_size=(256, 256), depth=1).timm_kwargs["img_size"] == (256, 256)
    with pytest.raises(ConfigError, match="img_size"):
        StudentConfig(img_size=(250, 128))
    with pytest.raises(ValueError, match="unknown student"):
        build_student("vit_no_such_model")
    with pytest.raises(ValueError, match="neither"):
        build_student("resnet18")
    with pytest.raises(ValueError, match="Swin students only"):
        build_student(StudentConfig(window_size=7))


def test_sizes_off_the_stride_are_refused(students):
    with pytest.raises(ValueError, match="multiple"):
        students["vit_tiny_patch16"](torch.randn(1, 3, 120, 96))
    with pytest.raises(ValueError, match="stride 32"):
        students["swin_tiny"](torch.randn(1, 3, 128, 80))


@pytest.mark.parametrize("name, dim, heads, depths", [
    ("vit_tiny_patch16", 192, [6] * 12, [12]),  # paper Table 5 (timm's own ViT-Ti has 3 heads)
    ("vit_small_patch16", 384, [6] * 12, [12]),
    ("swin_tiny", 96, [3, 6, 12, 24], [2, 2, 6, 2]),
    ("swin_small", 96, [3, 6, 12, 24], [2, 2, 18, 2]),
])
def test_short_names_are_the_papers_students(name, dim, heads, depths):
    with torch.device("meta"):
        backbone = build_student(name).backbone
    if name.startswith("vit"):
        assert backbone.embed_dim == dim and len(backbone.blocks) == depths[0]
        assert [b.attn.num_heads for b in backbone.blocks] == heads
    else:
        assert backbone.embed_dim == dim
        assert [len(layer.blocks) for layer in backbone.layers] == depths
        assert [layer.blocks[0].attn.num_heads for layer in backbone.layers] == heads


def test_the_releases_last_block_heads():
    torch.manual_seed(0)
    variant = build_student(StudentConfig(last_block_heads=12), depth=2).eval()
    attn = variant.backbone.blocks[-1].attn
    assert (attn.num_heads, attn.head_dim, attn.scale) == (12, 16, 0.25)
    assert variant.backbone.blocks[0].attn.num_heads == 6
    assert variant.set_attributes == {"blocks.1.attn.num_heads": 12, "blocks.1.attn.head_dim": 16,
                                      "blocks.1.attn.scale": 0.25}
    torch.manual_seed(0)
    plain = build_student("vit_tiny_patch16", depth=2).eval()
    plain.load_state_dict(variant.state_dict())  # the same weights, split into other heads
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        assert (plain(x)["global"] - variant(x)["global"]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="ViT students only"):
        build_student(StudentConfig(name="swin_tiny", last_block_heads=12), depths=(2, 2, 2, 2), embed_dim=32,
                      num_heads=(1, 2, 4, 8))
    with pytest.raises(ValueError, match="does not divide"):
        build_student(StudentConfig(last_block_heads=7), depth=1)


def test_student_help_names_every_short_name_and_the_config_default():
    import inspect

    from dpal_cache.cli.train import train_command
    from dpal_cache.train.student_names import STUDENT_ALIASES

    text = inspect.signature(train_command).parameters["student"].default.help
    assert all(name in text for name in STUDENT_ALIASES)
    assert f"{StudentConfig().name} (default)" in text
