"""A corpus of odd and broken files goes through ``scan``, ``extract`` and ``train`` on the command line:
good images (also RGBA, 16-bit, CMYK, 1x1 and EXIF-rotated ones) are cached, every bad one is recorded with
its reason (in the manifest and in the store's failure records), nothing crashes, and the exit codes follow
docs/reliability.md: scan 1 when more than --max-failed-fraction failed, extract and train 0."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from dpal_cache.cli import _register, app
from dpal_cache.data.manifest import read_manifest
from dpal_cache.store.io import read_failures
from dpal_cache.store.layout import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED
from dpal_cache.synth import SynthConfig, synthesize

ROOT_IS_EXEMPT = os.geteuid() == 0  # root reads a chmod 000 file
# file -> (stage, reason) of the files that must not be cached; every other file must be
BAD = {
    "b_truncated.jpg": ("scan", "truncated"),
    "b_empty.jpg": ("scan", "empty"),
    "b_text.jpg": ("scan", "not_an_image"),
    "b_huge.png": ("scan", "too_many_pixels"),
    "b_loop1.jpg": ("scan", "unreadable"),
    "b_loop2.jpg": ("scan", "unreadable"),
    "b_deleted.jpg": ("extract", "missing"),  # fine at scan time, deleted before extract
    **({} if ROOT_IS_EXEMPT else {"b_locked.jpg": ("scan", "unreadable")}),
}


def _png_header(width: int, height: int) -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


def _invoke(*args) -> tuple[int, str]:
    _register()
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """8 synthetic persons, 5 odd but usable images and every kind of broken file, in one folder."""
    root = tmp_path_factory.mktemp("rel_corpus")
    synthesize(root / "synth", SynthConfig(ids=4, images_per_id=2, train_fraction=1.0, height=64, width=32,
                                           masks=False, workers=1))
    folder = root / "images"
    (root / "synth" / "bounding_box_train").rename(folder)
    person = np.asarray(Image.open(next(folder.iterdir())).convert("RGB"))  # (64, 32, 3)
    Image.fromarray(np.dstack([person, np.full(person.shape[:2], 200, np.uint8)])).save(folder / "o_alpha.png")
    Image.fromarray(person[..., 0].astype(np.uint16) * 257).save(folder / "o_16bit.png")
    Image.fromarray(person).convert("CMYK").save(folder / "o_cmyk.jpg")
    Image.new("RGB", (1, 1), (90, 60, 30)).save(folder / "o_1x1.png")
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(person)))  # stored 64 wide, shown 32 wide
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "o_rotated.jpg", exif=exif)
    whole = (folder / "o_cmyk.jpg").read_bytes()
    (folder / "b_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "b_empty.jpg").write_bytes(b"")
    (folder / "b_text.jpg").write_text("not an image\n")
    (folder / "b_huge.png").write_bytes(_png_header(100_000, 100_000))
    os.symlink(folder / "b_loop2.jpg", folder / "b_loop1.jpg")
    os.symlink(folder / "b_loop1.jpg", folder / "b_loop2.jpg")
    (folder / "b_locked.jpg").write_bytes(whole)
    os.chmod(folder / "b_locked.jpg", 0)
    (folder / "b_deleted.jpg").write_bytes(whole)
    return folder


def test_scan_extract_train_on_a_corrupt_corpus(corpus, tmp_path):
    manifest, store, run = tmp_path / "m.parquet", tmp_path / "feats.zarr", tmp_path / "run"
    code, text = _invoke("scan", "--data", corpus, "--out", manifest, "--workers", "1")
    assert code == 1 and "above --max-failed-fraction" in text and "Traceback" not in text  # the policy
    rows = {r["key"]: (r["status"], r["reason"]) for r in read_manifest(manifest).to_pylist()}
    assert len(rows) == len(list(corpus.iterdir()))  # still written, every file in it
    for key, (stage, reason) in BAD.items():
        assert rows[key] == (("ok", None) if stage == "extract" else ("failed", reason)), key
    assert all(state == "ok" for key, (state, _) in rows.items() if key not in BAD), rows
    code, text = _invoke("scan", "--data", corpus, "--out", manifest, "--workers", "1", "--overwrite",
                         "--max-failed-fraction", "0.5")
    assert code == 0, text

    (corpus / "b_deleted.jpg").unlink()
    sets = ["views.global_view.size=[64, 32]", "views.local_crops.size=[32, 16]", "views.crowd.size=[64, 64]",
            "shard_images=4", "calibration_images=4"]
    code, text = _invoke("extract", "--data", corpus, "--manifest", manifest, "--out", store, "--teacher",
                         "random:vit_tiny", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                         *[x for s in sets for x in ("--set", s)])
    assert code == 0, text
    assert "not cached: missing" in text and "not cached: failed_scan" in text

    group = zarr.open_group(str(store), mode="r")
    keys = list(rows)
    status = dict(zip(keys, group["images/status"][:].tolist()))
    records = {r["key"]: r for r in read_failures(group).values()}
    for key, (stage, reason) in BAD.items():
        assert status[key] == (STATUS_SKIPPED if stage == "scan" else STATUS_FAILED), key
        assert (records[key]["stage"], records[key]["reason"]) == (stage, reason), key
    for key, s in status.items():  # the rest is cached, or failed only through a crowd partner that is gone
        if key not in BAD:
            assert s == STATUS_OK or records[key]["reason"] == "partner_missing", (key, records.get(key))
    ok_rows = [i for i, key in enumerate(keys) if status[key] == STATUS_OK]
    assert {"o_alpha.png", "o_16bit.png", "o_cmyk.jpg", "o_1x1.png", "o_rotated.jpg"} <= {keys[i] for i in ok_rows}
    tokens = group["views/tokens"][:].reshape(len(keys), -1)
    assert np.abs(tokens[ok_rows]).sum(axis=1).min() > 0  # every cached image has its targets
    assert set(records) == {k for k, s in status.items() if s != STATUS_OK}
    code, text = _invoke("info", store, "--json", tmp_path / "info.json")  # the reasons, counted
    reasons = json.loads((tmp_path / "info.json").read_text())["completion"]["not_cached_by_reason"]
    assert code == 0 and "not cached" in text and reasons["extract: missing"] == 1, text
    assert reasons["scan: unreadable"] == sum(reason == ("scan", "unreadable") for reason in BAD.values())

    code, text = _invoke("train", "--store", store, "--data", corpus, "--out", run, "--batch-size", "4", "--workers",
                         "0", "--device", "cpu", "--decoder", "linear", "--max-steps", "2", "--set", "log_every=1")
    assert code == 0, text
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and np.isfinite(losses).all()

    # a cached image deleted after extraction: refused before any step, or dropped with --skip-changed
    (corpus / keys[ok_rows[0]]).unlink()
    train = ("train", "--store", store, "--data", corpus, "--batch-size", "4", "--workers", "0", "--device", "cpu",
             "--decoder", "linear", "--max-steps", "1")
    code, text = _invoke(*train, "--out", tmp_path / "run2")
    assert code == 2 and f"image {ok_rows[0]}: missing" in text and "--skip-changed" in text, text
    assert not (tmp_path / "run2" / "metrics.jsonl").exists()
    code, text = _invoke(*train, "--out", tmp_path / "run3", "--skip-changed")
    assert code == 0, text
