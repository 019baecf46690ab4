"""Weight files: default locations, safe loading (unsafe pickles refused unrun), corrupt files, containers."""

from __future__ import annotations

import hashlib
import pathlib
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dpal_cache.teachers.checkpoint import (
    CheckpointError,
    cache_root,
    default_checkpoint_path,
    file_sha256,
    load_state_dict,
    resolve_checkpoint,
)
from dpal_cache.teachers.registry import get_teacher_spec

WEIGHTS = {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(2)}


class Payload:
    """Unpickling this would create ``marker``: proof of arbitrary code execution."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt", ".pth.tar"])
def test_torch_files_load(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    torch.save(WEIGHTS, path)
    assert _same(load_state_dict(path), WEIGHTS)


def test_safetensors_load(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(WEIGHTS, str(path))
    assert _same(load_state_dict(path), WEIGHTS)


@pytest.mark.parametrize(
    "container",
    [
        lambda w: {"model": w, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3, "arch": "mae"},
        lambda w: {"state_dict": w, "meta": {"epoch": 1600, "seed": np.int64(0), "lr": np.float32(0.1)}},
        lambda w: {"module": w},
        lambda w: {"state_dict": {"model": w}},
    ],
    ids=["mae-snapshot", "mmengine-with-numpy-meta", "deepspeed", "nested"],
)
def test_weights_are_taken_out_of_their_container(tmp_path, container):
    path = tmp_path / "w.pth"
    torch.save(container(WEIGHTS), path)
    assert _same(load_state_dict(path), WEIGHTS)


def test_file_without_tensors_is_an_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3, "note": "no weights"}, path)
    with pytest.raises(CheckpointError, match="no tensors.*epoch"):
        load_state_dict(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch-zip", "torch-legacy", "plain-pickle"])
def test_unsafe_pickle_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = {"weight": torch.ones(2), "payload": Payload(marker)}
    if writer == "torch-zip":
        torch.save(obj, path)
    elif writer == "torch-legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj))
    with pytest.raises(CheckpointError, match="refused .* for safety") as err:
        load_state_dict(path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    if writer == "torch-zip":  # zip checkpoints can be scanned: the message names the offending global
        assert "pathlib" in str(err.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_names_the_file(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    big = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    save_file(big, str(path)) if suffix == ".safetensors" else torch.save(big, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_state_dict(path)
    assert str(path) in str(err.value)


def test_garbage_file_is_an_error(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_state_dict(path)


def test_file_sha256(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 3_000_001)
    assert file_sha256(path, chunk_size=4096) == hashlib.sha256(b"x" * 3_000_001).hexdigest()


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DPAL_CACHE_HOME", raising=False)
    assert cache_root() == pathlib.Path("~/.cache/dpal-cache").expanduser()
    monkeypatch.setenv("DPAL_CACHE_HOME", str(tmp_path))
    spec = get_teacher_spec("path-b")
    assert default_checkpoint_path(spec) == tmp_path / "teachers" / "humanbench_vit_base.pth"


def test_missing_default_says_what_where_and_where_published(monkeypatch, tmp_path):
    monkeypatch.setenv("DPAL_CACHE_HOME", str(tmp_path))
    spec = get_teacher_spec("sapiens-0.3b")
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(spec)
    msg = str(err.value)
    assert "sapiens_0.3b_epoch_1600_clean.pth" in msg  # which file
    assert str(tmp_path / "teachers") in msg  # where it was looked for
    assert "huggingface.co/facebook/sapiens" in msg and "--checkpoint" in msg  # where such weights are


def test_missing_explicit_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth.*--checkpoint.*humanbench_vit_base.pth.*HumanBench"):
        resolve_checkpoint(get_teacher_spec("path-b"), tmp_path / "nope.pth")


def test_resolution_finds_default_and_explicit_files(monkeypatch, tmp_path):
    monkeypatch.setenv("DPAL_CACHE_HOME", str(tmp_path))
    spec = get_teacher_spec("hap-b")
    default = tmp_path / "teachers" / spec.checkpoint_file
    default.parent.mkdir()
    torch.save(WEIGHTS, default)
    assert resolve_checkpoint(spec) == default
    other = tmp_path / "mine.pth"
    torch.save(WEIGHTS, other)
    assert resolve_checkpoint(spec, str(other)) == other


def test_random_teachers_have_no_checkpoint():
    with pytest.raises(CheckpointError, match="random"):
        resolve_checkpoint(get_teacher_spec("random:vit_tiny"))
