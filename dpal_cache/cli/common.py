"""Shared CLI plumbing: the console, logging through rich, config resolution and progress bars."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dpal_cache.config import ConfigError, load_config
from dpal_cache.teachers.registry import known_teachers

T = TypeVar("T")

console = Console(stderr=True)

CONFIG_HELP = "YAML file with config keys (see configs/); CLI options override it."
SET_HELP = "Override a config key: --set key=value (value parsed as YAML; dotted keys for sections). Repeatable."

# the registered teachers, for --teacher help and errors (the registry is the one list)
TEACHERS_HELP = ", ".join([n for n in known_teachers() if not n.startswith(("timm:", "random:"))]
                          + ["timm:<model> with --checkpoint", "random:<arch> (random weights: mechanics only)"])


def setup_logging(verbose: bool = False) -> None:
    """Route library logging through rich (library code logs; only the CLI prints)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
        force=True,
    )


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise (not re-wrapped: paths in it stay whole)."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


RENDER_DEVICE_HELP = ("Where views are rendered: cpu (data workers, one image at a time) or cuda (the batched "
                      "renderer with GPU JPEG decoding, where the model runs). Default: the model's device.")


def render_mode(render_device: str | None, model_device: str | None = "auto") -> str | None:
    """``--render-device`` -> the config's ``render`` (workers / device); None keeps the config's own. The batched
    renderer runs where the model runs: ``cuda`` needs the model on CUDA."""
    if render_device is None:
        return None
    kind = render_device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise fail(f"--render-device takes cpu or cuda, got {render_device!r}")
    if kind == "cuda":
        import torch

        model = (model_device or "auto").split(":")[0]
        if model == "cpu" or (model == "auto" and not torch.cuda.is_available()):
            raise fail("--render-device cuda renders where the model runs: it needs the model on CUDA (--device cuda)")
    return "workers" if kind == "cpu" else "device"


def output_file(value: Path | None) -> Path | None:
    """Callback of options that name a file to write (``--json``...): a folder is refused before any work runs.
    An existing file is replaced."""
    if value is not None and value.is_dir():
        raise typer.BadParameter(f"{value} is a folder: name the file to write")
    return value


def parse_size(text: str | None, option: str) -> tuple[int, int] | None:
    """``--opt 256x128`` -> (256, 128); None stays None; anything else exits with code 2."""
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise fail(f"{option} takes HEIGHTxWIDTH, e.g. 256x128; got {text!r}") from None
    if h <= 0 or w <= 0:
        raise fail(f"{option} must be positive, got {text!r}")
    return h, w


def resolve_config(cls: type[T], config: Path | None, sets: list[str] | None, **options: Any) -> T:
    """Build a stage config from YAML + --set + explicit options; config errors exit with code 2."""
    try:
        return load_config(cls, config, sets or [], options)
    except ConfigError as exc:
        raise fail(f"bad config: {exc}") from None


def progress_bar(transient: bool = False) -> Progress:
    """The progress bar every long CLI command shows."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )
