"""Online mode against the cache: same samples, same targets bit for bit on CPU, same losses.

The reference is a store of the shared tiny data set (conftest.py) read by StoreDataset; online
mode runs with the ExtractConfig that store was made with (its ``extract_config`` attribute).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dpal_cache.config import from_dict
from dpal_cache.data.manifest import read_manifest
from dpal_cache.data.sources import open_source
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.extract.run import ExtractSession
from dpal_cache.store import io as store_io
from dpal_cache.train.data import StoreDataset, StoreMismatch
from dpal_cache.train.loop import LOSS_KEYS, train
from dpal_cache.train.online import OnlineDataset, TeacherTargets, train_online

INPUTS = ("index", "epoch", "valid", "global_view", "local_crops", "crowd")
TARGETS = ("t_tokens", "t_attn_cls", "t_mask_score", "t_relation")
# several batch sizes and epochs: a teacher output must not depend on what shares its batch
KEYS = [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [15], list(range(20, 30))]
STORES = {"fp16": {"gram": True}, "int8": {"token_precision": "int8", "map_precision": "log8", "gram": True}}


def store_config(url: str) -> ExtractConfig:
    """The ExtractConfig a store was extracted with."""
    return from_dict(ExtractConfig, store_io.store_meta(store_io.open_store(url, "r"))["extract_config"])


@pytest.fixture
def make(make_store):
    """``make("fp16")`` -> (store, its extract config, source, manifest table)."""

    def get(precision: str):
        store = make_store("main" if precision == "fp16" else precision, **STORES[precision])
        return store, store_config(store.url), open_source(store.folder), read_manifest(store.manifest)

    return get


@pytest.mark.parametrize("precision,relation", [("fp16", "attention"), ("int8", "attention"), ("int8", "gram")])
def test_online_batches_equal_cached_batches_bitwise(make, precision, relation):
    store, cfg, source, manifest = make(precision)
    cached = StoreDataset(store.url, source, relation=relation)
    session = ExtractSession(cfg, source, manifest)
    calib = session.calibrate()
    online = OnlineDataset(session, calib)
    prepare = TeacherTargets(session, calib, relation)
    assert len(online) == len(cached)
    assert (online.token_stats == cached.token_stats).all()
    assert online.meta["teacher"] == cached.meta["teacher"] and online.layout == cached.layout
    for keys in KEYS:
        want = cached.__getitems__(keys)
        got = online.__getitems__(keys)
        assert not any(k in got for k in TARGETS)  # data workers render; the teacher runs in prepare
        got = prepare(got)
        assert set(got) == set(want)
        for key in INPUTS + TARGETS:
            assert got[key].dtype == want[key].dtype, key
            assert torch.equal(got[key], want[key]), f"{key} differs for keys {keys}"
    assert not any(p.requires_grad for p in session.teacher.parameters())


def test_online_training_matches_cached_losses(make, tmp_path, train_config, read_metrics):
    store, cfg, source, manifest = make("fp16")
    train_cfg = train_config("max_steps=4")
    cached = train(train_cfg, store.url, source, tmp_path / "cached")
    online = train_online(train_cfg, cfg, source, manifest, tmp_path / "online")
    assert online.steps == cached.steps == 4
    want, got = read_metrics(tmp_path / "cached"), read_metrics(tmp_path / "online")
    assert len(got) == len(want) == 4
    for a, b in zip(want, got):
        for key in ("step", "epoch", "lr", *LOSS_KEYS):
            assert abs(a[key] - b[key]) <= 1e-6, (key, a, b)
    assert want[-1]["loss"] < want[0]["loss"]  # the steps did train
    state, ref = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("online", "cached"))
    assert all(torch.equal(state["model"][k], ref["model"][k]) for k in ref["model"])  # same weights after 4 steps
    assert state["store"]["url"] == "online:random:vit_tiny"
    assert (tmp_path / "online" / "extract.yaml").is_file()


def test_online_resume_refuses_other_teacher_settings(make, tmp_path, train_config):
    _, cfg, source, manifest = make("fp16")
    train_cfg = train_config("max_steps=1")
    train_online(train_cfg, cfg, source, manifest, tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train_online(train_cfg, cfg, source, manifest, tmp_path / "run")
    with pytest.raises(StoreMismatch, match="token_precision"):
        train_online(train_cfg, dataclasses.replace(cfg, token_precision="int8"), source, manifest,
                     tmp_path / "run", resume=True)
