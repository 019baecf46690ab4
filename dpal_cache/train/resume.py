"""What a resume checks and restores: ``last.pt`` must come from the same config (runtime fields aside), the
same process count, a store of the same teacher width and the backbone this version builds; then the weights,
optimizer, EMA, random state and the position in the data are put back. Also ``truncate_metrics``: the lines a
killed run logged after its last checkpoint go, since the resume runs and logs those steps again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dpal_cache.config import differences, to_dict
from dpal_cache.outputs import write_atomic
from dpal_cache.train.checkpoint import load_checkpoint, load_weights
from dpal_cache.train.config import TrainConfig
from dpal_cache.train.errors import StoreMismatch

# may differ between a run and its resume: they decide how far, where and how the run goes, not its values
RUNTIME_FIELDS = ("max_steps", "workers", "device", "render", "log_every", "checkpoint_every", "tensorboard",
                  "background_dir", "skip_changed")


@dataclass
class Position:
    """Where a run stands: optimizer steps done, and the data's (epoch, batch within the epoch)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: run has A, now B`` for every differing leaf of two config dicts, runtime fields left out."""
    return differences(old, new, skip=RUNTIME_FIELDS, labels=("run has", "now"))


def load_resume_state(cfg: TrainConfig, run_dir: Path, world: int) -> dict[str, Any]:
    """``RUN_DIR/last.pt``, refused (StoreMismatch) when it trained another config or on another process count."""
    state = load_checkpoint(run_dir / "last.pt")
    diffs = config_differences(state["config"], to_dict(cfg))
    if diffs:
        raise StoreMismatch(f"--resume with a different config than the run's ({run_dir}/config.yaml):\n  "
                            + "\n  ".join(diffs) + "\nresume with the run's config, or start a new run (--out)")
    check_resume_world(state, world, cfg, run_dir)
    return state


def check_resume_world(state: dict[str, Any], world: int, cfg: TrainConfig, run_dir: Path) -> None:
    """A run resumes only with the process count it trained with: each rank's share of an epoch, the
    global batch and with them the epoch and the learning rate at a step all follow it."""
    saved = state.get("world")
    if saved is None or saved == world:  # checkpoints before the count was recorded: nothing to compare
        return
    launch = (f"under torchrun --nproc_per_node {saved} (pipelines/train_ddp.sh)" if saved > 1
              else "as a single process (no torchrun)")
    raise StoreMismatch(
        f"{run_dir} trained with {saved} process(es) (global batch {saved * cfg.batch_size * cfg.optim.accum_steps}) "
        f"but this resume runs {world}: the data order, epoch and learning rate at a step follow the process "
        f"count. Resume {launch}, or start a new run (--out)"
    )


def check_resume_store(state: dict[str, Any], teacher_dim: int) -> None:
    """A run resumes only on a store with the same teacher width (the decoder's output)."""
    old = state["store"]["teacher"].get("embed_dim")
    if old != teacher_dim:
        raise StoreMismatch(
            f"the run's decoder emits {old}-dim tokens but this store's teacher has {teacher_dim} dims: "
            "resume on the store the run started with, or start a new run"
        )


def check_resume_student(state: dict[str, Any], student, run_dir: Path) -> None:
    """A run resumes only with the backbone it trained: the same weight shapes can hold another architecture (an
    older dpal-cache built ``vit_tiny_patch16`` with timm's 3 heads, the paper's has 6)."""
    saved = state.get("student", {})
    was = (saved.get("timm_name"), json.loads(json.dumps(saved.get("timm_kwargs", {}))),
           dict(saved.get("set_attributes") or {}))
    now = (student.timm_name, json.loads(json.dumps(student.timm_kwargs)), student.set_attributes)
    if was != now:
        raise StoreMismatch(
            f"{run_dir} trained the student {was[0]} {was[1]} {was[2] or ''}, but this dpal-cache builds {now[0]} "
            f"{now[1]} {now[2] or ''} from the same config: the weights would load into another architecture. "
            "Export or evaluate the run as it is, and start a new run (--out) to train on"
        )


def restore(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema,
            device: torch.device, last_path: Path) -> Position:
    """Put weights, optimizer, EMA and random state back from ``state``; returns where the run stopped."""
    load_weights(model, state["model"], last_path)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as exc:  # parameter groups of another dpal-cache version
        raise StoreMismatch(f"{last_path}: its optimizer state does not fit this dpal-cache's parameter groups "
                            f"({exc}); start a new run (--out)") from None
    if ema is not None:
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(state["rng_cuda"], device)
    return Position(state["step"], state["epoch"], state["batch_in_epoch"])


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines of ``metrics.jsonl`` after optimizer step ``step`` (and a torn last line): a
    run killed after its last checkpoint logged steps that the resume will run and log again."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_atomic(path, lambda tmp: tmp.write_text("".join(keep)))
