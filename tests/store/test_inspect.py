"""store_report: arrays, bytes on disk, completion and attributes of small real stores."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
from dpal_cache.data.sources import open_source
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.extract.run import extract
from dpal_cache.store.inspect import store_report
from dpal_cache.store.io import StoreError
from dpal_cache.store.layout import FORMAT_VERSION
from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewsConfig

GOOD, DIM = 12, 192  # images that decode; ViT-Ti width


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 small JPEGs and one broken file (13 images, index 12 fails the scan), with their manifest."""
    root = tmp_path_factory.mktemp("inspect")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(GOOD):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
        (folder / f"img_{i:03d}.jpg").write_bytes(buf.getvalue())
    (folder / "zz_broken.jpg").write_text("not an image")
    scan(open_source(folder), root / "manifest.parquet", ScanConfig(workers=1, max_failed_fraction=1.0))
    return open_source(folder), read_manifest(root / "manifest.parquet"), root


def _extract(data, name: str, **kwargs) -> str:
    source, manifest, root = data
    views = ViewsConfig(global_view=GlobalViewConfig(size=(64, 32)), crowd=CrowdConfig(size=(64, 64)),
                        local_crops=LocalCropConfig(size=(16, 16)))
    cfg = ExtractConfig(teacher="random:vit_tiny", views=views, shard_images=4, calibration_images=4, batch_size=4,
                        workers=0, device="cpu")
    out = str(root / name)
    extract(cfg, source, manifest, out, **kwargs)
    return out


@pytest.fixture(scope="module")
def store(data) -> str:
    return _extract(data, "full.zarr")


def _files_under(path: Path) -> dict[str, int]:
    return {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*") if p.is_file()}


def test_report_describes_arrays_and_completion(store):
    r = store_report(store)
    n = GOOD + 1
    arrays = {a["path"]: a for a in r["arrays"]}
    tokens = arrays["views/tokens"]
    assert tokens["shape"] == [2 * n, 1 + 4 * 2, DIM] and tokens["dtype"] == "float16"
    assert tokens["chunks"] == [1, 9, DIM] and tokens["shards"] == [8, 9, DIM]  # one row per chunk, 4 images a shard
    assert tokens["rows_per_image"] == 2
    assert tokens["bytes_uncompressed"] == 2 * n * 9 * DIM * 2
    assert arrays["crowds/attn"]["shape"] == [n, 16, 16] and arrays["crowds/attn"]["shards"] == [4, 16, 16]
    assert arrays["views/params"]["shards"] is None and arrays["images/status"]["shape"] == [n]
    assert set(arrays) >= {"views/attn_cls", "views/mask_score", "crowds/recipe", "shards/done",
                           "calibration/pca_component", "calibration/token_scales"}
    assert r["completion"] == {"blocks_done": 4, "blocks_total": 4, "images_total": n, "images_written": n,
                               "images_ok": GOOD, "images_skipped": 1, "images_failed": 0, "images_pending": 0,
                               "complete": True, "not_cached_by_reason": {"scan: not_an_image": 1}}
    assert r["complete_attr"] is True
    assert r["format_version"] == FORMAT_VERSION == 2 and r["dpal_cache_version"]
    assert r["teacher"]["name"] == "random:vit_tiny" and r["teacher"]["random"] is True
    assert r["views"]["view_grid"] == [4, 2] and r["views"]["crowd_grid"] == [4, 4]
    assert r["views"]["views_per_image"] == 2 and r["views"]["crowds_per_image"] == 1
    assert r["precision"]["tokens"] == "fp16" and r["precision"]["maps"] == "fp16"
    assert r["calibration"]["images"] == 4


def test_bytes_match_the_filesystem(store):
    r = store_report(store)
    files = _files_under(Path(store))
    assert r["bytes"]["store_total"] == sum(files.values())
    for a in r["arrays"]:
        mine = {k: v for k, v in files.items() if k.startswith(a["path"] + "/")}
        assert a["bytes_stored"] == sum(mine.values()) and a["objects"] == len(mine), a["path"]
    assert "manifest.parquet" in r["bytes"]["other"]
    per_image = sum(a["bytes_stored"] for a in r["arrays"] if a["rows_per_image"]) / (GOOD + 1)
    assert r["bytes"]["per_image"] == pytest.approx(per_image)
    views = sum(a["bytes_stored"] for a in r["arrays"] if a["path"].startswith("views/"))
    assert r["bytes"]["per_view_row"] == pytest.approx(views / (2 * (GOOD + 1)))
    # fp16 tokens are near-incompressible noise; float64 params compress well
    arrays = {a["path"]: a for a in r["arrays"]}
    assert 0.8 < arrays["views/tokens"]["compression_ratio"] < 1.5
    assert arrays["views/params"]["compression_ratio"] > 1.5


def test_incomplete_store_counts_written_blocks_only(data):
    out = _extract(data, "partial.zarr", max_blocks=1)
    r = store_report(out)
    c = r["completion"]
    assert (c["blocks_done"], c["blocks_total"], c["complete"]) == (1, 4, False)
    assert (c["images_written"], c["images_ok"], c["images_pending"]) == (4, 4, GOOD + 1 - 4)
    assert r["complete_attr"] is False
    tokens = next(a for a in r["arrays"] if a["path"] == "views/tokens")
    assert tokens["bytes_uncompressed_written"] == 4 * 2 * 9 * DIM * 2
    assert r["bytes"]["per_image"] > 0


def test_report_reads_fsspec_stores(store):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.put(store, "/inspect/full.zarr", recursive=True)
    try:
        r = store_report("memory://inspect/full.zarr")
    finally:
        fs.rm("/inspect", recursive=True)
    local = store_report(store)
    assert r["bytes"]["store_total"] == local["bytes"]["store_total"]
    assert r["completion"] == local["completion"]


def test_not_a_store_is_refused(tmp_path):
    with pytest.raises(StoreError, match="no feature store"):
        store_report(str(tmp_path / "missing.zarr"))
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a dpal-cache store"):
        store_report(str(tmp_path / "plain.zarr"))
