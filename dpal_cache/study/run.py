"""The cache-fidelity study: what replaying V cached views costs against fresh views every epoch.

One data set and one demo teacher; a store per view count V (V global views and V crowd images per
image); the same student trained for the same schedule from each store, and online with fresh views
(``train --fresh-views``), for every seed; each student probed (reid, attributes, parsing) next to
the teacher, with the student/teacher ratio and the top-k neighbour agreement of every probe.

Everything lands in one folder; an interrupted study resumes: a rerun with the same config keeps the
data, teacher, stores and runs that finished (each has its ``*.json``) and does the rest.

    result = run_study("runs/study", load_config(StudyConfig, "configs/study.yaml"))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from dpal_cache.bench.common import dir_bytes
from dpal_cache.config import dump_yaml, from_dict, load_yaml, to_dict
from dpal_cache.demo import stages
from dpal_cache.demo.stages import DemoData, Progress
from dpal_cache.outputs import OutputRefused, check_output_folder, write_atomic
from dpal_cache.study.config import StudyConfig
from dpal_cache.study.probes import Prober
from dpal_cache.study.report import summarize, write_outputs

log = logging.getLogger(__name__)

STAGES = ("synth", "scan", "teacher", "stores", "runs")
STUDY_ENTRIES = ("study.yaml", "data", "manifest.parquet", "teacher.safetensors", "teacher.json", "teacher_probes.json",
                 "stores", "runs", "study.json", "study.md", "fidelity.png", "*.partial", ".*.tmp-*")


def check_study_folder(out: Path, cfg: StudyConfig) -> None:
    """Refuse a folder that holds anything but a study, or a study of another config (its results would mix)."""
    check_output_folder(out, "the output of an earlier `dpal-cache study`", STUDY_ENTRIES,
                        "choose a new or empty --out")
    saved = out / "study.yaml"
    if saved.exists() and from_dict(StudyConfig, load_yaml(saved)) != cfg:
        raise OutputRefused(f"{out} holds a study of another config ({saved}): rerun with that config to finish "
                            "it, or choose a new or empty --out (nothing was changed)")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def write_json(path: Path, value: dict[str, Any]) -> None:
    """``value`` as indented JSON, written atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2, default=str) + "\n"))


def run_study(out_dir: str | Path, cfg: StudyConfig = StudyConfig(), progress: Progress = stages.no_progress) -> dict:
    """Run (or finish) the study into ``out_dir``; returns the summary also written to ``study.json``.

    ``progress(stage, completed, total)`` for the stages ``data``, ``teacher``, ``stores`` (views extracted)
    and ``runs`` (trained and probed students). Returns ``config``, ``teacher`` (its probes), ``stores`` (per V:
    extraction seconds, bytes), ``runs`` (one per arm and seed), ``arms`` (mean and spread per arm), ``seconds``.
    """
    from dpal_cache.synth import SynthConfig

    out = Path(out_dir)
    check_study_folder(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, out / "study.yaml")
    start = time.perf_counter()
    synth = SynthConfig(ids=cfg.ids, images_per_id=cfg.images_per_id, train_fraction=cfg.train_fraction,
                        seed=cfg.data_seed, crowd_backgrounds=cfg.crowd_backgrounds, distractors=cfg.distractors,
                        height=cfg.image_size[0], width=cfg.image_size[1])
    data = DemoData(out / "data", out / "manifest.parquet")
    if not (data.root / "attributes.parquet").exists() or not data.manifest.exists():
        data = stages.make_data(data.root, data.manifest, synth, progress)
    else:  # from an earlier run of this study
        progress("synth", 1, 1)
        progress("scan", 1, 1)
    teacher = _read_json(out / "teacher.json")
    if teacher is None:
        teacher = _teacher(out, cfg, data, progress)
        write_json(out / "teacher.json", teacher)
    progress("teacher", 100, 100)
    prober = Prober(cfg, data, teacher, out / "teacher_probes.json")
    stores = {v: make_view_store(out / "stores", cfg, data, teacher, v, progress) for v in cfg.views}
    runs = train_and_probe(out / "runs", cfg, data, teacher, prober, progress)
    result = summarize(cfg, prober.teacher_results(), stores, runs, time.perf_counter() - start)
    write_outputs(out, result)
    return result


def _teacher(out: Path, cfg: StudyConfig, data: DemoData, progress: Progress) -> dict[str, Any]:
    """The study's teacher: ``cfg.teacher_name`` (with its checkpoint) as given, else the demo teacher pretrained
    on the train ids. Returns ``teacher`` (registry name), ``checkpoint`` and ``label``."""
    if cfg.teacher_name is not None:
        return {"teacher": cfg.teacher_name, "checkpoint": cfg.teacher_checkpoint, "label": cfg.teacher_name}
    teacher_cfg = dataclasses.replace(cfg.teacher, seed=cfg.data_seed)
    return stages.make_teacher(data, out / "teacher.safetensors", teacher_cfg, progress)


