"""Attribute and parsing probes: they run on a tiny synthetic set, and their machinery can succeed
(features that are the labels themselves give a perfect probe)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpal_cache.eval.attributes import attribute_probe, load_attribute_table, run_attributes
from dpal_cache.eval.compare import compare_attributes, compare_parsing, metric_ratios
from dpal_cache.eval.features import fit_linear_probe, random_student_extractor
from dpal_cache.eval.metrics import confusion_matrix, segmentation_metrics
from dpal_cache.eval.parsing import find_pairs, predict_mask, run_parsing, sample_pixel_features


@pytest.fixture(scope="module")
def tiny():
    return random_student_extractor("vit_tiny_patch16", (64, 32), depth=2)


# ------------------------------------------------------------------------------------ attributes


def test_attribute_table_resolves_split_folders(market: Path):
    table = load_attribute_table(market / "attributes.parquet", market)
    assert len(table.paths) == 24 and all(p.is_file() for p in table.paths)
    assert table.labels.dtype == bool and table.labels.shape == (24, len(table.names))
    assert "person_id" not in table.names and "split" not in table.names
    assert {p.parent.name for p, s in zip(table.paths, table.splits) if s == "train"} == {"bounding_box_train"}


def test_attribute_probe_runs_on_the_tiny_set(market: Path, tiny):
    result, test_feats = run_attributes(tiny, market, market / "attributes.parquet")
    assert result["n_train"] == 12 and result["n_test"] == 12
    assert set(result["metrics"]) == {"mA", "accuracy", "precision", "recall", "f1"}
    assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
    assert test_feats.shape == (12, 192)
    json.dumps(result)


def test_labels_as_features_give_a_perfect_probe():
    rng = np.random.default_rng(0)
    labels = rng.random((80, 6)) < 0.4
    empty = ~labels.any(1)
    labels[empty, rng.integers(0, 6, empty.sum())] = True  # an empty sample scores 0 in the instance metrics
    labels[:2] = labels[40:42] = [[True] * 6, [False, True] * 3]  # both values of every attribute in each half
    labels[2] = labels[42] = [True, False] * 3
    feats = labels.astype(np.float32)
    scores = attribute_probe(feats[:40], labels[:40], feats[40:], labels[40:])
    assert scores["mA"] == 1.0 and scores["f1"] == pytest.approx(1.0)


def test_probe_fit_is_deterministic():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 5)), rng.random((50, 3)) < 0.5
    a = fit_linear_probe(x, y.astype(float))
    b = fit_linear_probe(x, y.astype(float))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_compare_attributes_side_by_side(market: Path, tiny):
    report = compare_attributes(tiny, tiny, market, market / "attributes.parquet")
    assert report["topk_agreement"]["5"] == 1.0
    assert report["student"]["metrics"] == report["teacher"]["metrics"]


def test_metric_ratios():
    assert metric_ratios({"a": 0.5, "b": 0.2}, {"a": 1.0, "b": 0.0}) == {"a": 0.5, "b": None}


# --------------------------------------------------------------------------------------- parsing


def test_pixel_sampling_equals_full_bilinear_upsampling():
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(4, 2, 3)).astype(np.float32)  # (h, w, D)
    mask = rng.integers(0, 5, size=(64, 32))
    mask[0, :4] = 255
    full = F.interpolate(torch.from_numpy(patches).permute(2, 0, 1)[None], size=(64, 32), mode="bilinear",
                         align_corners=False)[0].permute(1, 2, 0).reshape(-1, 3)  # (H * W, D)
    valid = np.flatnonzero(mask.reshape(-1) != 255)
    x, y = sample_pixel_features(patches, mask, 10_000, rng)  # more than there are: every labelled pixel, in order
    torch.testing.assert_close(x, full[valid], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(y, mask.reshape(-1)[valid])
    x, y = sample_pixel_features(patches, mask, 50, np.random.default_rng(3))
    assert x.shape == (50, 3) and len(y) == 50 and 255 not in y


def test_one_hot_masks_as_features_parse_perfectly():
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 4, size=(8, 6)) for _ in range(6)]
    feats = [np.eye(4, dtype=np.float32)[m] for m in masks]  # (H, W, 4): features = labels, full resolution
    xs, ys = zip(*(sample_pixel_features(f, m, 1000, rng) for f, m in zip(feats[:3], masks[:3])))
    probe = fit_linear_probe(torch.cat(xs), np.concatenate(ys), kind="multiclass", num_classes=5,
                             dtype=torch.float32)
    conf = sum(confusion_matrix(predict_mask(probe, f, m.shape), m, 5) for f, m in zip(feats[3:], masks[3:]))
    scores = segmentation_metrics(conf)
    assert scores["miou_nanmean"] == 1.0 and scores["pixel_acc"] == 1.0
    assert scores["miou"] == pytest.approx(4 / 5)  # class 4 never occurs: 0 in the SCHP mean


def test_parsing_probe_runs_on_the_tiny_set(market: Path, tiny):
    result, test_feats = run_parsing(tiny, market, market / "masks", pixels_per_image=200, max_iter=30)
    assert result["n_train_images"] == 12 and result["n_test_images"] == 14
    assert result["n_test_pixels"] == 14 * 64 * 32 and result["n_train_pixels"] == 12 * 200
    assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
    assert result["metrics"]["miou"] <= result["metrics"]["miou_nanmean"]
    assert "glove" in result["absent_classes"] and "background" in result["per_class_iou"]
    assert test_feats.shape == (14, 192)
    json.dumps(result)


def test_parsing_compare_and_missing_masks(market: Path, tiny, tmp_path: Path):
    report = compare_parsing(tiny, tiny, market, market / "masks", pixels_per_image=50, max_iter=10)
    assert report["ratio"]["pixel_acc"] == 1.0
    with pytest.raises(FileNotFoundError, match="no masks"):
        find_pairs(market, tmp_path, ("query",))
    with pytest.raises(FileNotFoundError, match="no image folder"):
        find_pairs(market, market / "masks", ("nowhere",))
