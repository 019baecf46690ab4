"""The ``dpal-cache`` command line: a thin typer layer over the library.

    dpal-cache --help
"""

from __future__ import annotations

import typer

from dpal_cache import __version__

app = typer.Typer(
    name="dpal-cache",
    help="Offline teacher-feature caching for DPAL distillation of lightweight human-centric ViTs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: paragraphs reflow to any width (80 columns, pipes, CI logs) and no word is cut
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dpal-cache {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Offline teacher-feature caching for DPAL distillation of lightweight human-centric ViTs."""


_registered = False


def _register() -> None:
    """Import the command modules (each adds its command to ``app``); safe to call repeatedly."""
    global _registered
    if _registered:
        return
    from dpal_cache.cli import synth, scan, extract, inspect, train, viz, export, evaluate, demo, study, bench  # noqa: F401, I001  (each adds a command; help order)

    _registered = True


def main() -> None:
    _register()
    app()
