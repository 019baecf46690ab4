"""Person re-identification probe on a Market-1501-layout folder: frozen global features, cosine distance,
CMC Rank-1/5/10 and mAP with the Market-1501 protocol (metrics.reid_cmc_map; docs/evaluation.md).

    result, feats = run_reid(open_model("student.safetensors"), Path("data/market"))
    result["metrics"]            # {"rank1", "rank5", "rank10", "mAP"}: fractions
    save_features(Path("feats.npz"), feats, result["model"])
    metrics_from_features(Path("feats.npz"))   # recomputes the same numbers from the file alone

Layout: ``query/`` and ``bounding_box_test/`` (gallery) under the data folder; file names
``0002_c1s1_000451_03.jpg`` are parsed with ``([-\\d]+)_c(\\d)`` (person id, camera). Junk images
(id -1) are dropped at load; distractors (id 0) stay in the gallery as negatives.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpal_cache.data.sources import IMAGE_EXTENSIONS
from dpal_cache.eval.features import FeatureExtractor, ProgressFn, no_progress
from dpal_cache.eval.metrics import cosine_distance, reid_cmc_map

log = logging.getLogger(__name__)

MARKET_PATTERN = re.compile(r"([-\d]+)_c(\d)")
QUERY_DIR, GALLERY_DIR, TRAIN_DIR = "query", "bounding_box_test", "bounding_box_train"
JUNK_ID, DISTRACTOR_ID = -1, 0
MAX_RANK = 10
RANKS = (1, 5, 10)
FEATURES_FORMAT = "dpal-cache-reid-features/1"


def parse_market_name(name: str) -> tuple[int, int]:
    """``0002_c1s1_000451_03.jpg`` -> (person id 2, camera 1); junk ``-1_c3...`` -> (-1, 3)."""
    match = MARKET_PATTERN.search(name)
    if match is None:
        raise ValueError(f"{name!r} is not a Market-1501 file name (<id>_c<camera>...)")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class MarketSplit:
    """One folder of a Market-1501 layout, junk dropped, sorted by file name."""

    folder: Path
    names: np.ndarray  # (N,) str
    pids: np.ndarray  # (N,) int64
    camids: np.ndarray  # (N,) int64
    junk_dropped: int = 0

    def __len__(self) -> int:
        return len(self.names)

    @property
    def paths(self) -> list[Path]:
        return [self.folder / str(n) for n in self.names]


def load_market_split(folder: str | Path) -> MarketSplit:
    """The images of one split folder (not recursive, as Market-1501's loaders) with ids and cameras.

    Raises:
        FileNotFoundError: no such folder. ValueError: an image name that is not Market-1501's, or no images.
    """
    folder = Path(folder)
    if not folder.parent.is_dir():
        raise FileNotFoundError(f"{folder.parent} does not exist (--data takes a Market-1501 folder with "
                                f"{QUERY_DIR}/ and {GALLERY_DIR}/)")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder.parent} has no {folder.name}/ folder (a Market-1501 layout has "
                                f"{QUERY_DIR}/ and {GALLERY_DIR}/)")
    names, pids, camids, junk = [], [], [], 0
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        pid, camid = parse_market_name(path.name)
        if pid == JUNK_ID:
            junk += 1
            continue
        names.append(path.name)
        pids.append(pid)
        camids.append(camid)
    if not names:
        raise ValueError(f"{folder} holds no (non-junk) images")
    if junk:
        log.info("%s: dropped %d junk images (id -1)", folder, junk)
    return MarketSplit(folder, np.array(names, dtype=np.str_), np.array(pids, dtype=np.int64),
                       np.array(camids, dtype=np.int64), junk)


@dataclass(frozen=True)
class ReidFeatures:
    """Query and gallery features with their ids, cameras and file names: all a metric needs."""

    query_features: np.ndarray  # (Nq, D)
    gallery_features: np.ndarray  # (Ng, D)
    query_pids: np.ndarray
    gallery_pids: np.ndarray
    query_camids: np.ndarray
    gallery_camids: np.ndarray
    query_names: np.ndarray
    gallery_names: np.ndarray


def reid_metrics(feats: ReidFeatures, max_rank: int = MAX_RANK) -> dict[str, Any]:
    """Cosine distance + Market-1501 CMC/mAP of a feature set: ``metrics`` (fractions), ``cmc``, ``n_valid``."""
    distmat = cosine_distance(feats.query_features, feats.gallery_features)
    cmc, mean_ap, n_valid = reid_cmc_map(distmat, feats.query_pids, feats.gallery_pids, feats.query_camids,
                                         feats.gallery_camids, max_rank=max_rank)
    metrics = {f"rank{k}": float(cmc[k - 1]) for k in RANKS if k <= max_rank}
    metrics["mAP"] = mean_ap
    return {"metrics": metrics, "cmc": cmc.tolist(), "n_valid": n_valid}


def extract_reid_features(extractor: FeatureExtractor, data_dir: str | Path,
                          progress: ProgressFn = no_progress) -> tuple[ReidFeatures, dict[str, int]]:
    """Global features of ``query/`` and ``bounding_box_test/``; also returns the split counts."""
    data_dir = Path(data_dir)
    query, gallery = load_market_split(data_dir / QUERY_DIR), load_market_split(data_dir / GALLERY_DIR)
    advance = progress(f"reid features: {extractor.label}", len(query) + len(gallery))
    q = extractor.global_features_of(query.paths, on_batch=advance)
    g = extractor.global_features_of(gallery.paths, on_batch=advance)
    feats = ReidFeatures(q, g, query.pids, gallery.pids, query.camids, gallery.camids, query.names, gallery.names)
    counts = {"n_query": len(query), "n_gallery": len(gallery),
              "n_distractors": int((gallery.pids == DISTRACTOR_ID).sum()),
              "n_junk_dropped": query.junk_dropped + gallery.junk_dropped,
              "n_query_ids": len(np.unique(query.pids))}
    return feats, counts


def run_reid(extractor: FeatureExtractor, data_dir: str | Path, max_rank: int = MAX_RANK,
             progress: ProgressFn = no_progress) -> tuple[dict[str, Any], ReidFeatures]:
    """The reid probe: features, distances, metrics. Returns the JSON-safe result and the features."""
    feats, counts = extract_reid_features(extractor, data_dir, progress)
    scores = reid_metrics(feats, max_rank)
    result = {"probe": "reid", "data": str(data_dir), "model": extractor.describe(), **scores, **counts,
              "protocol": "Market-1501 (torchreid eval_market1501): cosine distance, stable sort, same id+camera "
                          "removed, queries without a match skipped, junk -1 dropped, distractors 0 kept"}
    m = scores["metrics"]
    log.info("reid %s: Rank-1 %.2f mAP %.2f (%d valid queries)", extractor.label, 100 * m["rank1"],
             100 * m["mAP"], scores["n_valid"])
    return result, feats


def save_features(path: str | Path, feats: ReidFeatures, model: dict[str, Any] | None = None) -> Path:
    """Write the features, ids, cameras and names to ``path`` (.npz, no pickles) for anyone to recompute."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: features are written as .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FEATURES_FORMAT, "model": model or {}, "distance": "cosine", "max_rank": MAX_RANK}
    np.savez(path, meta=np.array(json.dumps(meta)), **vars(feats))
    return path


def load_features(path: str | Path) -> ReidFeatures:
    """Read a ``save_features`` file."""
    with np.load(Path(path), allow_pickle=False) as data:
        missing = [k for k in ReidFeatures.__dataclass_fields__ if k not in data]
        if missing:
            raise ValueError(f"{path} is not a reid features file: missing {', '.join(missing)}")
        return ReidFeatures(**{k: data[k] for k in ReidFeatures.__dataclass_fields__})


def metrics_from_features(path: str | Path, max_rank: int = MAX_RANK) -> dict[str, Any]:
    """Recompute a reid result from its ``--save-features`` file alone (same numbers as the run)."""
    return reid_metrics(load_features(path), max_rank)
