"""``train`` and ``export`` refuse, before any training step and without a traceback (exit code 2), what
they cannot use safely: checkpoints that would run code, are truncated or hold another architecture
(the differing keys listed), and stores of another format version, with missing arrays or lost shards,
or whose teacher width differs from the run's decoder. Each message says what to do."""

from __future__ import annotations

import json
import pathlib
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dpal_cache.cli import _register, app
from dpal_cache.train.checkpoint import load_checkpoint, save_checkpoint

FAST = ["--batch-size", "4", "--workers", "0", "--device", "cpu", "--decoder", "linear", "--max-steps", "1"]


def _invoke(*args: str):
    _register()
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result, " ".join(result.output.split())


def _train(reference, out: Path, *extra: str, store: Path | None = None):
    return _invoke("train", "--store", store or reference.store, "--data", reference.folder, "--out", out,
                   *FAST, *extra)


@pytest.fixture(scope="module")
def run(reference, tmp_path_factory) -> Path:
    """A one-step run on the reference store (read-only: copy it before changing it)."""
    out = tmp_path_factory.mktemp("rel_run") / "run"
    result, _ = _train(reference, out)
    assert result.exit_code == 0, result.output
    return out


def _copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _refused(result, text: str, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "error:" in text and "Traceback" not in text, result.output
    for needle in needles:
        assert needle in text, (needle, text)


class RunsCode:
    """Unpickling this would call ``Path.touch(marker)``: the stand-in for a payload."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_checkpoint_that_would_run_code_or_is_truncated_is_refused(reference, run, tmp_path):
    copy = _copy_run(run, tmp_path)
    state = load_checkpoint(copy / "last.pt")
    marker = tmp_path / "payload-ran"
    torch.save({**state, "payload": RunsCode(marker)}, copy / "last.pt")
    export = ("export", copy, "--out", tmp_path / "s.safetensors")
    for result, text in (_train(reference, copy, "--resume"), _invoke(*export)):
        _refused(result, text, "was refused", "could run code", "pathlib")
    assert not marker.exists()

    raw = (run / "last.pt").read_bytes()
    (copy / "last.pt").write_bytes(raw[: len(raw) // 2])  # e.g. a copy cut short
    for result, text in (_train(reference, copy, "--resume"), _invoke(*export)):
        _refused(result, text, "last.pt is not a readable dpal-cache checkpoint (truncated or corrupt")
    assert not (tmp_path / "s.safetensors").exists()


def test_a_checkpoint_of_another_architecture_lists_the_differences(reference, run, tmp_path):
    copy = _copy_run(run, tmp_path)
    result, text = _train(reference, copy, "--resume", "--student", "vit_small_patch16")
    _refused(result, text, "student.name: run has 'vit_tiny_patch16', now 'vit_small_patch16'")

    state = load_checkpoint(copy / "last.pt")  # same config, other weights (e.g. a last.pt copied between runs)
    del state["model"]["student.backbone.norm.bias"]
    state["model"]["student.backbone.pos_embed"] = torch.zeros(1, 3, 192)
    save_checkpoint(copy / "last.pt", state)
    result, text = _train(reference, copy, "--resume")
    _refused(result, text, "another architecture", "missing keys (1): student.backbone.norm.bias",
             "other shapes (1): student.backbone.pos_embed (1, 3, 192)")

    state = load_checkpoint(run / "last.pt")
    state["store"]["teacher"]["embed_dim"] = 384  # the run's decoder was built for another teacher
    save_checkpoint(copy / "last.pt", state)
    result, text = _train(reference, copy, "--resume")
    _refused(result, text, "decoder emits 384-dim tokens but this store's teacher has 192 dims")


def _edit_attrs(store: Path, **fields) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["dpal_cache"].update(fields)
    (store / "zarr.json").write_text(json.dumps(doc))


def _damage_format(store: Path) -> None:
    _edit_attrs(store, format_version=1)  # a store of the format before this one


def _damage_array(store: Path) -> None:
    shutil.rmtree(store / "views" / "attn_cls")  # the consolidated metadata still lists it


def _damage_shard(store: Path) -> None:
    (store / "views" / "tokens" / "c" / "3" / "0" / "0").unlink()  # zarr would read block 3 as zeros


def _damage_dim(store: Path) -> None:
    doc = json.loads((store / "zarr.json").read_text())["attributes"]["dpal_cache"]
    _edit_attrs(store, layout={**doc["layout"], "dim": 384})


@pytest.mark.parametrize("damage, needles", [
    (_damage_format, ["store format version 1", "this dpal-cache reads version 2", "uncompressed",
                      "re-run its `dpal-cache extract` command with --overwrite"]),
    (_damage_array, ["views/attn_cls is missing", "re-extract it (--overwrite)"]),
    (_damage_shard, ["views/tokens lacks the data of 1 done block(s), e.g. block 3", "copy the whole store again"]),
    (_damage_dim, ["views/tokens is (20, 9, 192) float16, the layout says (20, 9, 384)",
                   "the teacher has 192 dims, the layout says 384"]),
], ids=["format-version", "missing-array", "lost-shard", "teacher-dim"])
def test_a_store_that_cannot_serve_the_run_is_refused_before_any_step(reference, tmp_path, damage, needles):
    store = Path(shutil.copytree(reference.store, tmp_path / "feats.zarr"))
    damage(store)
    result, text = _train(reference, tmp_path / "run", store=store)
    _refused(result, text, *needles)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "last.pt").exists()
