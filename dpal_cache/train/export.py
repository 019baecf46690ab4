"""``export``: a run's student as a plain timm backbone (decoder dropped) plus a small JSON config.

``OUT.safetensors`` holds the backbone's timm state dict (keys as ``timm.create_model`` names
them, no ``student.backbone.`` prefix); ``OUT.json`` next to it says how to rebuild and feed it
(timm name and kwargs, input size and normalisation) and where it came from (teacher, store or
online run, step, training config). Loading needs timm only:

    info = export_student(Path("runs/vit_tiny"), Path("student.safetensors"))
    model = timm.create_model(info["timm_name"], pretrained=True,
                              pretrained_cfg_overlay=dict(file="student.safetensors"), **info["timm_kwargs"])

A student trained with ``last_block_heads`` (the release's ViT variant) has the same weight shapes as
timm's model; its last block splits them into more heads. The JSON's ``set_attributes`` maps dotted
attribute paths to values to set after ``create_model`` (empty for every other student):

    for path, value in info["set_attributes"].items():
        *parents, attr = path.split(".")
        obj = model
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, attr, value)

(``dpal_cache.train.students.apply_attributes`` does the same.)

The kwargs hold ``num_classes=0`` (no head). timm loads a headless file non-strictly when the
model's ``num_classes`` differs from its pretrained config's (1000); passing the JSON's
``pretrained_cfg_overlay`` as well (``dict(file=..., **info["pretrained_cfg_overlay"])``) sets the
config's ``num_classes`` to 0, which makes the load strict and gives timm's data config the
right input size and normalisation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file

from dpal_cache import __version__
from dpal_cache.normalization import IMAGENET_MEAN, IMAGENET_STD
from dpal_cache.outputs import write_atomic
from dpal_cache.train.checkpoint import load_checkpoint
from dpal_cache.weights import state_dict_differences

FORMAT = "dpal-cache-student/1"


def _backbone_weights(state: dict[str, Any], run_dir: Path, ema: bool) -> dict[str, torch.Tensor]:
    """The backbone's tensors of the live model (``student.backbone.*``) or of its EMA (``backbone.*``)."""
    if ema:
        if state.get("ema") is None:
            raise ValueError(f"{run_dir} has no EMA weights (trained without ema_decay): export without --ema")
        weights, prefix = state["ema"], "backbone."
    else:
        weights, prefix = state["model"], "student.backbone."
    out = {k[len(prefix):]: v.detach().contiguous() for k, v in weights.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"{run_dir}/last.pt holds no {prefix}* weights: not a `dpal-cache train` checkpoint")
    return out


def _check_against_timm(weights: dict[str, torch.Tensor], timm_name: str, timm_kwargs: dict[str, Any]) -> None:
    """Refuse an export timm would not load strictly: same keys and shapes as a fresh model (built on meta)."""
    with torch.device("meta"):
        ref = timm.create_model(timm_name, pretrained=False, **timm_kwargs)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if parts := state_dict_differences(want, got, limit=5):
        raise ValueError(f"the student's weights do not match timm's {timm_name}: " + "; ".join(parts))


def export_student(run_dir: Path, out: Path, ema: bool = False) -> dict[str, Any]:
    """Write the student backbone of ``run_dir``'s ``last.pt`` to ``out`` and its config to ``out.json``.

    Args:
        run_dir: a ``dpal-cache train`` run directory.
        out: the weights file; must end in ``.safetensors`` (timm picks its reader by the suffix).
        ema: export the EMA of the student instead of the live weights.

    Returns:
        The JSON config, plus ``weights`` and ``config`` (the paths written).
    """
    run_dir, out = Path(run_dir), Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the export must end in .safetensors (timm reads other suffixes with torch.load)")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    if not (run_dir / "last.pt").is_file():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (last.pt): train first, or pass the run's directory")
    state = load_checkpoint(run_dir / "last.pt")
    weights = _backbone_weights(state, run_dir, ema)
    timm_name, timm_kwargs = state["student"]["timm_name"], dict(state["student"]["timm_kwargs"])
    set_attributes = dict(state["student"].get("set_attributes") or {})
    _check_against_timm(weights, timm_name, timm_kwargs)
    height, width = timm_kwargs["img_size"]
    store = state.get("store", {})
    info = {
        "format": FORMAT,
        "timm_name": timm_name,
        "timm_kwargs": timm_kwargs,
        "set_attributes": set_attributes,  # set after timm.create_model (see the module docstring)
        "pretrained_cfg_overlay": {
            "num_classes": int(timm_kwargs.get("num_classes", 1000)),
            "input_size": [3, int(height), int(width)],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "interpolation": "bicubic",
        },
        "norm": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": "RGB scaled to [0, 1]"},
        "img_size": [int(height), int(width)],
        "parameters": sum(v.numel() for v in weights.values()),
        "weights_of": "ema" if ema else "model",
        "teacher": store.get("teacher"),
        "store": store.get("url"),
        "views_seed": store.get("views_seed"),
        "run": {"dir": str(run_dir.resolve()), "step": int(state["step"]), "epoch": int(state["epoch"]),
                "config": state["config"]},
        "dpal_cache_version": __version__,
    }
    info = json.loads(json.dumps(info))  # tuples -> lists: what a reader of the JSON gets
    config_path = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "dpal_cache": FORMAT, "timm_name": timm_name}
    write_atomic(out, lambda p: save_file(weights, str(p), metadata=metadata))
    write_atomic(config_path, lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    return {**info, "weights": str(out), "config": str(config_path)}
