"""Metrics against hand-computed cases, one per convention of docs/evaluation.md."""

from __future__ import annotations

import numpy as np
import pytest

from dpal_cache.eval.metrics import (
    attribute_metrics,
    confusion_matrix,
    cosine_distance,
    reid_cmc_map,
    segmentation_metrics,
    topk_agreement,
)

# ------------------------------------------------------------------------------------------ reid


def _reid(dist, q_pids, g_pids, q_cams, g_cams, max_rank=3):
    return reid_cmc_map(np.array(dist, dtype=float), np.array(q_pids), np.array(g_pids), np.array(q_cams),
                        np.array(g_cams), max_rank=max_rank)


def test_same_id_same_camera_removed_and_ap_by_hand():
    # sorted gallery: (1, c1) removed, (2, c1) negative from the same camera (kept), (1, c2) match, (1, c3) match
    cmc, mean_ap, n_valid = _reid([[0.3, 0.1, 0.0, 0.5]], [1], [1, 2, 1, 1], [1], [2, 1, 1, 3])
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert mean_ap == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert n_valid == 1


def test_distractors_are_negatives():
    # id 0 is closest: a miss at rank 1, the true match at rank 2
    cmc, mean_ap, _ = _reid([[0.0, 0.1]], [1], [0, 1], [1], [2, 2])
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert mean_ap == pytest.approx(0.5)


def test_queries_without_a_match_are_skipped():
    # query 2 (id 3) only has a gallery image from its own camera: it is not counted at all
    dist = [[0.1, 0.2, 0.9], [0.5, 0.6, 0.0]]
    cmc, mean_ap, n_valid = _reid(dist, [1, 3], [1, 2, 3], [1, 1], [2, 2, 1])
    assert n_valid == 1
    np.testing.assert_allclose(cmc, [1, 1, 1])
    assert mean_ap == 1.0


def test_ties_keep_gallery_order():
    # 30 gallery items at the same distance, the only match is the last: a stable sort ranks it 30th
    g_pids = [2] * 29 + [1]
    cmc, mean_ap, _ = _reid([[0.5] * 30], [1], g_pids, [1], [2] * 30, max_rank=30)
    assert cmc[28] == 0 and cmc[29] == 1
    assert mean_ap == pytest.approx(1 / 30)
    cmc, mean_ap, _ = _reid([[0.5] * 30], [1], g_pids[::-1], [1], [2] * 30)
    assert cmc[0] == 1 and mean_ap == 1.0


def test_cmc_padded_when_the_gallery_is_short():
    # 4 gallery items, one removed by the same-camera rule: 3 remain for max_rank 10
    cmc, mean_ap, _ = _reid([[0.1, 0.2, 0.3, 0.0]], [1], [2, 1, 3, 1], [1], [2, 2, 2, 1], max_rank=10)
    np.testing.assert_allclose(cmc, [0] + [1] * 9)
    assert mean_ap == pytest.approx(0.5)


def test_rank_k_and_map_are_means_over_valid_queries():
    dist = [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]
    cmc, mean_ap, n_valid = _reid(dist, [1, 1], [1, 2, 2], [1, 1], [2, 2, 2])
    # query 1: match at rank 1 (AP 1); query 2: match at rank 3 (AP 1/3)
    np.testing.assert_allclose(cmc, [0.5, 0.5, 1.0])
    assert mean_ap == pytest.approx((1 + 1 / 3) / 2)
    assert n_valid == 2


def _reference_ap(dist_row, match_row):
    """AP written the textbook way: mean over the true matches of (matches ranked at or above it) / its rank."""
    ranked = [m for _, _, m in sorted(zip(dist_row, range(len(dist_row)), match_row))]
    ranks = [i + 1 for i, m in enumerate(ranked) if m]
    return np.mean([(j + 1) / r for j, r in enumerate(ranks)]), ranks[0]


def test_random_cases_agree_with_a_textbook_reference():
    rng = np.random.default_rng(0)
    q_pids, q_cams = rng.integers(1, 5, 12), rng.integers(1, 4, 12)
    g_pids, g_cams = rng.integers(0, 5, 40), rng.integers(1, 4, 40)
    dist = rng.random((12, 40)).round(1)  # rounding makes ties
    cmc, mean_ap, n_valid = reid_cmc_map(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    aps, firsts = [], []
    for i in range(12):
        keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        match = g_pids[keep] == q_pids[i]
        if match.any():
            ap, first = _reference_ap(dist[i][keep], match)
            aps.append(ap)
            firsts.append(first)
    assert n_valid == len(aps)
    assert mean_ap == pytest.approx(np.mean(aps))
    np.testing.assert_allclose(cmc, [np.mean([f <= k for f in firsts]) for k in range(1, 6)])


@pytest.mark.parametrize("q_pids, g_pids, message", [
    ([1], [-1, 1], "junk"),
    ([-1], [1, 1], "query ids"),
    ([0], [0, 1], "query ids"),
])  # fmt: skip
def test_junk_and_non_person_queries_refused(q_pids, g_pids, message):
    with pytest.raises(ValueError, match=message):
        _reid([[0.1, 0.2]], q_pids, g_pids, [1], [2, 2])


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="no query"):
        _reid([[0.1]], [1], [1], [1], [1])


def test_cosine_distance_by_hand():
    d = cosine_distance(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 2.0], [3.0, 0.0], [-1.0, 0.0]]))
    np.testing.assert_allclose(d, [[1, 0, 2], [1, 1, 1]])  # a zero row is at distance 1 from everything


