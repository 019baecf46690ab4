"""What the teacher sees for one image: its rendered global views and crowd images, in a Dataset.

Decoding and rendering run in DataLoader workers (``render="workers"``), or the workers only read the
images and draw the parameters and the teacher's device renders the whole batch (``render="device"``:
``render_batch``, the batched renderer with GPU JPEG decoding on CUDA). The teacher runs in the main process
on uint8 batches (normalised on the device). Batches never straddle a block, and their composition depends
only on the block size and ``batch_size``, so a single process and a dask worker that owns one block run the
teacher on exactly the same batches.

    ds = ExtractItems(catalog, views_cfg, backgrounds)
    item = ds[17]      # {"index", "status", "reason", "views" (V,3,H,W) u8, "params", "crowds", "recipes"}
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dpal_cache.data.backgrounds import Backgrounds
from dpal_cache.data.catalog import Catalog, ImageUnavailable
from dpal_cache.data.device_decode import decode_sources, pack_source
from dpal_cache.store.layout import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, StoreLayout
from dpal_cache.views.batched import BatchRenderer
from dpal_cache.views.config import ViewsConfig
from dpal_cache.views.crowd import RECIPE_LEN, CrowdRecipe, image_crowd_recipes, render_crowd
from dpal_cache.views.params import PARAM_LEN, image_view_params
from dpal_cache.views.render import render_view


class ExtractItems(Dataset):
    """Item ``i``: the rendered teacher inputs of image ``i`` (zeros and a status when unusable); with
    ``render="device"`` its parameters and its sources (``sources``: dataset index -> bytes or pixels,
    ``backgrounds``: background index -> pixels) for ``render_batch`` instead of ``views`` and ``crowds``."""

    def __init__(self, catalog: Catalog, views: ViewsConfig, backgrounds: Backgrounds | None = None,
                 render: str = "workers", device_decodes_jpeg: bool = True):
        self.catalog = catalog
        self.views = views
        self.backgrounds = backgrounds
        self.render = render
        self.device_decodes_jpeg = device_decodes_jpeg

    def __len__(self) -> int:
        return len(self.catalog)

    def _empty(self, index: int, status: int, reason: str) -> dict[str, Any]:
        v, c = self.views.views_per_image, self.views.crowds_per_image
        (vh, vw), (ch, cw) = self.views.global_view.size, self.views.crowd.size
        return {
            "index": index,
            "status": status,
            "reason": reason,
            "views": torch.zeros((v, 3, vh, vw), dtype=torch.uint8),
            "params": np.zeros((v, PARAM_LEN), dtype=np.float64),
            "crowds": torch.zeros((c, 3, ch, cw), dtype=torch.uint8),
            "recipes": np.zeros((c, RECIPE_LEN), dtype=np.float64),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.catalog.ok_mask[index]:
            return self._empty(index, STATUS_SKIPPED, "failed_scan")
        try:
            return self._gathered(index) if self.render == "device" else self._rendered(index)
        except ImageUnavailable as exc:
            return self._empty(index, STATUS_FAILED, exc.reason)

    def _recipes(self, index: int) -> np.ndarray:
        bg_sizes = self.backgrounds.sizes if self.backgrounds is not None else None
        return image_crowd_recipes(self.views, index, self.catalog.ok, self.catalog.sizes, bg_sizes)  # (C, R)

    def _rendered(self, index: int) -> dict[str, Any]:
        rgb = self.catalog.load(index)
        params = image_view_params(self.views, index, rgb.shape[:2])  # (V, P) float64
        views = torch.stack([render_view(rgb, p) for p in params])  # (V, 3, H, W) uint8
        recipes = self._recipes(index)
        crowds = []
        loaded = {index: rgb}
        for vec in recipes:
            recipe = CrowdRecipe.from_vector(vec)
            for j in recipe.dataset_indices():
                if j not in loaded:
                    loaded[j] = self._partner(index, j, self.catalog.load)
            background = None
            if recipe.background_kind == "folder":
                background = self.backgrounds.load(recipe.background_index)
            crowds.append(render_crowd(recipe, loaded, background))
        (ch, cw) = self.views.crowd.size
        crowd_tensor = torch.stack(crowds) if crowds else torch.zeros((0, 3, ch, cw), dtype=torch.uint8)
        return {"index": index, "status": STATUS_OK, "reason": "", "views": views, "params": params,
                "crowds": crowd_tensor, "recipes": recipes}

    def _gathered(self, index: int) -> dict[str, Any]:
        cat = self.catalog

        def packed(j: int) -> torch.Tensor:
            size = (int(cat.sizes[j, 0]), int(cat.sizes[j, 1]))
            return cat.load_packed(j, lambda data: pack_source(data, cat.decode, self.device_decodes_jpeg, size),
                                   channels_first=True)

        sources = {index: packed(index)}
        params = image_view_params(self.views, index, tuple(cat.sizes[index]))  # (V, P) float64
        recipes = self._recipes(index)
        backgrounds = {}
        for vec in recipes:
            recipe = CrowdRecipe.from_vector(vec)
            for j in recipe.dataset_indices():
                if j not in sources:
                    sources[j] = self._partner(index, j, packed)
            if recipe.background_kind == "folder" and recipe.background_index not in backgrounds:
                backgrounds[recipe.background_index] = pack_source(
                    self.backgrounds.source.read(recipe.background_index), self.backgrounds.decode, False)
        return {"index": index, "status": STATUS_OK, "reason": "", "params": params, "recipes": recipes,
                "sources": sources, "backgrounds": backgrounds}

    @staticmethod
    def _partner(index: int, j: int, load):
        try:
            return load(j)
        except ImageUnavailable as exc:
            raise ImageUnavailable(index, "partner_" + exc.reason, f"crowd partner {j}") from None


def render_batch(batch: dict[str, Any], views: ViewsConfig, renderer: BatchRenderer) -> dict[str, Any]:
    """A batch collated from ``render="device"`` items -> with ``views`` (B, V, 3, H, W) and ``crowds``
    (B, C, 3, Hc, Wc) uint8 rendered on the renderer's device (zeros for images that are not ok)."""
    if "sources" not in batch:
        return batch
    device = renderer.device
    ok = np.flatnonzero(batch["status"] == STATUS_OK)
    n, v, c = len(batch["index"]), batch["params"].shape[1], batch["recipes"].shape[1]
    (vh, vw), (ch, cw) = views.global_view.size, views.crowd.size
    out_views = torch.zeros((n, v, 3, vh, vw), dtype=torch.uint8, device=device)
    out_crowds = torch.zeros((n, c, 3, ch, cw), dtype=torch.uint8, device=device)
    if len(ok):
        keys = list(batch["sources"])
        images = dict(zip(keys, decode_sources([batch["sources"][k] for k in keys], device)))
        bg_keys = list(batch["backgrounds"])
        backgrounds = dict(zip(bg_keys, decode_sources([batch["backgrounds"][k] for k in bg_keys], device)))
        anchors = batch["index"][ok].tolist()
        rendered = renderer.views([images[i] for i in anchors for _ in range(v)],
                                  list(batch["params"][ok].reshape(-1, batch["params"].shape[-1])))
        out_views[torch.as_tensor(ok, device=device)] = rendered.view(len(ok), v, 3, vh, vw)
        if c:
            crowds = renderer.crowds(list(batch["recipes"][ok].reshape(-1, batch["recipes"].shape[-1])), images,
                                     backgrounds)
            out_crowds[torch.as_tensor(ok, device=device)] = crowds.view(len(ok), c, 3, ch, cw)
    rest = {k: val for k, val in batch.items() if k not in ("sources", "backgrounds")}
    return {**rest, "views": out_views, "crowds": out_crowds}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch: ``views`` (B, V, 3, H, W) uint8, ``crowds`` (B, C, 3, Hc, Wc), numpy per-row arrays; items
    of ``render="device"`` bring their sources instead, merged (each image once)."""
    out = {
        "index": np.asarray([it["index"] for it in items], dtype=np.int64),
        "status": np.asarray([it["status"] for it in items], dtype=np.uint8),
        "reason": [it["reason"] for it in items],
        "params": np.stack([it["params"] for it in items]),
        "recipes": np.stack([it["recipes"] for it in items]),
    }
    if any("sources" in it for it in items):
        out["sources"] = {j: t for it in items for j, t in it.get("sources", {}).items()}
        out["backgrounds"] = {j: t for it in items for j, t in it.get("backgrounds", {}).items()}
    else:
        out["views"] = torch.stack([it["views"] for it in items])
        out["crowds"] = torch.stack([it["crowds"] for it in items])
    return out


def block_batches(layout: StoreLayout, blocks: list[int], batch_size: int) -> list[list[int]]:
    """Image-index batches for ``blocks``: each block cut into runs of ``batch_size`` from its start."""
    batches = []
    for block in blocks:
        images = layout.shard_images_range(block)
        for start in range(images.start, images.stop, batch_size):
            batches.append(list(range(start, min(images.stop, start + batch_size))))
    return batches


def worker_context() -> BaseContext:
    """The start method of render workers: ``forkserver`` with this module (torch, the decoders, the
    renderers) preloaded in the server.

    Workers start clean instead of forking a process that holds the teacher and its threads. Without
    the preload every worker of every loader imports torch and dpal-cache itself (about 3 s on a
    2-core machine, paid by the calibration loader and again by the blocks loader); with it only the
    server imports them, once per process, and each worker forks from it in about 0.1 s. The preload
    only applies when the server starts; a server already running keeps its own.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx
