"""``dpal-cache info`` and ``dpal-cache verify``: describe a feature store, and check it against its sources.

    dpal-cache info feats.zarr
    dpal-cache verify feats.zarr --data /data/LUP1M --sample 64 --json verify.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from dpal_cache.cli import app
from dpal_cache.cli.common import console, fail, render_mode, setup_logging


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # pragma: no cover


def _shape(shape: list[int] | None) -> str:
    return "-" if shape is None else "x".join(str(s) for s in shape)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    console.print(f"wrote {path}")


# tables of many columns: one space between columns and no frame, so they fit 80 columns (logs, pipes, CI)
NARROW = {"box": box.SIMPLE_HEAD, "padding": (0, 1), "pad_edge": False, "show_edge": False}


def _arrays_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"arrays: {report['url']}", **NARROW)
    table.add_column("array", no_wrap=True)
    for name in ("shape", "dtype", "chunk / shard", "on disk", "ratio"):  # only "chunk / shard" wraps (at " / ")
        table.add_column(name, justify="left" if name == "dtype" else "right", no_wrap=name != "chunk / shard")
    for a in report["arrays"]:
        ratio = a["compression_ratio"]
        layout = _shape(a["chunks"]) + ("" if a["shards"] is None else f" / {_shape(a['shards'])}")
        table.add_row(a["path"], _shape(a["shape"]), a["dtype"], layout, _size(a["bytes_stored"]),
                      "-" if ratio is None else f"{ratio:.2f}x")
    return table


def _summary_table(report: dict[str, Any]) -> Table:
    c, b, t, v, p = report["completion"], report["bytes"], report["teacher"] or {}, report["views"], report["precision"]
    table = Table(title="store", show_header=False)
    table.add_row("format", f"version {report['format_version']}, written by dpal-cache {report['dpal_cache_version']}")
    state = "complete" if c["complete"] else "[yellow]incomplete[/] (re-run extract to resume)"
    table.add_row("blocks", f"{c['blocks_done']:,} / {c['blocks_total']:,} done: {state}")
    table.add_row("images", f"{c['images_total']:,}: {c['images_ok']:,} ok, {c['images_skipped']:,} skipped (scan), "
                  f"{c['images_failed']:,} failed (extract), {c['images_pending']:,} pending")
    if c.get("not_cached_by_reason"):
        table.add_row("not cached", ", ".join(f"{n:,} {reason}" for reason, n in c["not_cached_by_reason"].items()))
    table.add_row("on disk", f"{_size(b['store_total'])} in all, {_size(b['arrays'])} in arrays")
    table.add_row("per image", f"{_size(b['per_image'])} on disk ({_size(b['per_image_uncompressed'])} uncompressed); "
                  f"{_size(b['per_view_row'])} per view row, {_size(b['per_crowd_row'])} per crowd row")
    random = " [bold yellow]RANDOM WEIGHTS[/]" if t.get("random") else ""
    sha = t.get("checkpoint_sha256")
    table.add_row("teacher", f"{t.get('name')}{random}: {t.get('embed_dim')} dims, {t.get('depth')} blocks, patch "
                  f"{t.get('patch_size')}, pos-embed {t.get('pos_embed_method')}"
                  + (f", seed {t.get('seed')}" if t.get("random") else f", sha256 {sha[:12] if sha else '-'}"))
    table.add_row("views", f"{v['views_per_image']} x {_shape(v['global_view_size'])} px "
                  f"(grid {_shape(v['view_grid'])}) per image, seed {v['seed']}")
    table.add_row("crowds", f"{v['crowds_per_image']} x {_shape(v['crowd_size'])} px (grid {_shape(v['crowd_grid'])}), "
                  f"{v['crowd_mode']}{', gram' if v['gram'] else ''}")
    masked = f", tokens masked at score > {p['mask_at_extract']}" if p["mask_at_extract"] is not None else ""
    measured = p.get("measured")
    table.add_row("precision", f"tokens {p['tokens']}, maps {p['maps']}{masked}; measured error: "
                  + (", ".join(f"{k.replace('_', ' ')} {v:.2e}" for k, v in measured.items()) + " (calibration images)"
                     if measured else "not recorded (run `dpal-cache verify`)"))
    cal = report["calibration"]
    if cal:
        table.add_row("calibration", f"{cal.get('images')} images; mask component explains "
                      f"{100 * cal.get('explained_variance', 0):.1f}% of patch variance; "
                      f"score range [{cal.get('low'):.3g}, {cal.get('high'):.3g}]")
    else:
        table.add_row("calibration", "[yellow]none[/]")
    if report.get("problems"):
        table.add_row("[red]problems[/]", "; ".join(report["problems"]) + " (copy the store again, or re-extract it)")
    source = report["source"] or {}
    table.add_row("source", f"{source.get('kind')} {source.get('root') or source.get('db') or ''}, manifest "
                  f"{report['manifest_fingerprint']}")
    return table


@app.command("info")
def info_command(
    store: str = typer.Argument(..., help="Feature store: a local path or an fsspec URL."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the full report as JSON here."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Describe a feature store: arrays, bytes on disk, completion, teacher, views, precision."""
    setup_logging(verbose)
    from dpal_cache.store.inspect import store_report
    from dpal_cache.store.io import StoreError

    try:
        report = store_report(store)
    except StoreError as exc:
        raise fail(str(exc)) from None
    console.print(_summary_table(report))
    console.print(_arrays_table(report))
    if json_out is not None:
        _write_json(json_out, report)


