"""Export: the backbone file loads with plain timm (``pretrained_cfg_overlay=dict(file=...)``) and
computes exactly what the trained student's backbone computes; EMA export; errors.

Run directories are made the cheap way (a DistillModel's state saved with save_checkpoint, as the
loop saves it), plus one real two-step run with an EMA on the shared tiny store (conftest.py).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_data_config

from dpal_cache.config import to_dict
from dpal_cache.data.sources import open_source
from dpal_cache.normalization import IMAGENET_MEAN, IMAGENET_STD
from dpal_cache.train.checkpoint import load_checkpoint, save_checkpoint
from dpal_cache.train.config import TrainConfig
from dpal_cache.train.decoders import build_decoder
from dpal_cache.train.decoders.config import DecoderConfig
from dpal_cache.train.export import export_student
from dpal_cache.train.loop import train
from dpal_cache.train.losses import LossConfig
from dpal_cache.train.model import DistillModel
from dpal_cache.train.students import StudentConfig, build_student

STUDENTS = {  # reduced widths / depths: the architecture and key layout are what matter
    "vit_tiny_patch16": ((64, 32), {"depth": 2}),
    "vit_tiny_patch16+last12": ((64, 32), {"depth": 2}),  # the release's variant: 12 heads in the last block
    "vit_small_patch16": ((64, 32), {"depth": 1}),
    "swin_tiny": ((64, 32), {"depths": (2, 2, 2, 2), "embed_dim": 32, "num_heads": (1, 2, 4, 8)}),
    "swin_small": ((64, 32), {"depths": (2, 2, 4, 2), "embed_dim": 32, "num_heads": (1, 2, 4, 8)}),
}


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every weight off its initial value (zero-initialised biases would hide a mix-up)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def make_run(run_dir: Path, name: str, img_size=(64, 32), ema: bool = True, **timm_kwargs):
    """A run directory whose last.pt is shaped like the loop's; returns (student, EMA student or None).
    ``NAME+last12``: the student with 12 heads in its last block."""
    torch.manual_seed(0)
    name, _, variant = name.partition("+")
    cfg = StudentConfig(name=name, img_size=img_size, last_block_heads=12 if variant == "last12" else None)
    student = build_student(cfg, **timm_kwargs)
    model = DistillModel(student, build_decoder("linear", student.embed_dim, 192), LossConfig(),
                         DecoderConfig(kind="linear"), (img_size[0] // 16, img_size[1] // 16), (4, 4))
    _perturb(model, 1)
    shadow = None
    if ema:
        shadow = copy.deepcopy(student)
        _perturb(shadow, 2)
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir / "last.pt", {
        "config": to_dict(TrainConfig()),
        "model": model.state_dict(),
        "optimizer": {},
        "ema": shadow.state_dict() if shadow is not None else None,
        "step": 7,
        "epoch": 1,
        "batch_in_epoch": 2,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": None,
        "student": {"timm_name": student.timm_name, "timm_kwargs": student.timm_kwargs,
                    "set_attributes": student.set_attributes},
        "store": {"url": "feats.zarr", "teacher": {"name": "random:vit_tiny", "embed_dim": 192}, "views_seed": 0},
    })
    return student.eval(), shadow.eval() if shadow is not None else None


def load_with_timm(out: Path, strict_cfg: bool = False) -> torch.nn.Module:
    """The export loaded the way its users load it: timm, the JSON's name, kwargs and attributes, nothing of ours."""
    info = json.loads(out.with_suffix(".json").read_text())
    overlay = dict(file=str(out), **(info["pretrained_cfg_overlay"] if strict_cfg else {}))
    model = timm.create_model(info["timm_name"], pretrained=True, pretrained_cfg_overlay=overlay,
                              **info["timm_kwargs"]).eval()
    for path, value in info["set_attributes"].items():  # the export's documented recipe, in plain Python
        *parents, attr = path.split(".")
        obj = model
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, attr, value)
    return model


def max_diff(a: torch.nn.Module, b: torch.nn.Module, size) -> float:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return (a.forward_features(x) - b.forward_features(x)).abs().max().item()


