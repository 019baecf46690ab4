"""``dpal-cache demo``: the whole pipeline on generated data in a few minutes, no input needed.

    dpal-cache demo [--out runs/demo] [--seed 0]

A thin layer over :func:`dpal_cache.demo.run_demo`: one progress bar per stage, then a table of
stage timings and the reid probe of teacher / trained student / untrained student, and where
everything is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dpal_cache.cli import app
from dpal_cache.cli.common import console, fail, progress_bar, setup_logging

DEFAULT_OUT = Path("runs/demo")

STAGE_HELP = {
    "synth": "synthesise persons",
    "scan": "scan",
    "teacher": "pretrain the demo teacher",
    "extract": "extract teacher features",
    "train": "train the ViT-Ti student",
    "export": "export",
    "reid": "reid probe",
    "patterns": "pictures",
    "report": "report",
}


def _reid_table(result: dict) -> Table:
    table = Table(title="reid probe (synthetic query / gallery)")
    table.add_column("model")
    for name in ("Rank-1 %", "Rank-5 %", "Rank-10 %", "mAP %"):
        table.add_column(name, justify="right")
    names = {"teacher": result["teacher"]["label"], "trained": "trained student (distilled from the store)",
             "untrained": "[yellow]UNTRAINED student, same architecture[/]"}
    for key, label in names.items():
        m = result["reid"][key]["metrics"]
        table.add_row(label, *(f"{100 * m[k]:.2f}" for k in ("rank1", "rank5", "rank10", "mAP")))
    return table


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for everything the demo writes: new, empty or an "
                                      "earlier demo's (replaced).")] = DEFAULT_OUT,
    seed: int = typer.Option(0, "--seed", help="Seed of synth, teacher pretraining, views and student init."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the whole product on generated data: synth, scan, teacher, extract, train, export, reid, pictures.

    The teacher is a small ViT trained for 400 steps (~30 s) on the synthetic identities (a stand-in
    with real signal, not PATH-B): it shows the mechanics, not PATH-B's knowledge.
    """
    setup_logging(verbose)
    from dpal_cache.demo import STAGES, check_demo_folder, run_demo
    from dpal_cache.outputs import OutputRefused

    try:  # before the progress bars: a refused folder is one error line
        check_demo_folder(out)
    except OutputRefused as exc:
        raise fail(str(exc)) from None
    with progress_bar() as bar:
        tasks = {s: bar.add_task(STAGE_HELP.get(s, s), total=None, rate="", start=False) for s in STAGES}

        def progress(stage: str, completed: float, total: float) -> None:
            task = tasks[stage]
            if not bar.tasks[task].started:
                bar.start_task(task)
            bar.update(task, completed=completed, total=total)

        result = run_demo(out, seed=seed, progress=progress)
    timings = Table(title="stages", show_header=False)
    for stage, seconds in result["seconds"].items():
        timings.add_row(stage, f"{seconds:.1f} s")
    console.print(timings)
    console.print(_reid_table(result))
    style = "green" if result["student_beats_untrained"] else "red"
    console.print(f"[{style}]{result['verdict']}[/]", soft_wrap=True)
    files = Table(title=f"demo: {out}", show_header=False)
    for name, path in result["files"].items():
        files.add_row(name, path)
    console.print(files)
    console.print(f"[bold]{result['teacher']['label']}[/]; read {result['files']['report']}", soft_wrap=True)
