"""``dpal-cache export``: a training run's student as a plain timm backbone (+ a JSON config next to it).

    dpal-cache export runs/vit_tiny --out student.safetensors [--ema]
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from dpal_cache.cli import app
from dpal_cache.cli.common import console, fail, setup_logging
from dpal_cache.train.export import export_student


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A `dpal-cache train` run directory (holds last.pt)."),
    out: Path = typer.Option(..., "--out", help="Weights to write (.safetensors); OUT.json is written next to it."),
    ema: bool = typer.Option(False, "--ema", help="Export the EMA of the student (the run must have kept one)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Export the trained student as a plain timm backbone (decoder dropped)."""
    setup_logging(verbose)
    try:
        info = export_student(run_dir, out, ema=ema)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    height, width = info["img_size"]
    teacher = info["teacher"] or {}
    table = Table(title=f"export: {run_dir}", show_header=False)
    table.add_row("student", f"{info['timm_name']} ({info['parameters']:,} parameters)")
    table.add_row("input", f"{height}x{width}, ImageNet mean/std")
    table.add_row("weights", f"{'EMA' if ema else 'live'} at step {info['run']['step']:,}")
    table.add_row("teacher", str(teacher.get("name", "?")))
    table.add_row("targets from", str(info["store"]))
    table.add_row("wrote", f"{info['weights']}\n{info['config']}")
    console.print(table)
    console.print(f"load with timm.create_model({info['timm_name']!r}, pretrained=True, "
                  f"pretrained_cfg_overlay=dict(file={info['weights']!r}), **timm_kwargs), "
                  f"timm_kwargs from {info['config']}"
                  + (f"; then set its set_attributes ({len(info['set_attributes'])} of them, the release's "
                     "last-block heads: see dpal_cache.train.students.apply_attributes)" if info["set_attributes"]
                     else ""))
