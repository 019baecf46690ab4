"""``dpal-cache study``: what the cache costs in accuracy, cached views against fresh views.

    dpal-cache study [--out runs/study] [--config configs/study.yaml] [--set seeds=[0,1]]

A thin layer over :func:`dpal_cache.study.run_study`: a progress bar per stage, then the table of
the study (one row per setting: extraction time, store bytes, probes as student / teacher).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from dpal_cache.cli import app
from dpal_cache.cli.common import (
    CONFIG_HELP,
    SET_HELP,
    TEACHERS_HELP,
    console,
    fail,
    progress_bar,
    resolve_config,
    setup_logging,
)

STAGE_HELP = {
    "synth": "synthesise persons",
    "scan": "scan",
    "teacher": "pretrain the demo teacher",
    "stores": "extract a store per view count",
    "runs": "train and probe the students",
}


def _table(result: dict) -> Table:
    """The study's rows: what each setting costs and what its students reach, as student / teacher."""
    from dpal_cache.study.report import HEADLINE, LABEL

    probes = result["config"]["probes"]
    table = Table(title="cache fidelity: mean ± sd over seeds (student / teacher)")
    for name in ("setting", "extract s", "store MB", "train s", *(LABEL[p] for p in probes)):
        table.add_column(name, justify="left" if name == "setting" else "right")
    for arm, s in result["arms"].items():
        store = result["stores"].get(arm)
        cells = [f"{s[p]['ratio']['mean']:.3f} ± {s[p]['ratio']['sd']:.3f}" for p in probes]
        table.add_row(arm, f"{store['seconds']:.0f}" if store else "-", f"{store['bytes'] / 1e6:.1f}" if store else "-",
                      f"{s['train_seconds']['mean']:.0f}", *cells)
    teacher = ", ".join(f"{LABEL[p]} {100 * result['teacher'][p][HEADLINE[p]]:.1f} %" for p in probes)
    table.caption = f"teacher: {teacher}"
    return table


@app.command("study")
def study_command(
    out: Path = typer.Option(Path("runs/study"), "--out", help="Folder for the study: new, empty, or an "
                             "unfinished study of the same config (it resumes)."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP + " Default: the full study "
                                       "(configs/study.yaml, 36 min on 2 cores); configs/study-smoke.yaml takes "
                                       "about half a minute."),
    teacher: str | None = typer.Option(None, "--teacher", help="Study this teacher instead of pretraining the "
                                       f"demo one ({TEACHERS_HELP})."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Weights file of --teacher."),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging; tracebacks on errors."),
) -> None:
    """Measure what the cache costs: the same student trained from stores of V = 1, 2, 4, 8 views per image and
    online with fresh views every epoch, for several seeds, each probed (reid, attributes, parsing) next to the
    teacher. Writes OUT/study.json, OUT/study.md (the table) and OUT/fidelity.png (the plot).

    The teacher is the demo's stand-in pretrained on generated persons (not PATH-B) unless --teacher names
    another. An interrupted study resumes: rerun the same command.
    """
    setup_logging(verbose)
    from dpal_cache.outputs import OutputRefused
    from dpal_cache.study import STAGES, StudyConfig, check_study_folder, run_study

    cfg = resolve_config(StudyConfig, config, sets, teacher_name=teacher,
                         teacher_checkpoint=str(checkpoint) if checkpoint is not None else None)
    try:
        check_study_folder(out, cfg)
    except OutputRefused as exc:
        raise fail(str(exc)) from None
    with progress_bar() as bar:
        tasks = {s: bar.add_task(STAGE_HELP[s], total=None, rate="", start=False) for s in STAGES}

        def progress(stage: str, completed: float, total: float) -> None:
            if not bar.tasks[tasks[stage]].started:
                bar.start_task(tasks[stage])
            bar.update(tasks[stage], completed=completed, total=total)

        result = run_study(out, cfg, progress)
    console.print(_table(result))
    console.print(f"{result['seconds'] / 60:.1f} min; table {result['files']['table']}, plot "
                  f"{result['files']['plot']}, every run {result['files']['json']}", soft_wrap=True)
