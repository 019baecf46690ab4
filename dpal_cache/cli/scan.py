"""``dpal-cache scan``: list, hash and decode every image of a source into a Parquet manifest.

    dpal-cache scan --data /data/LUP1M --out manifest.parquet
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from dpal_cache.cli import app
from dpal_cache.cli.common import CONFIG_HELP, SET_HELP, console, fail, progress_bar, resolve_config, setup_logging
from dpal_cache.data.manifest import ScanConfig, ScanSummary, scan
from dpal_cache.data.sources import SourceError, open_source


def _print_summary(summary: ScanSummary, max_failed_fraction: float) -> None:
    table = Table(title=f"scan: {summary.out}", show_header=False)
    table.add_row("images", f"{summary.total:,}")
    table.add_row("ok", f"{summary.ok:,}")
    table.add_row("failed", f"{summary.failed:,} ({summary.failed_fraction:.2%}, limit {max_failed_fraction:.2%})")
    table.add_row("read", f"{summary.bytes_read / 2**20:,.1f} MiB")
    table.add_row("time", f"{summary.seconds:.1f} s ({summary.images_per_second:,.0f} images/s)")
    console.print(table)
    if summary.failures_by_reason:
        reasons = Table(title="failures by reason")
        reasons.add_column("reason")
        reasons.add_column("count", justify="right")
        for reason, count in summary.failures_by_reason.items():
            reasons.add_row(reason, f"{count:,}")
        console.print(reasons)
        examples = Table(title="first failures")
        examples.add_column("key")
        examples.add_column("reason")
        examples.add_column("detail", overflow="fold")
        for key, reason, detail in summary.examples:
            examples.add_row(key, reason, detail or "")
        console.print(examples)


@app.command("scan")
def scan_command(
    data: Path = typer.Option(..., "--data", help="Image folder (searched recursively), list file (.txt/.csv/.parquet "
                              "with a 'path' column) or LUPerson-style LMDB folder."),
    out: Path = typer.Option(..., "--out", help="Manifest to write (Parquet)."),
    root: Path | None = typer.Option(None, "--root", help="Folder that list-file paths are relative to "
                                     "(default: the list file's folder)."),
    workers: int | None = typer.Option(None, "--workers", help="Worker processes (0 = one per core, 1 = none)."),
    max_failed_fraction: float | None = typer.Option(
        None, "--max-failed-fraction", help="Exit with code 1 when more than this fraction of images fails "
        "(default 0.01). Failed images are recorded either way."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help="Refuse images with more pixels than this "
                                          "(decompression-bomb guard)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing manifest at --out."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Record every image of a source in a manifest: key, size, content hash, size in pixels, status.

    Corrupt, unreadable or oversized images are recorded with their reason, never fatal. The
    manifest numbers the images; every later stage joins on its `index` column.
    """
    setup_logging(verbose)
    cfg = resolve_config(
        ScanConfig,
        config,
        sets,
        workers=workers,
        max_failed_fraction=max_failed_fraction,
        **({"decode.max_pixels": max_pixels} if max_pixels is not None else {}),
    )
    if out.is_dir():
        raise fail(f"{out} is a folder: --out names the manifest file to write (e.g. manifest.parquet)")
    if out.exists() and not overwrite:
        raise fail(f"{out} exists; pass --overwrite to replace it")
    try:
        source = open_source(data, root)
    except SourceError as exc:
        raise fail(str(exc)) from None
    with progress_bar() as bar:
        task = bar.add_task("scan", total=len(source), rate="")

        def advance(n: int) -> None:
            done = bar.tasks[task].completed + n
            elapsed = bar.tasks[task].elapsed or 0.0
            bar.update(task, advance=n, rate=f"{done / elapsed:,.0f} img/s" if elapsed > 0 else "")

        summary = scan(source, out, cfg, progress=advance)
    _print_summary(summary, cfg.max_failed_fraction)
    if summary.failed_fraction > cfg.max_failed_fraction:
        console.print(f"[bold red]{summary.failed_fraction:.2%} of images failed, above "
                      f"--max-failed-fraction {cfg.max_failed_fraction:.2%}[/]")
        raise typer.Exit(1)
