"""The whole product on generated data in a few minutes, no input needed (``dpal-cache demo``).

Stages: synthesise persons (with crowd backgrounds and distractors), scan, pretrain a small demo
teacher on the synthetic identities (demo/teacher.py: a stand-in with real signal, NOT PATH-B),
extract its features into a store, train a ViT-Ti student from the store, export it, run the reid
probe for the teacher, the trained student and an UNTRAINED student of the same architecture,
draw the pattern pictures and loss curves, and write ``report.md`` linking everything.

    from dpal_cache.demo import run_demo
    result = run_demo("runs/demo")            # library: logs, never prints
    dpal-cache demo --out runs/demo           # the same with progress bars and a table
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpal_cache.config import to_dict
from dpal_cache.demo.report import beats, verdict_line, write_report
from dpal_cache.demo.stages import (
    DemoData,
    Progress,
    extract_config,
    make_data,
    make_store,
    make_teacher,
    no_progress,
    train_config,
)
from dpal_cache.demo.teacher import DemoTeacherConfig
from dpal_cache.outputs import check_output_folder

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("synth", "scan", "teacher", "extract", "train", "export", "reid", "patterns", "report")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the defaults finish in a few minutes on 2 CPU cores."""

    ids: int = 40  # identities: the first train_fraction train the models, the rest are query/gallery
    images_per_id: int = 10  # 2 queries per test id: 40 queries, so Rank-1 moves in 2.5-point steps
    train_fraction: float = 0.5
    crowd_size: tuple[int, int] = (128, 128)  # (h, w) of crowd images: 64 student tokens instead of 256 at 256x256
    crowd_backgrounds: int = 8
    distractors: int = 10
    teacher: DemoTeacherConfig = field(default_factory=DemoTeacherConfig)
    student: str = "vit_tiny_patch16"
    epochs: int = 6
    batch_size: int = 8
    lr: float = 3e-2  # base lr, scaled by batch / 256: ~1e-3 at batch 8
    warmup_epochs: float = 1.0
    pattern_images: int = 6
    untrained_patterns: bool = True  # also draw the untrained student's patterns (the baseline picture)


# everything run_demo writes into its folder (temp files of its writers included)
DEMO_ENTRIES = ("synth", "manifest.parquet", "demo_teacher.safetensors", "feats.zarr", "feats.zarr.lock", "run",
                "student.safetensors", "student.json", "reid_*.json", "patterns", "patterns_untrained", "curves.png",
                "report.md", "demo.json", "*.partial", ".*.tmp-*")


def check_demo_folder(out: Path) -> None:
    """A re-run replaces the demo's own entries: refuse (OutputRefused) a folder that holds anything else."""
    check_output_folder(out, "the output of an earlier `dpal-cache demo`", DEMO_ENTRIES, "choose a new or empty --out")


