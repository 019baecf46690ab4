"""Shared fixtures for extraction tests: a tiny synthetic data set, its manifest and a small config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
from dpal_cache.data.sources import open_source
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.synth import SynthConfig, synthesize
from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewsConfig


@pytest.fixture(scope="session")
def persons_dir(tmp_path_factory) -> Path:
    """10 synthetic 64x32 person crops (train split of a tiny synth run)."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SynthConfig(ids=5, images_per_id=2, train_fraction=1.0, height=64, width=32, masks=False,
                                workers=1))
    return out / "bounding_box_train"


@pytest.fixture
def dataset(tmp_path, persons_dir):
    """A private copy of the images (tests may corrupt it) with a manifest: (folder, manifest path)."""
    folder = tmp_path / "images"
    shutil.copytree(persons_dir, folder)
    manifest = tmp_path / "manifest.parquet"
    scan(open_source(folder), manifest, ScanConfig(workers=1))
    return folder, manifest


def _small_config(**overrides) -> ExtractConfig:
    """A ViT-Ti random teacher on 64x32 views and 64x64 crowds, blocks of 2 images."""
    views = ViewsConfig(
        global_view=GlobalViewConfig(size=(64, 32)),
        local_crops=LocalCropConfig(size=(32, 16)),
        crowd=CrowdConfig(size=(64, 64)),
    )
    args = dict(teacher="random:vit_tiny", views=views, shard_images=2, calibration_images=4, batch_size=2,
                workers=0, device="cpu")
    args.update(overrides)
    return ExtractConfig(**args)


@pytest.fixture
def small_config():
    """Factory of small extract configs: ``small_config(token_precision="int8")``."""
    return _small_config


@pytest.fixture
def loaded(dataset):
    """(source, manifest table) of ``dataset``."""
    folder, manifest = dataset
    return open_source(folder), read_manifest(manifest)
