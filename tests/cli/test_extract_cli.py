"""``dpal-cache extract`` through typer's test runner: the dry run's report, a run's summary, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpal_cache.cli import _register, app

_register()
runner = CliRunner()
SMALL = ["--teacher", "random:vit_tiny", "--workers", "0", "--device", "cpu", "--batch-size", "5",
         "--set", "views.global_view.size=[64, 32]", "--set", "views.crowd.size=[64, 64]",
         "--set", "views.local_crops.size=[32, 16]", "--set", "shard_images=5", "--set", "calibration_images=4"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """10 synthetic 64x32 persons, made with the CLI."""
    root = tmp_path_factory.mktemp("extract_cli")
    synth = runner.invoke(app, ["synth", "--out", str(root / "synth"), "--ids", "5", "--images-per-id", "2",
                                "--workers", "1", "--set", "train_fraction=1.0", "--set", "height=64",
                                "--set", "width=32"])
    assert synth.exit_code == 0, synth.output
    return root / "synth" / "bounding_box_train"


def _text(result) -> str:
    return " ".join(result.output.split())


def test_dry_run_reports_layout_size_and_time_and_writes_no_store(images, tmp_path):
    out = tmp_path / "feats.zarr"
    result = runner.invoke(app, ["extract", "--data", str(images), "--out", str(out), "--dry-run", *SMALL,
                                 "--views", "3", "--crowds", "2"])
    assert result.exit_code == 0, result.output
    text = _text(result)
    for expected in ("dry run:", "random:vit_tiny (192 dims)", "10 in 2 blocks of 5", "3 views + 2 crowds per image",
                     "KiB/image", "GiB", "ms/image on cpu at batch 5", "h for all images"):
        assert expected in text, expected
    assert not out.exists()
    assert (tmp_path / "feats.zarr.manifest.parquet").exists()  # the default manifest, scanned now


def test_a_run_prints_its_summary_and_a_rerun_resumes(images, tmp_path):
    args = ["extract", "--data", str(images), "--out", str(tmp_path / "feats.zarr"), *SMALL]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 written now, 0 before, 2 in all" in _text(first) and "10 (10 cached, 0 not cached)" in _text(first)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "0 written now, 2 before, 2 in all" in _text(again)


@pytest.mark.parametrize(("extra", "message"), [
    (["--scheduler", "tcp://127.0.0.1:1", "--dask-workers", "2"], "--scheduler and --dask-workers exclude each other"),
    (["--teacher", ""], "pass --teacher:"),
    (["--render-device", "gpu"], "--render-device takes cpu or cuda, got 'gpu'"),
    (["--manifest", "missing.parquet"], "does not exist"),
])
def test_refusals_exit_2_before_any_work(images, tmp_path, extra, message):
    out = tmp_path / "feats.zarr"
    result = runner.invoke(app, ["extract", "--data", str(images), "--out", str(out), "--dry-run", *SMALL, *extra])
    assert result.exit_code == 2, result.output
    assert message in _text(result)
    assert not out.exists()


def test_an_output_inside_the_images_is_refused(images):
    result = runner.invoke(app, ["extract", "--data", str(images), "--out", str(images / "feats.zarr"), "--dry-run",
                                 *SMALL])
    assert result.exit_code == 2 and "is inside (or is) the input --data" in _text(result)
    assert not (images / "feats.zarr").exists() and not (images / "feats.zarr.manifest.parquet").exists()
