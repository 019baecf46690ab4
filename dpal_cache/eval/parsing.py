"""Human parsing probe: a 1x1 linear classifier on frozen patch tokens upsampled (bilinear) to pixels,
mIoU in both conventions, pixel and mean accuracy (metrics.segmentation_metrics; docs/evaluation.md).

    result, test_feats = run_parsing(open_model("student.safetensors"), Path("data/market"),
                                     Path("data/market/masks"))
    result["metrics"]     # {"miou" (SCHP: all classes), "miou_nanmean" (mmseg), "pixel_acc", "mean_acc"}

Images come from ``DATA/<folder>`` for the train folders (default ``bounding_box_train``) and
test folders (default ``query`` and ``bounding_box_test``); the mask of ``DATA/<folder>/<name>.jpg``
is ``MASKS/<folder>/<name>.png`` (as ``dpal-cache synth`` writes them), else ``MASKS/<name>.png``;
images without a mask are skipped. Masks hold class ids (LIP: 20 classes), 255 = ignore.

Training samples up to ``pixels_per_image`` labelled pixels per train image (seeded per image)
and reads the bilinear upsampling of the patch grid at exactly those pixels (``grid_sample``,
identical to ``F.interpolate(..., align_corners=False)`` there). Testing upsamples the logits of
the patch grid instead of the features: the classifier is affine and bilinear weights sum to
one, so both give the same scores, at 1/D of the cost. Predictions are made at each mask's own
resolution, and one confusion matrix is accumulated over all test pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dpal_cache.data.sources import FolderSource
from dpal_cache.eval.features import (
    FeatureExtractor,
    LinearProbe,
    ProgressFn,
    fit_linear_probe,
    no_progress,
    read_images,
)
from dpal_cache.eval.metrics import confusion_matrix, segmentation_metrics

log = logging.getLogger(__name__)

LIP_CLASSES = (
    "background", "hat", "hair", "glove", "sunglasses", "upper_clothes", "dress", "coat", "socks", "pants",
    "jumpsuits", "scarf", "skirt", "face", "left_arm", "right_arm", "left_leg", "right_leg", "left_shoe",
    "right_shoe",
)  # fmt: skip
IGNORE = 255
TRAIN_FOLDERS = ("bounding_box_train",)
TEST_FOLDERS = ("query", "bounding_box_test")
PIXELS_PER_IMAGE = 1000
MAX_TRAIN_PIXELS = 500_000  # caps memory of the probe's training set: fewer pixels per image on big sets
L2 = 1e-3
MAX_ITER = 100
HEADLINE = ("miou", "miou_nanmean", "pixel_acc", "mean_acc")


def find_pairs(data_dir: str | Path, masks_dir: str | Path, folders: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of the images under ``data_dir/<folder>`` that have a mask, sorted per folder."""
    data_dir, masks_dir = Path(data_dir), Path(masks_dir)
    pairs: list[tuple[Path, Path]] = []
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir} does not exist (--data takes the folder holding {', '.join(folders)})")
    for folder in folders:
        if not (data_dir / folder).is_dir():
            raise FileNotFoundError(f"no image folder {data_dir / folder}")
        source = FolderSource(data_dir / folder)
        found = 0
        for i in range(len(source)):
            rel = Path(source.key(i)).with_suffix(".png")
            for mask in (masks_dir / folder / rel, masks_dir / rel):
                if mask.is_file():
                    pairs.append((Path(source.path(i)), mask))
                    found += 1
                    break
        if found < len(source):
            log.warning("%s: %d of %d images have no mask under %s and are skipped", data_dir / folder,
                        len(source) - found, len(source), masks_dir)
    if not pairs:
        raise FileNotFoundError(f"no masks under {masks_dir} for the images of {', '.join(folders)} in {data_dir}")
    return pairs


def read_mask(path: str | Path) -> np.ndarray:
    """A label PNG -> (H, W) uint8 of class ids (palette indices for P-mode files)."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: a mask must be a single-channel label image, got mode {img.mode}")
        return np.asarray(img).astype(np.int64)


def sample_pixel_features(patches: np.ndarray | torch.Tensor, mask: np.ndarray, n: int, rng: np.random.Generator,
                          ignore: int = IGNORE) -> tuple[torch.Tensor, np.ndarray]:
    """Features (m, D) and labels (m,) of up to ``n`` random labelled pixels of ``mask`` (H, W).

    The feature of pixel (y, x) is the bilinear upsampling of ``patches`` (h, w, D) to (H, W)
    (``align_corners=False``), read at that pixel only.
    """
    H, W = mask.shape
    valid = np.flatnonzero(mask.reshape(-1) != ignore)
    if len(valid) > n:
        valid = np.sort(rng.choice(valid, size=n, replace=False))
    ys, xs = np.divmod(valid, W)
    grid = np.stack([(xs + 0.5) / W * 2 - 1, (ys + 0.5) / H * 2 - 1], axis=-1)  # (m, 2) as (x, y) in [-1, 1]
    feat = torch.as_tensor(patches).float().permute(2, 0, 1)[None]  # (1, D, h, w)
    grid_t = torch.as_tensor(grid, dtype=feat.dtype)[None, None]  # (1, 1, m, 2)
    sampled = F.grid_sample(feat, grid_t, mode="bilinear", padding_mode="border", align_corners=False)  # (1, D, 1, m)
    return sampled[0, :, 0].T.contiguous(), mask.reshape(-1)[valid]


def predict_mask(probe: LinearProbe, patches: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Patch features (h, w, D) -> class ids (H, W): logits on the patch grid, upsampled bilinear, argmax."""
    logits = probe.logits(patches).permute(2, 0, 1)[None]  # (1, C, h, w)
    logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)  # (1, C, H, W)
    return logits[0].argmax(0).cpu().numpy()


