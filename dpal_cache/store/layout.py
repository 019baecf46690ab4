"""The feature store's array layout (format version 2): names, shapes, chunks, shards, dtypes, codecs.

Rows: view row = image * V + view; crowd row = image * C + crowd. Every array that grows with
the data is split into blocks of ``shard_images`` whole images; a block is written whole, by one
task, in one assignment per array, then ``shards/done[block]`` is set. Training reads rows by byte
range (store/rows.py), so the big per-row arrays (tokens, masks, maps) use one-row chunks grouped
into one shard per block, stored raw (uncompressed: a read is a plain copy); small per-row arrays
(params, recipes, status) use one zstd chunk per block and are read whole into memory.

See docs/store-format.md for the meaning of every array and attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpal_cache.config import check
from dpal_cache.store.quant import MAP_PRECISIONS, TOKEN_PRECISIONS

FORMAT_VERSION = 2

# images/status codes
STATUS_PENDING = 0  # block not written yet
STATUS_OK = 1
STATUS_SKIPPED = 2  # failed in the manifest scan: never rendered
STATUS_FAILED = 3  # passed the scan but could not be read/decoded at extract time


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    dtype: str
    rows_per_image: int = 0  # 0: not a per-image array (done flags, calibration)

    @property
    def compressed(self) -> bool:
        """zstd for whole-chunk arrays; the sharded row arrays are raw (read by byte range, never decoded)."""
        return self.shards is None

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class StoreLayout:
    """Sizes that fix every array of a store; derived from the data, the teacher and the config."""

    n_images: int
    views_per_image: int
    crowds_per_image: int
    shard_images: int
    view_grid: tuple[int, int]  # patch grid of a global view (e.g. 16 x 8)
    crowd_grid: tuple[int, int]  # patch grid of a crowd image (e.g. 16 x 16)
    dim: int  # teacher embedding dim
    param_len: int
    recipe_len: int
    token_precision: str = "fp16"
    map_precision: str = "fp16"
    gram: bool = False  # also store the release's gram relation of crowd tokens

    def __post_init__(self) -> None:
        check(self.n_images >= 1, "n_images", "must be >= 1")
        check(self.views_per_image >= 1, "views_per_image", "must be >= 1")
        check(self.crowds_per_image >= 0, "crowds_per_image", "must be >= 0")
        check(self.shard_images >= 1, "shard_images", "must be >= 1")
        check(self.token_precision in TOKEN_PRECISIONS, "token_precision", f"one of {TOKEN_PRECISIONS}")
        check(self.map_precision in MAP_PRECISIONS, "map_precision", f"one of {MAP_PRECISIONS}")

    @property
    def view_patches(self) -> int:
        return self.view_grid[0] * self.view_grid[1]

    @property
    def crowd_patches(self) -> int:
        return self.crowd_grid[0] * self.crowd_grid[1]

    @property
    def n_shards(self) -> int:
        return -(-self.n_images // self.shard_images)

    def shard_images_range(self, shard: int) -> range:
        """Image indices of block ``shard``."""
        start = shard * self.shard_images
        return range(start, min(self.n_images, start + self.shard_images))

    def arrays(self) -> dict[str, ArraySpec]:
        """Every array of the store, by path inside the group."""
        n, v, c, s, d = self.n_images, self.views_per_image, self.crowds_per_image, self.shard_images, self.dim
        lv, lc = self.view_patches, self.crowd_patches
        tok = "float16" if self.token_precision == "fp16" else "int8"
        amap = "float16" if self.map_precision == "fp16" else "uint8"
        specs = {
            # token 0 is the class token; folding it in saves one read per sample
            "views/tokens": ArraySpec((n * v, 1 + lv, d), (1, 1 + lv, d), (s * v, 1 + lv, d), tok, v),
            "views/attn_cls": ArraySpec((n * v, lv), (1, lv), (s * v, lv), amap, v),
            "views/mask_score": ArraySpec((n * v, lv), (1, lv), (s * v, lv), "float16", v),
            "views/params": ArraySpec((n * v, self.param_len), (s * v, self.param_len), None, "float64", v),
            "images/status": ArraySpec((n,), (s,), None, "uint8", 1),
            "shards/done": ArraySpec((self.n_shards,), (1,), None, "uint8"),
            "calibration/pca_component": ArraySpec((d,), (d,), None, "float32"),
            "calibration/pca_mean": ArraySpec((d,), (d,), None, "float32"),
            "calibration/token_scales": ArraySpec((2, d), (2, d), None, "float32"),  # class row, patch row
            # per-channel target statistics: class mean, class std, patch mean, patch std
            "calibration/token_stats": ArraySpec((4, d), (4, d), None, "float32"),
        }
        if c:
            specs["crowds/attn"] = ArraySpec((n * c, lc, lc), (1, lc, lc), (s * c, lc, lc), amap, c)
            specs["crowds/recipe"] = ArraySpec(
                (n * c, self.recipe_len), (s * c, self.recipe_len), None, "float64", c
            )
            if self.gram:
                g = lc + 1
                specs["crowds/gram"] = ArraySpec((n * c, g, g), (1, g, g), (s * c, g, g), amap, c)
        return specs

    def bytes_per_image(self) -> int:
        """Uncompressed bytes one image adds to the store (all its rows)."""
        return sum(spec.rows_per_image * spec.row_bytes for spec in self.arrays().values())

    def row_arrays(self) -> list[str]:
        """The sharded per-row arrays (what training reads by byte range)."""
        return [name for name, spec in self.arrays().items() if spec.shards is not None]