# ------------------------------------------------------------------------------------ attributes


def test_attribute_metrics_by_hand():
    probs = np.array([[0.9, 0.5], [0.2, 0.6], [0.7, 0.1]])
    labels = np.array([[1, 1], [0, 1], [1, 0]])
    m = attribute_metrics(probs, labels)
    # attribute 0 all right (1.0); attribute 1: 0.5 is negative (strict), TP/P = 1/2, TN/N = 1 -> 0.75
    np.testing.assert_allclose(m["per_attribute_mA"], [1.0, 0.75])
    assert m["mA"] == pytest.approx(0.875)
    # sample 0: gt {0, 1}, pred {0}: acc 1/2, precision 1, recall 1/2; samples 1 and 2 are exact
    assert m["accuracy"] == pytest.approx(2.5 / 3)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(2.5 / 3)
    assert m["f1"] == pytest.approx(2 * 1 * (5 / 6) / (1 + 5 / 6))


def test_threshold_is_strict():
    m = attribute_metrics(np.array([[0.5], [0.5000001]]), np.array([[0], [1]]))
    assert m["mA"] == 1.0


def test_attributes_without_positives_or_negatives_count_zero_for_the_missing_half():
    probs = np.array([[0.1, 0.9], [0.2, 0.8]])
    labels = np.array([[0, 1], [0, 1]])  # attribute 0 never positive, attribute 1 never negative
    m = attribute_metrics(probs, labels)
    np.testing.assert_allclose(m["per_attribute_mA"], [0.5, 0.5])
    assert m["no_positive_attributes"] == 1 and m["no_negative_attributes"] == 1


def test_empty_gt_and_pred_sample_scores_zero():
    probs = np.array([[0.1, 0.2], [0.9, 0.1]])
    labels = np.array([[0, 0], [1, 0]])  # sample 0: nothing true, nothing predicted
    m = attribute_metrics(probs, labels)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["per_attribute_mA"][0] == 1.0  # label-based metrics do not see samples; attribute 1 has no positive


def test_attribute_inputs_checked():
    with pytest.raises(ValueError, match="binary"):
        attribute_metrics(np.zeros((2, 2)), np.full((2, 2), 2))
    with pytest.raises(ValueError, match="must both be"):
        attribute_metrics(np.zeros((2, 2)), np.zeros((2, 3)))


# ---------------------------------------------------------------------------------- segmentation


def test_confusion_matrix_rows_gt_cols_pred_and_255_ignored():
    pred = np.array([[0, 1], [2, 2]])
    gt = np.array([[0, 1], [1, 255]])
    conf = confusion_matrix(pred, gt, 3)
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 0] = expected[1, 1] = expected[1, 2] = 1
    np.testing.assert_array_equal(conf, expected)


def test_confusion_matrix_refuses_unknown_labels():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.zeros(2, dtype=int), np.array([0, 7]), 3)


def test_segmentation_metrics_by_hand_both_conventions():
    # class 2 absent from gt and prediction; class 3 in gt only; class 4 predicted only
    conf = np.array([
        [3, 1, 0, 0, 1],
        [0, 2, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ])  # fmt: skip
    m = segmentation_metrics(conf)
    # tp [3, 2, 0, 0, 0], gt [5, 2, 0, 1, 0], pred [3, 4, 0, 0, 1]
    np.testing.assert_allclose(m["iou"], [3 / 5, 2 / 4, 0, 0, 0])
    assert m["miou"] == pytest.approx((0.6 + 0.5) / 5)  # SCHP: every class, the absent one as 0
    assert m["miou_nanmean"] == pytest.approx((0.6 + 0.5) / 4)  # mmseg: class 2 left out, class 4 counts 0
    assert m["pixel_acc"] == pytest.approx(5 / 8)
    assert m["mean_acc"] == pytest.approx((3 / 5 + 1) / 5)
    assert m["mean_acc_nanmean"] == pytest.approx((3 / 5 + 1 + 0) / 3)
    np.testing.assert_array_equal(m["present"], [True, True, False, True, True])


def test_perfect_segmentation_with_absent_classes():
    conf = np.diag([5, 3, 0])
    m = segmentation_metrics(conf)
    assert m["miou_nanmean"] == 1.0 and m["pixel_acc"] == 1.0
    assert m["miou"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------- agreement


def test_topk_agreement_query_gallery_by_hand():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    queries = np.array([[1.0, 0.1], [0.1, 1.0]])
    other_queries = np.array([[1.0, 0.1], [1.0, 0.0]])  # model b sends both queries to gallery 0
    assert topk_agreement(queries, queries, 1, gallery, gallery) == 1.0
    assert topk_agreement(queries, other_queries, 1, gallery, gallery) == 0.5
    # top-2: a = {0, 1}, {1, 0}; b = {0, 1}, {0, 1}: full overlap
    assert topk_agreement(queries, other_queries, 2, gallery, gallery) == 1.0


def test_topk_agreement_leave_one_out_and_feature_sizes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 4))
    assert topk_agreement(x, np.hstack([x, np.zeros((10, 3))]), 3) == 1.0  # padding keeps cosine rankings
    # one neighbour among 2 points: each is the other's, whatever the features
    assert topk_agreement(x[:2], rng.normal(size=(2, 8)), 1) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        topk_agreement(x, x, 10)  # only 9 other images
