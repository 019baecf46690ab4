"""Reid probe end to end on a tiny synthetic Market-1501 set; saved features reproduce the numbers exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dpal_cache.eval.compare import compare_reid
from dpal_cache.eval.features import (
    load_student_backbone,
    open_model,
    random_student_extractor,
    read_images,
    teacher_extractor,
)
from dpal_cache.eval.reid import (
    load_features,
    load_market_split,
    metrics_from_features,
    parse_market_name,
    run_reid,
    save_features,
)
from dpal_cache.train.students import build_student


@pytest.fixture(scope="module")
def untrained():
    return open_model("random:vit_tiny_patch16", img_size=(64, 32))


def test_market_names():
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_market_name("-1_c3s2_000100_01.jpg") == (-1, 3)
    assert parse_market_name("0000_c6s1_000001_01.jpg") == (0, 6)
    with pytest.raises(ValueError, match="Market-1501"):
        parse_market_name("person.jpg")


def test_junk_dropped_at_load_distractors_kept(market: Path, tmp_path: Path):
    gallery = tmp_path / "bounding_box_test"
    shutil.copytree(market / "bounding_box_test", gallery)
    shutil.copy(next(gallery.iterdir()), gallery / "-1_c2s1_000999_01.jpg")
    split = load_market_split(gallery)
    assert split.junk_dropped == 1 and -1 not in split.pids
    assert (split.pids == 0).sum() == 2
    assert list(split.names) == sorted(split.names)


def test_untrained_student_end_to_end_and_saved_features_reproduce(market: Path, untrained, tmp_path: Path):
    result, feats = run_reid(untrained, market)
    assert result["model"]["trained"] is False and "UNTRAINED" in result["model"]["label"]
    assert result["n_query"] == 3 and result["n_gallery"] == 11 and result["n_distractors"] == 2
    assert set(result["metrics"]) == {"rank1", "rank5", "rank10", "mAP"}
    assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
    assert feats.query_features.shape == (3, 192) and feats.query_features.dtype == np.float32
    json.dumps(result)  # JSON-safe

    path = save_features(tmp_path / "feats.npz", feats, result["model"])
    again = metrics_from_features(path)
    assert again["metrics"] == result["metrics"]  # exactly, not approximately
    assert again["cmc"] == result["cmc"] and again["n_valid"] == result["n_valid"]
    with np.load(path, allow_pickle=False) as data:  # plain arrays, readable anywhere
        assert list(data["query_names"]) == list(feats.query_names)
        assert json.loads(str(data["meta"]))["model"]["label"] == result["model"]["label"]
    loaded = load_features(path)
    np.testing.assert_array_equal(loaded.gallery_pids, feats.gallery_pids)


def test_a_model_agrees_with_itself_and_runs_beside_a_random_teacher(market: Path, untrained):
    report, _, _ = compare_reid(untrained, untrained, market)
    assert report["topk_agreement"] == {"1": 1.0, "5": 1.0, "10": 1.0}
    assert all(r in (None, 1.0) for r in report["ratio"].values())

    teacher = teacher_extractor("random:vit_tiny", img_size=(64, 32))
    report, _, t_feats = compare_reid(untrained, teacher, market)
    assert report["teacher"]["model"]["trained"] is False
    assert all(0.0 <= v <= 1.0 for v in report["topk_agreement"].values())
    assert t_feats.query_features.shape[1] == teacher.module.embed_dim


def _export_like(student, path: Path) -> None:
    """What `dpal-cache export` writes: the backbone's timm state dict + JSON (lists, as JSON has no tuples)."""
    save_file({k: v.contiguous() for k, v in student.backbone.state_dict().items()}, str(path))
    meta = {"timm_name": student.timm_name, "timm_kwargs": json.loads(json.dumps(student.timm_kwargs)),
            "norm": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "run": {"step": 7}}
    path.with_suffix(".json").write_text(json.dumps(meta))


def test_exported_student_loads_strictly_and_gives_its_own_features(market: Path, tmp_path: Path):
    torch.manual_seed(1)
    student = build_student("vit_tiny_patch16", img_size=(64, 32), depth=2).eval()
    path = tmp_path / "student.safetensors"
    _export_like(student, path)
    fx = open_model(path)
    assert fx.trained and fx.img_size == (64, 32) and fx.info["step"] == 7

    images = read_images(sorted((market / "query").iterdir()))  # 64x32 already: no resize
    x = (torch.stack(images).float() / 255 - torch.tensor(fx.mean).view(1, 3, 1, 1)) / torch.tensor(fx.std).view(
        1, 3, 1, 1)
    with torch.no_grad():
        want = student(x)["global"].numpy()
    np.testing.assert_allclose(fx.global_features(images), want, atol=1e-5)

    twin = open_model(f"random:{path}", seed=3)  # the untrained baseline of exactly this architecture
    assert not twin.trained and "UNTRAINED" in twin.label and twin.img_size == fx.img_size
    assert len(twin.module.backbone.blocks) == 2
    other = twin.global_features(images)
    assert other.shape == want.shape and not np.allclose(other, want, atol=1e-3)
    np.testing.assert_array_equal(other, open_model(f"random:{path}", seed=3).global_features(images))

    weights = {k: v for k, v in student.backbone.state_dict().items() if k != "norm.bias"}
    save_file(weights, str(path))
    with pytest.raises(ValueError, match=r"another architecture.*missing keys \(1\): norm.bias"):
        load_student_backbone(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="student.json"):
        open_model(path)


def test_features_do_not_depend_on_batch_size_or_input_size(market: Path):
    small = random_student_extractor("vit_tiny_patch16", (64, 32), depth=2, batch_size=2)
    big = random_student_extractor("vit_tiny_patch16", (64, 32), depth=2, batch_size=64)
    paths = sorted((market / "bounding_box_test").iterdir())
    np.testing.assert_allclose(small.global_features_of(paths), big.global_features_of(paths), atol=1e-5)
    # images of other sizes are resized to the model's input (here a 2x upscaled copy of the first)
    img = read_images(paths[:1])[0]
    bigger = torch.nn.functional.interpolate(img[None].float(), scale_factor=2).round().to(torch.uint8)[0]
    feats = small.patch_features([img, bigger])
    assert feats.shape == (2, 4, 2, 192)