class StageClock:
    """Wall time per stage: ``done(stage)`` records the time since the previous stage ended."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.clock = time.perf_counter()

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self.clock
        self.clock = now
        log.info("demo: %s done in %.1f s", stage, self.seconds[stage])


def run_demo(out_dir: str | Path, seed: int = 0, progress: Progress = no_progress,
             cfg: DemoConfig = DemoConfig()) -> dict[str, Any]:
    """Run every stage into ``out_dir`` (replaced stage by stage) and return paths, timings and metrics.

    Args:
        out_dir: where everything goes (created).
        seed: synth, teacher pretraining, views and student init.
        progress: called as ``progress(stage, completed, total)``.
        cfg: sizes (tests shrink them).

    Returns:
        ``files`` (name -> path), ``seconds`` (stage -> wall time), ``teacher`` (pretraining info and
        label), ``reid`` (``teacher`` / ``trained`` / ``untrained`` probe results), ``student_beats_untrained``.
    """
    from dpal_cache.synth import SynthConfig
    from dpal_cache.train.export import export_student
    from dpal_cache.train.loop import train

    out = Path(out_dir)
    check_demo_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock()
    synth_cfg = SynthConfig(ids=cfg.ids, images_per_id=cfg.images_per_id, train_fraction=cfg.train_fraction,
                            seed=seed, crowd_backgrounds=cfg.crowd_backgrounds, distractors=cfg.distractors)
    data = make_data(out / "synth", out / "manifest.parquet", synth_cfg, progress, clock.done)
    files = {"synth": str(data.root), "manifest": str(data.manifest)}
    info = make_teacher(data, out / "demo_teacher.safetensors", dataclasses.replace(cfg.teacher, seed=seed), progress)
    files["demo_teacher"] = info["checkpoint"]
    clock.done("teacher")

    store, run_dir, student = out / "feats.zarr", out / "run", out / "student.safetensors"
    make_store(extract_config(info, data, seed, cfg.crowd_size), data, store, progress)
    files["store"] = str(store)
    clock.done("extract")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (train refuses to overwrite one)
    train(train_config(cfg.student, cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_epochs, seed), str(store),
          data.source(), run_dir, progress=lambda r: progress("train", r["step"], r["total_steps"]))
    files["run"] = str(run_dir)
    clock.done("train")
    export_student(run_dir, student)
    files["student"] = str(student)
    progress("export", 1, 1)
    clock.done("export")

    reid = reid_stage(out, data, info, student, seed, progress, files)
    clock.done("reid")
    pictures_stage(out, data, info, cfg, store, run_dir, student, seed, progress, files)
    clock.done("patterns")
    return finish(out, seed, cfg, info, files, clock.seconds, reid, progress)


def reid_stage(out: Path, data: DemoData, info: dict[str, Any], student: Path, seed: int, progress: Progress,
               files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The reid probe for the teacher, the trained student and an untrained one of the same architecture; each
    result also into ``reid_<model>.json``."""
    from dpal_cache.eval.features import open_model, teacher_extractor
    from dpal_cache.eval.reid import run_reid

    trained_fx = open_model(student, seed=seed)
    models = {
        "teacher": lambda: teacher_extractor(info["teacher"], info["checkpoint"], img_size=trained_fx.img_size,
                                             seed=seed),
        "trained": lambda: trained_fx,
        "untrained": lambda: open_model(f"random:{student}", seed=seed),
    }
    reid: dict[str, dict[str, Any]] = {}
    for i, (key, make) in enumerate(models.items()):
        reid[key], _ = run_reid(make(), data.root)
        if key == "teacher":
            reid[key]["model"]["label"] = info["label"]
        path = out / f"reid_{key}.json"
        path.write_text(json.dumps(reid[key], indent=2) + "\n")
        files[f"reid_{key}"] = str(path)
        progress("reid", i + 1, len(models))
    return reid


def pictures_stage(out: Path, data: DemoData, info: dict[str, Any], cfg: DemoConfig, store: Path, run_dir: Path,
                   student: Path, seed: int, progress: Progress, files: dict[str, str]) -> None:
    """Pattern pictures of the trained (and untrained) student, each report headed by the teacher's label, and
    the loss curves."""
    from dpal_cache.viz.curves import plot_curves
    from dpal_cache.viz.patterns import pattern_report

    targets = {"patterns": str(student)}
    if cfg.untrained_patterns:
        targets["patterns_untrained"] = f"random:{cfg.student}"
    for i, (name, model) in enumerate(targets.items()):
        rep = pattern_report(str(store), data.train_dir, model, out / name, n=cfg.pattern_images, seed=seed)
        report = Path(rep["files"]["report"])
        report.write_text(f"> **{info['label']}**: the teacher below is the demo's stand-in.\n\n{report.read_text()}")
        files[name] = str(report)
        progress("patterns", i + 1, len(targets) + 1)
    files["curves"] = str(plot_curves(run_dir, out / "curves.png"))
    progress("patterns", len(targets) + 1, len(targets) + 1)


def finish(out: Path, seed: int, cfg: DemoConfig, info: dict[str, Any], files: dict[str, str],
           seconds: dict[str, float], reid: dict[str, dict[str, Any]], progress: Progress) -> dict[str, Any]:
    """The result with the verdict, written as ``report.md`` and ``demo.json``."""
    t, u = reid["trained"]["metrics"], reid["untrained"]["metrics"]
    result = {
        "out_dir": str(out), "seed": seed, "config": to_dict(cfg), "teacher": info, "files": files,
        "seconds": seconds, "reid": reid,
        "student_beats_untrained": beats(t, u), "verdict": verdict_line(t, u),
    }
    files["report"] = str(out / "report.md")
    files["json"] = str(out / "demo.json")
    seconds["report"] = 0.0
    write_report(out / "report.md", result)
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    progress("report", 1, 1)
    result["seconds"]["total"] = sum(seconds.values())
    return result
