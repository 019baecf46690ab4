"""Evaluation metrics as pure functions: numpy arrays in, numbers out (protocols: docs/evaluation.md).

    distmat = cosine_distance(query_feats, gallery_feats)                 # (Nq, Ng)
    cmc, mAP, n_valid = reid_cmc_map(distmat, q_pids, g_pids, q_camids, g_camids)
    attribute_metrics(probs, labels)        # {"mA", "accuracy", "precision", "recall", "f1", ...}
    segmentation_metrics(confusion_matrix(pred, gt, 20))   # {"miou", "miou_nanmean", "pixel_acc", "mean_acc", ...}
    topk_agreement(student_feats, teacher_feats, k=10)     # fidelity: shared top-k neighbours

Every value is a fraction in [0, 1]; callers multiply by 100 for display only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Rethinking-of-PAR / PATH / SOLIDER attribute code divides by (count + EPS): an undefined ratio counts as 0
PAR_EPS = 1e-20


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)  # an all-zero row stays zero (distance 1 to everything)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine distance ``1 - <a_i, b_j>`` of L2-normalised rows: (Na, D), (Nb, D) -> (Na, Nb), float64.

    On normalised features this ranks exactly as squared Euclidean distance (``|a - b|^2 = 2 - 2 <a, b>``),
    the distance of torchreid / fast-reid evaluation. Computed in float64 so ties and near-ties
    do not depend on the accumulation order of a float32 matmul.
    """
    a, b = _l2_normalise(a), _l2_normalise(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return 1.0 - a @ b.T


def reid_cmc_map(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 10,
) -> tuple[np.ndarray, float, int]:
    """CMC and mAP with the Market-1501 protocol of torchreid's ``eval_market1501`` (also fast-reid, PATH).

    For each query the gallery is sorted by ascending distance with a *stable* sort (ties keep
    gallery order); gallery items with the query's id AND camera are removed; a query with no
    remaining true match is skipped (not counted). ``cmc = min(cumsum(match), 1)``;
    ``AP = sum_k match_k * precision@k / #matches`` (non-interpolated). Rank-k is the mean of
    ``cmc[k - 1]`` and mAP the mean AP over valid queries. Where fewer than ``max_rank`` gallery
    items remain, the CMC row is padded with its last value (1: the query was matched), where
    torchreid would crash.

    Distractors (id 0) are ordinary gallery negatives. Junk images (id -1) must be dropped when
    loading (reid.py does); they are refused here, as are queries with id <= 0.

    Args:
        distmat: (Nq, Ng) distances, smaller = more similar.
        q_pids, g_pids: person ids (Nq,), (Ng,).
        q_camids, g_camids: camera ids (Nq,), (Ng,).
        max_rank: length of the returned CMC curve.

    Returns:
        cmc (max_rank,) float64 (``cmc[k - 1]`` = Rank-k), mAP, number of valid queries.

    Raises:
        ValueError: shapes disagree, junk ids present, or no query has a match.
    """
    distmat = np.asarray(distmat, dtype=np.float64)
    q_pids, g_pids = np.asarray(q_pids).astype(np.int64), np.asarray(g_pids).astype(np.int64)
    q_camids, g_camids = np.asarray(q_camids).astype(np.int64), np.asarray(g_camids).astype(np.int64)
    n_q, n_g = distmat.shape if distmat.ndim == 2 else (-1, -1)
    if distmat.ndim != 2 or q_pids.shape != (n_q,) or q_camids.shape != (n_q,) or g_pids.shape != (n_g,) \
            or g_camids.shape != (n_g,):
        raise ValueError(f"distmat {distmat.shape} does not match query ids {q_pids.shape} / cameras "
                         f"{q_camids.shape} and gallery ids {g_pids.shape} / cameras {g_camids.shape}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if (q_pids <= 0).any():
        raise ValueError("query ids must be > 0: junk (-1) and distractor (0) images are never queries")
    if (g_pids < 0).any():
        raise ValueError("gallery holds junk ids (-1): drop them at load, as the Market-1501 protocol does")

    order = np.argsort(distmat, axis=1, kind="stable")  # (Nq, Ng)
    cmc_rows, aps = [], []
    for i in range(n_q):
        ranked = order[i]
        keep = ~((g_pids[ranked] == q_pids[i]) & (g_camids[ranked] == q_camids[i]))
        match = (g_pids[ranked][keep] == q_pids[i]).astype(np.float64)  # (n_kept,)
        n_rel = match.sum()
        if n_rel == 0:
            continue
        hits = np.cumsum(match)
        cmc = np.minimum(hits, 1.0)[:max_rank]
        if len(cmc) < max_rank:
            cmc = np.concatenate([cmc, np.full(max_rank - len(cmc), cmc[-1])])
        precision_at_k = hits / np.arange(1, len(match) + 1)
        aps.append(float((precision_at_k * match).sum() / n_rel))
        cmc_rows.append(cmc)
    if not aps:
        raise ValueError("no query has a gallery match from another camera: nothing to evaluate")
    return np.mean(cmc_rows, axis=0), float(np.mean(aps)), len(aps)


def attribute_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Pedestrian attribute metrics, the PA-100K / PETA protocol of Rethinking-of-PAR (used by PATH, SOLIDER).

    ``pred = probs > threshold`` (strict: a probability of exactly 0.5 is negative).
    Label-based: per attribute ``(TP / P + TN / N) / 2``, ``mA`` = the mean over attributes.
    Instance-based, per sample then averaged over samples: ``accuracy = |gt & pred| / |gt | pred|``,
    ``precision = |gt & pred| / |pred|``, ``recall = |gt & pred| / |gt|``; ``f1`` is the harmonic
    mean of the mean precision and the mean recall.

    Edge cases follow that code, which divides by ``count + 1e-20``: an undefined ratio counts 0.
    An attribute with no positives in ``labels`` gets ``TP / P = 0`` (its mA is at most 0.5),
    one with no negatives ``TN / N = 0``; a sample with empty gt and empty pred scores 0 accuracy,
    precision and recall. The counts of such attributes are returned so a report can say so.

    Args:
        probs: (N, A) predicted probabilities.
        labels: (N, A) binary ground truth (bool or 0/1).
        threshold: decision threshold (0.5 in every published protocol).

    Returns:
        ``mA``, ``accuracy``, ``precision``, ``recall``, ``f1`` (floats), ``per_attribute_mA`` (A,),
        ``no_positive_attributes`` and ``no_negative_attributes`` (ints).
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or probs.shape != labels.shape:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must both be (N, A)")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be binary (0/1 or bool)")
    gt, pred = labels.astype(bool), probs > threshold

    pos, neg = gt.sum(0).astype(np.float64), (~gt).sum(0).astype(np.float64)  # (A,)
    tp, tn = (gt & pred).sum(0), (~gt & ~pred).sum(0)
    per_attr = (tp / (pos + PAR_EPS) + tn / (neg + PAR_EPS)) / 2  # (A,)

    inter = (gt & pred).sum(1).astype(np.float64)  # (N,)
    union = (gt | pred).sum(1)
    acc = float(np.mean(inter / (union + PAR_EPS)))
    prec = float(np.mean(inter / (pred.sum(1) + PAR_EPS)))
    rec = float(np.mean(inter / (gt.sum(1) + PAR_EPS)))
    f1 = 2 * prec * rec / (prec + rec + PAR_EPS)
    return {
        "mA": float(per_attr.mean()),
        "accuracy": acc,
        "precision": prec,
        "recall": rec,
        "f1": float(f1),
        "per_attribute_mA": per_attr,
        "no_positive_attributes": int((pos == 0).sum()),
        "no_negative_attributes": int((neg == 0).sum()),
    }


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int | None = 255) -> np.ndarray:
    """Pixel confusion matrix (num_classes, num_classes), int64: rows = ground truth, columns = prediction.

    Pixels whose ground truth is ``ignore`` (255 in LIP / SCHP / mmseg) are left out. Sum the
    matrices of all images to accumulate a data set (the protocol's matrix is over all pixels).

    Raises:
        ValueError: shapes differ, or a label / prediction outside ``[0, num_classes)`` (not ignored).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    gt, pred = gt.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
    if ignore is not None:
        keep = gt != ignore
        gt, pred = gt[keep], pred[keep]
    for name, v in (("ground truth", gt), ("prediction", pred)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            bad = np.unique(v[(v < 0) | (v >= num_classes)])[:5]
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}: {bad}")
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_metrics(conf: np.ndarray) -> dict[str, Any]:
    """mIoU, pixel and mean accuracy from a confusion matrix (rows gt, columns prediction): the LIP protocol.

    ``IoU_c = tp / max(1, gt_c + pred_c - tp)``. ``miou`` is the mean over ALL classes, a class
    absent from both ground truth and prediction counting 0 (SCHP / SOLIDER convention, LIP
    numbers); ``miou_nanmean`` leaves such classes out (mmseg convention). A class predicted but
    never in the ground truth has IoU 0 in both. ``pixel_acc = sum(tp) / sum(gt)``;
    ``mean_acc`` = mean over all classes of ``tp / max(1, gt_c)`` (SCHP), ``mean_acc_nanmean``
    over the classes present in the ground truth (mmseg).

    Returns:
        ``miou``, ``miou_nanmean``, ``pixel_acc``, ``mean_acc``, ``mean_acc_nanmean`` (floats),
        ``iou`` (C,) per class (0 where absent), ``present`` (C,) bool: in ground truth or prediction.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got {conf.shape}")
    if conf.sum() == 0:
        raise ValueError("empty confusion matrix: no labelled pixels")
    tp, gt, pred = np.diag(conf), conf.sum(1), conf.sum(0)
    union = gt + pred - tp
    iou = tp / np.maximum(1.0, union)
    present = union > 0
    class_acc = tp / np.maximum(1.0, gt)
    return {
        "miou": float(iou.mean()),
        "miou_nanmean": float(iou[present].mean()),
        "pixel_acc": float(tp.sum() / gt.sum()),
        "mean_acc": float(class_acc.mean()),
        "mean_acc_nanmean": float(class_acc[gt > 0].mean()),
        "iou": iou,
        "present": present,
    }


