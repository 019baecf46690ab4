"""Commands that write a folder never touch what they did not make: a user's folder passed as an output is
refused with exit 2 and left as it was (also with --overwrite), inputs are never inside outputs, and the
mistakes a new user makes with extract get one ``error:`` line (docs/reliability.md, "What each command
refuses to overwrite")."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpal_cache.cli import _register, app
from dpal_cache.data.manifest import ScanConfig, scan
from dpal_cache.data.sources import open_source
from dpal_cache.synth import SynthConfig, synthesize

TEACHER = ["--teacher", "random:vit_tiny", "--workers", "0", "--device", "cpu",
           "--set", "views.global_view.size=[64,32]", "--set", "views.crowd.size=[64,64]",
           "--set", "views.local_crops.size=[32,16]", "--set", "calibration_images=4"]  # fmt: skip


def _invoke(*args) -> tuple[int, str]:
    _register()
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    synthesize(root / "synth", SynthConfig(ids=3, images_per_id=2, train_fraction=1.0, height=64, width=32,
                                           masks=False, workers=1))
    return root / "synth" / "bounding_box_train"


@pytest.fixture
def precious(tmp_path) -> Path:
    """A user's folder: a file and a sub-folder with a file."""
    folder = tmp_path / "precious"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("important")
    (folder / "sub" / "more.txt").write_text("also important")
    return folder


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["resume", "overwrite"])
def test_extract_refuses_a_folder_that_is_not_a_store(images, precious, overwrite):
    before = _snapshot(precious)
    code, out = _invoke("extract", "--data", images, "--out", precious, *TEACHER, *overwrite)
    assert code == 2, out
    assert "error:" in out and "not a dpal-cache feature store" in out and "notes.txt, sub/" in out
    assert _snapshot(precious) == before
    assert not (precious.parent / "precious.manifest.parquet").exists()  # refused before the default scan


def test_extract_never_writes_into_or_around_its_images(images, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    before = _snapshot(data)
    for out in (data, data / "feats.zarr", tmp_path):  # the folder itself, inside it, around it
        code, text = _invoke("extract", "--data", data, "--out", out, *TEACHER, "--overwrite")
        assert code == 2 and "error:" in text and "--data" in text, (out, text)
    assert _snapshot(data) == before


def test_extract_overwrite_replaces_its_own_store_only(images, tmp_path):
    store = tmp_path / "feats.zarr"
    assert _invoke("extract", "--data", images, "--out", store, *TEACHER)[0] == 0
    code, out = _invoke("extract", "--data", images, "--out", store, *TEACHER, "--overwrite",
                        "--set", "views.seed=1")  # another config: --overwrite starts the store again
    assert code == 0, out
    (tmp_path / "file.zarr").write_text("a file")
    code, out = _invoke("extract", "--data", images, "--out", tmp_path / "file.zarr", *TEACHER)
    assert code == 2 and "exists and is a file" in out and (tmp_path / "file.zarr").read_text() == "a file"


def test_extract_mistakes_get_one_error_line(images, tmp_path):
    code, out = _invoke("extract", "--data", images, "--out", tmp_path / "a.zarr", "--workers", "0")
    assert code == 2 and "pass --teacher" in out and not (tmp_path / "a.zarr").exists()
    other = tmp_path / "other"
    synthesize(other, SynthConfig(ids=2, images_per_id=2, train_fraction=1.0, height=64, width=32, masks=False,
                                  workers=1, seed=5))
    scan(open_source(other / "bounding_box_train"), tmp_path / "other.parquet", ScanConfig(workers=1))
    code, out = _invoke("extract", "--data", images, "--manifest", tmp_path / "other.parquet",
                        "--out", tmp_path / "b.zarr", *TEACHER)
    assert code == 2 and "error: none of the 4 calibration images could be read" in out, out
    assert "Traceback" not in out
    code, out = _invoke("extract", "--help")
    assert code == 0 and "default 32" in out and "default -1" in out and "default 0" in out and "log8" in out


def test_train_refuses_a_folder_that_is_not_a_run_and_leaves_none_when_refused(images, precious, tmp_path):
    store = tmp_path / "feats.zarr"
    assert _invoke("extract", "--data", images, "--out", store, *TEACHER)[0] == 0
    args = ["train", "--store", store, "--data", images, "--batch-size", "2", "--max-steps", "1",
            "--workers", "0", "--device", "cpu"]
    before = _snapshot(precious)
    code, out = _invoke(*args, "--out", precious)
    assert code == 2 and "not a dpal-cache training run" in out and _snapshot(precious) == before
    for extra in (["--resume"], ["--student", "resnet50"]):  # refused before anything is written
        code, out = _invoke(*args, "--out", tmp_path / "never", *extra)
        assert code == 2 and "error:" in out and not (tmp_path / "never").exists(), out


def test_bench_and_eval_refuse_before_any_work(precious, tmp_path):
    before = _snapshot(precious)
    code, out = _invoke("bench", "--only", "store", "--workdir", precious, "--out", tmp_path / "b.json")
    assert code == 2 and "not a dpal-cache bench workdir" in out and _snapshot(precious) == before
    code, out = _invoke("eval", "reid", "--data", tmp_path, "--model", "random:vit_tiny_patch16", "--json", precious)
    assert code == 2 and "is a folder" in out and _snapshot(precious) == before
