"""``dpal-cache bench``: the benchmark suite of the disk-for-teacher-compute trade (docs/benchmarks.md).

    dpal-cache bench --out bench.json                                  # small defaults, a few minutes on 2 cores
    dpal-cache bench --only training,extraction --repeats 2 --out bench.json
    dpal-cache bench --device cuda --batch-size 64 --images 512 --out bench_gpu.json   # pipelines/bench_gpu.sh
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from dpal_cache.cli import app
from dpal_cache.cli.common import console, fail, parse_size, setup_logging
from dpal_cache.outputs import write_atomic

if TYPE_CHECKING:  # the CLI imports the suite when a command runs
    from dpal_cache.bench.common import BenchSettings
    from dpal_cache.views.config import ViewsConfig


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise fail(f"{what}: expected comma-separated integers, got {text!r}") from None


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.2e}" if value and abs(value) < 10 ** -digits else f"{value:,.{digits}g}"
    return str(value)


def _tables(result: dict[str, Any]) -> list[Table]:
    """One rich table per benchmark that ran, and the targets."""
    sections, tables = result["sections"], []
    if "training" in sections:
        r = sections["training"]
        t = Table(title=f"training: {r['student']} with teacher {r['teacher']}, batch {r['batch_size']}")
        for col in ("run", "steps/s", "samples/s", "best step: steps/s"):
            t.add_column(col)
        for mode, value in r["steps_per_s"].items():
            t.add_row(mode, _fmt(value), _fmt(r["samples_per_s"][mode]), _fmt(r["best_steps_per_s"][mode]))
        t.caption = (f"cached/online {_fmt(r['ratios']['cached_over_online'])} (best steps "
                     f"{_fmt(r['best_ratios']['cached_over_online'])}), cached/in-memory "
                     f"{_fmt(r['ratios']['cached_over_in_memory'])} (best steps "
                     f"{_fmt(r['best_ratios']['cached_over_in_memory'])}), data wait "
                     f"{_fmt(r['data_wait_fraction_cached'])}")
        tables.append(t)
    if "extraction" in sections:
        r = sections["extraction"]
        t = Table(title=f"extraction: {r['images']} images, teacher {r['teacher']} on {r['device']}")
        t.add_column("part")
        t.add_column("seconds")
        for part, value in r["seconds"].items():
            t.add_row(part, _fmt(value))
        for part, value in r["extract_timelines"][-1].items():
            t.add_row(f"extract (last repeat): {part}", _fmt(value))
        for key, value in r["ratios"].items():
            t.add_row(f"ratio: {key}", _fmt(value))
        t.caption = (f"extract {_fmt(r['extract_images_per_s'])} img/s, bare teacher "
                     f"{_fmt(r['bare_teacher_images_per_s'])} img/s: ratio {_fmt(r['ratio_extract_over_teacher'])}")
        tables.append(t)
    if "store" in sections:
        r = sections["store"]
        t = Table(title=f"store: {r['images']} images, teacher dim {r['dim']}")
        for col in ("tokens+maps", "KiB/image", "KiB/view row", "vs fp16", "token rel L2", "attn_cls KL/row",
                    "crowd KL/row"):
            t.add_column(col)
        for name, o in r["options"].items():
            t.add_row(name, _fmt(o["bytes_per_image"] / 1024), _fmt(o["bytes_per_view_row"] / 1024),
                      _fmt(o["ratio_to_fp16"]), _fmt(o["tokens_rel_l2"]), _fmt(o["attn_cls_kl_per_row"]),
                      _fmt(o.get("crowd_attn_kl_per_row")))
        tables.append(t)
    if "loader" in sections:
        r = sections["loader"]
        t = Table(title=f"loader: samples/s (MB/s of target rows), batch {r['batch_size']}, "
                        f"{r['bytes_per_sample'] / 1024:.1f} KiB of targets per sample")
        t.add_column("dataset")
        for w in r["workers"]:
            t.add_column(f"{w} workers")
        for name, rates in r["samples_per_s"].items():
            mb = r["mb_per_s"][name]
            t.add_row(name, *(f"{_fmt(rates[str(w)])} ({_fmt(mb[str(w)])})" for w in r["workers"]))
        tables.append(t)
    if "render" in sections:
        r = sections["render"]
        paths = list(r["samples_per_s"])
        t = Table(title=f"render: samples/s, batch {r['batch_size']} ({r['local_crops']} local crops each); "
                        "CPU paths on one core")
        t.add_column("inputs", no_wrap=True)
        for name in paths:
            t.add_column(name.replace("_", " "))
        for name in r["ratios"]:
            t.add_column(name.replace("_over_per_sample", "").replace("_", " ") + " ratio")
        for kind in r["samples_per_s"]["per_sample"]:
            t.add_row(kind.replace("_decode", " +jpeg"), *(_fmt(r["samples_per_s"][p][kind]) for p in paths),
                      *(_fmt(v[kind]) for v in r["ratios"].values()))
        t.caption = "ratio: samples/s over per sample's. Bytes vs per sample's: " + ", ".join(
            f"{name} max {a['max_grey_diff']}, {100 * a['identical_fraction']:.3f}% same"
            for name, a in r["agreement"].items() if not name.startswith("per_sample"))
        tables.append(t)
    if "scaling" in sections:
        r = sections["scaling"]
        t = Table(title=f"scaling: teacher {r['teacher']}, blocks of {r['shard_images']}")
        for col in ("images", "stage", "s/1k images", "steady s/1k", "peak RSS MiB", "peak child MiB"):
            t.add_column(col)
        for n, stages in r["sizes"].items():
            for stage, s in stages.items():
                t.add_row(n, stage, _fmt(s["seconds_per_1k"]), _fmt(s["steady_seconds_per_1k"]),
                          _fmt(s["memory"]["peak_rss_mib"]), _fmt(s["memory"]["peak_rss_children_mib"]))
        tables.append(t)
    if result["targets"]:
        t = Table(title="targets")
        for col in ("target", "value", "limit", "met"):
            t.add_column(col)
        for row in result["targets"]:
            met = {True: "[green]met[/]", False: "[red]missed[/]", None: "-"}[row["met"]]
            t.add_row(row["target"], _fmt(row["value"]), f"{row['op']} {row['limit']:g}", met)
        tables.append(t)
    return tables


def _sections(only: str | None) -> tuple[str, ...]:
    """``--only`` -> the benchmarks to run (all by default); an unknown name exits with code 2."""
    from dpal_cache.bench.common import SECTIONS

    sections = tuple(s.strip() for s in only.split(",") if s.strip()) if only else SECTIONS
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise fail(f"--only: unknown benchmark(s) {', '.join(bad)}; known: {', '.join(SECTIONS)}")
    return sections


def _views(sizes: dict[str, tuple[int, int] | None]) -> ViewsConfig:
    """The default views with the sizes given (view kind -> HxW; None keeps the default); ValueError if invalid."""
    import dataclasses

    from dpal_cache.views.config import ViewsConfig

    views = ViewsConfig()
    for key, size in sizes.items():
        if size is not None:
            views = dataclasses.replace(views, **{key: dataclasses.replace(getattr(views, key), size=size)})
    return views


def _check_places(device: str, workdir: Path | None, out: Path) -> None:
    """Refuse, before any benchmark runs, a device that is not here, a --workdir holding anything but an earlier
    bench's, and a folder as --out (ValueError / RuntimeError)."""
    from dpal_cache.bench.common import check_workdir
    from dpal_cache.devices import resolve_device

    resolve_device(device)
    if workdir is not None:
        check_workdir(workdir)  # OutputRefused is a ValueError
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: name the JSON file to write")


