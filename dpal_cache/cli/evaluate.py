"""``dpal-cache eval``: quick frozen-backbone probes (reid, attributes, parsing), optionally beside the teacher.

    dpal-cache eval reid --data data/market --model student.safetensors --save-features feats.npz --json reid.json
    dpal-cache eval reid --data data/market --model random:vit_tiny_patch16          # UNTRAINED baseline
    dpal-cache eval reid --data data/market --model random:student.safetensors       # untrained, same architecture
    dpal-cache eval reid --data data/market --model student.safetensors --teacher path-b --checkpoint path_b.pth
    dpal-cache eval attributes --data data/market --labels data/market/attributes.parquet --model student.safetensors
    dpal-cache eval parsing --data data/market --masks data/market/masks --model student.safetensors
    dpal-cache eval recompute feats.npz          # the reid numbers again, from the saved features alone

Tables show percentages; the JSON holds fractions in [0, 1]. Protocols: docs/evaluation.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from dpal_cache.cli import app
from dpal_cache.cli.common import TEACHERS_HELP, console, fail, output_file, parse_size, progress_bar, setup_logging

HELP = "Quick frozen-backbone probes: reid, attributes, parsing (student vs teacher with --teacher)."
eval_app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False)
app.add_typer(eval_app, name="eval", help=HELP)

MODEL_HELP = ("student.safetensors from `dpal-cache export` (student.json next to it); or an UNTRAINED baseline: "
              "random:<student> (e.g. random:vit_tiny_patch16) or random:<student.safetensors> (its architecture).")
TEACHER_HELP = f"Also run this teacher ({TEACHERS_HELP}) and report both side by side."

# display names, in table order
METRIC_NAMES = {
    "rank1": "Rank-1", "rank5": "Rank-5", "rank10": "Rank-10", "mAP": "mAP",
    "mA": "mA (label-based)", "accuracy": "accuracy (instance)", "precision": "precision (instance)",
    "recall": "recall (instance)", "f1": "F1 (instance)",
    "miou": "mIoU (all classes, SCHP)", "miou_nanmean": "mIoU (present classes, mmseg)",
    "pixel_acc": "pixel accuracy", "mean_acc": "mean class accuracy",
}  # fmt: skip
COUNTS = {
    "reid": ("n_query", "n_gallery", "n_distractors", "n_junk_dropped", "n_valid"),
    "attributes": ("n_train", "n_test", "n_attributes", "no_positive_attributes", "no_negative_attributes"),
    "parsing": ("n_train_images", "n_train_pixels", "n_test_images", "n_test_pixels"),
}


def _models(model: str, teacher: str | None, checkpoint: Path | None, pos_embed: str, img_size: str | None,
            teacher_size: str | None, seed: int, batch_size: int, device: str):
    """The student (or untrained baseline) extractor and, with --teacher, the teacher's."""
    from dpal_cache.eval.features import RANDOM_PREFIX, open_model, teacher_extractor

    if img_size is not None and not model.startswith(RANDOM_PREFIX):
        console.print("[dim]--img-size applies to random: models; an exported student runs at its trained size[/]")
    try:
        student = open_model(model, img_size=parse_size(img_size, "--img-size"), seed=seed, device=device,
                             batch_size=batch_size)
        if teacher is None:
            return student, None
        size = parse_size(teacher_size, "--teacher-size") or student.img_size
        return student, teacher_extractor(teacher, checkpoint, img_size=size, pos_embed=pos_embed, seed=seed,
                                          device=device, batch_size=batch_size)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from None


def _run(student, teacher, single, pair):
    """``single(student, progress)``, or ``pair(student, teacher, progress)`` with --teacher, under a progress bar."""
    try:
        with progress_bar(transient=True) as progress:

            def start(description: str, total: int):
                task = progress.add_task(description, total=total, rate="")
                return lambda n: progress.advance(task, n)

            return single(student, start) if teacher is None else pair(student, teacher, start)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _model_label(result: dict[str, Any]) -> str:
    model = result["model"]
    return model["label"] if model.get("trained", True) else f"[bold yellow]{model['label']}[/]"


