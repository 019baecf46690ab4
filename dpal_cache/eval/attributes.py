"""Pedestrian attribute probe: logistic regression on frozen global features, label-based mA and
instance metrics (metrics.attribute_metrics: the PA-100K / PETA protocol of docs/evaluation.md).

    result, test_feats = run_attributes(open_model("student.safetensors"), Path("data/market"),
                                        Path("data/market/attributes.parquet"))
    result["metrics"]        # {"mA", "accuracy", "precision", "recall", "f1"}: fractions

The label table (``attributes.parquet`` as ``dpal-cache synth`` writes it) has one row per image:
``image`` (file name) or ``path`` (relative to the data folder), ``split`` and one boolean column
per attribute (every bool column is an attribute; ``person_id`` and ``camera`` are ignored).
Images are found at ``DATA/path``, else ``DATA/<split folder>/image`` (train ->
bounding_box_train, gallery -> bounding_box_test, query -> query), else ``DATA/image``.
The probe trains on the ``train`` rows and is tested on all others (query + gallery).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpal_cache.eval.features import FeatureExtractor, ProgressFn, fit_linear_probe, no_progress
from dpal_cache.eval.metrics import attribute_metrics

log = logging.getLogger(__name__)

FOLDER_OF_SPLIT = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query"}
NON_ATTRIBUTE_COLUMNS = ("image", "path", "split", "person_id", "camera")
TRAIN_SPLITS = ("train",)
L2 = 1e-3  # weight decay of the probe, per sample (features are standardised)
MAX_ITER = 200
HEADLINE = ("mA", "accuracy", "precision", "recall", "f1")


@dataclass(frozen=True)
class AttributeTable:
    """Images with their split and binary attributes."""

    paths: list[Path]
    splits: np.ndarray  # (N,) str
    labels: np.ndarray  # (N, A) bool
    names: tuple[str, ...]  # (A,) attribute names


def _image_path(data_dir: Path, row: dict[str, Any]) -> Path:
    if row.get("path"):
        return data_dir / row["path"]
    candidate = data_dir / FOLDER_OF_SPLIT.get(row["split"], row["split"]) / row["image"]
    return candidate if candidate.is_file() else data_dir / row["image"]


def load_attribute_table(labels: str | Path, data_dir: str | Path,
                         attributes: list[str] | None = None) -> AttributeTable:
    """Read a label table (parquet) and resolve its image files under ``data_dir``.

    Args:
        labels: the parquet file.
        data_dir: folder the images live under.
        attributes: columns to use (default: every boolean column).

    Raises:
        FileNotFoundError: the table or an image is missing. ValueError: no split / image column, no attributes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels, data_dir = Path(labels), Path(data_dir)
    if not labels.is_file():
        raise FileNotFoundError(f"no label table at {labels}")
    table = pq.read_table(labels)
    cols = table.column_names
    if "split" not in cols or not ({"image", "path"} & set(cols)):
        raise ValueError(f"{labels} needs a 'split' column and an 'image' or 'path' column, has {cols}")
    if attributes is None:
        attributes = [c for c in cols
                      if c not in NON_ATTRIBUTE_COLUMNS and pa.types.is_boolean(table.schema.field(c).type)]
    unknown = [a for a in attributes if a not in cols]
    if unknown or not attributes:
        raise ValueError(f"{labels}: no attribute columns" if not unknown else f"{labels} has no columns {unknown}")
    rows = table.select([c for c in ("image", "path", "split") if c in cols]).to_pylist()
    paths = [_image_path(data_dir, r) for r in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {labels} are not under {data_dir}, e.g. {missing[0]}")
    y = np.stack([np.asarray(table.column(a).to_numpy(zero_copy_only=False), dtype=bool) for a in attributes], 1)
    return AttributeTable(paths, np.array([r["split"] for r in rows], dtype=np.str_), y, tuple(attributes))


def attribute_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                    l2: float = L2, max_iter: int = MAX_ITER) -> dict[str, Any]:
    """Fit the logistic probe on (train_x, train_y), score test_x: attribute_metrics plus ``probs`` (N_test, A)."""
    probe = fit_linear_probe(train_x, np.asarray(train_y, dtype=np.float64), kind="binary", l2=l2, max_iter=max_iter)
    probs = probe.predict_proba(test_x)
    return {**attribute_metrics(probs, test_y), "probs": probs}


def run_attributes(extractor: FeatureExtractor, data_dir: str | Path, labels: str | Path,
                   train_splits: tuple[str, ...] = TRAIN_SPLITS, attributes: list[str] | None = None,
                   l2: float = L2, max_iter: int = MAX_ITER,
                   progress: ProgressFn = no_progress) -> tuple[dict[str, Any], np.ndarray]:
    """The attribute probe end to end. Returns the JSON-safe result and the test images' global features."""
    table = load_attribute_table(labels, data_dir, attributes)
    train = np.isin(table.splits, train_splits)
    if not train.any() or train.all():
        raise ValueError(f"{labels}: the probe needs train rows (split in {train_splits}) and test rows (the rest)")
    advance = progress(f"attribute features: {extractor.label}", len(table.paths))
    feats = extractor.global_features_of(table.paths, on_batch=advance)  # (N, D)
    scores = attribute_probe(feats[train], table.labels[train], feats[~train], table.labels[~train], l2, max_iter)
    if scores["no_positive_attributes"] or scores["no_negative_attributes"]:
        log.warning("%d attributes have no positive and %d no negative test images: they count at most 0.5 in mA",
                    scores["no_positive_attributes"], scores["no_negative_attributes"])
    result = {
        "probe": "attributes",
        "data": str(data_dir),
        "labels": str(labels),
        "model": extractor.describe(),
        "metrics": {k: scores[k] for k in HEADLINE},
        "per_attribute_mA": dict(zip(table.names, scores["per_attribute_mA"].tolist())),
        "no_positive_attributes": scores["no_positive_attributes"],
        "no_negative_attributes": scores["no_negative_attributes"],
        "n_train": int(train.sum()),
        "n_test": int((~train).sum()),
        "n_attributes": len(table.names),
        "probe_config": {"kind": "logistic regression, full-batch L-BFGS, standardised features", "l2": l2,
                         "max_iter": max_iter, "train_splits": list(train_splits)},
        "protocol": "label-based mA (pred = prob > 0.5), instance accuracy / precision / recall, F1 of their "
                    "means; undefined ratios count 0 (Rethinking-of-PAR)",
    }
    log.info("attributes %s: mA %.2f F1 %.2f", extractor.label, 100 * scores["mA"], 100 * scores["f1"])
    return result, feats[~train]