def _topk_neighbours(query: np.ndarray, gallery: np.ndarray | None, k: int) -> np.ndarray:
    """Indices (N, k) of each query's k nearest gallery rows by cosine distance (stable: ties by index)."""
    dist = cosine_distance(query, query if gallery is None else gallery)
    if gallery is None:
        np.fill_diagonal(dist, np.inf)  # leave-one-out: an image is not its own neighbour
    n_candidates = dist.shape[1] - (gallery is None)
    if not 1 <= k <= n_candidates:
        raise ValueError(f"k must be in 1..{n_candidates} (candidate neighbours), got {k}")
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def topk_agreement(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    k: int = 10,
    gallery_a: np.ndarray | None = None,
    gallery_b: np.ndarray | None = None,
) -> float:
    """Fidelity of two models on the same images: mean overlap ``|N_a(i) & N_b(i)| / k`` of top-k neighbour sets.

    ``N_m(i)`` is the set of the k nearest neighbours (cosine distance, stable sort) of query
    image ``i`` under model ``m``: among the gallery when ``gallery_a`` / ``gallery_b`` are given
    (the same gallery images under each model), else among the other query images
    (leave-one-out). The two models may have different feature sizes. 1 = identical neighbour
    sets for every query, about ``k / n`` for unrelated rankings.
    """
    if (gallery_a is None) != (gallery_b is None):
        raise ValueError("give both galleries or neither")
    feats_a, feats_b = np.asarray(feats_a), np.asarray(feats_b)
    if len(feats_a) != len(feats_b) or (gallery_a is not None and len(gallery_a) != len(gallery_b)):
        raise ValueError("both models must see the same images (same row counts)")
    na = _topk_neighbours(feats_a, gallery_a, k)
    nb = _topk_neighbours(feats_b, gallery_b, k)
    overlap = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(na, nb)]
    return float(np.mean(overlap) / k)
