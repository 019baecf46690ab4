"""The input half of a training batch: the student's global view, local crops and crowd image of each sample.

Two ways, one result. ``render="workers"`` renders in the DataLoader workers on the CPU, one sample at a
time (``render_view``, ``render_crowd``): what a CPU run does. ``render="device"`` has the workers only read
the images (bytes where the device decodes them, pixels otherwise: ``data/device_decode.py``) and gather
each sample's parameter vectors; ``DeviceRender`` then decodes and renders the whole batch where the model
runs (``views/batched.py``). The second keeps a GPU fed: the renderer's CPU cost leaves the workers.

A sample is (dataset index, epoch, view parameter vector, crowd recipe vector); its local crops are drawn
from (seed, epoch, index). An image that changed since the scan fails the batch, or, with ``skip_changed``,
makes its sample a blank one whose ``valid`` entry is False (the loop drops it).

    inputs = SampleInputs(catalog, views_cfg, local_crop_cfg, seed, backgrounds, render="device")
    batch = inputs([(index, epoch, params, recipe), ...])        # in a worker
    batch = DeviceRender(views_cfg, local_crop_cfg, seed, device)(batch_on_device)   # in the loop
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dpal_cache.data.backgrounds import Backgrounds
from dpal_cache.data.catalog import Catalog, ImageUnavailable
from dpal_cache.data.device_decode import decode_sources, pack_source
from dpal_cache.train.errors import StoreMismatch
from dpal_cache.views.batched import BatchRenderer
from dpal_cache.views.config import LocalCropConfig, ViewsConfig
from dpal_cache.views.crowd import CrowdRecipe, render_crowd
from dpal_cache.views.local import local_crop_params, local_crops
from dpal_cache.views.params import ViewParams
from dpal_cache.views.render import render_view

RENDER_MODES = ("workers", "device")
Sample = tuple[int, int, np.ndarray, np.ndarray]  # (dataset index, epoch, view params (24,), recipe (151,))


def _unavailable(exc: ImageUnavailable, skip_changed: bool) -> None:
    """Raise for an image the run cannot do without; return when ``skip_changed`` drops its sample."""
    if not (skip_changed and exc.reason in ("changed", "missing", "unreadable")):
        raise StoreMismatch(
            f"{exc}. The source no longer matches the store's manifest: restore the file, "
            "re-run scan + extract, or train with --skip-changed"
        ) from None


class SampleInputs:
    """Builds the input half of a batch from its samples (see the module docstring); picklable for workers."""

    def __init__(self, catalog: Catalog, views: ViewsConfig, local_crop_cfg: LocalCropConfig, seed: int,
                 backgrounds: Backgrounds | None = None, skip_changed: bool = False, render: str = "workers",
                 device_decodes_jpeg: bool = True):
        if render not in RENDER_MODES:
            raise ValueError(f"render must be one of {RENDER_MODES}, got {render!r}")
        self.catalog, self.views, self.local_crop_cfg, self.seed = catalog, views, local_crop_cfg, seed
        self.backgrounds, self.skip_changed, self.render = backgrounds, skip_changed, render
        self.device_decodes_jpeg = device_decodes_jpeg

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        head = {"index": torch.as_tensor([s[0] for s in samples]), "epoch": torch.as_tensor([s[1] for s in samples])}
        if self.render == "workers":
            return {**head, **self._rendered(samples)}
        return {**head, **self._gathered(samples)}

    def _recipe(self, vec: np.ndarray) -> CrowdRecipe:
        recipe = CrowdRecipe.from_vector(vec)
        if recipe.background_kind == "folder" and self.backgrounds is None:
            raise StoreMismatch("the store's crowds use a background folder: pass background_dir")
        return recipe

    def _rendered(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        views, crops_cfg = self.views, self.local_crop_cfg
        globals_, locals_, crowds, valid = [], [], [], []
        for index, epoch, params, recipe_vec in samples:
            try:
                rgb = self.catalog.load(index)
                recipe = self._recipe(recipe_vec)
                loaded = {index: rgb}
                for j in recipe.dataset_indices():
                    if j not in loaded:
                        loaded[j] = self.catalog.load(j)
                background = (self.backgrounds.load(recipe.background_index)
                              if recipe.background_kind == "folder" else None)
                crops = local_crops(crops_cfg, self.seed, epoch, index, rgb)
                g, crowd, ok = render_view(rgb, params), render_crowd(recipe, loaded, background), True
            except ImageUnavailable as exc:
                _unavailable(exc, self.skip_changed)
                g = torch.zeros((3, *views.global_view.size), dtype=torch.uint8)
                crops = [torch.zeros((3, *crops_cfg.size), dtype=torch.uint8)] * crops_cfg.count
                crowd, ok = torch.zeros((3, *views.crowd.size), dtype=torch.uint8), False
            globals_.append(g)
            locals_.append(torch.stack(crops))
            crowds.append(crowd)
            valid.append(ok)
        return {
            "valid": torch.as_tensor(valid),
            "global_view": torch.stack(globals_),  # (B, 3, H, W) uint8
            "local_crops": torch.stack(locals_),  # (B, K, 3, h, w) uint8
            "crowd": torch.stack(crowds),  # (B, 3, Hc, Wc) uint8
        }

    def _gathered(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Every image the batch renders from, read once (bytes or pixels), and every sample's parameters."""
        cat, count = self.catalog, self.local_crop_cfg.count
        sources: dict[int, torch.Tensor] = {}
        backgrounds: dict[int, torch.Tensor] = {}
        valid, crop_params = [], np.zeros((len(samples), count, len(samples[0][2])), dtype=np.float64)

        def source(j: int) -> None:
            if j not in sources:
                cat.check_available(j)
                size = (int(cat.sizes[j, 0]), int(cat.sizes[j, 1]))
                sources[j] = cat.load_packed(j, lambda data: pack_source(data, cat.decode, self.device_decodes_jpeg,
                                                                           size), channels_first=True)

        for k, (index, epoch, _, recipe_vec) in enumerate(samples):
            try:
                recipe = self._recipe(recipe_vec)
                for j in [index, *recipe.dataset_indices()]:
                    source(j)
                if recipe.background_kind == "folder" and recipe.background_index not in backgrounds:
                    backgrounds[recipe.background_index] = pack_source(
                        self.backgrounds.source.read(recipe.background_index), self.backgrounds.decode, False)
                size = (int(cat.sizes[index, 0]), int(cat.sizes[index, 1]))
                for c in range(count):
                    crop_params[k, c] = local_crop_params(self.local_crop_cfg, self.seed, epoch, index, c,
                                                          size).to_vector()
                valid.append(True)
            except ImageUnavailable as exc:
                _unavailable(exc, self.skip_changed)
                valid.append(False)
        return {
            "valid": torch.as_tensor(valid),
            "view_params": torch.from_numpy(np.stack([s[2] for s in samples])),  # (B, 24) float64
            "crop_params": torch.from_numpy(crop_params),  # (B, K, 24) float64
            "recipes": torch.from_numpy(np.stack([s[3] for s in samples])),  # (B, 151) float64
            # per batch, not per sample (lists: the loop's per-sample filtering leaves them alone)
            "source_index": list(sources), "sources": list(sources.values()),
            "background_index": list(backgrounds), "backgrounds": list(backgrounds.values()),
        }