def _metrics_table(title: str, metrics: dict[str, float | None], counts: dict[str, int]) -> Table:
    """One row per metric (percent), then the counts, dimmed."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("%", justify="right")
    for key, value in metrics.items():
        table.add_row(METRIC_NAMES.get(key, key), _pct(value))
    for key, count in counts.items():
        table.add_row(f"[dim]{key}[/]", f"[dim]{count:,}[/]")
    return table


def _print_result(result: dict[str, Any]) -> None:
    console.print(_metrics_table(f"eval {result['probe']}: {_model_label(result)}", result["metrics"],
                                 {key: result[key] for key in COUNTS[result["probe"]]}))


def _print_report(report: dict[str, Any]) -> None:
    student, teacher = report["student"], report["teacher"]
    table = Table(title=f"eval {report['probe']}: student vs teacher",
                  caption=f"student: {_model_label(student)}\nteacher: {_model_label(teacher)}")
    table.add_column("metric")
    table.add_column("student %", justify="right")
    table.add_column("teacher %", justify="right")
    table.add_column("student / teacher", justify="right")
    for key, value in student["metrics"].items():
        ratio = report["ratio"].get(key)
        table.add_row(METRIC_NAMES.get(key, key), _pct(value), _pct(teacher["metrics"][key]),
                      "-" if ratio is None else f"{ratio:.3f}")
    table.add_section()
    for k, value in report["topk_agreement"].items():
        table.add_row(f"top-{k} agreement %", "", "", _pct(value))
    console.print(table)
    console.print(f"[dim]top-k agreement: shared top-k neighbours of student and teacher, "
                  f"{report['topk_agreement_on']}[/]")


def _finish(out: dict[str, Any], json_out: Path | None) -> None:
    (_print_report if "teacher" in out else _print_result)(out)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=2) + "\n")
        console.print(f"[green]wrote[/] {json_out}")


def _probe(single, pair, json_out: Path | None, *model_options) -> None:
    """A probe end to end: the models (``_models(*model_options)``), ``single`` or ``pair`` under a progress bar
    (``_run``), then the table and the JSON (``_finish``)."""
    student, teacher_fx = _models(*model_options)
    _finish(_run(student, teacher_fx, single, pair), json_out)


# options every probe shares
ModelOpt = typer.Option(..., "--model", help=MODEL_HELP)
TeacherOpt = typer.Option(None, "--teacher", help=TEACHER_HELP)
CheckpointOpt = typer.Option(None, "--checkpoint", help="Teacher weights file (default: the teacher's cached file).")
PosEmbedOpt = typer.Option("timm", "--pos-embed", help="Teacher position-table resampling: timm or release.")
ImgSizeOpt = typer.Option(None, "--img-size", help="HxW a random: student is built at (default 256x128).")
TeacherSizeOpt = typer.Option(None, "--teacher-size", help="HxW the teacher sees (default: the student's size).")
SeedOpt = typer.Option(0, "--seed", help="Seed of random: models (and of the parsing probe's pixel sample).")
BatchOpt = typer.Option(64, "--batch-size", min=1, help="Images per forward.")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
JsonOpt = typer.Option(None, "--json", callback=output_file, help="Write the result (fractions) as JSON to this "
                       "file (replaced if it exists).")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Debug logging.")


@eval_app.command("reid")
def reid_command(
    data: Path = typer.Option(..., "--data", help="Market-1501 layout: query/ and bounding_box_test/."),
    model: str = ModelOpt,
    teacher: str | None = TeacherOpt,
    checkpoint: Path | None = CheckpointOpt,
    pos_embed: str = PosEmbedOpt,
    img_size: str | None = ImgSizeOpt,
    teacher_size: str | None = TeacherSizeOpt,
    save_features: Path | None = typer.Option(None, "--save-features", callback=output_file, help="Write "
                                              "query/gallery features, ids, "
                                              "cameras and names (.npz; the teacher's to <name>.teacher.npz)."),
    seed: int = SeedOpt,
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    json_out: Path | None = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Person re-identification: CMC Rank-1/5/10 and mAP (Market-1501 protocol) of frozen global features."""
    setup_logging(verbose)
    from dpal_cache.eval.compare import compare_reid
    from dpal_cache.eval.reid import run_reid
    from dpal_cache.eval.reid import save_features as write_features

    if save_features is not None and save_features.suffix != ".npz":
        raise fail(f"--save-features {save_features}: features are written as .npz")
    student, teacher_fx = _models(model, teacher, checkpoint, pos_embed, img_size, teacher_size, seed, batch_size,
                                  device)
    out, s_feats, t_feats = _run(student, teacher_fx, lambda s, p: (*run_reid(s, data, progress=p), None),
                                 lambda s, t, p: compare_reid(s, t, data, progress=p))
    if save_features is not None:
        write_features(save_features, s_feats, student.describe())
        console.print(f"[green]wrote[/] {save_features} (check: dpal-cache eval recompute {save_features})")
        if t_feats is not None:
            teacher_path = save_features.with_suffix(".teacher.npz")
            write_features(teacher_path, t_feats, teacher_fx.describe())
            console.print(f"[green]wrote[/] {teacher_path}")
    _finish(out, json_out)


