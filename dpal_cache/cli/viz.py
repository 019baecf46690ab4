"""``dpal-cache viz``: pictures. ``viz views`` draws a contact sheet of augmented views.

    dpal-cache viz views --data data/LUP1M --out grid.png --n 16 [--seed 0] [--config configs/views.yaml]
    dpal-cache viz views --data data/LUP1M --manifest manifest.parquet   # crowds skip failed images
    dpal-cache viz views --data data/LUP1M --index 3 --index 40 --set crowd.mode=release
"""

from __future__ import annotations

from pathlib import Path

import typer

from dpal_cache.cli import app
from dpal_cache.cli.common import CONFIG_HELP, SET_HELP, console, fail, progress_bar, resolve_config, setup_logging

viz_app = typer.Typer(
    help="Pictures: augmented views, learned patterns, loss curves.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(viz_app, name="viz", help="Pictures: augmented views, learned patterns, loss curves.")


@viz_app.command("views")
def views(
    data: Path = typer.Option(..., "--data", help="Image folder, list file (.txt/.csv/.parquet) or LMDB."),
    out: Path = typer.Option(Path("views.png"), "--out", help="PNG to write."),
    n: int = typer.Option(16, "--n", min=1, help="Number of images (rows), spread evenly over the dataset."),
    index: list[int] = typer.Option(None, "--index", help="Show these image indices instead (repeatable)."),
    manifest: Path | None = typer.Option(
        None, "--manifest", help="Manifest from `dpal-cache scan`: crowds then use only images that decoded."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Views seed (config key `seed`)."),
    epoch: int = typer.Option(0, "--epoch", min=0, help="Epoch whose local crops are shown."),
    background: Path | None = typer.Option(
        None, "--background", help="Folder of crowd backgrounds (config key `crowd.background_dir`)."
    ),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Draw each image's global views, crowd image(s) and local crops, labelled, into one PNG."""
    setup_logging(verbose)
    # imported here so `dpal-cache --help` does not pay for torch
    from dpal_cache.data.manifest import ok_indices, read_manifest
    from dpal_cache.data.sources import SourceError, open_source
    from dpal_cache.views.config import ViewsConfig
    from dpal_cache.views.preview import preview_grid, preview_indices

    cfg = resolve_config(ViewsConfig, config, sets, seed=seed, **{"crowd.background_dir": background})
    try:
        source = open_source(data)
    except SourceError as exc:
        raise fail(str(exc)) from None
    ok = None
    if manifest is not None:
        try:
            table = read_manifest(manifest)
        except (OSError, ValueError) as exc:
            raise fail(str(exc)) from None
        if table.num_rows != len(source):
            raise fail(f"{manifest} has {table.num_rows} rows but {data} has {len(source)} images: not its manifest")
        ok = ok_indices(table)
    if index:
        bad = [i for i in index if not 0 <= i < len(source)]
        if bad:
            raise fail(f"--index {bad[0]} is out of range: the source has {len(source)} images")
        indices = list(index)
    else:
        indices = preview_indices(len(source), n)
    with progress_bar(transient=True) as progress:
        task = progress.add_task("rendering", total=len(indices), rate="")
        try:
            sheet = preview_grid(
                source, indices, cfg, epoch=epoch, ok_indices=ok, on_row=lambda _: progress.advance(task)
            )
        except SourceError as exc:  # e.g. a bad background folder
            raise fail(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    console.print(
        f"[green]wrote[/] {out} ({sheet.width}x{sheet.height}): {len(indices)} images, "
        f"{cfg.views_per_image} views, {cfg.crowds_per_image} crowd ({cfg.crowd.mode}), "
        f"{cfg.local_crops.count} local crops, seed {cfg.seed}"
    )
