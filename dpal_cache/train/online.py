"""Online mode: the same student, decoder and losses with the frozen teacher in the loop instead of a store.

It is the baseline the cache is measured against, and its parity check. Targets are computed
with extraction's own code: an ``ExtractSession`` builds the teacher, catalog and layout and
fits the calibration exactly as ``extract`` does (same images, same batches), ``TeacherStep``
runs the teacher, and extraction's ``encode_outputs`` encodes its outputs at the store's precision;
the training loop decodes them as it decodes rows read from a store. Samples pick the same view and
crowd per epoch as ``StoreDataset`` (``epoch_choice``) and render them from (seed, index) as
extraction does. What that guarantees (docs/reliability.md, tests/train/test_online.py): on the
machine that made the store, a teacher forward over the same stack of views as an extraction batch
gives the cached rows bit for bit; a training batch stacks other images, and CPU kernels may round
a float32 sum differently for another batch shape, so there the stored values agree to one unit of
the store's precision (``store.quant.units_apart``), and a few training steps give the same losses
to 1e-6.

With ``fresh_views`` (``train --fresh-views``) every epoch trains new views instead: epoch ``e`` renders
global view ``e`` and crowd ``e`` of every image, drawn from (seed, index, e) by extraction's own
functions, and the teacher sees each of them once. That is the paper's training, the reference
a cache of ``V`` views is measured against (``dpal-cache study``). It is as deterministic and
resumable as the replay: every draw is a pure function of (seed, epoch, index).

Data workers render uint8 views (no teacher in them); the teacher runs in the training process,
on the training device, inside ``prepare`` after the batch has been moved there. Its outputs
take one trip through host memory for the (numpy) codecs: the price of reusing extraction's
exact code path.

    summary = train_online(train_cfg, extract_cfg, open_source("imgs/"), read_manifest("imgs.parquet"),
                           Path("runs/online"))
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dpal_cache.config import from_dict, load_yaml
from dpal_cache.data.sources import ImageSource
from dpal_cache.devices import resolve_device
from dpal_cache.extract.compute import TeacherStep
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.extract.run import ExtractSession, store_identity
from dpal_cache.store.calibration import Calibration
from dpal_cache.store.codecs import as_targets, encode_outputs
from dpal_cache.store.layout import STATUS_OK
from dpal_cache.train.config import TrainConfig
from dpal_cache.train.data import EpochKeyedDataset, epoch_choice
from dpal_cache.train.errors import StoreMismatch
from dpal_cache.train.inputs import SampleInputs
from dpal_cache.train.loop import Progress, TrainSummary, render_mode, run_training
from dpal_cache.train.rundir import check_run_dir
from dpal_cache.train.sampler import STREAM_EPOCH_CROWD, STREAM_EPOCH_VIEW
from dpal_cache.views.config import LocalCropConfig
from dpal_cache.views.crowd import make_recipe
from dpal_cache.views.params import global_view_params

log = logging.getLogger(__name__)

class OnlineDataset(EpochKeyedDataset):
    """``StoreDataset``'s samples without a store: the inputs of a batch, no ``t_*`` targets.

    Per sample: the global view and crowd image ``StoreDataset`` would pick for (seed, epoch,
    index), rendered from their parameters drawn from (seed, index) as extraction draws them,
    plus fresh local crops. ``TeacherTargets`` adds the targets on the device.

    Args:
        session: the extract session (catalog, views, backgrounds, layout, store attributes).
        calib: its calibration (target statistics for ``normalize_targets``).
        local_crop_cfg: student-only crops (default: the views config's).
        skip_changed: drop images whose bytes changed since the scan instead of failing.
        render: ``workers`` or ``device``, as for ``StoreDataset``.
        fresh: fresh views: epoch ``e`` trains view ``e`` and crowd ``e`` of every image, drawn from (seed, index,
            e) as extraction draws views ``0..V-1`` (so epoch 0 sees a store's view 0), instead of the one of
            ``V`` views and ``C`` crowds a store would hold that ``epoch_choice`` picks.
    """

    def __init__(self, session: ExtractSession, calib: Calibration, local_crop_cfg: LocalCropConfig | None = None,
                 skip_changed: bool = False, render: str = "workers", fresh: bool = False):
        self.views = session.cfg.views
        if self.views.crowds_per_image == 0:
            raise StoreMismatch("the extract config has crowds_per_image 0: the relation loss needs crowd images")
        self.local_crop_cfg = local_crop_cfg or self.views.local_crops
        self.layout = session.layout
        # what a store extracted with this config would say about itself
        self.meta = session.meta.replace(complete=True, calibration=calib.info)
        self.token_scales = calib.token_scales  # (2, D): int8 decoding
        self.token_stats = calib.token_stats  # (4, D) class mean/std, patch mean/std
        self.seed = int(self.views.seed)
        self.catalog = session.dataset.catalog
        self.backgrounds = session.dataset.backgrounds
        self.skip_changed = skip_changed
        self.images = self.catalog.ok  # int64 dataset indices that passed the scan
        self.groups = self.images // self.layout.shard_images  # the store's blocks: the same order as from a store
        self.v = self.views.views_per_image
        self.c = self.views.crowds_per_image
        self.render = render
        self.fresh = fresh
        self.inputs = SampleInputs(self.catalog, self.views, self.local_crop_cfg, self.seed, self.backgrounds,
                                   skip_changed, render)

    def batch(self, images: list[int], epochs: list[int]) -> dict[str, Any]:
        """A whole batch: index, epoch, valid and the inputs (``SampleInputs``), no targets."""
        bg_sizes = self.backgrounds.sizes if self.backgrounds is not None else None
        cat, samples = self.catalog, []
        for index, epoch in zip(images, epochs):
            view, crowd = self.choice(index, epoch)
            size = (int(cat.sizes[index, 0]), int(cat.sizes[index, 1]))  # the decoded size, checked on load
            params = global_view_params(self.views.global_view, self.seed, index, view, size).to_vector()
            recipe = make_recipe(self.views, self.seed, index, crowd, cat.ok, cat.sizes, bg_sizes).to_vector()
            samples.append((index, epoch, params, recipe))
        return self.inputs(samples)


    def choice(self, index: int, epoch: int) -> tuple[int, int]:
        """(view, crowd) of image ``index`` that trains in ``epoch``: the epoch's own with fresh views, else the
        cached ones ``StoreDataset`` picks."""
        if self.fresh:
            return epoch, epoch
        return (epoch_choice(self.seed, STREAM_EPOCH_VIEW, index, epoch, self.v),
                epoch_choice(self.seed, STREAM_EPOCH_CROWD, index, epoch, self.c))


class TeacherTargets:
    """The ``prepare`` of online mode: fills a device batch's ``t_tokens``, ``t_attn_cls``,
    ``t_mask_score`` and ``t_relation`` from the frozen teacher, encoded as a store holds them (the
    training loop decodes them as it decodes cached ones).

    Args:
        session: the extract session (teacher on its device, layout, precision, ``mask_at_extract``).
        calib: the calibration (mask component, int8 scales).
        relation: ``attention`` (crowd attention) or ``gram`` (computed here; no ``--gram`` needed).
    """

    def __init__(self, session: ExtractSession, calib: Calibration, relation: str = "attention"):
        gram = relation == "gram"
        self.step = session.step
        if self.step.gram != gram:
            self.step = TeacherStep(session.teacher, session.device, amp=session.cfg.amp, gram=gram)
        self.layout = session.layout
        self.calib = calib
        self.mask_at_extract = session.cfg.mask_at_extract
        self.relation = relation

    def encode(self, views: torch.Tensor, crowds: torch.Tensor) -> dict[str, np.ndarray]:
        """Stored rows (store arrays by name, the store's dtypes) of uint8 ``views`` (Bv, 3, H, W) and
        ``crowds`` (Bc, 3, Hc, Wc): each stack is one teacher forward, as one image's views and crowds
        are in extraction, encoded by extraction's own ``encode_outputs``."""
        status = np.full(1, STATUS_OK, dtype=np.uint8)
        out = self.step({"status": status, "views": views[None], "crowds": crowds[None]})  # float32 numpy
        return encode_outputs(out, self.calib, self.layout, self.mask_at_extract)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        views, crowds = batch["global_view"], batch["crowd"]  # (B, 3, H, W), (B, 3, Hc, Wc) uint8 on the device
        if views.shape[0] == 0:
            raise StoreMismatch("every image of a batch changed since the scan: restore them or re-run scan")
        targets = as_targets(self.encode(views, crowds), self.relation)
        return {**batch, **{k: v.to(views.device, non_blocking=True) for k, v in targets.items()}}


def _training_device(cfg: TrainConfig) -> torch.device:
    """The device ``run_training`` will train on (a torchrun rank's own GPU)."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _check_run_dir(run_dir: Path, extract_cfg: ExtractConfig, resume: bool) -> None:
    """The run folder's checks (``check_run_dir``), and a resume refused with another teacher, views or
    precision than the run's (they make the targets)."""
    check_run_dir(run_dir, resume)
    saved = run_dir / "extract.yaml"
    if resume and saved.exists():
        old, new = store_identity(from_dict(ExtractConfig, load_yaml(saved))), store_identity(extract_cfg)
        diffs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diffs:
            raise StoreMismatch(f"--resume with other target settings than the run's ({saved}): "
                                f"{', '.join(diffs)} differ; resume with that teacher and config")


def train_online(
    cfg: TrainConfig,
    extract_cfg: ExtractConfig,
    source: ImageSource,
    manifest: pa.Table,
    run_dir: Path,
    resume: bool = False,
    progress: Progress | None = None,
    teacher: torch.nn.Module | None = None,
) -> TrainSummary:
    """Train ``cfg``'s student with the teacher of ``extract_cfg`` in the loop; see the module docstring.

    Args:
        extract_cfg: the teacher and everything that decides its targets (views, precision...), as for
            ``extract``; its device is replaced by the training device.
        manifest: the scan of ``source`` (``read_manifest``).
        teacher: an already built teacher (default: built from ``extract_cfg``).

    ``RUN_DIR/extract.yaml`` records ``extract_cfg`` next to the run's ``config.yaml``.
    """
    run_dir = Path(run_dir)
    if cfg.background_dir is not None:  # the backgrounds on this machine
        crowd = dataclasses.replace(extract_cfg.views.crowd, background_dir=cfg.background_dir)
        extract_cfg = dataclasses.replace(extract_cfg, views=dataclasses.replace(extract_cfg.views, crowd=crowd))
    _check_run_dir(run_dir, extract_cfg, resume)
    device = _training_device(cfg)
    session = ExtractSession(dataclasses.replace(extract_cfg, device=str(device)), source, manifest, teacher)
    calib = session.calibrate(cfg.workers)
    dataset = OnlineDataset(session, calib, cfg.local_crops, cfg.skip_changed, render_mode(cfg), cfg.fresh_views)
    prepare = TeacherTargets(session, calib, cfg.loss.relation)
    name = session.teacher.describe()["name"]
    log.info("online mode: teacher %s on %s, %d images, %s", name, session.device, len(dataset),
             "fresh views every epoch" if cfg.fresh_views else
             f"replaying {dataset.v} view(s) and {dataset.c} crowd(s) per image as a store would")
    return run_training(cfg, dataset, run_dir, resume, progress, prepare=prepare, store_ref=f"online:{name}",
                        configs={"extract.yaml": extract_cfg})