class DeviceRender:
    """The loop's step that turns a batch gathered by ``SampleInputs(render="device")`` into its inputs, on
    the batch's device: decode (GPU JPEG on CUDA), then the batched renderer."""

    def __init__(self, views: ViewsConfig, local_crop_cfg: LocalCropConfig, device: torch.device,
                 then: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
        self.views, self.local_crop_cfg, self.device = views, local_crop_cfg, torch.device(device)
        self.renderer = BatchRenderer(self.device)
        self.then = then  # a further step (online mode's teacher targets)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        images = dict(zip(batch["source_index"], decode_sources(batch["sources"], self.device)))
        backgrounds = dict(zip(batch["background_index"], decode_sources(batch["backgrounds"], self.device)))
        index = batch["index"].tolist()
        view_params = [ViewParams.from_vector(v) for v in batch["view_params"].cpu().numpy()]
        crops = batch["crop_params"].cpu().numpy()  # (B, K, 24)
        count = crops.shape[1]
        out = {k: v for k, v in batch.items()
               if k not in ("view_params", "crop_params", "recipes", "source_index", "sources", "background_index",
                            "backgrounds")}
        out["global_view"] = self.renderer.views([images[i] for i in index], view_params)  # (B, 3, H, W)
        local = self.renderer.views([images[i] for i in index for _ in range(count)],
                                    [ViewParams.from_vector(v) for v in crops.reshape(-1, crops.shape[-1])])
        out["local_crops"] = local.view(len(index), count, *local.shape[1:])  # (B, K, 3, h, w)
        out["crowd"] = self.renderer.crowds(list(batch["recipes"].cpu().numpy()), images, backgrounds)
        return self.then(out) if self.then is not None else out
