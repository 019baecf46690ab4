"""``dpal-cache viz views``: writes a PNG, honours config/--set/--seed/--index, fails cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dpal_cache import cli

cli._register()
runner = CliRunner()
def _text(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines at the terminal width


SMALL = ["--set", "global_view.size=[64, 32]", "--set", "local_crops.size=[32, 24]", "--set", "crowd.size=[64, 64]"]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (80, 36, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return folder


def test_views_writes_a_png(data: Path, tmp_path: Path):
    out = tmp_path / "sub" / "grid.png"
    result = runner.invoke(cli.app, ["viz", "views", "--data", str(data), "--out", str(out), "--n", "2", *SMALL])
    assert result.exit_code == 0, result.output
    assert "grid.png" in _text(result) and "2 images" in _text(result)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 64 * 4


def test_views_options_and_config_file(data: Path, tmp_path: Path):
    config = tmp_path / "views.yaml"
    config.write_text("crowd:\n  mode: release\nviews_per_image: 3\n")
    out = tmp_path / "grid.png"
    args = ["viz", "views", "--data", str(data), "--out", str(out), "--config", str(config), "--seed", "5"]
    result = runner.invoke(cli.app, [*args, "--index", "3", "--index", "1", *SMALL, "--set", "local_crops.count=1"])
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "3 views" in text and "release" in text and "seed 5" in text and "1 local crops" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "crowd.persons=[0, 2]"], "persons"),
        (["--set", "nonsense=1"], "nonsense"),
        (["--index", "99"], "out of range"),
    ],
)
def test_views_bad_input_exits_2(data: Path, tmp_path: Path, extra, message):
    result = runner.invoke(cli.app, ["viz", "views", "--data", str(data), "--out", str(tmp_path / "g.png"), *extra])
    assert result.exit_code == 2 and message in _text(result)


def test_views_with_a_manifest(data: Path, tmp_path: Path):
    (data / "9_broken.jpg").write_bytes(b"not an image")
    manifest = tmp_path / "manifest.parquet"
    scanned = runner.invoke(cli.app, ["scan", "--data", str(data), "--out", str(manifest), "--workers", "1"])
    assert manifest.is_file(), scanned.output
    out = tmp_path / "grid.png"
    args = ["viz", "views", "--data", str(data), "--out", str(out), "--manifest", str(manifest), *SMALL]
    result = runner.invoke(cli.app, [*args, "--set", "crowd.persons=[4, 4]", "--set", "crowds_per_image=3"])
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output  # no crowd reached the broken image
    (data / "extra.jpg").write_bytes((data / "0.jpg").read_bytes())
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2 and "not its manifest" in _text(result)


def test_missing_data_exits_2(tmp_path: Path):
    args = ["viz", "views", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "g.png")]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2 and "does not exist" in _text(result)


def test_viz_is_built():
    result = runner.invoke(cli.app, ["viz", "--help"])
    assert result.exit_code == 0 and "views" in result.output
