"""The whole product on generated data in a few minutes, no input needed (``dpal-cache demo``).

Stages: synthesise persons (with crowd backgrounds and distractors), scan, pretrain a small demo
teacher on the synthetic identities (demo_teacher.py: a stand-in with real signal, NOT PATH-B),
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpal_cache.config import load_config, to_dict
from dpal_cache.demo_teacher import DemoTeacherConfig
from dpal_cache.outputs import check_output_folder

log = logging.getLogger(__name__)

# (stage, completed, total): called as each stage advances; total is the stage's own unit count
Progress = Callable[[str, float, float], None]

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


def _noop(stage: str, completed: float, total: float) -> None:
    pass


def _reid(extractor, data_dir: Path) -> dict[str, Any]:
    from dpal_cache.eval.reid import run_reid

    result, _ = run_reid(extractor, data_dir)
    return result


RANKS = ("rank1", "rank5", "rank10")


def beats(trained: dict[str, float], untrained: dict[str, float]) -> bool:
    """The demo's verdict: higher mAP (the probe's summary of every gallery match) and no CMC rank lower.

    Rank-1 alone is too coarse at demo scale (40 queries: one query moves it 2.5 points, and the
    first hit is often a look-alike of another synthetic id for every model), so it may tie.
    """
    return trained["mAP"] > untrained["mAP"] and all(trained[k] >= untrained[k] for k in RANKS)


def verdict_line(trained: dict[str, float], untrained: dict[str, float]) -> str:
    """One sentence with the numbers: whether the trained student beats the untrained one."""
    word = "beats" if beats(trained, untrained) else "does NOT beat"
    ranks = ", ".join(f"Rank-{k[4:]} {_pct(trained[k])} vs {_pct(untrained[k])}" for k in RANKS)
    return (f"The trained student {word} the untrained one: mAP {_pct(trained['mAP'])} vs {_pct(untrained['mAP'])} "
            f"({ranks}); it beats = higher mAP and no rank lower.")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def write_report(path: Path, result: dict[str, Any]) -> Path:
    """``report.md``: what ran, the reid numbers of teacher / trained / untrained student, links to every file."""
    teacher = result["teacher"]
    reid = result["reid"]
    rows = [("teacher", teacher["label"]), ("trained student", "ViT-Ti distilled from the store (this demo)"),
            ("untrained student", "same architecture, random init (the baseline)")]
    lines = [
        "# dpal-cache demo",
        "",
        (f"**{teacher['label']}.** The teacher is a stand-in with real signal so that distillation has something "
         "to transfer; it shows the mechanics, not PATH-B's knowledge."),
        "",
        "## Reid probe (Market-1501 protocol on the synthetic query / gallery)",
        "",
        "| model | what | Rank-1 % | Rank-5 % | Rank-10 % | mAP % |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, (name, what) in zip(("teacher", "trained", "untrained"), rows, strict=True):
        m = reid[key]["metrics"]
        cells = " | ".join(_pct(m[k]) for k in (*RANKS, "mAP"))
        lines.append(f"| {name} | {what} | {cells} |")
    probe = reid["trained"]
    lines += ["", f"{probe['n_valid']} queries, {probe['n_gallery']} gallery images ({probe['n_distractors']} "
              "distractors).", "", verdict_line(probe["metrics"], reid["untrained"]["metrics"]), "",
              "## Stages", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in result["seconds"].items()]
    lines += ["", "## Files", ""]
    base = path.parent
    for name, p in result["files"].items():
        rel = Path(p).relative_to(base) if Path(p).is_relative_to(base) else Path(p)
        lines.append(f"- {name}: [{rel}]({rel})")
    lines += ["", "Numbers as JSON: [demo.json](demo.json). Every probe's full result: reid_*.json.", ""]
    path.write_text("\n".join(lines))
    return path


# everything run_demo writes into its folder (temp files of its writers included)
DEMO_ENTRIES = ("synth", "manifest.parquet", "demo_teacher.safetensors", "feats.zarr", "feats.zarr.lock", "run",
                "student.safetensors", "student.json", "reid_*.json", "patterns", "patterns_untrained", "curves.png",
                "report.md", "demo.json", "*.partial", ".*.tmp-*")


def check_demo_folder(out: Path) -> None:
    """A re-run replaces the demo's own entries: refuse (OutputRefused) a folder that holds anything else."""
    check_output_folder(out, "the output of an earlier `dpal-cache demo`", DEMO_ENTRIES, "choose a new or empty --out")


