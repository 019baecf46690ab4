"""verify: passes on good stores (fp16, int8 + log8), fails on tampered ones, refuses other weights."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
from dpal_cache.data.sources import open_source
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.extract.run import extract
from dpal_cache.extract.verify import ErrorStats, Tolerance, VerifyError, sample_images, verify_store
from dpal_cache.store.layout import STATUS_OK
from dpal_cache.store.quant import kl_per_row, relative_l2
from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewsConfig

N_IMAGES = 12


def _jpeg(rng: np.random.Generator, height: int = 48, width: int = 24) -> bytes:
    """A smooth gradient with noise: views of it differ, and JPEG keeps it small."""
    y, x = np.mgrid[:height, :width]
    base = np.stack([y * 255 / height, x * 255 / width, np.full_like(y, rng.integers(0, 256))], axis=-1)
    rgb = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    return buf.getvalue()


def _config(**overrides) -> ExtractConfig:
    """ViT-Ti random teacher, 64x32 views (4x2 patches), 64x64 crowds, blocks of 4 images."""
    views = ViewsConfig(global_view=GlobalViewConfig(size=(64, 32)), crowd=CrowdConfig(size=(64, 64)),
                        local_crops=LocalCropConfig(size=(16, 16)))
    args = dict(teacher="random:vit_tiny", views=views, shard_images=4, calibration_images=4, batch_size=4,
                workers=0, device="cpu")
    return ExtractConfig(**{**args, **overrides})


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """12 small JPEGs and their manifest (``images/manifest.parquet`` sits outside the folder)."""
    root = tmp_path_factory.mktemp("verify")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        (folder / f"img_{i:03d}.jpg").write_bytes(_jpeg(rng))
    scan(open_source(folder), root / "manifest.parquet", ScanConfig(workers=1))
    return folder


def _extract(images: Path, out: Path, max_blocks: int | None = None, **overrides) -> str:
    extract(_config(**overrides), open_source(images), read_manifest(images.parent / "manifest.parquet"), str(out),
            max_blocks=max_blocks)
    return str(out)


@pytest.fixture(scope="module")
def fp16_store(images) -> str:
    return _extract(images, images.parent / "fp16.zarr")


@pytest.fixture(scope="module")
def int8_store(images) -> str:
    # int8 scales come from the calibration images: with 4 of 12 noise-like images the class-token
    # range of the rest is not covered (~8% error), so calibrate on all of them as a real run would
    return _extract(images, images.parent / "int8.zarr", token_precision="int8", map_precision="log8",
                    calibration_images=N_IMAGES, gram=True)


@pytest.fixture(scope="module")
def teacher():
    """The stores' teacher, built once (verify checks it against the store's description)."""
    from dpal_cache.teachers import load_teacher

    return load_teacher("random:vit_tiny", seed=0)


def _copy(store: str, tmp_path: Path) -> str:
    out = tmp_path / "copy.zarr"
    shutil.copytree(store, out)
    return str(out)


def test_good_fp16_store_passes_within_fp16_rounding(fp16_store, images):
    report = verify_store(fp16_store, images, sample=8)
    assert report.passed, [c.problems for c in report.checks]
    assert [c.name for c in report.checks] == ["completeness", "source", "replay", "precision"]
    assert len(report.sampled) == 8 and report.check("replay").details["images_replayed"] == 8
    replay = report.check("replay").details
    assert replay["views/tokens"]["rel_l2"] < 1e-3  # fp16 rounding: <= 2**-11 relative per value
    assert replay["crowds/attn"]["kl_per_row"] < 1e-6
    assert replay["views/mask_score"]["max_abs"] < 1e-3
    # recomputed in float32 on the machine that wrote the store, the stored codes are (nearly) the fresh ones
    assert replay["views/tokens"]["identical_codes"] > 0.99
    # the partners pasted into the sample's crowd images were hash-checked too
    source = report.check("source").details
    assert source["sampled_checked"] == 8 and source["sampled_bad"] == 0
    precision = report.check("precision").details
    assert 0 < precision["views/tokens"]["rel_l2"] < 5e-4
    d = report.to_dict()
    assert d["passed"] is True and d["tolerance"]["tokens_rel_l2"] == 1e-3


def test_int8_log8_store_passes_its_looser_limits_but_not_fp16_ones(int8_store, images, teacher):
    report = verify_store(int8_store, images, sample=0, teacher=teacher)
    assert report.passed, [c.problems for c in report.checks]
    assert report.tolerance == Tolerance.for_precision("int8", "log8")
    precision = report.check("precision").details
    assert 1e-3 < precision["views/tokens"]["rel_l2"] < 2e-2  # lossy, within the documented limit
    assert 1e-6 < precision["views/attn_cls"]["kl_per_row"] < 2e-3
    assert 1e-6 < precision["crowds/attn"]["kl_per_row"] < 2e-3
    assert report.check("replay").details["crowds/gram"]["rows"] == N_IMAGES  # the gram relation is replayed too
    strict = verify_store(int8_store, images, sample=2, teacher=teacher,
                          tolerance=Tolerance.for_precision("fp16", "fp16"))
    assert not strict.passed
    assert any("views/tokens: rel_l2" in p for p in strict.check("precision").problems)
    # a single field can be loosened or tightened by name
    tight = verify_store(int8_store, images, sample=2, teacher=teacher, tolerance={"maps_kl": 1e-7})
    assert not tight.check("replay").passed and tight.check("completeness").passed


def test_store_without_crowds_and_with_masked_tokens_passes(images, teacher, tmp_path):
    views = dataclasses.replace(_config().views, views_per_image=1, crowds_per_image=0)
    out = _extract(images, tmp_path / "masked.zarr", views=views, mask_at_extract=0.5)
    report = verify_store(out, images, sample=0, teacher=teacher)
    assert report.passed, [c.problems for c in report.checks]
    assert "crowds/attn" not in report.check("replay").details
    assert report.check("replay").details["views/tokens"]["rows"] == N_IMAGES
    stored = zarr.open_group(out, mode="r")["views/tokens"][:]
    assert (np.abs(stored[:, 1:]).sum(-1) == 0).any()  # some background patches were zeroed at extract
    mask = report.check("replay").details["mask_at_extract"]
    assert mask["patches"] == N_IMAGES * 8 and mask["far_flips"] == 0


def test_tampered_rows_fail_replay_and_are_located(fp16_store, images, teacher, tmp_path):
    store = _copy(fp16_store, tmp_path)
    group = zarr.open_group(store, mode="r+")
    rng = np.random.default_rng(1)
    tampered = {"views/tokens": 7, "crowds/attn": 2, "views/mask_score": 12}  # array -> store row
    for array, row in tampered.items():
        target = group[array]
        noise = rng.random(target.shape[1:])
        if array == "crowds/attn":  # still a valid distribution per row: only a comparison can tell
            noise /= noise.sum(axis=-1, keepdims=True)
        target[row] = noise.astype(target.dtype)
    report = verify_store(store, images, sample=0, teacher=teacher)
    assert not report.passed
    replay = report.check("replay")
    assert not replay.passed
    for array, row in tampered.items():
        assert replay.details[array]["worst_row"] == row
        assert any(p.startswith(array) for p in replay.problems), array
    assert replay.details["views/attn_cls"]["rel_l2"] < 1e-3  # untouched arrays still match
    assert report.check("completeness").passed and report.check("source").passed


def test_edited_source_image_fails_the_source_check(fp16_store, images, teacher, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    edited = 5
    path = folder / f"img_{edited:03d}.jpg"
    path.write_bytes(_jpeg(np.random.default_rng(99)))  # same size, other pixels
    report = verify_store(fp16_store, folder, sample=0, teacher=teacher)
    assert not report.passed
    source = report.check("source")
    assert not source.passed and source.details["reasons"] == {"changed": 1}
    assert any(f"{edited} (img_{edited:03d}.jpg): changed" in p for p in source.problems)
    # images that need the edited one are not replayed; the rest still match
    replay = report.check("replay")
    assert replay.passed and 0 < replay.details["images_replayed"] < N_IMAGES


def test_incomplete_store_fails_completeness(images, teacher, tmp_path):
    out = _extract(images, tmp_path / "partial.zarr", max_blocks=1)
    report = verify_store(out, images, sample=0, teacher=teacher)
    completeness = report.check("completeness")
    assert not report.passed and not completeness.passed
    assert completeness.details["blocks_done"] == 1 and completeness.details["blocks_total"] == 3
    assert "2 of 3 blocks not written" in completeness.problems[0]
    # what was written is right
    assert report.check("replay").passed and report.sampled == [0, 1, 2, 3]


def test_store_without_manifest_fails_and_skips_replay(fp16_store, images, teacher, tmp_path):
    store = _copy(fp16_store, tmp_path)
    (Path(store) / "manifest.parquet").unlink()
    report = verify_store(store, images, sample=2, teacher=teacher)
    assert not report.check("completeness").passed
    assert all(not report.check(n).passed and report.check(n).summary.startswith("not run") for n in
               ("source", "replay", "precision"))


def test_other_teacher_or_checkpoint_is_refused(fp16_store, images, tmp_path):
    from safetensors.torch import save_file

    from dpal_cache.teachers import build_vit, get_teacher_spec, load_teacher

    with pytest.raises(VerifyError, match="teacher.seed"):
        verify_store(fp16_store, images, teacher=load_teacher("random:vit_tiny", seed=1))
    spec = get_teacher_spec("timm:vit_tiny_patch16_224")
    weights = tmp_path / "weights.safetensors"
    torch.manual_seed(0)
    save_file(build_vit(spec).state_dict(), weights)
    out = _extract(images, tmp_path / "timm.zarr", max_blocks=1, teacher=spec.name, checkpoint=weights)
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not these weights")  # refused on its sha256, before it is ever read as weights
    with pytest.raises(VerifyError, match="sha256"):
        verify_store(out, images, checkpoint=other, sample=2)
    report = verify_store(out, images, checkpoint=weights, sample=2)  # the right file replays
    assert report.check("replay").passed and report.check("source").passed


def test_sample_is_deterministic_and_only_ok_images():
    status = np.full(20, STATUS_OK, dtype=np.uint8)
    status[[3, 4, 10]] = 2
    a, b = sample_images(status, 5, seed=0), sample_images(status, 5, seed=0)
    assert np.array_equal(a, b) and len(a) == 5 and np.all(np.diff(a) > 0)
    assert not set(a.tolist()) & {3, 4, 10}
    assert not np.array_equal(a, sample_images(status, 5, seed=1))
    every_ok = np.flatnonzero(status == STATUS_OK).tolist()
    assert sample_images(status, 0).tolist() == sample_images(status, 100).tolist() == every_ok


def test_error_stats_accumulate_like_the_whole_array_measures():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(10, 5, 8))
    approx = ref + rng.normal(scale=1e-2, size=ref.shape)
    approx[6] += 1.0  # the worst row
    stats = ErrorStats(maps=False)
    for part in np.array_split(np.arange(10), 3):
        stats.add(ref[part], approx[part], part + 100)
    got = stats.result()
    assert got["rel_l2"] == pytest.approx(relative_l2(ref, approx))
    assert got["max_abs"] == pytest.approx(np.abs(ref - approx).max())
    assert got["worst_row"] == 106 and got["worst_row_rel_l2"] == pytest.approx(relative_l2(ref[6], approx[6]))
    p = rng.dirichlet(np.ones(6), size=(4, 3))  # 4 maps of 3 attention rows
    q = rng.dirichlet(np.ones(6), size=(4, 3))
    maps = ErrorStats(maps=True)
    maps.add(p[:1], q[:1], np.array([0]))
    maps.add(p[1:], q[1:], np.array([1, 2, 3]))
    assert maps.result()["kl_per_row"] == pytest.approx(kl_per_row(p, q))


def test_a_store_passes_verify_on_other_cpu_kernels(fp16_store, images):
    # another CPU runs other vectorised kernels: views then differ by a grey level in a few pixels and teacher
    # outputs by float noise (not bit for bit); verify's limits must accept that. ATEN_CPU_CAPABILITY=default (no
    # SIMD kernels) stands in for another CPU on this one.
    script = ("import sys, torch; torch.set_num_threads(1)\n"
              "from dpal_cache.extract.verify import verify_store\n"
              f"r = verify_store({fp16_store!r}, {str(images)!r}, sample=12)\n"
              "print(torch.backends.cpu.get_cpu_capability(), r.passed, r.check('replay').summary)\n"
              "sys.exit(0 if r.passed else 1)\n")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.startswith("DEFAULT True")


def test_verify_replays_with_either_renderer_and_reports_both(fp16_store, images, tmp_path):
    batched = verify_store(fp16_store, images, sample=6, render="device")  # batched renderer, on the CPU here
    assert batched.passed, [c.problems for c in batched.checks]
    assert batched.render == {"store": "per-sample/cpu", "replay": "batched/cpu"}
    renderer = batched.check("replay").details["renderer"]
    assert renderer["same"] and renderer["limits_factor"] == 1.0  # both the CPU's renderer: the store's limits
    device_made = _extract(images, tmp_path / "device.zarr", render="device")
    auto = verify_store(device_made, images, sample=6)  # auto: the kind of renderer the store was made with
    assert auto.passed and auto.render == {"store": "batched/cpu", "replay": "batched/cpu"}
    assert auto.to_dict()["render"] == auto.render


def test_another_kind_of_renderer_widens_the_replay_limits_only():
    from dpal_cache.extract.verify import OTHER_RENDERER_FACTOR, Tolerance, _render_kind

    tol = Tolerance.for_precision("fp16", "fp16")
    wide = tol.widened(OTHER_RENDERER_FACTOR)
    assert wide.tokens_rel_l2 == OTHER_RENDERER_FACTOR * tol.tokens_rel_l2
    assert wide.maps_kl == OTHER_RENDERER_FACTOR * tol.maps_kl and wide.mask_score_max_abs == tol.mask_score_max_abs
    assert _render_kind("per-sample/cpu") == _render_kind("batched/cpu") != _render_kind("batched/cuda")
