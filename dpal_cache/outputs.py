"""Output folders: a command writes into a folder that is new, empty or its own earlier output, never elsewhere.

Every command that writes a folder (``extract --out``, ``train --out``, ``synth --out``, ``demo --out``,
``bench --workdir``) checks it with :func:`check_output_folder` before writing anything: a folder that
holds anything the command did not make is refused, with what is there and what to do, and nothing in
it is touched. A command recognises its own earlier output by the names it writes (a training run's
``config.yaml``, ``last.pt``...) or by a marker (a store's dpal-cache attributes, synth's ``synth.yaml``),
and only such an output may be replaced (``--overwrite``) or written into again. Inputs are never inside
an output, nor an output inside an input (:func:`check_apart`): replacing one would delete the other.

    check_output_folder(Path("runs/a"), "a training run", RUN_ENTRIES, "choose a new or empty --out")
    check_apart(Path("feats.zarr"), {"--data": Path("images")})
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path


class OutputRefused(ValueError):
    """An output location holds something the command did not make (or overlaps an input); nothing was changed."""


def listing(path: Path, limit: int = 4) -> str:
    """``notes.txt, sub/ and 3 more``: the first entries of a folder, for messages."""
    entries = sorted(path.iterdir(), key=lambda p: p.name)
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = len(entries) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def matches(entries: Iterable[str]) -> Callable[[Path], bool]:
    """A recogniser for folders whose every entry is one of ``entries`` (names or fnmatch patterns)."""
    patterns = tuple(entries)

    def ours(folder: Path) -> bool:
        return all(any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns) for p in folder.iterdir())

    return ours


def check_output_folder(path: str | os.PathLike, what: str, ours: Callable[[Path], bool] | Iterable[str],
                        fix: str) -> None:
    """Refuse ``path`` when it is a file, or a non-empty folder that is not ``what`` (as ``ours`` tells).

    Args:
        what: what the command writes there, for the message ("a dpal-cache feature store").
        ours: recognises the command's own earlier output: a callable on the folder, or the names
            (fnmatch patterns) of everything the command writes there.
        fix: what the user can do instead ("choose a new or empty --out").
    Raises:
        OutputRefused: with what is there and ``fix``; nothing was changed.
    """
    path = Path(path)
    recognise = ours if callable(ours) else matches(ours)
    if path.is_symlink() and not path.exists():
        raise OutputRefused(f"{path} is a broken symbolic link: {fix}")
    if path.exists() and not path.is_dir():
        raise OutputRefused(f"{path} exists and is a file, not {what}: {fix} (nothing was changed)")
    if path.is_dir() and any(path.iterdir()) and not recognise(path):
        raise OutputRefused(f"{path} is not empty and is not {what}: it holds {listing(path)}. "
                            f"{fix[:1].upper()}{fix[1:]} (nothing was changed)")


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_apart(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse an output that is, lies inside or contains one of the named input folders (local paths only)."""
    out_path = Path(os.path.realpath(out))
    for option, folder in inputs.items():
        if folder is None:
            continue
        folder_path = Path(os.path.realpath(folder))
        if _inside(out_path, folder_path):
            raise OutputRefused(f"the output {out} is inside (or is) the input {option} {folder}: write it "
                                "elsewhere, so that replacing one never deletes the other")
        if _inside(folder_path, out_path):
            raise OutputRefused(f"the input {option} {folder} is inside the output {out}: write the output "
                                "elsewhere, so that replacing one never deletes the other")


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path`` (``.NAME.tmp-PID``), then rename it onto ``path``: a
    reader or a kill never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)
