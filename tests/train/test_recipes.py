"""The named recipes in configs/recipes/: every key is a config field, and each train recipe trains."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dpal_cache.config import load_config
from dpal_cache.data.sources import open_source
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.train.config import TrainConfig
from dpal_cache.train.loop import train

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"
SMALL = ["batch_size=4", "workers=0", "device=cpu", "log_every=1", "max_steps=2"]  # the recipe, on a CPU


def test_the_extract_recipe_loads():
    cfg = load_config(ExtractConfig, RECIPES / "extract-pathb-lup1m.yaml")
    assert cfg.teacher == "path-b" and cfg.gram
    assert cfg.views.global_view.size == (256, 128) and cfg.views.crowd.size == (256, 256)


@pytest.mark.parametrize("name", ["train-paper-pathb-vit_tiny.yaml", "train-release-pathb-vit_tiny.yaml"])
def test_each_train_recipe_loads_and_trains(name, store, tmp_path, read_metrics):
    cfg = load_config(TrainConfig, RECIPES / name)
    assert cfg.student.name == "vit_tiny_patch16" and cfg.batch_size == 256 and cfg.epochs == 100
    if "release" in name:
        assert cfg.student.last_block_heads == 12 and cfg.optim.clip_grad is None and cfg.optim.min_lr == 0.0
        assert cfg.ema_schedule == "cosine" and cfg.loss.relation == "gram"
        assert cfg.decoder.router_ce_weight_late == 0.01
    small = load_config(TrainConfig, RECIPES / name, SMALL)
    summary = train(small, store.url, open_source(store.folder), tmp_path / "run")
    assert summary.steps == 2 and all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "run"))