@pytest.mark.parametrize("name", list(STUDENTS))
def test_export_loads_in_timm_and_matches_the_student(tmp_path, name):
    size, kwargs = STUDENTS[name]
    student, shadow = make_run(tmp_path / "run", name, size, **kwargs)
    out = tmp_path / "export" / "student.safetensors"
    info = export_student(tmp_path / "run", out)
    assert info["weights"] == str(out) and info["config"] == str(tmp_path / "export" / "student.json")
    assert json.loads(out.with_suffix(".json").read_text()) == {k: v for k, v in info.items()
                                                                 if k not in ("weights", "config")}
    for strict_cfg in (False, True):
        model = load_with_timm(out, strict_cfg)
        assert max_diff(model, student.backbone, size) == 0.0
        assert model.state_dict().keys() == student.backbone.state_dict().keys()
    assert max_diff(model, shadow.backbone, size) > 0  # the live weights, not the EMA
    data_cfg = resolve_data_config(model=model)
    assert tuple(data_cfg["input_size"]) == (3, *size)
    assert tuple(data_cfg["mean"]) == IMAGENET_MEAN and tuple(data_cfg["std"]) == IMAGENET_STD
    assert info["timm_kwargs"]["img_size"] == list(size) and info["timm_kwargs"]["num_classes"] == 0
    assert info["teacher"]["name"] == "random:vit_tiny" and info["run"]["step"] == 7
    assert info["parameters"] == sum(p.numel() for p in student.backbone.parameters())
    if name.endswith("+last12"):  # the variant computes another function than the 6-head model on the same weights
        assert info["set_attributes"] == {"blocks.1.attn.num_heads": 12, "blocks.1.attn.head_dim": 16,
                                          "blocks.1.attn.scale": 0.25}
        plain = timm.create_model(info["timm_name"], pretrained=True, pretrained_cfg_overlay=dict(file=str(out)),
                                  **info["timm_kwargs"]).eval()
        assert max_diff(plain, student.backbone, size) > 1e-4
    else:
        assert info["set_attributes"] == {}
    if name.startswith("vit_tiny"):
        assert info["timm_kwargs"]["num_heads"] == 6  # the paper's ViT-Ti


def test_ema_export(tmp_path):
    size, kwargs = STUDENTS["vit_tiny_patch16"]
    _, shadow = make_run(tmp_path / "run", "vit_tiny_patch16", size, **kwargs)
    info = export_student(tmp_path / "run", tmp_path / "ema.safetensors", ema=True)
    assert info["weights_of"] == "ema"
    assert max_diff(load_with_timm(tmp_path / "ema.safetensors"), shadow.backbone, size) == 0.0


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        export_student(tmp_path / "nowhere", tmp_path / "s.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="last.pt"):
        export_student(tmp_path / "empty", tmp_path / "s.safetensors")
    make_run(tmp_path / "run", "vit_tiny_patch16", ema=False, depth=1)
    with pytest.raises(ValueError, match="no EMA"):
        export_student(tmp_path / "run", tmp_path / "s.safetensors", ema=True)
    with pytest.raises(ValueError, match=".safetensors"):
        export_student(tmp_path / "run", tmp_path / "s.pt")
    assert not list(tmp_path.glob("s.*"))


def test_export_of_a_trained_run(store, tmp_path, train_config):
    """Two real steps with an EMA on the shared tiny store: both exports reproduce the checkpoint's backbones."""
    cfg = train_config("max_steps=2", "ema_decay=0.5", "decoder.kind=linear")
    train(cfg, store.url, open_source(store.folder), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    for ema, weights, prefix in ((False, state["model"], "student.backbone."), (True, state["ema"], "backbone.")):
        out = tmp_path / f"student_{ema}.safetensors"
        info = export_student(tmp_path / "run", out, ema=ema)
        assert info["run"]["step"] == 2 and info["store"] == store.url
        student = build_student("vit_tiny_patch16", img_size=(64, 32)).eval()
        student.backbone.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
        assert max_diff(load_with_timm(out), student.backbone, (64, 32)) == 0.0
