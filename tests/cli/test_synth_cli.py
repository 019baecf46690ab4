"""``dpal-cache synth`` end to end through typer's test runner."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from dpal_cache.cli import _register, app

_register()
runner = CliRunner()
TINY = ["--ids", "3", "--images-per-id", "2", "--cameras", "2", "--workers", "1", "--set", "height=64",
        "--set", "width=32"]  # fmt: skip


def test_synth_writes_a_data_set_and_prints_a_summary(tmp_path: Path):
    out = tmp_path / "s"
    result = runner.invoke(app, ["synth", "--out", str(out), *TINY, "--distractors", "2", "--crowd-backgrounds", "1"])
    assert result.exit_code == 0, result.output
    assert "bounding_box_train" in result.output and "query" in result.output
    assert len(list((out / "bounding_box_train").glob("*.jpg"))) == 4  # round(3 * 0.5) = 2 train ids, 2 images each
    assert len(list((out / "bounding_box_test").glob("0000_*.jpg"))) == 2
    assert (out / "backgrounds" / "bg_00000.jpg").is_file()
    assert (out / "attributes.parquet").is_file() and (out / "synth.yaml").is_file()
    # an earlier synth output may be regenerated in place
    assert runner.invoke(app, ["synth", "--out", str(out), *TINY]).exit_code == 0


def test_config_file_and_bad_values(tmp_path: Path):
    cfg = tmp_path / "synth.yaml"
    cfg.write_text("ids: 2\nimages_per_id: 2\nheight: 48\nwidth: 24\nworkers: 1\n")
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "a"), "--config", str(cfg), "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "seed: 4" in (tmp_path / "a" / "synth.yaml").read_text()

    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "b"), "--ids", "0"])
    assert bad.exit_code == 2 and "ids" in bad.output
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "b"), "--set", "cameras=12"])
    assert bad.exit_code == 2 and "cameras" in bad.output


def test_refuses_a_foreign_non_empty_folder_unless_overwrite(tmp_path: Path):
    (tmp_path / "keep.txt").write_text("x")
    refused = runner.invoke(app, ["synth", "--out", str(tmp_path), *TINY])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    forced = runner.invoke(app, ["synth", "--out", str(tmp_path), *TINY, "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "keep.txt").is_file() and (tmp_path / "query").is_dir()


def test_help_lists_the_options():
    result = runner.invoke(app, ["synth", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--ids", "--images-per-id", "--cameras", "--seed", "--crowd-backgrounds",
                   "--distractors", "--workers", "--config", "--set", "--overwrite"):  # fmt: skip
        assert option in result.output, option
