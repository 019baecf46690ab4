"""``dpal-cache info`` and ``dpal-cache verify`` through typer's test runner: tables, JSON, exit codes."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from dpal_cache.cli import _register, app
from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
from dpal_cache.data.sources import open_source
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.extract.run import extract
from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewsConfig

_register()
runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    """(store, image folder): 8 small JPEGs extracted by a random ViT-Ti in blocks of 4."""
    root = tmp_path_factory.mktemp("inspect_cli")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
        (folder / f"img_{i:03d}.jpg").write_bytes(buf.getvalue())
    scan(open_source(folder), root / "manifest.parquet", ScanConfig(workers=1))
    views = ViewsConfig(global_view=GlobalViewConfig(size=(32, 32)), crowd=CrowdConfig(size=(32, 32)),
                        local_crops=LocalCropConfig(size=(16, 16)))
    cfg = ExtractConfig(teacher="random:vit_tiny", views=views, shard_images=4, calibration_images=4, batch_size=4,
                        workers=0, device="cpu")
    out = str(root / "feats.zarr")
    extract(cfg, open_source(folder), read_manifest(root / "manifest.parquet"), out)
    return out, folder


def _text(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_info_prints_arrays_completion_and_teacher(store, tmp_path):
    url, _ = store
    result = runner.invoke(app, ["info", url, "--json", str(tmp_path / "info.json")])
    assert result.exit_code == 0, result.output
    text = _text(result)
    for expected in ("views/tokens", "crowds/attn", "2 / 2 done: complete", "8 ok", "random:vit_tiny",
                     "RANDOM WEIGHTS", "tokens fp16, maps fp16"):
        assert expected in text, expected
    report = json.loads((tmp_path / "info.json").read_text())
    assert report["completion"]["blocks_done"] == 2 and report["bytes"]["per_image"] > 0


def test_info_on_a_missing_store_exits_2(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path / "nothing.zarr")])
    assert result.exit_code == 2 and "no feature store" in _text(result)


def test_verify_passes_on_a_good_store_and_writes_json(store, tmp_path):
    url, folder = store
    out = tmp_path / "verify.json"
    result = runner.invoke(app, ["verify", url, "--data", str(folder), "--sample", "3", "--device", "cpu",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "verify passed" in text and "completeness" in text and "replay" in text and "views/tokens" in text
    report = json.loads(out.read_text())
    assert report["passed"] is True and len(report["sampled"]) == 3
    assert [c["name"] for c in report["checks"]] == ["completeness", "source", "replay", "precision"]


def test_verify_exits_1_on_a_tampered_store(store, tmp_path):
    url, folder = store
    copy = tmp_path / "tampered.zarr"
    shutil.copytree(url, copy)
    tokens = zarr.open_group(str(copy), mode="r+")["views/tokens"]
    tokens[3] = np.random.default_rng(0).normal(size=tokens.shape[1:]).astype(np.float16)
    result = runner.invoke(app, ["verify", str(copy), "--data", str(folder), "--sample", "0"])
    assert result.exit_code == 1, result.output
    text = _text(result)
    assert "FAIL" in text and "views/tokens" in text and "verify failed" in text


def test_verify_usage_errors_exit_2(store, tmp_path):
    url, folder = store
    missing = runner.invoke(app, ["verify", url, "--data", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "does not exist" in _text(missing)
    bad = runner.invoke(app, ["verify", url, "--data", str(folder), "--tolerance", "tokens_rel_l2"])
    assert bad.exit_code == 2 and "KEY=NUMBER" in _text(bad)
    unknown = runner.invoke(app, ["verify", url, "--data", str(folder), "--tolerance", "nope=1"])
    assert unknown.exit_code == 2 and "unknown tolerance key" in _text(unknown)