def _run(settings: BenchSettings, sections: tuple[str, ...], workdir: Path | None, out: Path) -> dict[str, Any]:
    """The suite in ``workdir`` (default: a temporary folder, removed at the end), its result written to ``out``
    after every benchmark: a long run keeps what it measured."""
    from dpal_cache.bench.suite import run_suite

    out.parent.mkdir(parents=True, exist_ok=True)

    def write(result: dict[str, Any]) -> None:
        write_atomic(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n"))

    tmp = None
    if workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix="dpal_bench_"))
    try:
        with console.status("benchmarks") as status:
            result = run_suite(settings, workdir or tmp, sections,
                               on_section=lambda name: status.update(f"benchmark: {name}"), on_result=write)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    write(result)
    return result


@app.command("bench")
def bench_command(
    out: Path = typer.Option(Path("bench.json"), "--out", help="JSON file the results are written to."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (bf16 autocast on CUDA, as extract and train)."),
    teacher: str = typer.Option("random:vit_base", "--teacher", help="Teacher (any extract --teacher name; "
                                "random: teachers need no weights)."),
    student: str = typer.Option("vit_tiny_patch16", "--student", help="Student of the training benchmarks."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Batch of extract and train."),
    images: int = typer.Option(32, "--images", min=1, help="Synthetic images of the training, extraction, "
                               "store and loader benchmarks (rounded up to a multiple of 4)."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Interleaved repeats of each timed comparison."),
    steps: int = typer.Option(3, "--steps", min=1, help="Timed optimizer steps per training run."),
    warmup_steps: int = typer.Option(1, "--warmup-steps", min=1, help="Optimizer steps before timing starts."),
    workers: int = typer.Option(1, "--workers", min=0, help="DataLoader workers of the cached/online training runs."),
    extract_workers: int = typer.Option(-1, "--extract-workers", min=-1, help="extract's render workers "
                                        "(-1: cores - 1)."),
    calibration_images: int = typer.Option(16, "--calibration-images", min=1, help="extract calibration images."),
    loader_workers: str = typer.Option("0,1,2,4", "--loader-workers", help="Worker counts of the loader benchmark."),
    loader_batches: int = typer.Option(6, "--loader-batches", min=1, help="Timed batches per loader measurement."),
    scaling_sizes: str = typer.Option("64,256", "--scaling-sizes", help="Data set sizes of the scaling benchmark."),
    scaling_teacher: str = typer.Option("random:vit_tiny", "--scaling-teacher", help="Teacher of the scaling runs."),
    scaling_shard_images: int = typer.Option(32, "--scaling-shard-images", min=1, help="Block size of the "
                                             "scaling stores."),
    scaling_workers: int = typer.Option(1, "--scaling-workers", min=0, help="Training DataLoader workers of the "
                                        "scaling runs."),
    view_size: str | None = typer.Option(None, "--view-size", help="Global view HxW (default 256x128)."),
    crowd_size: str | None = typer.Option(None, "--crowd-size", help="Crowd image HxW (default 256x256)."),
    local_size: str | None = typer.Option(None, "--local-size", help="Local crop HxW (default 128x96)."),
    only: str | None = typer.Option(None, "--only", help="Comma-separated subset of training, extraction, store, "
                                    "loader, render, scaling."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Where data, stores and runs go: new, empty or "
                                        "an earlier bench's, reused (default: a temporary folder, removed at the "
                                        "end)."),
    no_isolate: bool = typer.Option(False, "--no-isolate", help="Run the scaling stages in this process (faster; "
                                    "peak memory is then not per stage)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Measure the disk-for-teacher-compute trade: training from the cache vs online vs in-memory targets,
    extract vs the bare teacher, store size and error per precision, loader throughput, the renderers per
    CPU core (and on the GPU), scaling.

    Ratios are measured within one run (shared machines are noisy); absolute times only mean
    something on a quiet machine. The targets of docs/benchmarks.md are judged at the end.
    """
    from dpal_cache.bench.common import BenchSettings

    setup_logging(verbose)
    sections = _sections(only)
    sizes = {"global_view": parse_size(view_size, "--view-size"), "crowd": parse_size(crowd_size, "--crowd-size"),
             "local_crops": parse_size(local_size, "--local-size")}
    counts = {"loader_workers": _ints(loader_workers, "--loader-workers"),  # exit 2 with its own message
              "scaling_sizes": _ints(scaling_sizes, "--scaling-sizes")}
    try:
        views = _views(sizes)
        settings = BenchSettings(
            device=device, teacher=teacher, student=student, batch_size=batch_size, images=images, repeats=repeats,
            steps=steps, warmup_steps=warmup_steps, train_workers=workers, extract_workers=extract_workers,
            calibration_images=calibration_images, loader_batches=loader_batches, **counts,
            scaling_teacher=scaling_teacher, scaling_shard_images=scaling_shard_images,
            scaling_workers=scaling_workers, isolate=not no_isolate,
            views=views,
        )
        _check_places(device, workdir, out)
    except (ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    result = _run(settings, sections, workdir, out)
    for table in _tables(result):
        console.print(table)
    console.print(f"results: {out}")
    if result["errors"]:
        raise fail(f"benchmark(s) failed: {', '.join(result['errors'])} (tracebacks in {out})", code=1)
