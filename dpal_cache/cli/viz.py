"""``dpal-cache viz``: pictures. ``views``: a contact sheet of augmented views; ``patterns``: teacher vs
student patch-token PCA, masks, crowds and class-token embedding with a report; ``curves``: a run's losses.

    dpal-cache viz views --data data/LUP1M --out grid.png --n 16 [--seed 0] [--config configs/views.yaml]
    dpal-cache viz views --data data/LUP1M --manifest manifest.parquet   # crowds skip failed images
    dpal-cache viz views --data data/LUP1M --index 3 --index 40 --set crowd.mode=release
    dpal-cache viz patterns --store feats.zarr --data data/LUP1M --model student.safetensors --out viz/ [--n 6]
    dpal-cache viz patterns --store feats.zarr --data data/LUP1M --model random:vit_tiny_patch16 --out viz_untrained/
    dpal-cache viz curves runs/vit_tiny [--out curves.png]
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


@viz_app.command("patterns")
def patterns(
    store: str = typer.Option(..., "--store", help="Feature store (path or fsspec URL) from `dpal-cache extract`."),
    data: Path = typer.Option(..., "--data", help="The images the store was extracted from (same --data as extract)."),
    model: str = typer.Option(
        ..., "--model", help="Exported student (student.safetensors, with student.json next to it), or "
        "random:<student> (e.g. random:vit_tiny_patch16) for an UNTRAINED baseline at the store's view size."
    ),
    out: Path = typer.Option(Path("patterns"), "--out", help="Folder for the PNGs and report.md / report.html."),
    n: int = typer.Option(6, "--n", min=1, help="Images in the pattern and crowd figures, spread over the store."),
    embed_ids: int = typer.Option(10, "--embed-ids", min=1, help="Identities in the class-token embedding."),
    embed_per_id: int = typer.Option(4, "--embed-per-id", min=1, help="Images per identity in the embedding."),
    seed: int = typer.Option(0, "--seed", help="Initialisation seed of a random: student."),
    device: str = typer.Option("auto", "--device", help="Where the student runs: auto, cpu, cuda, cuda:1..."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Teacher vs student patterns (the paper's Figure 5 on real data), with a markdown/HTML report.

    Patch-token PCA maps (teacher: store, student: same views), masks, crowd maps, class tokens by identity.
    """
    setup_logging(verbose)
    from dpal_cache.data.sources import SourceError
    from dpal_cache.devices import resolve_device
    from dpal_cache.store.io import StoreError
    from dpal_cache.viz.patterns import PatternError, pattern_report

    try:
        resolve_device(device)  # cuda on a machine without it: an error line before any work
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    stages = ["reading the store", "patch tokens", "crowd images", "class-token embedding", "report"]
    with progress_bar(transient=True) as progress:
        task = progress.add_task("patterns", total=len(stages), rate="")

        def advance(stage: str) -> None:
            progress.update(task, completed=stages.index(stage), description=stage)

        try:
            result = pattern_report(store, data, model, out, n=n, embed_ids=embed_ids, embed_per_id=embed_per_id,
                                    device=device, seed=seed, progress=advance)
        except (PatternError, StoreError, SourceError, FileNotFoundError, ValueError) as exc:
            raise fail(str(exc)) from None
    stats = result["stats"]
    label = result["model"]["label"]
    # soft_wrap: paths stay whole on one line, to copy
    console.print(f"[green]wrote[/] {result['files']['report']} (and report.html) for {label}", soft_wrap=True)
    for name in ("patterns", "crowds", "embedding"):
        if name in result["files"]:
            console.print(f"  {name:<10} {result['files'][name]}", soft_wrap=True)
    nn = stats["embedding"]["nn_same_identity"]
    line = f"  mask IoU with the teacher {stats['patches']['mask_iou']:.2f}"
    if nn["teacher"] is not None:
        line += f"; 1-NN same identity: teacher {nn['teacher']:.2f}, student {nn['student']:.2f}"
    console.print(line)


@viz_app.command("curves")
def curves(
    run_dir: Path = typer.Argument(..., help="A `dpal-cache train` run directory (holds metrics.jsonl)."),
    out: Path | None = typer.Option(None, "--out", help="PNG to write (default RUN_DIR/curves.png)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Plot a run's loss components (log scale when they span > 2 decades) and learning rate against the step."""
    setup_logging(verbose)
    from dpal_cache.viz.curves import plot_curves

    target = out or (run_dir / "curves.png" if run_dir.is_dir() else Path("curves.png"))
    try:
        path = plot_curves(run_dir, target)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(f"[green]wrote[/] {path}", soft_wrap=True)
