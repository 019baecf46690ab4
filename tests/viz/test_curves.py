"""``plot_curves``: panels from metrics.jsonl, one-line logs, torn lines, scale choice, clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpal_cache.viz import draw
from dpal_cache.viz.curves import plot_curves, read_metrics, use_log_scale


def write_metrics(run_dir: Path, steps, decay: float = 30.0, extra: str = "") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in steps:
        g, loc, rel = 3 * math.exp(-s / decay) + 1e-3, 2 * math.exp(-s / (2 * decay)), 0.5
        lines.append(json.dumps({"step": s, "epoch": s / 10, "lr": 1e-3 * min(1, s / 10), "loss": g + loc + rel,
                                 "global": g, "local": loc, "relation": rel, "router_ce": 0.0, "expert_l2": 0.0,
                                 "samples_per_s": 100.0, "data_wait": 0.1}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n" + extra)
    return run_dir


def test_two_panels_with_every_nonzero_component(tmp_path):
    run = write_metrics(tmp_path / "run", range(1, 301, 3))
    out = plot_curves(run, tmp_path / "plots" / "curves.png")
    with Image.open(out) as img:
        arr = np.asarray(img.convert("RGB"))
    assert img.width >= 700 and img.height > 2 * 300  # two stacked panels
    seen = draw.colours_used(img)
    assert draw.colour(1) in seen and draw.colour(2) in seen and draw.colour(3) in seen  # global, local, relation
    assert draw.colour(4) not in seen  # router_ce is all zero: not drawn, no fifth colour
    lr_panel = arr[arr.shape[0] // 2 + 60:]
    assert (lr_panel == draw.colour(0)).all(axis=2).sum() > 100  # the learning-rate line


def test_one_line_file_and_torn_last_line(tmp_path):
    run = write_metrics(tmp_path / "run", [1], extra='{"step": 2, "loss"')
    assert len(read_metrics(run)) == 1
    out = plot_curves(run / "metrics.jsonl", tmp_path / "one.png")  # the file itself is accepted too
    with Image.open(out) as img:
        assert draw.colour(1) in draw.colours_used(img)


def test_scale_choice():
    assert use_log_scale(np.array([1e-3, 0.5, 2.0]))
    assert not use_log_scale(np.array([0.1, 2.0]))  # under two decades
    assert not use_log_scale(np.array([0.0, 1e-4, 2.0]))  # a zero: linear


def test_missing_and_empty_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl"):
        plot_curves(tmp_path / "nothing", tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no logged step"):
        plot_curves(tmp_path / "empty", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