@eval_app.command("recompute")
def recompute_command(
    features: Path = typer.Argument(..., help="A --save-features file of `dpal-cache eval reid`."),
    json_out: Path | None = JsonOpt,
) -> None:
    """Recompute the reid metrics from saved features alone (cosine distance, Market-1501 protocol)."""
    from dpal_cache.eval.reid import metrics_from_features

    try:
        scores = metrics_from_features(features)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise fail(str(exc)) from None
    console.print(_metrics_table(f"reid metrics recomputed from {features}", scores["metrics"],
                                 {"n_valid": scores["n_valid"]}))
    if json_out is not None:
        json_out.write_text(json.dumps(scores, indent=2) + "\n")


@eval_app.command("attributes")
def attributes_command(
    data: Path = typer.Option(..., "--data", help="Folder the images are under (Market layout: split folders)."),
    labels: Path | None = typer.Option(None, "--labels", help="Attribute table (.parquet: image/path, split, "
                                       "one bool column per attribute); default DATA/attributes.parquet."),
    model: str = ModelOpt,
    teacher: str | None = TeacherOpt,
    checkpoint: Path | None = CheckpointOpt,
    pos_embed: str = PosEmbedOpt,
    img_size: str | None = ImgSizeOpt,
    teacher_size: str | None = TeacherSizeOpt,
    l2: float = typer.Option(1e-3, "--l2", min=0.0, help="L2 penalty of the logistic probe."),
    max_iter: int = typer.Option(200, "--max-iter", min=1, help="L-BFGS iterations of the probe."),
    seed: int = SeedOpt,
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    json_out: Path | None = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Attribute recognition: logistic probe on frozen global features, label-based mA and instance metrics."""
    setup_logging(verbose)
    from dpal_cache.eval.attributes import run_attributes
    from dpal_cache.eval.compare import compare_attributes

    labels = labels or data / "attributes.parquet"
    kwargs = {"l2": l2, "max_iter": max_iter}
    _probe(lambda s, p: run_attributes(s, data, labels, progress=p, **kwargs)[0],
           lambda s, t, p: compare_attributes(s, t, data, labels, progress=p, **kwargs), json_out,
           model, teacher, checkpoint, pos_embed, img_size, teacher_size, seed, batch_size, device)


@eval_app.command("parsing")
def parsing_command(
    data: Path = typer.Option(..., "--data", help="Folder holding the train and test image folders."),
    masks: Path | None = typer.Option(None, "--masks", help="Label PNGs mirroring DATA (MASKS/<folder>/<name>.png); "
                                      "default DATA/masks."),
    model: str = ModelOpt,
    teacher: str | None = TeacherOpt,
    checkpoint: Path | None = CheckpointOpt,
    pos_embed: str = PosEmbedOpt,
    img_size: str | None = ImgSizeOpt,
    teacher_size: str | None = TeacherSizeOpt,
    num_classes: int = typer.Option(20, "--num-classes", min=2, help="Classes (LIP: 20); 255 is ignored."),
    train_folder: list[str] | None = typer.Option(None, "--train-folder", help="Train image folder under DATA "
                                                  "(repeatable; default bounding_box_train)."),
    test_folder: list[str] | None = typer.Option(None, "--test-folder", help="Test image folder under DATA "
                                                 "(repeatable; default query and bounding_box_test)."),
    pixels_per_image: int = typer.Option(1000, "--pixels-per-image", min=1, help="Train pixels sampled per image."),
    l2: float = typer.Option(1e-3, "--l2", min=0.0, help="L2 penalty of the softmax probe."),
    max_iter: int = typer.Option(100, "--max-iter", min=1, help="L-BFGS iterations of the probe."),
    seed: int = SeedOpt,
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    json_out: Path | None = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Human parsing: linear probe on patch tokens upsampled to pixels, mIoU (both conventions) and accuracies."""
    setup_logging(verbose)
    from dpal_cache.eval.compare import compare_parsing
    from dpal_cache.eval.parsing import TEST_FOLDERS, TRAIN_FOLDERS, run_parsing

    masks = masks or data / "masks"
    kwargs = {"num_classes": num_classes, "train_folders": tuple(train_folder or TRAIN_FOLDERS),
              "test_folders": tuple(test_folder or TEST_FOLDERS), "pixels_per_image": pixels_per_image,
              "seed": seed, "l2": l2, "max_iter": max_iter}
    _probe(lambda s, p: run_parsing(s, data, masks, progress=p, **kwargs)[0],
           lambda s, t, p: compare_parsing(s, t, data, masks, progress=p, **kwargs), json_out,
           model, teacher, checkpoint, pos_embed, img_size, teacher_size, seed, batch_size, device)
