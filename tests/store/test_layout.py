"""Store layout: shapes, block alignment of shards, and sizes."""

from __future__ import annotations

import pytest

from dpal_cache.config import ConfigError
from dpal_cache.store.layout import StoreLayout


def layout(**kw) -> StoreLayout:
    args = dict(n_images=10, views_per_image=2, crowds_per_image=1, shard_images=4, view_grid=(16, 8),
                crowd_grid=(16, 16), dim=32, param_len=24, recipe_len=151)
    args.update(kw)
    return StoreLayout(**args)


def test_shapes_and_shards_follow_blocks():
    lay = layout()
    arrays = lay.arrays()
    assert arrays["views/tokens"].shape == (20, 129, 32)
    assert arrays["views/tokens"].chunks == (1, 129, 32)  # one row per chunk for random access
    assert arrays["views/tokens"].shards == (8, 129, 32)  # a shard is exactly one block of images
    assert arrays["crowds/attn"].shape == (10, 256, 256)
    assert arrays["crowds/attn"].shards == (4, 256, 256)
    assert arrays["views/params"].chunks == (8, 24)
    assert arrays["images/status"].chunks == (4,)
    assert "crowds/gram" not in arrays
    assert layout(gram=True).arrays()["crowds/gram"].shape == (10, 257, 257)
    assert "crowds/attn" not in layout(crowds_per_image=0).arrays()


def test_blocks_cover_images_once():
    lay = layout()
    assert lay.n_shards == 3
    covered = [i for b in range(lay.n_shards) for i in lay.shard_images_range(b)]
    assert covered == list(range(10))
    assert lay.shard_images_range(2) == range(8, 10)


def test_bytes_per_image_and_precision():
    fp16 = layout()
    compact = layout(token_precision="int8", map_precision="log8")
    tokens16 = 2 * 129 * 32 * 2
    assert fp16.bytes_per_image() - compact.bytes_per_image() == tokens16 // 2 + (2 * 128 + 256 * 256) * 1
    with pytest.raises(ConfigError, match="token_precision"):
        layout(token_precision="bf16")