def run_demo(out_dir: str | Path, seed: int = 0, progress: Progress = _noop,
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
    import shutil

    from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
    from dpal_cache.data.sources import open_source
    from dpal_cache.demo_teacher import train_demo_teacher
    from dpal_cache.eval.features import open_model, teacher_extractor
    from dpal_cache.extract.config import ExtractConfig
    from dpal_cache.extract.run import extract
    from dpal_cache.synth import SynthConfig, synthesize
    from dpal_cache.synth.market import plan
    from dpal_cache.teachers import load_teacher
    from dpal_cache.train.config import TrainConfig
    from dpal_cache.train.export import export_student
    from dpal_cache.train.loop import train
    from dpal_cache.viz.curves import plot_curves
    from dpal_cache.viz.patterns import pattern_report

    out = Path(out_dir)
    check_demo_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def done(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = now - clock
        clock = now
        log.info("demo: %s done in %.1f s", stage, seconds[stage])

    # synth
    synth_dir = out / "synth"
    synth_cfg = SynthConfig(ids=cfg.ids, images_per_id=cfg.images_per_id, train_fraction=cfg.train_fraction,
                            seed=seed, crowd_backgrounds=cfg.crowd_backgrounds, distractors=cfg.distractors)
    total = len(plan(synth_cfg))
    count = 0

    def synth_step(n: int) -> None:
        nonlocal count
        count += n
        progress("synth", count, total)

    synthesize(synth_dir, synth_cfg, progress=synth_step, overwrite=True)
    train_dir, backgrounds = synth_dir / "bounding_box_train", synth_dir / "backgrounds"
    files["synth"] = str(synth_dir)
    done("synth")

    # scan
    source = open_source(train_dir)
    manifest = out / "manifest.parquet"
    count = 0

    def scan_step(n: int) -> None:
        nonlocal count
        count += n
        progress("scan", count, len(source))

    scan(source, manifest, ScanConfig(), progress=scan_step)
    files["manifest"] = str(manifest)
    done("scan")

    # demo teacher
    teacher_cfg = dataclasses.replace(cfg.teacher, seed=seed)
    teacher_ckpt = out / "demo_teacher.safetensors"
    info = train_demo_teacher(train_dir, teacher_ckpt, teacher_cfg,
                              progress=lambda f: progress("teacher", f * 100, 100))
    files["demo_teacher"] = str(teacher_ckpt)
    done("teacher")

    # extract
    store = out / "feats.zarr"
    extract_cfg = load_config(ExtractConfig, overrides={
        "teacher": info["teacher"], "checkpoint": teacher_ckpt, "views.crowd.background_dir": backgrounds,
        "views.seed": seed, "views.crowd.size": cfg.crowd_size, "shard_images": 32, "calibration_images": 32,
        "workers": 0, "device": "cpu"})
    teacher = load_teacher(extract_cfg.teacher, extract_cfg.checkpoint, pos_embed=extract_cfg.pos_embed)
    count = 0

    def extract_step(n: int, failed: int) -> None:
        nonlocal count
        count += n
        progress("extract", count, len(source))

    extract(extract_cfg, source, read_manifest(manifest), str(store), teacher=teacher, overwrite=True,
            progress=extract_step)
    files["store"] = str(store)
    done("extract")

    # train
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (train refuses to overwrite one)
    train_cfg = load_config(TrainConfig, overrides={
        "student.name": cfg.student, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "workers": 0,
        "optim.base_lr": cfg.lr, "optim.warmup_epochs": cfg.warmup_epochs, "log_every": 1, "seed": seed,
        "device": "cpu"})
    train(train_cfg, str(store), source, run_dir,
          progress=lambda r: progress("train", r["step"], r["total_steps"]))
    files["run"] = str(run_dir)
    done("train")

    # export
    student = out / "student.safetensors"
    export_student(run_dir, student)
    files["student"] = str(student)
    progress("export", 1, 1)
    done("export")

    # reid: teacher, trained student, untrained student of the same architecture
    trained_fx = open_model(student, seed=seed)
    models = {
        "teacher": lambda: teacher_extractor(info["teacher"], teacher_ckpt, img_size=trained_fx.img_size, seed=seed),
        "trained": lambda: trained_fx,
        "untrained": lambda: open_model(f"random:{student}", seed=seed),
    }
    reid: dict[str, dict[str, Any]] = {}
    for i, (key, make) in enumerate(models.items()):
        reid[key] = _reid(make(), synth_dir)
        if key == "teacher":
            reid[key]["model"]["label"] = info["label"]
        path = out / f"reid_{key}.json"
        path.write_text(json.dumps(reid[key], indent=2) + "\n")
        files[f"reid_{key}"] = str(path)
        progress("reid", i + 1, len(models))
    done("reid")

    # pictures
    targets = {"patterns": str(student)}
    if cfg.untrained_patterns:
        targets["patterns_untrained"] = f"random:{cfg.student}"
    for i, (name, model) in enumerate(targets.items()):
        rep = pattern_report(str(store), train_dir, model, out / name, n=cfg.pattern_images, seed=seed)
        report = Path(rep["files"]["report"])
        report.write_text(f"> **{info['label']}**: the teacher below is the demo's stand-in.\n\n{report.read_text()}")
        files[name] = str(report)
        progress("patterns", i + 1, len(targets) + 1)
    files["curves"] = str(plot_curves(run_dir, out / "curves.png"))
    progress("patterns", len(targets) + 1, len(targets) + 1)
    done("patterns")

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
