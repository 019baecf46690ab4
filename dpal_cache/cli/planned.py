"""Commands the product will have but that are not built yet: each says so and exits with code 2."""

from __future__ import annotations

import typer

from dpal_cache.cli.common import console

# command -> (one-line help, issue that builds it)
PLANNED: dict[str, tuple[str, int]] = {}


def register(app: typer.Typer) -> None:
    """Add a placeholder command for every planned feature that is not built yet."""
    for name, (help_text, issue) in PLANNED.items():

        def placeholder(ctx: typer.Context, _name: str = name, _issue: int = issue) -> None:
            console.print(f"[yellow]`dpal-cache {_name}` is not built yet[/] (planned in issue {_issue}).")
            raise typer.Exit(2)

        app.command(
            name,
            help=f"{help_text} [NOT BUILT YET]",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )(placeholder)
