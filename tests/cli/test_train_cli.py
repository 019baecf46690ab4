"""``dpal-cache train`` through typer's test runner: a run with its summary, resume, refusals, online mode."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dpal_cache.cli import _register, app
from dpal_cache.config import load_config
from dpal_cache.train.config import TrainConfig
from dpal_cache.train.loop import TrainSummary

_register()
runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST = ["--batch-size", "4", "--workers", "0", "--device", "cpu", "--decoder", "linear", "--set", "log_every=1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    """(store, images): 10 synthetic persons extracted by a random ViT-Ti, made with the CLI itself."""
    root = tmp_path_factory.mktemp("train_cli")
    synth = runner.invoke(app, ["synth", "--out", str(root / "synth"), "--ids", "5", "--images-per-id", "2",
                                "--workers", "1", "--set", "train_fraction=1.0", "--set", "height=64",
                                "--set", "width=32"])
    assert synth.exit_code == 0, synth.output
    images = root / "synth" / "bounding_box_train"
    url = str(root / "feats.zarr")
    extract = runner.invoke(app, ["extract", "--teacher", "random:vit_tiny", "--data", str(images), "--out", url,
                                  "--workers", "0", "--device", "cpu", "--batch-size", "5",
                                  "--set", "views.global_view.size=[64, 32]", "--set", "views.crowd.size=[64, 64]",
                                  "--set", "views.local_crops.size=[32, 16]", "--set", "shard_images=5",
                                  "--set", "calibration_images=4"])
    assert extract.exit_code == 0, extract.output
    return url, images


def _text(result) -> str:
    return " ".join(result.output.split())


def test_the_config_file_holds_every_default():
    assert load_config(TrainConfig, CONFIGS / "train.yaml") == TrainConfig()


def test_help_lists_the_options():
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--store", "--data", "--out", "--student", "--decoder", "--epochs", "--max-steps", "--batch-size",
                   "--lr", "--workers", "--device", "--ema", "--resume", "--skip-changed", "--background-dir",
                   "--config", "--set", "--teacher", "--checkpoint", "--extract-config", "--manifest",
                   "--tensorboard"):
        assert option in result.output, option


def test_train_prints_a_summary_and_resumes(store, tmp_path):
    url, images = store
    out = tmp_path / "run"
    args = ["train", "--store", url, "--data", str(images), "--out", str(out), "--config", str(CONFIGS / "train.yaml"),
            *FAST, "--ema", "0.9", "--lr", "0.02", "--epochs", "5"]
    result = runner.invoke(app, [*args, "--max-steps", "3"])
    assert result.exit_code == 0, result.output
    text = _text(result)
    for expected in ("train:", "steps", "3 in this run: step 3 of 15", "loss", "relation", "last.pt",
                     "metrics.jsonl", "warmup epochs (30 steps) are longer than the 5 epochs"):
        assert expected in text, expected
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["ema_decay"] == 0.9 and cfg["optim"]["base_lr"] == 0.02 and cfg["decoder"]["kind"] == "linear"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3

    again = runner.invoke(app, [*args, "--max-steps", "3"])
    assert again.exit_code == 2 and "pass --resume" in _text(again)
    other = runner.invoke(app, [*args, "--max-steps", "5", "--resume", "--decoder", "mae"])
    assert other.exit_code == 2 and "decoder.kind: run has 'linear', now 'mae'" in _text(other)
    resumed = runner.invoke(app, [*args, "--max-steps", "5", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "2 in this run, resumed at step 3: step 5 of 15" in _text(resumed)  # not "5": 2 steps ran
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_bad_combinations_exit_with_code_2(store, tmp_path, monkeypatch):
    url, images = store
    base = ["train", "--data", str(images), "--out", str(tmp_path / "run"), *FAST, "--max-steps", "1"]
    cases = [
        (["--store", url, "--teacher", "random:vit_tiny"], "--store and --teacher exclude each other"),
        ([], "pass --store"),
        (["--store", url, "--manifest", "m.parquet"], "--manifest only apply to online mode"),
        (["--store", url, "--fresh-views"], "--fresh-views needs the teacher in the loop"),
        (["--store", url, "--set", "loss.relation=gram"], "re-extract with --gram"),
        (["--store", url, "--student", "resnet_nope"], "unknown student"),
        (["--store", url, "--decoder", "big"], "decoder.kind"),
        (["--store", str(tmp_path / "nothing.zarr")], "no feature store"),
        (["--store", url, "--tensorboard"], "pip install tensorboard"),
    ]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in _text(result), (extra, result.output)
    assert not (tmp_path / "run").exists()


def test_online_mode_hands_the_teacher_config_to_train_online(store, tmp_path, monkeypatch):
    _, images = store
    calls = []

    def train_online(cfg, extract_cfg, source, manifest_table, run_dir, resume=False, progress=None):
        calls.append((cfg, extract_cfg, source, manifest_table, run_dir, resume))
        progress({"step": 1, "total_steps": 1, "loss": 1.0, "lr": 1e-4, "samples_per_s": 2.0})
        return TrainSummary(run_dir=run_dir, steps=1, first={"loss": 1.0}, last={"loss": 1.0})

    extract_yaml = tmp_path / "extract.yaml"
    extract_yaml.write_text("views:\n  global_view:\n    size: [64, 32]\n")
    out = tmp_path / "online"
    args = ["train", "--teacher", "random:vit_tiny", "--extract-config", str(extract_yaml), "--data", str(images),
            "--out", str(out), *FAST]
    monkeypatch.setitem(sys.modules, "dpal_cache.train.online", None)
    missing = runner.invoke(app, args)
    assert missing.exit_code == 2 and "online mode (--teacher) is not available" in _text(missing)

    monkeypatch.setitem(sys.modules, "dpal_cache.train.online", types.SimpleNamespace(train_online=train_online))
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    (cfg, extract_cfg, source, table, run_dir, resume), = calls
    assert extract_cfg.teacher == "random:vit_tiny" and extract_cfg.views.global_view.size == (64, 32)
    assert extract_cfg.device == "cpu" and cfg.decoder.kind == "linear" and resume and run_dir == out
    assert len(source) == table.num_rows == 10
    assert Path(str(out) + ".manifest.parquet").is_file()  # scanned, as extract does without --manifest
    assert "train:" in _text(result)
