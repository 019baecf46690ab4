"""``dpal-cache synth``: generate a deterministic synthetic pedestrian data set (Market-1501 layout).

    dpal-cache synth --out data/synth --ids 100 --images-per-id 10 --distractors 50
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from dpal_cache.cli import app
from dpal_cache.cli.common import CONFIG_HELP, SET_HELP, console, fail, progress_bar, resolve_config, setup_logging
from dpal_cache.synth import SynthConfig, SynthSummary, synthesize
from dpal_cache.synth.market import plan


def _print_summary(summary: SynthSummary) -> None:
    table = Table(title=f"synth: {summary.out_dir}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("bounding_box_train", f"{summary.train:,} images, {summary.train_ids:,} ids")
    table.add_row("bounding_box_test", f"{summary.gallery:,} images + {summary.distractors:,} distractors")
    table.add_row("query", f"{summary.query:,} images, {summary.test_ids:,} ids")
    table.add_row("masks", f"{summary.masks:,}")
    table.add_row("backgrounds", f"{summary.backgrounds:,}")
    rate = summary.images / summary.seconds if summary.seconds > 0 else 0.0
    table.add_row("time", f"{summary.seconds:.1f} s ({rate:,.0f} images/s)")
    console.print(table)


@app.command("synth")
def synth_command(
    out: Path = typer.Option(..., "--out", help="Output folder (created; must be empty or an earlier synth output)."),
    ids: int | None = typer.Option(None, "--ids", help="Number of person identities (default 20)."),
    images_per_id: int | None = typer.Option(None, "--images-per-id", help="Images of each identity (default 6)."),
    cameras: int | None = typer.Option(None, "--cameras", help="Number of cameras, 2..9 (default 6)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed; the same seed gives byte-identical files."),
    crowd_backgrounds: int | None = typer.Option(
        None, "--crowd-backgrounds", help="Person-free scenes to write under backgrounds/ (default 0)."
    ),
    distractors: int | None = typer.Option(
        None, "--distractors", help="Id-0000 gallery images: empty scenes or cut-off people (default 0)."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Render processes (0 = one per core, 1 = none)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Also write into a non-empty folder that is not a synth output "
        "(synth's own sub-folders there are replaced)."
    ),  # fmt: skip
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Render procedural pedestrians with part masks and attributes, in the Market-1501 layout.

    Writes bounding_box_train/, bounding_box_test/, query/, masks/, attributes.parquet and synth.yaml.

    Every query has a gallery match from another camera. Any --workers gives byte-identical files.
    """
    setup_logging(verbose)
    cfg = resolve_config(
        SynthConfig,
        config,
        sets,
        ids=ids,
        images_per_id=images_per_id,
        cameras=cameras,
        seed=seed,
        crowd_backgrounds=crowd_backgrounds,
        distractors=distractors,
        workers=workers,
    )
    with progress_bar() as bar:
        task = bar.add_task("synth", total=len(plan(cfg)), rate="")

        def advance(n: int) -> None:
            done = bar.tasks[task].completed + n
            elapsed = bar.tasks[task].elapsed or 0.0
            bar.update(task, advance=n, rate=f"{done / elapsed:,.0f} img/s" if elapsed > 0 else "")

        try:
            summary = synthesize(out, cfg, progress=advance, overwrite=overwrite)
        except ValueError as exc:
            raise fail(str(exc)) from None
    _print_summary(summary)
