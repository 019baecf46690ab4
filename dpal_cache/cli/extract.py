"""``dpal-cache extract``: run the frozen teacher once and write its features to a Zarr store.

    dpal-cache extract --teacher path-b --checkpoint path_b.pth --data /data/LUP1M --out feats.zarr
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from dpal_cache.cli import app
from dpal_cache.cli.common import (
    CONFIG_HELP,
    RENDER_DEVICE_HELP,
    SET_HELP,
    TEACHERS_HELP,
    console,
    fail,
    progress_bar,
    render_mode,
    resolve_config,
    setup_logging,
)
from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
from dpal_cache.data.sources import SourceError, data_folder, open_source
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.views.config import ViewsConfig

if TYPE_CHECKING:  # both import torch: the CLI imports them when a command runs
    from dpal_cache.extract.estimate import ExtractEstimate
    from dpal_cache.extract.run import ExtractSummary


def _default_manifest(out: str) -> Path | None:
    return Path(str(out).rstrip("/") + ".manifest.parquet") if "://" not in str(out) else None


def manifest_for(data: Path, root: Path | None, manifest: Path | None, out: str):
    source = open_source(data, root)
    if manifest is None:
        manifest = _default_manifest(out)
        if manifest is None:
            raise fail("remote --out: pass --manifest (made with `dpal-cache scan`)")
        if not manifest.exists():
            console.print(f"no --manifest given: scanning {data} into {manifest}")
            with progress_bar() as bar:
                task = bar.add_task("scan", total=len(source), rate="")
                scan(source, manifest, ScanConfig(), progress=lambda n: bar.update(task, advance=n))
    return source, read_manifest(manifest)


def _extract_on_cluster(scheduler: str | None, dask_workers: int | None, **kwargs):
    """``extract_distributed`` on the cluster at ``scheduler``, or on a local one of ``dask_workers`` processes."""
    from distributed import Client, LocalCluster

    from dpal_cache.extract.cluster import extract_distributed
    from dpal_cache.teachers import CheckpointError

    if logging.getLogger().level > logging.DEBUG:  # dask logs every connection at INFO; keep -v for that
        logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        if scheduler is not None:
            try:
                client = Client(scheduler)
            except OSError as exc:
                raise fail(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
            with client:
                return extract_distributed(client=client, **kwargs)
        with LocalCluster(n_workers=dask_workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            return extract_distributed(client=client, **kwargs)
    except (SourceError, CheckpointError, FileNotFoundError) as exc:  # raised on a worker setting up the run
        raise fail(f"a dask worker could not set up the run: {exc}") from None


def _open_inputs(cfg: ExtractConfig, data: Path, root: Path | None, manifest: Path | None, out: str, load: bool):
    """(source, manifest table, teacher or None without ``load``) after the checks that come before anything is
    written (the default manifest lands beside OUT); every refusal exits with code 2."""
    from dpal_cache.extract.run import check_store_apart
    from dpal_cache.store.io import StoreError, check_store_location
    from dpal_cache.teachers import CheckpointError, load_teacher

    try:
        check_store_apart(out, data_folder(data))
        check_store_location(out)
        source, table = manifest_for(data, root, manifest, out)
        model = load_teacher(cfg.teacher, cfg.checkpoint, pos_embed=cfg.pos_embed, seed=cfg.teacher_seed) if load \
            else None
    except (SourceError, StoreError, CheckpointError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    return source, table, model


def _with_progress(total: int, run):
    """``run(progress)`` under the extract progress bar (images/s); store and source errors exit with code 2."""
    from dpal_cache.store.io import StoreError

    with progress_bar() as bar:
        task = bar.add_task("extract", total=total, rate="")

        def advance(n: int, failed: int) -> None:
            t = bar.tasks[task]
            done = t.completed + n
            bar.update(task, advance=n, rate=f"{done / t.elapsed:,.1f} img/s" if t.elapsed else "")

        try:
            return run(advance)
        except (StoreError, SourceError) as exc:
            raise fail(str(exc)) from None


def _estimate_table(out: str, estimate: ExtractEstimate) -> Table:
    """The ``--dry-run`` report of an ``ExtractEstimate``."""
    t = Table(title=f"dry run: {out}", show_header=False)
    layout, per = estimate.layout, estimate.bytes_per_image
    t.add_row("teacher", f"{estimate.teacher} ({estimate.embed_dim} dims)")
    t.add_row("images", f"{estimate.images:,} in {layout.n_shards} blocks of {layout.shard_images}")
    t.add_row("rows", f"{layout.views_per_image} views + {layout.crowds_per_image} crowds per image")
    t.add_row("size (uncompressed)", f"{per / 2**10:,.1f} KiB/image, {estimate.total_bytes / 2**30:,.2f} GiB")
    t.add_row("time (teacher only)", f"{estimate.seconds_per_image * 1000:,.1f} ms/image on {estimate.device} at "
              f"batch {estimate.batch_size}: {estimate.hours:,.2f} h for all images (decode/render/write overlap it)")
    return t


def _summary_table(out: str, summary: ExtractSummary) -> Table:
    """What an extract run did: blocks, images (not cached ones by reason) and time."""
    t = Table(title=f"extract: {out}", show_header=False)
    t.add_row("blocks", f"{summary.blocks_written} written now, {summary.blocks_done_before} before, "
              f"{summary.blocks_total} in all")
    t.add_row("images", f"{summary.images:,} ({summary.ok:,} cached, {summary.failed:,} not cached)")
    for reason, count in summary.failures_by_reason.items():
        t.add_row(f"  not cached: {reason}", f"{count:,}")
    t.add_row("time", f"{summary.seconds:.1f} s")
    return t


@app.command("extract")
def extract_command(
    data: Path = typer.Option(..., "--data", help="Images: folder, list file (.txt/.csv/.parquet) or LMDB folder."),
    out: str = typer.Option(..., "--out", help="Store to write: a local path or an fsspec URL (s3://, gs://...)."),
    teacher: str | None = typer.Option(None, "--teacher", help=f"Required: {TEACHERS_HELP}."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Teacher weights file (.pth/.safetensors)."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Manifest from `dpal-cache scan` "
                                         "(default: OUT.manifest.parquet, scanned now if missing)."),
    root: Path | None = typer.Option(None, "--root", help="Folder list-file paths are relative to."),
    views: int | None = typer.Option(None, "--views", help="Cached global views per image (default 2)."),
    crowds: int | None = typer.Option(None, "--crowds", help="Cached crowd images per image (default 1)."),
    precision: str | None = typer.Option(None, "--precision", help="Token precision: fp16 (default) or int8."),
    map_precision: str | None = typer.Option(None, "--map-precision", help="Attention maps: fp16 (default) or log8 "
                                             "(uint8 log codes, about 4x smaller)."),
    gram: bool | None = typer.Option(None, "--gram/--no-gram", help="Also store the release's gram relation."),
    mask_at_extract: float | None = typer.Option(None, "--mask-at-extract", help="Store tokens multiplied by "
                                                 "(mask score > THRESHOLD) instead of full tokens; training gives "
                                                 "the zeroed rows local-loss weight 0."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per teacher batch (default "
                                          f"{ExtractConfig.batch_size}; each brings its views and crowds)."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    render_device: str | None = typer.Option(None, "--render-device", help=RENDER_DEVICE_HELP),
    workers: int | None = typer.Option(None, "--workers", help="Decode/render worker processes (default "
                                       f"{ExtractConfig.workers}: one per core minus one; 0 = in this process)."),
    seed: int | None = typer.Option(None, "--seed", help=f"Seed of every view and crowd recipe (default "
                                    f"{ViewsConfig.seed})."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dpal-cache store instead of "
                                   "resuming it (a folder holding anything else is never replaced)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Run one task per block on the dask cluster "
                                         "at tcp://HOST:PORT (every worker must reach --data, --manifest, the "
                                         "checkpoint and --out; see pipelines/extract_multinode.sh)."),
    dask_workers: int | None = typer.Option(None, "--dask-workers", min=1, help="Run one task per block on a "
                                            "local dask cluster of N single-threaded worker processes."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the store's size, layout and a time estimate "
                                 "(teacher forward timed on random batches); extract nothing."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the frozen teacher over every image's views and crowd images; write a sharded Zarr store.

    Re-running the same command resumes from the first unfinished block. A store made with a
    different config, teacher or manifest is refused (use --overwrite or a new --out), and so is a
    store another extract is writing (OUT.lock beside it). OUT must be new, empty or a dpal-cache
    store, and apart from the images' folder. Exit codes: 0 done (images that are not cached are
    listed by reason and kept in the store's failures/), 2 refused or stopped (disk full: free space
    and re-run the same command).
    """
    setup_logging(verbose)
    if scheduler is not None and dask_workers is not None:
        raise fail("--scheduler and --dask-workers exclude each other")
    distributed = scheduler is not None or dask_workers is not None
    cfg = resolve_config(
        ExtractConfig, config, sets, teacher=teacher, checkpoint=checkpoint, token_precision=precision,
        map_precision=map_precision, gram=gram, mask_at_extract=mask_at_extract, batch_size=batch_size,
        device=device, workers=workers, render=render_mode(render_device, device),
        **{k: v for k, v in {"views.views_per_image": views, "views.crowds_per_image": crowds,
                             "views.seed": seed}.items() if v is not None},
    )
    if not cfg.teacher:
        raise fail(f"pass --teacher: {TEACHERS_HELP}")
    # on a cluster the workers load the teacher; the weights need not be readable here
    source, table, model = _open_inputs(cfg, data, root, manifest, out, load=dry_run or not distributed)
    if dry_run:
        from dpal_cache.extract.estimate import estimate_extract

        with console.status("timing the teacher on random batches"):
            estimate = estimate_extract(cfg, len(source), model)
        console.print(_estimate_table(out, estimate))
        return
    from dpal_cache.extract.run import extract

    if distributed:
        summary = _with_progress(len(source), lambda progress: _extract_on_cluster(
            scheduler, dask_workers, cfg=cfg, data=data, root=root, manifest_path=manifest or _default_manifest(out),
            out=out, overwrite=overwrite, progress=progress))
    else:
        summary = _with_progress(len(source), lambda progress: extract(
            cfg, source, table, out, teacher=model, overwrite=overwrite, progress=progress))
    console.print(_summary_table(out, summary))
