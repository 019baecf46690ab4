"""Fidelity of a distilled student: the same probe for student and teacher side by side, the ratio
student / teacher per metric, and how often their top-k neighbour sets agree (docs/evaluation.md).

    report = compare_reid(student_fx, teacher_fx, Path("data/market"))
    report["ratio"]["rank1"]            # student Rank-1 / teacher Rank-1
    report["topk_agreement"]["10"]      # mean |top-10 student & top-10 teacher| / 10 over queries

Reid agreement ranks the gallery for each query (the probe's own neighbour sets); the attribute
and parsing probes have no gallery, so their agreement is leave-one-out among the test images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from dpal_cache.eval.attributes import run_attributes
from dpal_cache.eval.features import FeatureExtractor, ProgressFn, no_progress
from dpal_cache.eval.metrics import topk_agreement
from dpal_cache.eval.parsing import run_parsing
from dpal_cache.eval.reid import ReidFeatures, run_reid

log = logging.getLogger(__name__)

AGREEMENT_KS = (1, 5, 10)


def metric_ratios(student: dict[str, float], teacher: dict[str, float]) -> dict[str, float | None]:
    """Student / teacher per shared metric; None where the teacher scores 0 (the ratio is undefined)."""
    return {k: (student[k] / teacher[k] if teacher[k] > 0 else None) for k in student if k in teacher}


def agreement(student_q: np.ndarray, teacher_q: np.ndarray, student_g: np.ndarray | None = None,
              teacher_g: np.ndarray | None = None, ks: tuple[int, ...] = AGREEMENT_KS) -> dict[str, float]:
    """Top-k neighbour agreement for each k that fits the candidate count (gallery, or the other queries)."""
    n_candidates = len(student_g) if student_g is not None else len(student_q) - 1
    return {str(k): topk_agreement(student_q, teacher_q, k, student_g, teacher_g) for k in ks if k <= n_candidates}


def side_by_side(student: dict[str, Any], teacher: dict[str, Any], topk: dict[str, float], on: str) -> dict[str, Any]:
    """One report from two results of the same probe."""
    report = {
        "probe": student["probe"],
        "student": student,
        "teacher": teacher,
        "ratio": metric_ratios(student["metrics"], teacher["metrics"]),
        "topk_agreement": topk,
        "topk_agreement_on": on,
    }
    log.debug("%s: student / teacher %s, top-k agreement %s", student["probe"], report["ratio"], topk)
    return report


def reid_agreement(student: ReidFeatures, teacher: ReidFeatures,
                   ks: tuple[int, ...] = AGREEMENT_KS) -> dict[str, float]:
    """Agreement of the gallery rankings of each query under the two models."""
    if not (np.array_equal(student.query_names, teacher.query_names)
            and np.array_equal(student.gallery_names, teacher.gallery_names)):
        raise ValueError("student and teacher features are of different images")
    return agreement(student.query_features, teacher.query_features, student.gallery_features,
                     teacher.gallery_features, ks)


def compare_reid(student: FeatureExtractor, teacher: FeatureExtractor, data_dir: str | Path,
                 ks: tuple[int, ...] = AGREEMENT_KS,
                 progress: ProgressFn = no_progress) -> tuple[dict[str, Any], ReidFeatures, ReidFeatures]:
    """The reid probe for both models; returns the report and both feature sets."""
    s_result, s_feats = run_reid(student, data_dir, progress=progress)
    t_result, t_feats = run_reid(teacher, data_dir, progress=progress)
    report = side_by_side(s_result, t_result, reid_agreement(s_feats, t_feats, ks), "query -> gallery ranking")
    return report, s_feats, t_feats


def compare_attributes(student: FeatureExtractor, teacher: FeatureExtractor, data_dir: str | Path,
                       labels: str | Path, ks: tuple[int, ...] = AGREEMENT_KS, progress: ProgressFn = no_progress,
                       **probe_kwargs: Any) -> dict[str, Any]:
    """The attribute probe for both models (``probe_kwargs`` go to run_attributes)."""
    s_result, s_test = run_attributes(student, data_dir, labels, progress=progress, **probe_kwargs)
    t_result, t_test = run_attributes(teacher, data_dir, labels, progress=progress, **probe_kwargs)
    return side_by_side(s_result, t_result, agreement(s_test, t_test, ks=ks), "test images, leave-one-out")


def compare_parsing(student: FeatureExtractor, teacher: FeatureExtractor, data_dir: str | Path,
                    masks_dir: str | Path, ks: tuple[int, ...] = AGREEMENT_KS, progress: ProgressFn = no_progress,
                    **probe_kwargs: Any) -> dict[str, Any]:
    """The parsing probe for both models (``probe_kwargs`` go to run_parsing)."""
    s_result, s_test = run_parsing(student, data_dir, masks_dir, progress=progress, **probe_kwargs)
    t_result, t_test = run_parsing(teacher, data_dir, masks_dir, progress=progress, **probe_kwargs)
    return side_by_side(s_result, t_result, agreement(s_test, t_test, ks=ks),
                        "global features of the test images, leave-one-out")
