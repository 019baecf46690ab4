"""``dpal-cache eval``: reid / attributes / parsing tables and JSON, --teacher side by side, saved features
recompute to the same numbers, and clean failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpal_cache import cli
from dpal_cache.eval.reid import metrics_from_features

cli._register()
runner = CliRunner()
MODEL = ["--model", "random:vit_tiny_patch16", "--img-size", "64x32", "--device", "cpu"]


def _text(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines at the terminal width


def test_eval_is_built():
    result = runner.invoke(cli.app, ["eval", "--help"])
    assert result.exit_code == 0
    assert all(name in _text(result) for name in ("reid", "attributes", "parsing", "recompute"))


def test_reid_table_json_and_recompute(market: Path, tmp_path: Path):
    feats, out = tmp_path / "feats.npz", tmp_path / "reid.json"
    args = ["eval", "reid", "--data", str(market), *MODEL, "--save-features", str(feats), "--json", str(out)]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "Rank-1" in text and "mAP" in text and "UNTRAINED" in text
    saved = json.loads(out.read_text())
    assert saved["metrics"] == metrics_from_features(feats)["metrics"]
    assert saved["model"]["trained"] is False

    result = runner.invoke(cli.app, ["eval", "recompute", str(feats)])
    assert result.exit_code == 0, result.output
    assert f"{100 * saved['metrics']['mAP']:.2f}" in _text(result)


def test_reid_beside_a_teacher(market: Path, tmp_path: Path):
    feats, out = tmp_path / "feats.npz", tmp_path / "reid.json"
    args = ["eval", "reid", "--data", str(market), *MODEL, "--teacher", "random:vit_tiny", "--json", str(out),
            "--save-features", str(feats)]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "student / teacher" in _text(result) and "top-10 agreement" in _text(result)
    report = json.loads(out.read_text())
    assert set(report) >= {"student", "teacher", "ratio", "topk_agreement"}
    assert report["teacher"]["metrics"] == metrics_from_features(tmp_path / "feats.teacher.npz")["metrics"]


def test_attributes_and_parsing_with_default_labels_and_masks(market: Path, tmp_path: Path):
    out = tmp_path / "attrs.json"
    result = runner.invoke(cli.app, ["eval", "attributes", "--data", str(market), *MODEL, "--max-iter", "20",
                                     "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "mA (label-based)" in _text(result)
    assert json.loads(out.read_text())["n_test"] == 12

    out = tmp_path / "parsing.json"
    result = runner.invoke(cli.app, ["eval", "parsing", "--data", str(market), *MODEL, "--max-iter", "10",
                                     "--pixels-per-image", "50", "--teacher", "random:vit_tiny", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "mIoU (all classes, SCHP)" in _text(result) and "mmseg" in _text(result)
    assert json.loads(out.read_text())["student"]["n_test_images"] == 14


@pytest.mark.parametrize("extra, message", [
    (["--model", "nowhere/student.safetensors"], "no student weights"),
    (["--model", "random:not_a_model"], "unknown student"),
    ([*MODEL, "--img-size", "64by32"], "HEIGHTxWIDTH"),
    ([*MODEL, "--save-features", "feats.parquet"], ".npz"),
    ([*MODEL, "--teacher", "no-such-teacher"], "unknown teacher"),
])  # fmt: skip
def test_reid_fails_cleanly(market: Path, extra, message):
    result = runner.invoke(cli.app, ["eval", "reid", "--data", str(market), *extra])
    assert result.exit_code == 2, result.output
    assert message in _text(result)


def test_missing_data_fails_cleanly(tmp_path: Path):
    result = runner.invoke(cli.app, ["eval", "reid", "--data", str(tmp_path), *MODEL])
    assert result.exit_code == 2 and "query" in _text(result)
    result = runner.invoke(cli.app, ["eval", "attributes", "--data", str(tmp_path), *MODEL])
    assert result.exit_code == 2 and "no label table" in _text(result)
