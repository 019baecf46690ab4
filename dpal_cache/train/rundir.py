"""A training run's folder: what may be there, when a run may start or resume in it.

A new run starts in a folder that is new, empty, or holds only what a run writes (an earlier run that
stopped before its first checkpoint); a folder with ``last.pt`` is resumed (``--resume``) or refused,
and a folder holding anything else is refused untouched. The folder is created only once every check
has passed, so a run refused at start leaves nothing behind.

    check_run_dir(Path("runs/vit_tiny"), resume=False)
"""

from __future__ import annotations

from pathlib import Path

from dpal_cache.outputs import check_output_folder

# everything a run (and `viz curves` without --out) writes into its folder, temp files included
RUN_ENTRIES = ("config.yaml", "extract.yaml", "model.json", "metrics.jsonl", "last.pt", "tb", "curves.png",
               ".*.tmp-*")
RUN_WHAT = "a dpal-cache training run"


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Raise when a run cannot start (or resume) in ``run_dir``; see the module docstring.

    Raises:
        OutputRefused: the folder (or file) holds something a run does not write.
        FileExistsError: a new run, but the folder holds a run (``last.pt``).
        FileNotFoundError: ``resume``, but there is no ``last.pt``.
    """
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    if resume:
        if not last.is_file():
            where = "does not exist" if not run_dir.exists() else "holds no last.pt"
            raise FileNotFoundError(f"nothing to resume: {run_dir} {where} (start the run without --resume)")
        return
    check_output_folder(run_dir, RUN_WHAT, RUN_ENTRIES, "choose a new or empty --out")
    if last.exists():
        raise FileExistsError(f"{run_dir} already holds a run (last.pt): pass --resume, or choose another --out")
