"""Position-table resampling: both methods keep shape and prefix rows, and differ from each other."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from dpal_cache.teachers.posembed import infer_grid, resample_pos_embed

D = 8


def _table(prefix: int, grid: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, prefix + grid[0] * grid[1], D, generator=g)  # (1, P + H*W, D)


def _dino_reference(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """DINO's interpolate_pos_encoding written out here: bicubic by scale factor (h + 0.1) / H0, no antialias."""
    cls, grid = pos[:, :1], pos[:, 1:].reshape(1, old[0], old[1], D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((new[0] + 0.1) / old[0], (new[1] + 0.1) / old[1]), mode="bicubic")
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, -1, D)], dim=1)


@pytest.mark.parametrize("new", [(16, 8), (16, 16)])  # a 256x128 view and a 256x256 crowd image, patch 16
@pytest.mark.parametrize("method", ["timm", "release"])
def test_shape_and_prefix_rows_are_kept(method, new):
    pos = _table(1, (14, 14))
    out = resample_pos_embed(pos, (14, 14), new, num_prefix_tokens=1, method=method)
    assert out.shape == (1, 1 + new[0] * new[1], D)
    assert torch.equal(out[:, :1], pos[:, :1])


@pytest.mark.parametrize("new", [(16, 8), (16, 16)])
def test_methods_differ(new):
    pos = _table(1, (14, 14))
    a = resample_pos_embed(pos, (14, 14), new, 1, "timm")
    b = resample_pos_embed(pos, (14, 14), new, 1, "release")
    assert (a - b).abs().max() > 1e-3


def test_timm_method_is_timms_function():
    pos = _table(1, (14, 14))
    ref = resample_abs_pos_embed(pos, new_size=[16, 8], old_size=[14, 14], num_prefix_tokens=1)
    assert torch.equal(resample_pos_embed(pos, (14, 14), (16, 8), 1, "timm"), ref)


@pytest.mark.parametrize(
    "old,new", [((14, 14), (16, 8)), ((14, 14), (16, 16)), ((16, 8), (16, 16)), ((64, 64), (16, 8))]
)
def test_release_method_is_dino_interpolation(old, new):
    pos = _table(1, old)
    torch.testing.assert_close(resample_pos_embed(pos, old, new, 1, "release"), _dino_reference(pos, old, new))


@pytest.mark.parametrize("method", ["timm", "release"])
def test_same_grid_is_unchanged(method):
    pos = _table(1, (16, 8))
    assert resample_pos_embed(pos, (16, 8), (16, 8), 1, method) is pos


@pytest.mark.parametrize("prefix", [0, 2])
def test_other_prefix_counts(prefix):
    pos = _table(prefix, (4, 4))
    for method in ("timm", "release"):
        out = resample_pos_embed(pos, (4, 4), (4, 2), prefix, method)
        assert out.shape == (1, prefix + 8, D) and torch.equal(out[:, :prefix], pos[:, :prefix])


def test_dtype_is_kept():
    pos = _table(1, (4, 4)).to(torch.bfloat16)
    for method in ("timm", "release"):
        assert resample_pos_embed(pos, (4, 4), (2, 2), 1, method).dtype == torch.bfloat16


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        resample_pos_embed(_table(1, (4, 4)), (4, 4), (2, 2), 1, "nearest")
    with pytest.raises(ValueError, match="rows"):
        resample_pos_embed(_table(1, (4, 4)), (4, 3), (2, 2), 1, "timm")


def test_infer_grid():
    assert infer_grid(196) == (14, 14)
    assert infer_grid(128, hint=(16, 8)) == (16, 8)  # HAP: non-square, only the hint can tell
    assert infer_grid(196, hint=(16, 8)) == (14, 14)  # a hint of the wrong size is ignored
    assert infer_grid(3072) == (64, 48)  # Sapiens downstream (1024x768)
    with pytest.raises(ValueError):
        infer_grid(195)
