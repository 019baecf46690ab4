"""The Teacher's outputs: shapes, captured attention against q/k by hand, gram, grids, seeds, records."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from dpal_cache.teachers.checkpoint import file_sha256, load_state_dict
from dpal_cache.teachers.model import Teacher, load_teacher


def _images(h: int = 32, w: int = 16, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def path_teacher(make_checkpoint, tiny_spec):
    spec = tiny_spec("path-b")
    path, _ = make_checkpoint("path-raw", spec)
    return Teacher(spec, load_state_dict(path))


@pytest.fixture
def sapiens_teacher(make_checkpoint, tiny_spec):
    spec = tiny_spec("sapiens-0.3b")
    path, _ = make_checkpoint("sapiens", spec)
    return Teacher(spec, load_state_dict(path))


def _manual_attention(teacher: Teacher, images: torch.Tensor) -> torch.Tensor:
    """Head-mean softmax(q k^T * scale) of the last block, from what its attention really received."""
    seen = {}
    attn = teacher.vit.blocks[-1].attn
    handle = attn.register_forward_hook(lambda mod, args, out: seen.setdefault("x", args[0]))
    try:
        teacher(images)
    finally:
        handle.remove()
    x = seen["x"]  # (B, N, D): norm1 of the last block's input
    B, N, D = x.shape
    nh = attn.num_heads
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(B, N, 3, nh, D // nh).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]  # (B, nh, N, hd)
    probs = torch.softmax(q @ k.transpose(-2, -1) * (D // nh) ** -0.5, dim=-1)
    return probs.mean(dim=1)  # (B, N, N)


def test_output_keys_and_shapes(path_teacher):
    out = path_teacher(_images(32, 16), gram=True)
    assert set(out) == {"x_norm_clstoken", "x_norm_patchtokens", "attn_cls", "attn_patch", "gram"}
    assert out["x_norm_clstoken"].shape == (2, 64)
    assert out["x_norm_patchtokens"].shape == (2, 8, 64)  # 32x16 at patch 8: 4x2
    assert out["attn_cls"].shape == (2, 8) and out["attn_patch"].shape == (2, 8, 8)
    assert out["gram"].shape == (2, 9, 9)
    assert "gram" not in path_teacher(_images(32, 16))


def test_captured_attention_equals_manual_recomputation(path_teacher):
    x = _images(32, 16)
    out = path_teacher(x)
    full = _manual_attention(path_teacher, x)  # (B, 1 + L, 1 + L)
    cls_row = full[:, 0, 1:] / full[:, 0, 1:].sum(-1, keepdim=True)
    patch = full[:, 1:, 1:] / full[:, 1:, 1:].sum(-1, keepdim=True)
    torch.testing.assert_close(out["attn_cls"], cls_row, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["attn_patch"], patch, rtol=1e-5, atol=1e-6)
    assert out["attn_cls"].dtype == torch.float32
    torch.testing.assert_close(out["attn_cls"].sum(-1), torch.ones(2))
    torch.testing.assert_close(out["attn_patch"].sum(-1), torch.ones(2, 8))


def test_gram_matches_its_formula(path_teacher):
    out = path_teacher(_images(32, 32), gram=True)
    f = torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_patchtokens"]], dim=1)  # (B, 17, D)
    expected = torch.softmax(f @ f.transpose(1, 2) / math.sqrt(64), dim=-1)
    torch.testing.assert_close(out["gram"], expected)


def test_teacher_without_class_token(sapiens_teacher):
    x = _images(32, 16)
    out = sapiens_teacher(x, gram=True)
    torch.testing.assert_close(out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(dim=1))
    full = _manual_attention(sapiens_teacher, x)  # (B, L, L): no prefix tokens at all
    patch = full / full.sum(-1, keepdim=True)
    torch.testing.assert_close(out["attn_patch"], patch, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["attn_cls"], patch.mean(dim=1), rtol=1e-5, atol=1e-6)  # mean attention received
    torch.testing.assert_close(out["attn_cls"].sum(-1), torch.ones(2))
    assert out["gram"].shape == (2, 9, 9)
    assert sapiens_teacher.describe()["class_token"] == "mean_patch_token"


def test_both_view_and_crowd_grids_with_one_table_each(path_teacher):
    a = path_teacher(_images(32, 16))  # the "view" grid 4x2
    b = path_teacher(_images(32, 32))  # the "crowd" grid 4x4 = the checkpoint's
    assert a["x_norm_patchtokens"].shape[1] == 8 and b["x_norm_patchtokens"].shape[1] == 16
    assert set(path_teacher._pos_tables) == {(4, 2), (4, 4)}


def test_pos_embed_methods_differ_off_grid_only(make_checkpoint, tiny_spec):
    spec = tiny_spec("path-b")
    path, _ = make_checkpoint("path-mae", spec)
    sd = load_state_dict(path)
    timm_t = Teacher(spec, dict(sd), pos_embed_method="timm")
    release_t = Teacher(spec, dict(sd), pos_embed_method="release")
    off, on = _images(48, 16), _images(32, 32)  # 6x2 is resampled; 4x4 is the checkpoint grid
    assert (timm_t(off)["x_norm_patchtokens"] - release_t(off)["x_norm_patchtokens"]).abs().max() > 1e-4
    torch.testing.assert_close(timm_t(on)["x_norm_patchtokens"], release_t(on)["x_norm_patchtokens"])
    assert release_t.describe()["pos_embed_method"] == "release"
    with pytest.raises(ValueError, match="pos_embed_method"):
        Teacher(spec, dict(sd), pos_embed_method="bilinear")


def test_random_teachers_are_seeded_and_leave_global_rng_alone(tiny_spec):
    spec = dataclasses.replace(tiny_spec("path-b"), name="random:tiny", random=True)
    torch.manual_seed(1234)
    before = torch.rand(3)
    torch.manual_seed(1234)
    a, b, c = Teacher(spec, seed=0), Teacher(spec, seed=0), Teacher(spec, seed=1)
    assert torch.equal(torch.rand(3), before)
    x = _images(32, 16)
    oa, ob, oc = a(x), b(x), c(x)
    assert torch.equal(oa["x_norm_patchtokens"], ob["x_norm_patchtokens"])
    assert not torch.allclose(oa["x_norm_patchtokens"], oc["x_norm_patchtokens"])
    desc = a.describe()
    assert desc["random"] is True and desc["seed"] == 0 and desc["checkpoint_sha256"] is None
    with pytest.raises(ValueError, match="random"):
        Teacher(spec, state_dict={})


def test_random_timm_teacher_by_name():
    teacher = load_teacher("random:vit_tiny", seed=3)
    out = teacher(_images(32, 16))
    assert out["x_norm_patchtokens"].shape == (2, 2, 192)  # patch 16: a 2x1 grid
    desc = teacher.describe()
    assert desc["name"] == "random:vit_tiny" and desc["random"] is True and desc["seed"] == 3


def test_frozen_and_always_eval(path_teacher):
    assert not any(p.requires_grad for p in path_teacher.parameters())
    path_teacher.train()
    assert not path_teacher.training and not path_teacher.vit.training
    assert path_teacher.normalize == {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    assert path_teacher.mean == (0.485, 0.456, 0.406) and path_teacher.std == (0.229, 0.224, 0.225)
    assert (path_teacher.embed_dim, path_teacher.patch_size) == (64, 8)


def test_real_spec_needs_weights(tiny_spec):
    with pytest.raises(ValueError, match="needs checkpoint weights"):
        Teacher(tiny_spec("hap-b"))


def test_load_teacher_from_default_location_records_sha(monkeypatch, tmp_path, make_checkpoint, tiny_spec):
    spec = tiny_spec("hap-b")
    path, ref = make_checkpoint("hap", spec)
    monkeypatch.setenv("DPAL_CACHE_HOME", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "teachers" / spec.checkpoint_file
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes())
    teacher = load_teacher(spec, pos_embed="release")
    desc = teacher.describe()
    json.dumps(desc)  # JSON-safe
    assert desc["checkpoint_sha256"] == file_sha256(path)
    assert desc["name"] == "hap-b" and desc["random"] is False and desc["checkpoint_layout"] == "timm"
    assert (desc["embed_dim"], desc["depth"], desc["num_heads"], desc["patch_size"]) == (64, 2, 4, 8)
    assert desc["pos_embed_grid"] == [4, 2] and desc["pos_embed_method"] == "release"
    assert desc["normalize"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    x = _images(32, 16)  # the checkpoint grid: no resampling, so equal to the reference
    torch.testing.assert_close(teacher(x)["x_norm_patchtokens"], ref.forward_features(x)[:, 1:])


def test_bf16_autocast_keeps_maps_float32(path_teacher):
    x = _images(32, 16)
    ref = path_teacher(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = path_teacher(x, gram=True)
    for key in ("attn_cls", "attn_patch", "gram"):
        assert out[key].dtype == torch.float32
    torch.testing.assert_close(out["attn_patch"], ref["attn_patch"], rtol=0, atol=0.05)
    torch.testing.assert_close(out["attn_patch"].sum(-1), torch.ones(2, 8))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(path_teacher):
    x = _images(32, 16)
    ref = path_teacher(x)
    gpu = path_teacher.to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(x.cuda(), gram=True)
    assert out["attn_patch"].dtype == torch.float32 and out["attn_patch"].device.type == "cuda"
    torch.testing.assert_close(out["attn_patch"].cpu(), ref["attn_patch"], rtol=0, atol=0.05)
    torch.testing.assert_close(out["x_norm_patchtokens"].float().cpu(), ref["x_norm_patchtokens"], rtol=0, atol=0.1)


def test_inference_mode_then_plain_calls(path_teacher):
    x = _images(32, 16)
    with torch.inference_mode():
        first = path_teacher(x)  # builds the 4x2 position table inside inference mode
    again = path_teacher(x)  # and reuses it outside
    torch.testing.assert_close(first["x_norm_patchtokens"].clone(), again["x_norm_patchtokens"])
