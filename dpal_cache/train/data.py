"""Training samples from a feature store: cached teacher targets plus re-rendered student inputs (inputs.py).

Per sample (one usable image): one of its cached global views, picked per epoch from
(seed, epoch, index) and re-rendered from its stored parameters (on the extracting machine, the
pixels the teacher saw); fresh student-only local crops from (seed, epoch, index, crop); one of its
crowd images re-rendered from its recipe; and the cached target rows of that view and crowd, as
stored (fp16 / int8 / log8 codes): ``codecs.decode_targets`` decodes them on the training device.

Reading goes through ``StoreReader`` (checks on open, rows read many per I/O, small per-row arrays in
numpy). The epoch travels inside the sampled indices (``epoch * n + k``, ``train.sampler``), so
persistent workers never need to be told about a new epoch.

    ds = StoreDataset("feats.zarr", open_source("imgs/"))
    loader = make_loader(ds, EpochSampler(ds.groups, batch_size=64, end_epoch=10, window=64), workers=4)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dpal_cache.config import from_dict
from dpal_cache.data.catalog import ImageUnavailable
from dpal_cache.data.sources import ImageSource
from dpal_cache.store.codecs import RELATION_ARRAYS, TARGET_ARRAYS, as_targets
from dpal_cache.store.errors import StoreError
from dpal_cache.store.reader import StoreReader
from dpal_cache.train.errors import StoreMismatch
from dpal_cache.train.inputs import SampleInputs
from dpal_cache.train.sampler import STREAM_EPOCH_CROWD, STREAM_EPOCH_VIEW, EpochSampler
from dpal_cache.views.config import LocalCropConfig, ViewsConfig
from dpal_cache.views.params import uniforms

log = logging.getLogger(__name__)


def sample_keys(keys: list[int], images: np.ndarray) -> tuple[list[int], list[int]]:
    """Sampled keys (``epoch * n + k``, see EpochSampler) -> (dataset indices ``images[k]``, epochs)."""
    n = len(images)
    return [int(images[int(key) % n]) for key in keys], [int(key) // n for key in keys]


def epoch_choice(seed: int, stream: int, index: int, epoch: int, n: int) -> int:
    """Which of image ``index``'s ``n`` cached views (``STREAM_EPOCH_VIEW``) or crowd images
    (``STREAM_EPOCH_CROWD``) trains in ``epoch``: a pure function, shared with online mode."""
    return min(n - 1, int(uniforms(seed, stream, index, epoch, 0, 1)[0] * n))


class EpochKeyedDataset(Dataset):
    """A data set served a batch at a time under ``EpochSampler``'s keys (``epoch * n + k`` over ``images``):
    subclasses set ``images`` and build a batch from (dataset indices, epochs) in ``batch``."""

    images: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int) -> dict[str, Any]:
        return self.__getitems__([key])

    def __getitems__(self, keys: list[int]) -> dict[str, Any]:
        return self.batch(*sample_keys(keys, self.images))

    def batch(self, images: list[int], epochs: list[int]) -> dict[str, Any]:
        raise NotImplementedError


class StoreDataset(EpochKeyedDataset):
    """Samples of the usable images of a complete store; see the module docstring.

    Args:
        url: the store (path or fsspec URL).
        source: the images the store was extracted from (same keys, same order).
        relation: ``attention`` (crowds/attn) or ``gram`` (crowds/gram, needs an extract with --gram).
        local_crop_cfg: student-only crops (default: the store's views config).
        skip_changed: drop images whose bytes changed since the scan instead of failing.
        background_dir: where the crowd backgrounds are on this machine (default: the path stored at extract).
        render: ``workers`` (inputs rendered in the DataLoader workers) or ``device`` (gathered there, rendered
            by the loop on its device: ``train/inputs.py``).
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
        render: str = "workers",
    ):
        self.url = url
        try:
            self.reader = StoreReader(url, source, storage_options=storage_options, background_dir=background_dir)
        except StoreError as exc:
            raise StoreMismatch(str(exc)) from None
        reader = self.reader
        _ = (reader.params, reader.recipes)  # read now, before the DataLoader workers fork
        self.meta = reader.meta
        self.layout = reader.layout
        self.views: ViewsConfig = from_dict(ViewsConfig, self.meta.views)
        self.local_crop_cfg = local_crop_cfg or self.views.local_crops
        self.relation = relation
        relation_array = RELATION_ARRAYS[relation]
        if self.layout.crowds_per_image == 0:
            raise StoreMismatch(f"{url} has no crowd images (extracted with --crowds 0): the relation loss needs them")
        if relation_array not in self.layout.arrays():
            raise StoreMismatch(
                f"{url} has no {relation_array}: re-extract with --gram, or train with relation target 'attention'"
            )
        self.relation_array = relation_array
        self.catalog = reader.catalog
        self.backgrounds = reader.backgrounds
        self.skip_changed = skip_changed
        self.images = reader.usable  # int64 dataset indices whose targets are cached
        self.groups = self.images // self.layout.shard_images  # the block (shard) of each sample
        calib = reader.require_calibration()
        self.token_scales = calib.token_scales  # (2, D): int8 decoding
        self.token_stats = calib.token_stats  # (4, D) class mean/std, patch mean/std
        self.v = self.layout.views_per_image
        self.c = self.layout.crowds_per_image
        self.seed = self.meta.seed
        self.render = render
        self.inputs = SampleInputs(self.catalog, self.views, self.local_crop_cfg, self.seed, self.backgrounds,
                                   skip_changed, render)
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

    def batch(self, images: list[int], epochs: list[int]) -> dict[str, Any]:
        """A whole batch (already collated): inputs uint8, targets as stored, ``valid`` mask."""
        view_rows, crowd_rows = self.target_rows(images, epochs)
        params, recipes = self.reader.params, self.reader.recipes
        samples = [(i, e, params[v], recipes[c]) for i, e, v, c in zip(images, epochs, view_rows, crowd_rows)]
        batch = self.inputs(samples)
        return {**batch, **self.read_targets(view_rows, crowd_rows)}

    def target_rows(self, images: list[int], epochs: list[int]) -> tuple[list[int], list[int]]:
        """The view rows and crowd rows that train images ``images`` in ``epochs``."""
        view_rows = [i * self.v + epoch_choice(self.seed, STREAM_EPOCH_VIEW, i, e, self.v)
                     for i, e in zip(images, epochs)]
        crowd_rows = [i * self.c + epoch_choice(self.seed, STREAM_EPOCH_CROWD, i, e, self.c)
                      for i, e in zip(images, epochs)]
        return view_rows, crowd_rows

    def read_targets(self, view_rows: list[int], crowd_rows: list[int]) -> dict[str, torch.Tensor]:
        """The ``t_*`` target rows of these store rows, as stored (``codecs.decode_targets`` decodes them)."""
        rows = {name: view_rows for name in TARGET_ARRAYS.values()}
        return as_targets(self.reader.read_many({**rows, self.relation_array: crowd_rows}), self.relation)


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
