"""``pattern_report`` and its numerics: PCA against numpy's SVD, RGB maps, person-positive sign, 1-NN and IoU
by hand, identity parsing, and the whole report on a tiny store for an UNTRAINED and a trained student.

The store (10 synthetic 64x32 persons of 5 identities, random ViT-Ti teacher, 64x64 crowds) and a
one-step training run are made once per module (a few seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpal_cache.config import load_config
from dpal_cache.data.sources import open_source
from dpal_cache.eval.features import open_model
from dpal_cache.train.config import TrainConfig
from dpal_cache.train.export import export_student
from dpal_cache.train.loop import train
from dpal_cache.viz import draw
from dpal_cache.viz.patterns import (
    PatternError,
    StoreImages,
    embedding_selection,
    mask_iou,
    nn_same_class,
    pattern_report,
    pca,
    pca_maps,
    person_id,
    student_tokens,
)


@pytest.fixture(scope="module")
def tiny(tiny_store_factory) -> tuple[str, Path]:
    """(store url, image folder): 5 ids x 2 images, 2 views of 64x32 and one 64x64 crowd per image."""
    url, folder = tiny_store_factory("patterns")
    return str(url), folder


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> Path:
    """A real exported student: one training step on the tiny store, then ``export``."""
    url, folder = tiny
    root = tmp_path_factory.mktemp("student")
    cfg = load_config(TrainConfig, None, ["batch_size=4", "workers=0", "device=cpu", "max_steps=1", "log_every=1",
                                          "decoder.kind=linear"])
    train(cfg, url, open_source(folder), root / "run")
    export_student(root / "run", root / "student.safetensors")
    return root / "student.safetensors"


# ---------------------------------------------------------------------------------------------
# numerics


def test_pca_matches_numpy_svd_both_ways_round():
    rng = np.random.default_rng(0)
    for shape in [(60, 8), (8, 60)]:  # covariance and Gram paths
        x = rng.normal(size=shape) * np.linspace(4, 1, shape[1]) + 3
        mean, comps, explained = pca(x, 3)
        _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
        signs = np.sign(vt[np.arange(3), np.abs(vt[:3]).argmax(1)])
        diff = np.abs(comps - vt[:3] * signs[:, None]).max()
        assert diff < 1e-9, f"max |difference| {diff:.2e}"
        assert np.allclose(explained, s[:3] ** 2 / (s**2).sum()) and np.allclose(mean, x.mean(0))
        assert (comps[np.arange(3), np.abs(comps).argmax(1)] > 0).all()  # the deterministic sign rule
    _, comps, explained = pca(np.ones((5, 4)), 2)  # rank 0: zero components, nothing explained
    assert not comps.any() and not explained.any()


def test_pca_maps_are_rgb_in_unit_range_and_person_positive():
    rng = np.random.default_rng(1)
    grid = (8, 4)
    person = np.zeros(grid, bool)
    person[2:7, 1:3] = True
    feats = rng.normal(scale=0.1, size=(3, 32, 16))
    feats[:, person.reshape(-1), 0] -= 5.0  # the person is the negative end of the strongest direction
    maps, explained = pca_maps(feats, grid)
    assert maps.shape == (3, 32, 3) and maps.min() == 0.0 and maps.max() == 1.0
    assert explained[0] > 0.9 and maps.reshape(-1, 3).std(0).min() > 0  # no constant channel
    assert maps[:, person.reshape(-1), 0].min() > maps[:, ~person.reshape(-1), 0].max()  # flipped to positive


def test_nearest_neighbour_and_iou_by_hand():
    x = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 0.05]])
    classes = np.array([0, 0, 1, 1, 1])
    groups = np.array([0, 1, 2, 3, 4])
    # nearest of each: 4 (class 1, miss), 4 (miss), 3 (hit), 2 (hit), 1 (miss)
    assert nn_same_class(x, classes, groups) == pytest.approx(2 / 5)
    # points 0 and 1 are views of one image: they may not be each other's neighbour
    assert nn_same_class(x[:2], np.array([0, 0]), np.array([0, 0])) is None
    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    b = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], bool)
    assert mask_iou(a, b) == pytest.approx((1 / 3 + 1) / 2)


def test_identities_from_market_names_else_images():
    assert person_id("bounding_box_train/0002_c1s1_000451_03.jpg") == 2
    assert person_id("-1_c3s1_000001_00.jpg") == -1 and person_id("crowd/photo_17.jpg") is None
    keys = [f"{pid:04d}_c1s1_{i:06d}_01.jpg" for i, pid in enumerate([0, 1, 1, 1, 2, 3, 3])]
    ok = np.arange(len(keys))
    images, classes, names, by_identity = embedding_selection(keys, ok, classes=2, per_class=2)
    assert by_identity and names == ["id 1", "id 3"]  # distractor id 0 left out, ids spread over 1..3
    assert images.tolist() == [1, 3, 5, 6] and classes.tolist() == [0, 0, 1, 1]
    images, classes, names, by_identity = embedding_selection([f"img_{i}.jpg" for i in range(20)], np.arange(20), 2, 3)
    assert not by_identity and len(images) == 6 and classes.tolist() == list(range(6)) and names[0] == "#0"


# ---------------------------------------------------------------------------------------------
# on a store


def test_store_maps_are_not_constant(tiny):
    url, folder = tiny
    src = StoreImages(url, folder)
    idx = src.ok[:4]
    views = src.render_views(idx, [0])
    assert views.shape == (4, 3, 64, 32) and views.dtype == torch.uint8
    t_maps, _ = pca_maps(src.tokens(idx * src.v)[:, 1:], src.view_grid)
    fx = open_model("random:vit_tiny_patch16", img_size=(64, 32))
    glob, patches = student_tokens(fx, views, src.view_grid)
    assert glob.shape == (4, 192) and patches.shape == (4, 8, 192)
    s_maps, _ = pca_maps(patches, src.view_grid)
    for maps in (t_maps, s_maps):
        assert maps.reshape(-1, 3).std(axis=0).min() > 0.05  # every channel varies over the patches


def _colours(path: str) -> set[tuple[int, int, int]]:
    with Image.open(path) as img:
        return draw.colours_used(img)


def _size(path: str) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def test_report_of_an_untrained_student(tiny, tmp_path):
    url, folder = tiny
    result = pattern_report(url, folder, "random:vit_tiny_patch16", tmp_path / "out", n=3)
    files = result["files"]
    assert result["model"]["trained"] is False and len(result["images"]) == 3
    # views 64x32 shown at 192x96 (x3), crowds 64x64 at 192x192: three rows of tiles plus titles
    w, h = _size(files["patterns"])
    assert 3 * 192 < h < 3 * 192 + 260 and 5 * 96 < w < 5 * 96 + 450
    w, h = _size(files["crowds"])
    assert 3 * 192 < h < 3 * 192 + 260 and 3 * 192 < w < 3 * 192 + 400
    assert all(draw.colour(c) in _colours(files["embedding"]) for c in range(5))  # 5 identities, 5 colours
    report = Path(files["report"]).read_text()
    for name in ("patterns.png", "crowds.png", "embedding.png"):
        assert f"]({name})" in report and f'src="{name}"' in Path(files["html"]).read_text()
    assert "UNTRAINED" in report and "1-NN same identity" in report
    stats = result["stats"]
    assert stats["embedding"]["points"] == 10 * 2  # every image of the 5 identities, both views
    assert 0 <= stats["patches"]["mask_iou"] <= 1 and stats["embedding"]["nn_same_identity"]["teacher"] is not None
    assert (tmp_path / "out" / "report.json").is_file()


def test_report_of_an_exported_student(tiny, exported, tmp_path):
    url, folder = tiny
    result = pattern_report(url, folder, exported, tmp_path / "out", n=2, embed_ids=3, embed_per_id=1)
    report = Path(result["files"]["report"]).read_text()
    assert result["model"]["trained"] is True and "UNTRAINED" not in report and "student.safetensors" in report
    assert result["stats"]["embedding"]["points"] == 3 * 2  # one image of each of 3 identities, both views
    seen = _colours(result["files"]["embedding"])
    assert all(draw.colour(c) in seen for c in range(3)) and draw.colour(3) not in seen


def test_wrong_images_fail_clearly(tiny, tmp_path):
    url, _ = tiny
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (32, 64)).save(other / "x.jpg")
    with pytest.raises(PatternError, match="none of the .* scanned images"):
        pattern_report(url, other, "random:vit_tiny_patch16", tmp_path / "out")