def _metrics_table(title: str, details: dict[str, Any]) -> Table:
    """One row per array: max abs difference, relative L2 (tokens) or KL per row (maps), worst store row."""
    table = Table(title=title, caption="worst: the worst row's rel L2 (tokens) or KL (maps), at store row 'row'; "
                  "same: values whose stored code equals the fresh one's", **NARROW)
    table.add_column("array", no_wrap=True)
    for name in ("rows", "max abs", "rel L2", "KL/row", "worst", "row", "same"):
        table.add_column(name, justify="right", no_wrap=True)
    for key, s in details.items():
        if not isinstance(s, dict) or "rows" not in s:  # per-array statistics only (not renderer, mask notes)
            continue
        worst = s.get("worst_row_kl", s.get("worst_row_rel_l2"))
        table.add_row(key, f"{s['rows']:,}", f"{s['max_abs']:.1e}", f"{s['rel_l2']:.1e}",
                      f"{s['kl_per_row']:.1e}" if "kl_per_row" in s else "-",
                      f"{worst:.1e}" if worst is not None else "-", str(s["worst_row"]),
                      f"{s['identical_codes']:.0%}" if "identical_codes" in s else "-")
    return table


def _renderer_note(report) -> str:
    """What another kind of renderer did to the replay's limits ("" when it is the store's kind)."""
    renderer = report.check("replay").details.get("renderer") if "replay" in [c.name for c in report.checks] else None
    if not renderer or renderer["same"]:
        return ""
    return f" (another kind of renderer: replay limits x{renderer['limits_factor']:g})"


def _tolerances(items: list[str] | None) -> dict[str, float]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise fail(f"--tolerance takes KEY=NUMBER, got {item!r}")
    return out


@app.command("verify")
def verify_command(
    store: str = typer.Argument(..., help="Feature store: a local path or an fsspec URL."),
    data: Path = typer.Option(..., "--data", help="The images the store was extracted from (folder, list file or "
                              "LMDB folder)."),
    root: Path | None = typer.Option(None, "--root", help="Folder that list-file paths are relative to."),
    sample: int = typer.Option(64, "--sample", help="Ok images to hash-check and replay (0 = all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Teacher weights (default: the file the store "
                                           "was extracted with, else the teacher's default location); its sha256 "
                                           "must match the store's."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (the teacher runs in float32)."),
    render_device: str | None = typer.Option(None, "--render-device", help="Where the views are re-rendered: cpu "
                                             "(one image at a time) or cuda (batched, on --device). Default: the "
                                             "kind of renderer the store was made with."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per teacher batch."),
    tolerance: list[str] | None = typer.Option(None, "--tolerance", help="Override a pass/fail limit, "
                                               "KEY=NUMBER (tokens_rel_l2, tokens_row_rel_l2, maps_kl, maps_row_kl, "
                                               "maps_max_abs, mask_score_max_abs). Repeatable."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the full report as JSON here."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Check a store: blocks complete, sources unchanged, and stored targets equal to a fresh teacher run.

    Views and crowd images of a sample are re-rendered from the stored parameters and recipes
    and run through the store's teacher; the stored targets are compared with its outputs.
    Exits with code 1 when a check fails, 2 when verify cannot run.
    """
    setup_logging(verbose)
    from dpal_cache.data.sources import SourceError
    from dpal_cache.extract.verify import verify_store
    from dpal_cache.store.io import StoreError
    from dpal_cache.teachers import CheckpointError

    try:
        report = verify_store(store, data, root=root, sample=sample, seed=seed, checkpoint=checkpoint,
                              device=device, tolerance=_tolerances(tolerance), batch_size=batch_size,
                              render=render_mode(render_device, device) or "auto")
    except (StoreError, CheckpointError, SourceError, ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    table = Table(title=f"verify: {store} ({report.teacher} on {report.device}, {report.seconds:.1f} s)",
                  caption=f"views rendered by {report.render.get('store')} at extraction, "
                          f"re-rendered by {report.render.get('replay')}" + _renderer_note(report))
    table.add_column("check")
    table.add_column("result")
    table.add_column("summary", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, "[green]pass[/]" if c.passed else "[bold red]FAIL[/]", c.summary)
    console.print(table)
    for name in ("replay", "precision"):
        details = report.check(name).details
        if any(isinstance(v, dict) for v in details.values()):
            title = ("stored targets vs fresh float32 teacher" if name == "replay"
                     else "precision: codec round trip vs fresh float32 teacher")
            console.print(_metrics_table(title, details))
    for c in report.checks:
        for problem in c.problems:
            console.print(f"[red]{c.name}:[/] {problem}")
    if json_out is not None:
        _write_json(json_out, report.to_dict())
    if not report.passed:
        console.print("[bold red]verify failed[/]")
        raise typer.Exit(1)
    console.print("[bold green]verify passed[/]")
