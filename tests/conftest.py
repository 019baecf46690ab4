"""Test-wide settings: one torch thread per test process.

CI runs two xdist workers on two cores; torch's default of one thread per core would put four
busy threads on two cores and slow the small-model tests many times over.
"""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def _make_lmdb(db_dir: Path, items: dict[bytes, bytes]) -> Path:
    import lmdb

    db_dir.mkdir(parents=True, exist_ok=True)
    with lmdb.open(str(db_dir), map_size=1 << 24) as env, env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    return db_dir


@pytest.fixture()
def make_lmdb():
    """``make_lmdb(folder, {key_bytes: value_bytes}) -> folder``: a LUPerson-style LMDB (values raw image bytes)."""
    pytest.importorskip("lmdb")
    return _make_lmdb


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    """A tiny synthetic Market-1501 folder (6 ids x 4 images of 64x32, 2 distractors, masks, attributes)."""
    from dpal_cache.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("market")
    synthesize(out, SynthConfig(ids=6, images_per_id=4, height=64, width=32, distractors=2, workers=1))
    return out


def tiny_extract_config(crowds: int = 1, **overrides):
    """The ExtractConfig of ``build_tiny_store``: a random ViT-Ti teacher, 2 views of 64x32, ``crowds`` 64x64
    crowd images per image, blocks and batches of 4 images, no workers, CPU."""
    from dpal_cache.extract.config import ExtractConfig
    from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewsConfig

    views = ViewsConfig(global_view=GlobalViewConfig(size=(64, 32)), local_crops=LocalCropConfig(size=(32, 16)),
                        crowd=CrowdConfig(size=(64, 64)), crowds_per_image=crowds)
    args = {"teacher": "random:vit_tiny", "views": views, "shard_images": 4, "calibration_images": 4,
            "batch_size": 4, "workers": 0, "device": "cpu", **overrides}
    return ExtractConfig(**args)


def build_tiny_store(root: Path, ids: int = 5, images_per_id: int = 2, crowds: int = 1, **extract_overrides):
    """(store path, image folder): synthetic 64x32 persons (manifest at ``root/manifest.parquet``), scanned
    and extracted with ``tiny_extract_config(crowds, **extract_overrides)``."""
    from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
    from dpal_cache.data.sources import open_source
    from dpal_cache.extract.run import extract
    from dpal_cache.synth import SynthConfig, synthesize

    synthesize(root, SynthConfig(ids=ids, images_per_id=images_per_id, train_fraction=1.0, height=64, width=32,
                                 masks=False, workers=1))
    folder = root / "bounding_box_train"
    scan(open_source(folder), root / "manifest.parquet", ScanConfig(workers=1))
    extract(tiny_extract_config(crowds, **extract_overrides), open_source(folder),
            read_manifest(root / "manifest.parquet"), str(root / "feats.zarr"))
    return root / "feats.zarr", folder


@pytest.fixture(scope="module")
def tiny_store_factory(tmp_path_factory):
    """``tiny_store_factory(name, **kwargs)`` -> (store path, image folder); see build_tiny_store."""
    return lambda name, **kwargs: build_tiny_store(tmp_path_factory.mktemp(name), **kwargs)


@pytest.fixture(scope="session")
def tiny_builders():
    """``build_tiny_store`` and ``tiny_extract_config`` (as ``.store`` and ``.config``) for fixtures of any scope."""
    from types import SimpleNamespace

    return SimpleNamespace(store=build_tiny_store, config=tiny_extract_config)
