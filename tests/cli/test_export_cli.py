"""``dpal-cache export`` through typer's test runner: files, summary, timm round trip, error exits."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from typer.testing import CliRunner

from dpal_cache.cli import _register, app
from dpal_cache.config import to_dict
from dpal_cache.train.checkpoint import save_checkpoint
from dpal_cache.train.config import TrainConfig
from dpal_cache.train.decoders import build_decoder
from dpal_cache.train.decoders.config import DecoderConfig
from dpal_cache.train.losses import LossConfig
from dpal_cache.train.model import DistillModel
from dpal_cache.train.students import build_student

_register()
runner = CliRunner()


def _run_dir(path: Path, ema: bool):
    """A run directory with a one-block ViT-Ti student, saved as the training loop saves it."""
    torch.manual_seed(0)
    student = build_student("vit_tiny_patch16", img_size=(64, 32), depth=1)
    model = DistillModel(student, build_decoder("linear", student.embed_dim, 192), LossConfig(),
                         DecoderConfig(kind="linear"), (4, 2), (4, 4))
    path.mkdir()
    save_checkpoint(path / "last.pt", {
        "config": to_dict(TrainConfig()), "model": model.state_dict(), "optimizer": {},
        "ema": student.state_dict() if ema else None, "step": 3, "epoch": 0, "batch_in_epoch": 3,
        "rng_cpu": torch.get_rng_state(), "rng_cuda": None,
        "student": {"timm_name": student.timm_name, "timm_kwargs": student.timm_kwargs},
        "store": {"url": "feats.zarr", "teacher": {"name": "random:vit_tiny", "embed_dim": 192}, "views_seed": 0},
    })
    return student.eval()


def _text(result) -> str:
    return " ".join(result.output.split())


def test_export_writes_a_timm_loadable_backbone(tmp_path):
    student = _run_dir(tmp_path / "run", ema=True)
    out = tmp_path / "student.safetensors"
    for extra in ([], ["--ema"]):
        result = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        for text in ("vit_tiny_patch16_224", "64x32", "random:vit_tiny", "feats.zarr", "timm_kwargs from"):
            assert text in _text(result), text
        assert ("EMA" if extra else "live") in _text(result)
        info = json.loads((tmp_path / "student.json").read_text())
        model = timm.create_model(info["timm_name"], pretrained=True, pretrained_cfg_overlay={"file": str(out)},
                                  **info["timm_kwargs"]).eval()
        x = torch.randn(2, 3, 64, 32)
        with torch.no_grad():
            assert (model.forward_features(x) - student.backbone.forward_features(x)).abs().max().item() == 0.0


def test_export_errors_exit_2(tmp_path):
    _run_dir(tmp_path / "run", ema=False)
    cases = [
        (["export", str(tmp_path / "run"), "--out", str(tmp_path / "s.safetensors"), "--ema"], "no EMA"),
        (["export", str(tmp_path / "missing"), "--out", str(tmp_path / "s.safetensors")], "no run directory"),
        (["export", str(tmp_path / "run"), "--out", str(tmp_path / "s.bin")], ".safetensors"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert message in _text(result)
    assert not list(tmp_path.glob("s.*"))


def test_export_help_lists_its_options():
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    assert "--ema" in result.output