def _views_overrides(cfg: StudyConfig, v: int) -> dict[str, Any]:
    return {"views.views_per_image": v, "views.crowds_per_image": v, "views.global_view.size": cfg.view_size,
            "views.local_crops.size": cfg.local_crop_size}


def make_view_store(root: Path, cfg: StudyConfig, data: DemoData, teacher: dict[str, Any], v: int,
                    progress: Progress) -> dict[str, Any]:
    """The store of ``v`` views and crowds per image (``root/V<v>.zarr``) and what it cost: ``seconds`` of
    extraction and ``bytes`` on disk (``root/V<v>.json``; kept from an earlier run of the study)."""
    info_path = root / f"V{v}.json"
    info = _read_json(info_path)
    if info is None:
        root.mkdir(parents=True, exist_ok=True)
        store = root / f"V{v}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        ecfg = stages.extract_config(teacher, data, cfg.data_seed, cfg.crowd_size, **_views_overrides(cfg, v))
        t0 = time.perf_counter()
        summary = stages.make_store(ecfg, data, store, lambda *_: None)
        info = {"views": v, "store": str(store), "seconds": time.perf_counter() - t0, "bytes": dir_bytes(store),
                "images": summary.ok}
        write_json(info_path, info)
        log.info("study: store V=%d, %.1f s, %.1f MB", v, info["seconds"], info["bytes"] / 1e6)
    done = sorted(int(p.stem[1:]) for p in root.glob("V*.json"))
    progress("stores", sum(w for w in done if w in cfg.views), sum(cfg.views))
    return info


def train_and_probe(root: Path, cfg: StudyConfig, data: DemoData, teacher: dict[str, Any], prober: Prober,
                    progress: Progress) -> list[dict[str, Any]]:
    """Every (arm, seed): train the student (kept when ``result.json`` says it finished), export, probe."""
    jobs = [(arm, seed) for arm in cfg.arms for seed in cfg.seeds]
    results = []
    for k, (arm, seed) in enumerate(jobs):
        run_dir = root / f"{arm.replace('=', '')}-s{seed}"
        result = _read_json(run_dir / "result.json")
        if result is None:
            result = train_one(run_dir, cfg, data, teacher, arm, seed,
                               lambda r, k=k: progress("runs", k + r["step"] / r["total_steps"], len(jobs)))
            result["probes"] = prober.probe_student(run_dir / "student.safetensors", seed)
            write_json(run_dir / "result.json", result)
        results.append(result)
        progress("runs", k + 1, len(jobs))
    return results


def train_one(run_dir: Path, cfg: StudyConfig, data: DemoData, teacher: dict[str, Any], arm: str,
              seed: int, steps=None) -> dict[str, Any]:
    """Train ``arm`` (``V=<v>``: from that store; ``fresh``: online with fresh views) with ``seed``; export.
    ``steps`` gets the training loop's record of every step."""
    from dpal_cache.data.manifest import read_manifest
    from dpal_cache.train.export import export_student
    from dpal_cache.train.loop import train
    from dpal_cache.train.online import train_online

    shutil.rmtree(run_dir, ignore_errors=True)  # a run that died before its result: start it again
    train_dir = run_dir / "run"
    t0 = time.perf_counter()
    if arm == "fresh":
        tcfg = stages.train_config(cfg.student, cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_epochs, seed,
                            fresh_views=True)
        ecfg = stages.extract_config(teacher, data, cfg.data_seed, cfg.crowd_size, **_views_overrides(cfg, 1))
        summary = train_online(tcfg, ecfg, data.source(), read_manifest(data.manifest), train_dir, progress=steps)
    else:
        tcfg = stages.train_config(cfg.student, cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_epochs, seed)
        store = run_dir.parent.parent / "stores" / f"V{arm[2:]}.zarr"
        summary = train(tcfg, str(store), data.source(), train_dir, progress=steps)
    seconds = time.perf_counter() - t0
    export_student(train_dir, run_dir / "student.safetensors")
    log.info("study: %s seed %d trained %d steps in %.1f s, loss %.4f -> %.4f", arm, seed, summary.steps, seconds,
             summary.first.get("loss", float("nan")), summary.last.get("loss", float("nan")))
    return {"arm": arm, "seed": seed, "train_seconds": seconds, "steps": summary.steps,
            "first_loss": summary.first.get("loss"), "last_loss": summary.last.get("loss"),
            "config": to_dict(tcfg)}
