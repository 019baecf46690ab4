"""``viz curves``: a training run's loss components and learning rate against the optimizer step.

Reads ``RUN_DIR/metrics.jsonl`` (one JSON object per logged step, written by ``train.loop``) and
draws two panels: every loss component that was logged and is not identically zero (log-scale y
when all values are positive and span more than two decades), and the learning rate.

    plot_curves(Path("runs/vit_tiny"), Path("curves.png"))   # or: dpal-cache viz curves runs/vit_tiny
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from dpal_cache.train.losses import LOSS_KEYS
from dpal_cache.viz import draw

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PANEL_SIZE = (760, 340)
TOTAL_INK = (20, 20, 20)  # the total loss in black, components in colour


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The logged steps of a run (``RUN_DIR/metrics.jsonl``, or that file itself), torn lines skipped.

    Raises:
        FileNotFoundError: no metrics file. ValueError: it holds no step.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} at {path}: pass a `dpal-cache train` run directory "
                                "(it appears after the first logged step)")
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1  # a line torn by a kill, or one being written right now
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
        else:
            bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable line(s)", path, bad)
    if not records:
        raise ValueError(f"{path} holds no logged step yet (empty or unreadable): train for at least log_every steps")
    return sorted(records, key=lambda r: r["step"])


def _column(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that carry a number for ``key``."""
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs, strict=True)
    return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def use_log_scale(values: np.ndarray) -> bool:
    """Log-scale y when every finite value is positive and they span more than two decades."""
    v = values[np.isfinite(values)]
    return bool(v.size) and bool((v > 0).all()) and math.log10(v.max() / v.min()) > 2


def plot_curves(run_dir: str | Path, out_png: str | Path) -> Path:
    """Draw the loss components (top) and learning rate (bottom) of a run into ``out_png``.

    Args:
        run_dir: a ``dpal-cache train`` run directory (or its ``metrics.jsonl``).
        out_png: the PNG to write (parent folders are created).

    Returns:
        The path written.
    """
    records = read_metrics(run_dir)
    losses = {}
    for key in LOSS_KEYS:
        steps, values = _column(records, key)
        if steps.size and np.any(values[np.isfinite(values)] != 0):
            losses[key] = (steps, values)
    if not losses:
        raise ValueError(f"{run_dir}: no loss component with a non-zero value was logged")
    all_values = np.concatenate([v for _, v in losses.values()])
    log_y = use_log_scale(all_values)
    first, last = records[0]["step"], records[-1]["step"]
    what = f"{len(records)} logged steps, {first:g} to {last:g}" if len(records) > 1 else f"one logged step ({first:g})"
    panels = [draw.line_chart(losses, title="loss components" + (" (log scale)" if log_y else ""), xlabel="step",
                              ylabel="loss", size=PANEL_SIZE, log_y=log_y,
                              colours={"loss": TOTAL_INK})]
    steps, lr = _column(records, "lr")
    if steps.size:
        panels.append(draw.line_chart({"lr": (steps, lr)}, title="learning rate", xlabel="step", ylabel="lr",
                                      size=PANEL_SIZE, show_legend=True))  # a legend keeps the panels aligned
    run_name = Path(run_dir).resolve().name if Path(run_dir).is_dir() else Path(run_dir).resolve().parent.name
    fig = draw.vstack(panels, title=f"Training curves: {run_name}", notes=[what])
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.save(out)
    log.info("%s: %s", out, what)
    return out
