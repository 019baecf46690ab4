"""``dpal-cache train``: a student + pattern decoder from a feature store, or online from the teacher.

    dpal-cache train --store feats.zarr --data /data/LUP1M --out runs/vit_tiny
    dpal-cache train --store feats.zarr --data /data/LUP1M --out runs/vit_tiny --resume
    dpal-cache train --teacher path-b --checkpoint path_b.pth --data /data/LUP1M --out runs/online
    torchrun --standalone --nproc_per_node 8 --no-python dpal-cache train ...   # pipelines/train_ddp.sh

Under torchrun every rank runs this command; only rank 0 shows the progress bar and the summary
(rank 0 also writes every file of the run directory).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Self

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
from dpal_cache.train.config import TrainConfig
from dpal_cache.train.decoders import DECODERS_HELP
from dpal_cache.train.losses import LOSS_KEYS
from dpal_cache.train.student_names import STUDENTS_HELP


def _user_errors() -> tuple[type[Exception], ...]:
    """What a user can get wrong before the first step (ConfigError is a ValueError); each message says what to do."""
    from dpal_cache.data.sources import SourceError
    from dpal_cache.store.io import StoreError
    from dpal_cache.train.errors import StoreMismatch

    return (StoreMismatch, StoreError, SourceError, FileExistsError, FileNotFoundError, ImportError, ValueError)


def _summary_table(summary, run_dir: Path) -> Table:
    table = Table(title=f"train: {run_dir}", show_header=False, caption="losses: first -> last step of this run")
    resumed = f", resumed at step {summary.step - summary.steps:,}" if summary.step != summary.steps else ""
    table.add_row("steps", f"{summary.steps:,} in this run{resumed}: step {summary.step:,} of "
                  f"{summary.total_steps:,} (epoch {summary.epochs_done:.2f})")
    table.add_row("time", f"{summary.seconds:.1f} s")
    if summary.parameters:
        table.add_row("parameters", f"student {summary.parameters['student'] / 1e6:.2f}M, decoder "
                      f"{summary.parameters['decoder'] / 1e6:.2f}M")
    first, last = summary.first, summary.last
    for key in LOSS_KEYS:
        if key in last:
            table.add_row(key, f"{first.get(key, float('nan')):.4f} -> {last[key]:.4f}")
    for name in ("last.pt", "metrics.jsonl", "config.yaml"):
        if (run_dir / name).exists():
            table.add_row(name, str(run_dir / name))
    return table


def _online(cfg: TrainConfig, teacher: str, checkpoint: Path | None, extract_config: Path | None,
            manifest: Path | None, data: Path, root: Path | None, out: Path, device: str | None, resume: bool,
            progress) -> Any:
    """Online mode: the teacher computes the targets in the loop (dpal_cache.train.online)."""
    from dpal_cache.cli.extract import manifest_for
    from dpal_cache.extract.config import ExtractConfig

    extract_cfg = resolve_config(ExtractConfig, extract_config, [], teacher=teacher, checkpoint=checkpoint,
                                 device=device)
    try:
        from dpal_cache.train.online import train_online
    except ModuleNotFoundError as exc:
        if exc.name != "dpal_cache.train.online":
            raise
        raise fail("online mode (--teacher) is not available in this dpal-cache: "
                   "train from a store (--store)") from None
    source, table = manifest_for(data, root, manifest, str(out))
    return train_online(cfg, extract_cfg, source, table, out, resume=resume, progress=progress)


@app.command("train")
def train_command(
    data: Path = typer.Option(..., "--data", help="The images the store was extracted from (same as for extract)."),
    out: Path = typer.Option(..., "--out", help="Run directory: config.yaml, metrics.jsonl, last.pt, tb/."),
    store: str | None = typer.Option(None, "--store", help="Feature store from `dpal-cache extract` "
                                     "(local path or fsspec URL)."),
    teacher: str | None = typer.Option(None, "--teacher", help="Online mode instead of --store: the teacher runs "
                                       f"in the loop ({TEACHERS_HELP})."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Online mode: teacher weights file."),
    extract_config: Path | None = typer.Option(None, "--extract-config", help="Online mode: YAML of extract "
                                               "settings (views, precision...) the targets are computed with."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Online mode: manifest from `dpal-cache scan` "
                                         "(default: OUT.manifest.parquet, scanned now if missing)."),
    root: Path | None = typer.Option(None, "--root", help="Folder list-file paths are relative to."),
    student: str | None = typer.Option(None, "--student", help=f"{STUDENTS_HELP}, or a timm ViT / Swin name."),
    decoder: str | None = typer.Option(None, "--decoder", help=f"Pattern decoder: {DECODERS_HELP}."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs the run trains, and the warmup + cosine "
                                      "learning-rate schedule spans (default 100)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps (a "
                                         "time box: the warmup and the learning-rate schedule still span --epochs; "
                                         "for a short complete run set --epochs instead). --resume goes on."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Samples per process and step (default 256)."),
    lr: float | None = typer.Option(None, "--lr", help="Base learning rate, scaled by global batch / 256."),
    workers: int | None = typer.Option(None, "--workers", help="DataLoader workers per process (default 4)."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    render_device: str | None = typer.Option(None, "--render-device", help=RENDER_DEVICE_HELP),
    ema: float | None = typer.Option(None, "--ema", help="Keep an EMA of the student with this decay (e.g. 0.996)."),
    seed: int | None = typer.Option(None, "--seed", help="Model init and data order."),
    tensorboard: bool | None = typer.Option(None, "--tensorboard/--no-tensorboard", help="Also write TensorBoard "
                                            "scalars to OUT/tb (needs: pip install tensorboard)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where last.pt left it."),
    fresh_views: bool = typer.Option(False, "--fresh-views", help="Online mode: new global views and crowd images "
                                     "every epoch, each seen by the teacher (the paper's training), instead of "
                                     "replaying the views a store would hold."),
    skip_changed: bool = typer.Option(False, "--skip-changed", help="Drop images whose bytes changed since the "
                                      "scan instead of failing."),
    background_dir: Path | None = typer.Option(None, "--background-dir", help="Where the crowd backgrounds are on "
                                               "this machine (default: the path stored at extract)."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP + " Example: configs/train.yaml."),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging; tracebacks on errors."),
) -> None:
    """Train a student + pattern decoder (D-PaDe by default) from a feature store, without the teacher.

    Writes OUT/config.yaml, OUT/metrics.jsonl (one line per logged step) and OUT/last.pt (every
    checkpoint_every steps and at the end). OUT must be new, empty or a run's own folder; a new run
    into a folder that holds last.pt is refused. --resume continues exactly, with the run's config
    and process count. Online mode (--teacher) computes the targets in the loop; --fresh-views
    draws new views every epoch. Multi-GPU: run this command under torchrun (pipelines/train_ddp.sh).
    """
    main = int(os.environ.get("RANK", "0")) == 0
    setup_logging(verbose)
    if not main:
        logging.getLogger().setLevel(logging.WARNING)
    if store is not None and teacher is not None:
        raise fail("--store and --teacher exclude each other: train from a feature store (--store) or with the "
                   "teacher in the loop (--teacher), not both")
    if store is None and teacher is None:
        raise fail("pass --store FEATS.zarr (train from a feature store) or --teacher NAME (online mode)")
    if store is not None:
        given = [f"--{n}" for n, v in (("checkpoint", checkpoint), ("extract-config", extract_config),
                                       ("manifest", manifest)) if v is not None]
        if given:
            raise fail(f"{', '.join(given)} only apply to online mode (--teacher); a store carries its own")
        if fresh_views:
            raise fail("--fresh-views needs the teacher in the loop (--teacher instead of --store): a store holds "
                       "only the views it was extracted with")
    cfg = resolve_config(
        TrainConfig, config, sets, epochs=epochs, max_steps=max_steps, batch_size=batch_size, workers=workers,
        device=device, ema_decay=ema, seed=seed, tensorboard=tensorboard, background_dir=background_dir,
        render=render_mode(render_device, device),
        skip_changed=True if skip_changed else None, fresh_views=True if fresh_views else None,
        **{"student.name": student, "decoder.kind": decoder, "optim.base_lr": lr},
    )
    from dpal_cache.devices import resolve_device
    from dpal_cache.train.students import resolve_timm_name

    try:
        resolve_timm_name(cfg.student.name)
        resolve_device(cfg.device)
    except (ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from None

    try:
        with _StepBar() as bar:
            if teacher is not None:
                summary = _online(cfg, teacher, checkpoint, extract_config, manifest, data, root, out, device,
                                  resume, bar)
            else:
                from dpal_cache.data.sources import open_source
                from dpal_cache.train.loop import train

                summary = train(cfg, store, open_source(data, root), out, resume=resume, progress=bar)
    except _user_errors() as exc:
        if verbose:
            console.print_exception()
        raise fail(str(exc)) from None
    if main:
        console.print(_summary_table(summary, out))


class _StepBar:
    """The progress bar of optimizer steps, shown from the first step on (the loop reports on rank 0 only)."""

    def __init__(self) -> None:
        self.bar = progress_bar()
        self.task: int | None = None
        self.samples_per_s: float | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("train", total=record["total_steps"], rate="")
        if record.get("samples_per_s") is not None:  # only on logged steps
            self.samples_per_s = record["samples_per_s"]
        text = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}"
        if self.samples_per_s is not None:
            text += f"  {self.samples_per_s:,.1f} samples/s"
        self.bar.update(self.task, total=record["total_steps"], completed=record["step"], rate=text)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.bar.stop()
