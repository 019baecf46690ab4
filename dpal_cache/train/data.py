"""Training samples from a feature store: cached teacher targets plus re-rendered student inputs.

Per sample (one usable image): one of its cached global views, picked per epoch from
(seed, epoch, index) and re-rendered from its stored parameters (bitwise the pixels the
teacher saw); fresh student-only local crops from (seed, epoch, index, crop); one of its crowd
images re-rendered from its stored recipe; and the cached targets of that view and crowd.

Reading follows docs/store-format.md and the measured rules in shared/notes/store.md: the
store is opened lazily in each worker process, a whole batch is fetched with one gathered
async read per array (``__getitems__``), small per-row arrays (parameters, recipes, status)
live in memory as numpy arrays. The epoch travels inside the sampled indices
(``epoch * n + k``), so persistent workers never need to be told about a new epoch.

    ds = StoreDataset("feats.zarr", open_source("imgs/"))
    loader = make_loader(ds, EpochSampler(len(ds), batch_size=64, end_epoch=10), workers=4)
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dpal_cache.config import from_dict
from dpal_cache.data.catalog import Catalog, ImageUnavailable
from dpal_cache.data.decode import DecodeConfig
from dpal_cache.data.sources import FolderSource, ImageSource, SourceError
from dpal_cache.extract.compute import decode_map, decode_tokens
from dpal_cache.extract.items import Backgrounds
from dpal_cache.store import io as store_io
from dpal_cache.store.layout import STATUS_OK, StoreLayout
from dpal_cache.views.config import LocalCropConfig, ViewsConfig
from dpal_cache.views.crowd import CrowdRecipe, render_crowd
from dpal_cache.views.local import local_crops
from dpal_cache.views.params import uniforms
from dpal_cache.views.render import render_view

log = logging.getLogger(__name__)

# counter-based streams for per-epoch choices (views/params.py uses 1-4)
STREAM_EPOCH_VIEW = 5
STREAM_EPOCH_CROWD = 6
STREAM_EPOCH_ORDER = 7


class StoreMismatch(Exception):
    """The store cannot serve this training run; the message says what to do."""


def sample_keys(keys: list[int], images: np.ndarray) -> tuple[list[int], list[int]]:
    """Sampled keys (``epoch * n + k``, see EpochSampler) -> (dataset indices ``images[k]``, epochs)."""
    n = len(images)
    return [int(images[int(key) % n]) for key in keys], [int(key) // n for key in keys]


def epoch_choice(seed: int, stream: int, index: int, epoch: int, n: int) -> int:
    """Which of image ``index``'s ``n`` cached views (``STREAM_EPOCH_VIEW``) or crowd images
    (``STREAM_EPOCH_CROWD``) trains in ``epoch``: a pure function, shared with online mode."""
    return min(n - 1, int(uniforms(seed, stream, index, epoch, 0, 1)[0] * n))


def render_sample(catalog: Catalog, index: int, epoch: int, view_params: np.ndarray, recipe: np.ndarray,
                  local_crop_cfg: LocalCropConfig, seed: int, backgrounds: Backgrounds | None = None):
    """The student inputs of one sample: the global view rendered from its parameter vector (bitwise
    the pixels the teacher saw), fresh local crops, the crowd image rendered from its recipe vector.

    Returns:
        (global view uint8 (3, H, W), list of uint8 (3, h, w) crops, crowd uint8 (3, Hc, Wc)).
    Raises:
        ImageUnavailable: the image or one of its crowd partners cannot be used.
    """
    rgb = catalog.load(index)
    global_view = render_view(rgb, view_params)
    crops = local_crops(local_crop_cfg, seed, epoch, index, rgb)
    crowd = CrowdRecipe.from_vector(recipe)
    loaded = {index: rgb}
    for j in crowd.dataset_indices():
        if j not in loaded:
            loaded[j] = catalog.load(j)
    background = None
    if crowd.background_kind == "folder":
        if backgrounds is None:
            raise StoreMismatch("the store's crowds use a background folder: pass background_dir")
        background = backgrounds.load(crowd.background_index)
    return global_view, crops, render_crowd(crowd, loaded, background)


def render_inputs(images: list[int], epochs: list[int], render: Callable[[int], tuple], views: ViewsConfig,
                  local_crop_cfg: LocalCropConfig, skip_changed: bool) -> dict[str, torch.Tensor]:
    """The input half of a batch: ``render(k)`` renders sample ``k`` (render_sample's triple).

    An image that changed since the scan is an error, or with ``skip_changed`` a blank sample
    whose ``valid`` entry is False.
    """
    globals_, locals_, crowds, valid = [], [], [], []
    for k in range(len(images)):
        try:
            g, loc, crowd = render(k)
            valid.append(True)
        except ImageUnavailable as exc:
            if not (skip_changed and exc.reason in ("changed", "missing", "unreadable")):
                raise StoreMismatch(
                    f"{exc}. The source no longer matches the store's manifest: restore the file, "
                    "re-run scan + extract, or train with --skip-changed"
                ) from None
            g = torch.zeros((3, *views.global_view.size), dtype=torch.uint8)
            loc = [torch.zeros((3, *local_crop_cfg.size), dtype=torch.uint8)] * local_crop_cfg.count
            crowd = torch.zeros((3, *views.crowd.size), dtype=torch.uint8)
            valid.append(False)
        globals_.append(g)
        locals_.append(torch.stack(loc))
        crowds.append(crowd)
    return {
        "index": torch.as_tensor(images),
        "epoch": torch.as_tensor(epochs),
        "valid": torch.as_tensor(valid),
        "global_view": torch.stack(globals_),  # (B, 3, H, W) uint8
        "local_crops": torch.stack(locals_),  # (B, K, 3, h, w) uint8
        "crowd": torch.stack(crowds),  # (B, 3, Hc, Wc) uint8
    }


def decode_targets(rows: dict[str, np.ndarray], token_scales: np.ndarray,
                   relation_array: str) -> dict[str, torch.Tensor]:
    """Stored target rows, one per sample (store arrays by name) -> the float32 ``t_*`` entries of a batch."""
    return {
        "t_tokens": torch.from_numpy(decode_tokens(rows["views/tokens"], token_scales)),  # (B, 1+L, D)
        "t_attn_cls": torch.from_numpy(decode_map(rows["views/attn_cls"])),  # (B, L)
        "t_mask_score": torch.from_numpy(rows["views/mask_score"].astype(np.float32)),  # (B, L)
        "t_relation": torch.from_numpy(decode_map(rows[relation_array])),  # (B, Lc, Lc) or (B, Lc+1, Lc+1)
    }


class StoreDataset(Dataset):
    """Samples of the usable images of a complete store; see the module docstring.

    Args:
        url: the store (path or fsspec URL).
        source: the images the store was extracted from (same keys, same order).
        relation: ``attention`` (crowds/attn) or ``gram`` (crowds/gram, needs an extract with --gram).
        local_crop_cfg: student-only crops (default: the store's views config).
        skip_changed: drop images whose bytes changed since the scan instead of failing.
        background_dir: where the crowd backgrounds are on this machine (default: the stored path).
    """

    def __init__(
        self,
        url: str,
        source: ImageSource,
        relation: str = "attention",
        local_crop_cfg: LocalCropConfig | None = None,
        skip_changed: bool = False,
        background_dir: str | None = None,
        storage_options: dict | None = None,
    ):
        self.url = url
        self.storage_options = storage_options
        group = store_io.open_store(url, "r", storage_options)
        meta = store_io.store_meta(group)
        if not meta.get("complete"):
            done = store_io.done_blocks(group)
            raise StoreMismatch(
                f"{url} is incomplete ({int(done.sum())} of {len(done)} blocks done): "
                "re-run the same `dpal-cache extract` command to finish it"
            )
        problems = store_io.layout_problems(group, from_dict(StoreLayout, meta["layout"]))
        dim = meta.get("teacher", {}).get("embed_dim")
        if dim is not None and dim != meta["layout"]["dim"]:
            problems.append(f"the teacher has {dim} dims, the layout says {meta['layout']['dim']}")
        if problems:
            raise StoreMismatch(f"{url} does not hold what its attributes describe (damaged, or copied "
                                "incompletely):\n  " + "\n  ".join(problems)
                                + "\ncopy the whole store again, or re-extract it (--overwrite)")
        self.meta = meta
        self.layout = meta["layout"]
        self.views: ViewsConfig = from_dict(ViewsConfig, meta["views"])
        self.local_crop_cfg = local_crop_cfg or self.views.local_crops
        self.relation = relation
        relation_array = {"attention": "crowds/attn", "gram": "crowds/gram"}[relation]
        if self.layout["crowds_per_image"] == 0:
            raise StoreMismatch(f"{url} has no crowd images (extracted with --crowds 0): the relation loss needs them")
        if relation_array not in group:
            raise StoreMismatch(
                f"{url} has no {relation_array}: re-extract with --gram, or train with relation target 'attention'"
            )
        self.relation_array = relation_array
        try:
            manifest = store_io.read_store_manifest(group)
            source = store_io.check_store_source(manifest, source)  # as scanned: listed (and warned about) once
        except (store_io.StoreError, SourceError) as exc:
            raise StoreMismatch(f"{url}: {exc}") from None
        decode = from_dict(DecodeConfig, meta["extract_config"]["decode"])
        self.catalog = Catalog(source, manifest, decode)
        self.skip_changed = skip_changed
        bg = background_dir or self.views.crowd.background_dir
        self.backgrounds = Backgrounds(FolderSource(bg), decode) if bg is not None else None
        # small per-row arrays in memory (numpy: no copy-on-access in forked workers)
        self.status = group["images/status"][:]
        self.images = np.flatnonzero(self.status == STATUS_OK).astype(np.int64)
        self.params = group["views/params"][:]
        self.recipes = group["crowds/recipe"][:]
        self.token_scales = group["calibration/token_scales"][:]
        self.token_stats = group["calibration/token_stats"][:]  # (4, D) class mean/std, patch mean/std
        self.v = int(self.layout["views_per_image"])
        self.c = int(self.layout["crowds_per_image"])
        self.seed = int(self.views.seed)
        self._group = None
        self._pid = -1
        self._check_source()

    def _check_source(self, samples: int = 4) -> None:
        """Load a few usable images spread over the data now, so that other images under the same
        names (which the key fingerprint cannot tell apart) or changed files fail before training."""
        if len(self.images) == 0:
            return
        picks = np.unique(self.images[np.linspace(0, len(self.images) - 1, min(samples, len(self.images))).astype(int)])
        failed = []
        for i in picks:
            try:
                self.catalog.load(int(i))
            except ImageUnavailable as exc:
                failed.append(exc)
        if failed and len(failed) == len(picks):
            raise StoreMismatch(
                f"none of the {len(picks)} images checked matches the store's manifest ({failed[0]}): the images "
                f"given ({self.catalog.source}) are not the ones the store was extracted from: pass the "
                "same --data as for extract"
            )
        if failed and not self.skip_changed:
            raise StoreMismatch(
                f"{failed[0]}. The source no longer matches the store's manifest: restore the file, "
                "re-run scan + extract, or train with --skip-changed"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_group"] = None  # never pickle live store handles: each process opens its own
        state["_pid"] = -1
        return state

    def _store(self):
        if self._group is None or self._pid != os.getpid():
            self._group = store_io.open_store(self.url, "r", self.storage_options)
            self._pid = os.getpid()
        return self._group

    def _read_rows(self, rows: dict[str, list[int]]) -> dict[str, np.ndarray]:
        """One gathered async read of many rows of several arrays: {name: (B, ...)}."""
        group = self._store()
        arrays = {name: group[name]._async_array for name in rows}

        async def gather():
            coros = [arrays[name].getitem(r) for name, rs in rows.items() for r in rs]
            return await asyncio.gather(*coros)

        from zarr.core.sync import sync

        flat = sync(gather())
        out, k = {}, 0
        for name, rs in rows.items():
            out[name] = np.stack(flat[k : k + len(rs)])
            k += len(rs)
        return out

    def __getitem__(self, key: int) -> dict[str, Any]:
        return self.__getitems__([key])

    def __getitems__(self, keys: list[int]) -> dict[str, Any]:
        """A whole batch (already collated): inputs uint8, targets float32, ``valid`` mask."""
        images, epochs = sample_keys(keys, self.images)
        view_rows, crowd_rows = self.target_rows(images, epochs)
        targets = self.read_targets(view_rows, crowd_rows)

        def render(k: int):
            return render_sample(self.catalog, images[k], epochs[k], self.params[view_rows[k]],
                                 self.recipes[crowd_rows[k]], self.local_crop_cfg, self.seed, self.backgrounds)

        batch = render_inputs(images, epochs, render, self.views, self.local_crop_cfg, self.skip_changed)
        return {**batch, **targets}

    def target_rows(self, images: list[int], epochs: list[int]) -> tuple[list[int], list[int]]:
        """The view rows and crowd rows that train images ``images`` in ``epochs``."""
        view_rows = [i * self.v + epoch_choice(self.seed, STREAM_EPOCH_VIEW, i, e, self.v)
                     for i, e in zip(images, epochs)]
        crowd_rows = [i * self.c + epoch_choice(self.seed, STREAM_EPOCH_CROWD, i, e, self.c)
                      for i, e in zip(images, epochs)]
        return view_rows, crowd_rows

    def read_targets(self, view_rows: list[int], crowd_rows: list[int]) -> dict[str, torch.Tensor]:
        """The decoded float32 ``t_*`` targets of these rows (one gathered read per array)."""
        got = self._read_rows({
            "views/tokens": view_rows,
            "views/attn_cls": view_rows,
            "views/mask_score": view_rows,
            self.relation_array: crowd_rows,
        })
        return decode_targets(got, self.token_scales, self.relation_array)


class EpochSampler(Sampler[list[int]]):
    """Batches of ``epoch * n + k`` keys for epochs ``start_epoch .. end_epoch - 1``: a seeded
    permutation per epoch, split across DDP ranks, every rank the same number of full batches.

    ``start_batch`` skips the first batches of ``start_epoch`` (exact resume mid-epoch). One
    sampler spans the whole run, so one DataLoader (and one set of workers) serves every epoch.
    """

    def __init__(self, n: int, batch_size: int, end_epoch: int, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle: bool = True, start_epoch: int = 0, start_batch: int = 0):
        self.n, self.batch_size, self.end_epoch, self.seed = n, batch_size, end_epoch, seed
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.start_epoch, self.start_batch = start_epoch, start_batch
        if self.batches_per_epoch() == 0:
            raise ValueError(f"{n} samples over {world} rank(s) do not fill one batch of {batch_size}")

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        key = np.random.SeedSequence([self.seed, STREAM_EPOCH_ORDER, epoch])
        return np.random.Generator(np.random.Philox(key)).permutation(self.n)

    def batches_per_epoch(self) -> int:
        return (self.n // self.world) // self.batch_size

    def __len__(self) -> int:
        return max(0, (self.end_epoch - self.start_epoch) * self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        for epoch in range(self.start_epoch, self.end_epoch):
            order = self._order(epoch)[self.rank :: self.world]
            first = self.start_batch if epoch == self.start_epoch else 0
            for b in range(first, self.batches_per_epoch()):
                yield [int(epoch * self.n + k) for k in order[b * self.batch_size : (b + 1) * self.batch_size]]


def _batch_as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def make_loader(dataset: StoreDataset, sampler: EpochSampler, workers: int, pin_memory: bool = False) -> DataLoader:
    """DataLoader over ``sampler``'s batches (``__getitems__`` returns them collated already).

    Remote stores need ``forkserver``: fsspec/obstore clients hang after fork once used. The
    loader has its own generator: iterating it must not draw from the global torch RNG, which a
    checkpoint restores (drop-path would otherwise see other numbers after a resume).
    """
    url = getattr(dataset, "url", "")
    remote = "://" in url and not url.startswith("file://")
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=_batch_as_is,
        pin_memory=pin_memory,
        multiprocessing_context=("forkserver" if remote else None) if workers else None,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(0),
    )
