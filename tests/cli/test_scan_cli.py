"""``dpal-cache scan`` end to end through typer's test runner: exit codes, summary, config and input errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from dpal_cache.cli import _register, app
from dpal_cache.data.manifest import manifest_metadata, read_manifest

_register()
runner = CliRunner()


def _images(folder: Path, good: int, bad: int = 1) -> Path:
    """``good`` small JPEGs and ``bad`` text files named .jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(good):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8 + i % 3, 6, 3), dtype=np.uint8)).save(buf, "JPEG")
        (folder / f"img_{i:04d}.jpg").write_bytes(buf.getvalue())
    for i in range(bad):
        (folder / f"zz_broken_{i}.jpg").write_text("not an image")
    return folder


def _scan(*args: str):
    return runner.invoke(app, ["scan", *args])


def _text(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_few_failures_pass_the_default_threshold(tmp_path: Path):
    data = _images(tmp_path / "imgs", good=120, bad=1)  # 1/121 = 0.8% <= 1%
    out = tmp_path / "m.parquet"
    result = _scan("--data", str(data), "--out", str(out))
    assert result.exit_code == 0, result.output
    for text in ("121", "120", "failures by reason", "not_an_image", "zz_broken_0.jpg"):
        assert text in _text(result), text
    table = read_manifest(out)
    assert table.num_rows == 121
    assert table.column("status").to_pylist().count("failed") == 1
    assert not (tmp_path / "m.parquet.partial").exists()


def test_too_many_failures_exit_1_unless_the_threshold_allows(tmp_path: Path):
    data = _images(tmp_path / "imgs", good=10, bad=1)  # 9.1% failed
    out = tmp_path / "m.parquet"
    result = _scan("--data", str(data), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "above --max-failed-fraction" in _text(result) and "not_an_image" in _text(result)
    assert read_manifest(out).num_rows == 11  # failed images are recorded either way

    result = _scan("--data", str(data), "--out", str(out), "--overwrite", "--max-failed-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert manifest_metadata(read_manifest(out))["scan"]["max_failed_fraction"] == 0.5


def test_refuses_to_overwrite_without_the_flag(tmp_path: Path):
    data = _images(tmp_path / "imgs", good=3, bad=0)
    out = tmp_path / "m.parquet"
    out.write_bytes(b"precious")
    refused = _scan("--data", str(data), "--out", str(out))
    assert refused.exit_code == 2 and "--overwrite" in _text(refused)
    assert out.read_bytes() == b"precious"
    forced = _scan("--data", str(data), "--out", str(out), "--overwrite")
    assert forced.exit_code == 0, forced.output
    assert read_manifest(out).num_rows == 3


def test_config_from_set_file_and_options(tmp_path: Path):
    data = _images(tmp_path / "imgs", good=4, bad=0)
    result = _scan("--data", str(data), "--out", str(tmp_path / "a.parquet"), "--set", "workers=1",
                   "--set", "chunk_size=2", "--set", "decode.min_side=9")  # fmt: skip
    assert result.exit_code == 1, result.output  # every image is 6 wide, under min_side 9
    table = read_manifest(tmp_path / "a.parquet")
    assert table.column("reason").to_pylist() == ["too_small"] * 4
    scan_cfg = manifest_metadata(table)["scan"]
    assert (scan_cfg["workers"], scan_cfg["chunk_size"], scan_cfg["decode"]["min_side"]) == (1, 2, 9)
    assert "too_small" in _text(result)

    cfg = tmp_path / "scan.yaml"
    cfg.write_text("workers: 2\nrow_group_size: 1000\n")
    result = _scan("--data", str(data), "--out", str(tmp_path / "b.parquet"), "--config", str(cfg),
                   "--workers", "1", "--max-pixels", "50")  # fmt: skip
    assert result.exit_code == 1, result.output
    table = read_manifest(tmp_path / "b.parquet")
    # 6 wide and 8, 9, 10, 8 high: 48 pixels pass, 54 and 60 do not
    assert table.column("reason").to_pylist() == [None, "too_many_pixels", "too_many_pixels", None]
    scan_cfg = manifest_metadata(table)["scan"]
    assert (scan_cfg["workers"], scan_cfg["row_group_size"], scan_cfg["decode"]["max_pixels"]) == (1, 1000, 50)
    assert "too_many_pixels" in _text(result)


def test_bad_config_key_names_it(tmp_path: Path):
    data = _images(tmp_path / "imgs", good=2, bad=0)
    result = _scan("--data", str(data), "--out", str(tmp_path / "m.parquet"), "--set", "nosuch=1")
    assert result.exit_code == 2 and "nosuch" in _text(result)
    result = _scan("--data", str(data), "--out", str(tmp_path / "m.parquet"), "--max-failed-fraction", "2")
    assert result.exit_code == 2 and "max_failed_fraction" in _text(result)
    assert not (tmp_path / "m.parquet").exists()


def test_missing_or_empty_data_is_a_clear_error(tmp_path: Path):
    result = _scan("--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m.parquet"))
    assert result.exit_code == 2 and "does not exist" in _text(result)
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    (tmp_path / "empty").mkdir()
    result = _scan("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m.parquet"))
    assert result.exit_code == 2 and "no images found" in _text(result)
    assert not (tmp_path / "m.parquet").exists()


def test_list_file_with_root(tmp_path: Path):
    data = _images(tmp_path / "imgs", good=5, bad=1)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "pick.txt").write_text("img_0003.jpg\nimg_0001.jpg\nzz_broken_0.jpg\n")
    out = tmp_path / "m.parquet"
    result = _scan("--data", str(lists / "pick.txt"), "--root", str(data), "--out", str(out),
                   "--max-failed-fraction", "0.5")  # fmt: skip
    assert result.exit_code == 0, result.output
    table = read_manifest(out)
    assert table.column("key").to_pylist() == ["img_0003.jpg", "img_0001.jpg", "zz_broken_0.jpg"]
    assert table.column("status").to_pylist() == ["ok", "ok", "failed"]
    assert manifest_metadata(table)["source"]["root"] == str(data.resolve())

    # without --root the paths are relative to the list's folder, where there are no images
    result = _scan("--data", str(lists / "pick.txt"), "--out", str(tmp_path / "n.parquet"))
    assert result.exit_code == 1 and "missing" in _text(result)
