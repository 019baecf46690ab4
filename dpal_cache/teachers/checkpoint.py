"""Teacher weight files: where they are expected, and reading them safely.

Nothing is ever downloaded. A teacher's weights come from ``--checkpoint PATH`` or from its
default file ``<cache root>/teachers/<spec.checkpoint_file>``, where the cache root is
``$DPAL_CACHE_HOME`` or ``~/.cache/dpal-cache``. A missing file is a :class:`CheckpointError`
that names the expected file, where it was looked for, and where such weights are published.

Reading: ``.safetensors`` through safetensors; everything else (``.pth``, ``.pt``, ``.bin``,
``.ckpt``, ``.pth.tar``) through ``torch.load(map_location="cpu", weights_only=True)``. A pickle
that needs arbitrary code (any global outside torch's weights-only allow-list and a few numpy
data reconstructors) is refused without running it; a truncated or corrupt file is an error
naming the file. The weights are then taken out of their container: training snapshots keep
them under ``model`` (MAE, HAP, PATH conversions) or ``state_dict`` (mmengine / Sapiens, raw
PATH), next to optimizer state and metadata that are dropped here.

    path = resolve_checkpoint(get_teacher_spec("path-b"), None)
    weights = load_state_dict(path)                     # {key: tensor}, keys as in the file
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dpal_cache.teachers.registry import TeacherSpec

log = logging.getLogger(__name__)

CACHE_ENV = "DPAL_CACHE_HOME"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
# keys under which training snapshots keep the model weights, in the order they are tried
CONTAINER_KEYS = ("model", "state_dict", "module")


class CheckpointError(RuntimeError):
    """A teacher checkpoint is missing, unreadable, unsafe, or does not fit the teacher."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that needs code outside the weights-only allow-list; it was refused without running it.

    ``names``: the globals it references (empty when the file cannot be scanned, e.g. a legacy pickle).
    """

    def __init__(self, message: str, names: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.names = tuple(names)


class CorruptCheckpointError(CheckpointError):
    """A weight file that cannot be read (truncated or corrupt); ``detail`` is the reader's own error."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def cache_root() -> Path:
    """``$DPAL_CACHE_HOME`` or ``~/.cache/dpal-cache``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/dpal-cache").expanduser()


def default_checkpoint_path(spec: TeacherSpec) -> Path:
    """Where the default weights of ``spec`` are expected: ``<cache root>/teachers/<checkpoint_file>``."""
    return cache_root() / "teachers" / spec.checkpoint_file


def resolve_checkpoint(spec: TeacherSpec, checkpoint: str | Path | None = None) -> Path:
    """The weight file for ``spec``: ``checkpoint`` if given, else the default location; it must exist."""
    if spec.random:
        raise CheckpointError(f"{spec.name} is a random teacher: it has no checkpoint")
    published = f" Such weights are published at: {spec.published}." if spec.published else ""
    expected = f"the {spec.name} teacher expects {spec.checkpoint_file or 'a weight file'}"
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            raise CheckpointError(f"--checkpoint {path} is a folder: pass the weight file; {expected}.{published}")
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} (given with --checkpoint) does not exist; {expected}.{published}")
        return path
    if not spec.checkpoint_file:
        raise CheckpointError(f"{spec.name} has no default checkpoint file: pass --checkpoint PATH.{published}")
    path = default_checkpoint_path(spec)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint for {spec.name}: {expected}, looked for {path} (the default location under "
            f"${CACHE_ENV} or ~/.cache/dpal-cache); put the file there or pass --checkpoint PATH.{published}"
        )
    return path


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _numpy_data_globals() -> list[Any]:
    """numpy reconstructors that only rebuild data (mmengine metadata can hold numpy scalars)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    found: list[Any] = [np.ndarray, np.dtype]
    for mod_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            mod = __import__(mod_name, fromlist=["scalar", "_reconstruct"])
        except ImportError:
            continue
        found += [getattr(mod, "scalar", None), getattr(mod, "_reconstruct", None)]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return [g for g in found if g is not None]


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) pickles cannot be scanned; the refusal message suffices
        return []


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` (plus numpy data reconstructors): never runs code from the file.

    Raises:
        UnsafeCheckpointError: the pickle needs arbitrary code; it was not executed.
        CorruptCheckpointError: the file is truncated or corrupt.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            names = _unsafe_globals(path)
            which = f" (it references {', '.join(names)})" if names else ""
            raise UnsafeCheckpointError(
                f"refused to load {path} for safety: the file is a pickle that needs arbitrary code to load{which}. "
                "Only plain tensors and containers are accepted; it was not executed. Re-save the weights as a plain "
                "state dict (torch.save(model.state_dict(), ...)) or as .safetensors.",
                names,
            ) from None
        raise _corrupt(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as exc:
        raise _corrupt(path, exc) from None


def _corrupt(path: Path, exc: BaseException) -> CorruptCheckpointError:
    # name the exception: a bare KeyError reads "(101)", which says nothing
    detail = f"{type(exc).__name__}: {exc}"
    return CorruptCheckpointError(f"cannot read checkpoint {path}: the file is corrupt or truncated ({detail})", detail)


def safetensors_load(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file on the CPU; a :class:`CorruptCheckpointError` when it is not a valid one."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError and friends
        raise CorruptCheckpointError(f"cannot read checkpoint {path}: not a valid safetensors file ({exc})",
                                     str(exc)) from None


def unwrap_container(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The weights inside a loaded checkpoint: descend into ``model`` / ``state_dict`` / ``module``."""
    while isinstance(obj, Mapping):
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a mapping of weights")
    weights = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not weights:
        keys = ", ".join(map(str, obj)) or "none"
        raise CheckpointError(f"{source} holds no tensors; its top-level keys are: {keys}")
    return weights


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file into ``{key: tensor}`` (keys as written; see convert.py for their meaning)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        obj: Any = safetensors_load(path)
    else:
        if path.suffix not in TORCH_SUFFIXES:
            log.info("reading %s as a torch file (suffix %r)", path, path.suffix)
        obj = safe_torch_load(path)
    weights = unwrap_container(obj, source=str(path))
    log.info("read %d tensors from %s", len(weights), path)
    return weights
