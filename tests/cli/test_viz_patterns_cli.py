"""``dpal-cache viz patterns`` and ``viz curves``: files written and named in the output, clean failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpal_cache import cli

cli._register()
runner = CliRunner()


def _text(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines at the terminal width


def _joined(result) -> str:
    return "".join(result.output.split())  # log lines may still break a path anywhere


@pytest.fixture(scope="module")
def store(tiny_store_factory) -> tuple[Path, Path]:
    """(store, image folder): 3 ids x 2 synthetic 64x32 persons, random ViT-Ti teacher, no crowds."""
    return tiny_store_factory("viz_cli", ids=3, crowds=0, shard_images=6, batch_size=6)


def test_patterns_writes_the_report_and_says_where(store, tmp_path):
    url, folder = store
    out = tmp_path / "viz"
    result = runner.invoke(cli.app, ["viz", "patterns", "--store", str(url), "--data", str(folder), "--model",
                                     "random:vit_tiny_patch16", "--out", str(out), "--n", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    text = _joined(result)
    assert "UNTRAINED" in text and str(out / "report.md") in text and str(out / "embedding.png") in text
    assert (out / "patterns.png").is_file() and (out / "embedding.png").is_file()
    assert not (out / "crowds.png").exists()  # a store without crowd images: no crowd figure
    report = (out / "report.md").read_text()
    assert "(patterns.png)" in report and "(embedding.png)" in report and "crowds.png" not in report
    assert json.loads((out / "report.json").read_text())["model"]["trained"] is False


@pytest.mark.parametrize("args, message", [
    (["--model", "random:no_such_net"], "unknown student"),
    (["--model", "missing.safetensors"], "no student weights"),
])
def test_patterns_fails_cleanly(store, tmp_path, args, message):
    url, folder = store
    result = runner.invoke(cli.app, ["viz", "patterns", "--store", str(url), "--data", str(folder),
                                     "--out", str(tmp_path / "viz"), *args])
    assert result.exit_code == 2 and message in _text(result), result.output


def test_patterns_refuses_a_folder_that_is_no_store(tmp_path):
    result = runner.invoke(cli.app, ["viz", "patterns", "--store", str(tmp_path), "--data", str(tmp_path),
                                     "--model", "random:vit_tiny_patch16"])
    assert result.exit_code == 2 and "error" in _text(result)


def test_curves_default_output_and_missing_log(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "lr": 1e-3, "loss": 2.0, "global": 1.5,
                                                   "local": 0.5, "relation": 0.0}) + "\n")
    result = runner.invoke(cli.app, ["viz", "curves", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "curves.png").is_file() and str(run / "curves.png") in _joined(result)
    result = runner.invoke(cli.app, ["viz", "curves", str(tmp_path / "nope"), "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 2 and "no metrics.jsonl" in _text(result)