def _batches(pairs: list[tuple[Path, Path]], size: int):
    for start in range(0, len(pairs), size):
        yield start, pairs[start:start + size]


def fit_parsing_probe(extractor: FeatureExtractor, pairs: list[tuple[Path, Path]], num_classes: int,
                      pixels_per_image: int = PIXELS_PER_IMAGE, max_train_pixels: int = MAX_TRAIN_PIXELS,
                      seed: int = 0, l2: float = L2, max_iter: int = MAX_ITER, ignore: int = IGNORE,
                      advance=lambda n: None) -> tuple[LinearProbe, int]:
    """Sample labelled pixels of the train images and fit the softmax probe; returns it and the pixel count."""
    n = max(1, min(pixels_per_image, max_train_pixels // len(pairs)))
    xs, ys = [], []
    for start, chunk in _batches(pairs, extractor.batch_size):
        _, patches = extractor.features(read_images([p for p, _ in chunk]))  # (b, h, w, D)
        for j, (_, mask_path) in enumerate(chunk):
            mask = read_mask(mask_path)
            # one generator per image: the sample does not depend on the batch size
            x, y = sample_pixel_features(patches[j], mask, n, np.random.default_rng([seed, start + j]), ignore)
            xs.append(x)
            ys.append(y)
        advance(len(chunk))
    x, y = torch.cat(xs), np.concatenate(ys)
    if len(y) == 0:
        raise ValueError("the train masks hold no labelled pixels")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"train masks hold labels outside 0..{num_classes - 1} (and {ignore} = ignore): "
                         f"{np.unique(y[(y < 0) | (y >= num_classes)])[:5]}")
    probe = fit_linear_probe(x, y, kind="multiclass", num_classes=num_classes, l2=l2, max_iter=max_iter,
                             dtype=torch.float32)
    return probe, len(y)


def parsing_confusion(extractor: FeatureExtractor, probe: LinearProbe, pairs: list[tuple[Path, Path]],
                      num_classes: int, ignore: int = IGNORE,
                      advance=lambda n: None) -> tuple[np.ndarray, np.ndarray]:
    """The confusion matrix over all test pixels, and the test images' global features (N, D)."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    globs = []
    for _, chunk in _batches(pairs, extractor.batch_size):
        glob, patches = extractor.features(read_images([p for p, _ in chunk]))
        globs.append(glob)
        for j, (_, mask_path) in enumerate(chunk):
            mask = read_mask(mask_path)
            conf += confusion_matrix(predict_mask(probe, patches[j], mask.shape), mask, num_classes, ignore)
        advance(len(chunk))
    return conf, np.concatenate(globs)


def run_parsing(extractor: FeatureExtractor, data_dir: str | Path, masks_dir: str | Path,
                num_classes: int = len(LIP_CLASSES), class_names: tuple[str, ...] | None = None,
                train_folders: tuple[str, ...] = TRAIN_FOLDERS, test_folders: tuple[str, ...] = TEST_FOLDERS,
                pixels_per_image: int = PIXELS_PER_IMAGE, max_train_pixels: int = MAX_TRAIN_PIXELS,
                seed: int = 0, l2: float = L2, max_iter: int = MAX_ITER, ignore: int = IGNORE,
                progress: ProgressFn = no_progress) -> tuple[dict[str, Any], np.ndarray]:
    """The parsing probe end to end. Returns the JSON-safe result and the test images' global features."""
    if class_names is None:
        class_names = LIP_CLASSES if num_classes == len(LIP_CLASSES) else tuple(str(c) for c in range(num_classes))
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    train_pairs = find_pairs(data_dir, masks_dir, train_folders)
    test_pairs = find_pairs(data_dir, masks_dir, test_folders)
    advance = progress(f"parsing probe: {extractor.label}", len(train_pairs) + len(test_pairs))
    probe, n_pixels = fit_parsing_probe(extractor, train_pairs, num_classes, pixels_per_image, max_train_pixels,
                                        seed, l2, max_iter, ignore, advance)
    conf, test_feats = parsing_confusion(extractor, probe, test_pairs, num_classes, ignore, advance)
    scores = segmentation_metrics(conf)
    result = {
        "probe": "parsing",
        "data": str(data_dir),
        "masks": str(masks_dir),
        "model": extractor.describe(),
        "metrics": {k: scores[k] for k in HEADLINE},
        "mean_acc_nanmean": scores["mean_acc_nanmean"],
        "per_class_iou": {name: float(v) for name, v, present in zip(class_names, scores["iou"], scores["present"])
                          if present},
        "absent_classes": [name for name, present in zip(class_names, scores["present"]) if not present],
        "n_train_images": len(train_pairs),
        "n_train_pixels": n_pixels,
        "n_test_images": len(test_pairs),
        "n_test_pixels": int(conf.sum()),
        "num_classes": num_classes,
        "probe_config": {"kind": "1x1 linear softmax on bilinearly upsampled patch tokens, full-batch L-BFGS",
                         "pixels_per_image": pixels_per_image, "max_train_pixels": max_train_pixels, "seed": seed,
                         "l2": l2, "max_iter": max_iter, "train_folders": list(train_folders),
                         "test_folders": list(test_folders)},
        "protocol": "confusion matrix over all test pixels (rows gt, cols prediction, 255 ignored); miou: mean "
                    "over all classes, absent ones 0 (SCHP); miou_nanmean: absent classes left out (mmseg)",
    }
    log.info("parsing %s: mIoU %.2f (nanmean %.2f), pixel acc %.2f", extractor.label, 100 * scores["miou"],
             100 * scores["miou_nanmean"], 100 * scores["pixel_acc"])
    return result, test_feats
