"""Shared fixtures for training tests: one tiny data set and store per test process, small configs.

The store is extracted once per session (about a second): 10 synthetic 64x32 persons, a random
ViT-Ti teacher, 2 cached 64x32 views and one 64x64 crowd image per image, local crops 32x16,
with the gram relation too, so one store serves every loss option.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpal_cache.config import load_config
from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
from dpal_cache.data.sources import open_source
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.extract.run import extract
from dpal_cache.synth import SynthConfig, synthesize
from dpal_cache.train.config import TrainConfig
from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewsConfig

# small and fast: batch 4 of 10 images (2 steps per epoch), an lr that moves in a few dozen steps
BASE_SETS = ["batch_size=4", "workers=0", "device=cpu", "log_every=1", "epochs=20", "optim.warmup_epochs=0",
             "optim.base_lr=0.016"]  # fmt: skip


@dataclass(frozen=True)
class Store:
    url: str
    folder: Path  # the images it was extracted from
    manifest: Path


def extract_config(**overrides) -> ExtractConfig:
    """A random ViT-Ti teacher on 64x32 views, 32x16 local crops and 64x64 crowds, blocks of 2 images."""
    views = ViewsConfig(global_view=GlobalViewConfig(size=(64, 32)), local_crops=LocalCropConfig(size=(32, 16)),
                        crowd=CrowdConfig(size=(64, 64)))
    args = {"teacher": "random:vit_tiny", "views": views, "shard_images": 2, "calibration_images": 4,
            "batch_size": 4, "workers": 0, "device": "cpu"}
    args.update(overrides)
    return ExtractConfig(**args)


@pytest.fixture(scope="session")
def store_extract_config():
    """``store_extract_config(**overrides)``: the ExtractConfig of the test stores (see extract_config)."""
    return extract_config


@pytest.fixture(scope="session")
def persons(tmp_path_factory) -> tuple[Path, Path]:
    """(folder, manifest): 10 synthetic 64x32 person crops, scanned."""
    out = tmp_path_factory.mktemp("train_synth")
    synthesize(out, SynthConfig(ids=5, images_per_id=2, train_fraction=1.0, height=64, width=32, masks=False,
                                workers=1))
    manifest = out / "manifest.parquet"
    scan(open_source(out / "bounding_box_train"), manifest, ScanConfig(workers=1))
    return out / "bounding_box_train", manifest


@pytest.fixture(scope="session")
def make_store(persons, tmp_path_factory):
    """Factory: ``make_store(name, max_blocks=None, crowds=None, **extract_overrides)`` -> Store, cached per name."""
    folder, manifest = persons
    made: dict[str, Store] = {}

    def make(name: str, max_blocks: int | None = None, crowds: int | None = None, **overrides) -> Store:
        if name not in made:
            url = str(tmp_path_factory.mktemp("stores") / f"{name}.zarr")
            cfg = extract_config(**overrides)
            if crowds is not None:
                cfg = dataclasses.replace(cfg, views=dataclasses.replace(cfg.views, crowds_per_image=crowds))
            extract(cfg, open_source(folder), read_manifest(manifest), url, max_blocks=max_blocks)
            made[name] = Store(url, folder, manifest)
        return made[name]

    return make


@pytest.fixture(scope="session")
def store(make_store) -> Store:
    """The complete store with attention and gram relations (read-only: copy before changing it)."""
    return make_store("main", gram=True)


@pytest.fixture
def images_copy(store, tmp_path) -> Path:
    """A private copy of the store's images (tests may change files in it)."""
    folder = tmp_path / "images"
    shutil.copytree(store.folder, folder)
    return folder


def _train_config(*sets: str, **overrides) -> TrainConfig:
    return load_config(TrainConfig, None, [*BASE_SETS, *sets], overrides)


@pytest.fixture(scope="session")
def train_config():
    """Factory of small train configs: BASE_SETS, then ``sets`` (``"loss.mask=none"``), then typed overrides."""
    return _train_config


def _read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def read_metrics():
    """``read_metrics(run_dir)``: the lines of RUN_DIR/metrics.jsonl as dicts."""
    return _read_metrics
