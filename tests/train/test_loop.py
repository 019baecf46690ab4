"""The training loop on a tiny store: learning, every decoder and loss option, three students,
metrics, config, EMA checkpoint, TensorBoard."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import yaml

from dpal_cache.config import to_dict
from dpal_cache.data.sources import open_source
from dpal_cache.train.checkpoint import load_checkpoint
from dpal_cache.train.loop import train
from dpal_cache.train.losses import LOSS_KEYS

METRIC_KEYS = {"step", "epoch", "lr", "samples_per_s", "data_wait", *LOSS_KEYS}


def run(cfg, store, run_dir, **kwargs):
    return train(cfg, store.url, open_source(store.folder), run_dir, **kwargs)


def assert_finite(records):
    for r in records:
        assert all(math.isfinite(r[k]) for k in LOSS_KEYS), r


def test_loss_decreases_and_the_run_directory_is_complete(store, tmp_path, train_config, read_metrics):
    cfg = train_config("max_steps=20", "checkpoint_every=10", ema_decay=0.9)
    seen = []
    summary = run(cfg, store, tmp_path / "run", progress=seen.append)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 21)) and summary.steps == 20
    assert all(METRIC_KEYS <= set(r) for r in records)
    assert all(r["samples_per_s"] > 0 and 0 <= r["data_wait"] <= 1 and r["lr"] > 0 for r in records)
    assert_finite(records)
    losses = [r["loss"] for r in records]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, losses
    assert last < sum(losses[1:6]) / 5, losses  # not only the first step's drop
    assert summary.first["loss"] == losses[0] and summary.last["loss"] == losses[-1]
    assert [p["step"] for p in seen] == list(range(1, 21)) and seen[-1]["total_steps"] == 20

    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == to_dict(cfg)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 20 and state["config"] == to_dict(cfg)
    student = {k[len("student."):]: v for k, v in state["model"].items() if k.startswith("student.")}
    assert state["ema"].keys() == student.keys()
    moved = [k for k in student if student[k].is_floating_point() and not torch.equal(student[k], state["ema"][k])]
    assert moved  # the EMA lags the live weights


@pytest.mark.parametrize("kind", ["linear", "mae", "moe"])  # dpade: the default, trained above
def test_every_decoder_trains(store, tmp_path, train_config, read_metrics, kind):
    run(train_config("max_steps=2", f"decoder.kind={kind}"), store, tmp_path / kind)
    records = read_metrics(tmp_path / kind)
    assert len(records) == 2
    assert_finite(records)
    if kind != "moe":  # no router, no experts
        assert all(r["router_ce"] == 0 and r["expert_l2"] == 0 for r in records)


@pytest.mark.parametrize("sets", [
    ["loss.mask=attention", "loss.mask_soft=false", "loss.mask_threshold=0.5", "loss.local_norm=mask"],
    ["loss.mask=none", "loss.relation=gram", "loss.normalize_targets=true"],
    ["loss.mask=pca", "loss.mask_soft=false", "loss.mask_threshold=0.3", "loss.relation=gram"],
], ids=["attention-hard-masknorm", "none-gram-normalized", "pca-hard-gram"])
def test_every_loss_option_trains(store, tmp_path, train_config, read_metrics, sets):
    run(train_config("max_steps=2", *sets), store, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert len(records) == 2
    assert_finite(records)
    assert all(r["local"] > 0 and r["relation"] > 0 for r in records)


@pytest.mark.parametrize("student", ["vit_small_patch16", "swin_tiny"])  # vit_tiny_patch16: trained above
def test_three_students_train_from_one_store(store, tmp_path, train_config, read_metrics, student):
    # Swin's stride is 32: its local crops must be multiples of 32 (the store's are 32x16);
    # inner_dim keeps D-PaDe small for wide students, as the release does for Swin
    sets = [f"student.name={student}", "decoder.inner_dim=64"]
    if student.startswith("swin"):
        sets.append("local_crops.size=[32, 32]")
    run(train_config("max_steps=2", *sets), store, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert len(records) == 2
    assert_finite(records)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["student"]["timm_name"].startswith(student[:8])


def test_tensorboard_scalars_and_a_clear_error_without_the_package(store, tmp_path, train_config, monkeypatch):
    cfg = train_config("max_steps=2", "decoder.kind=linear", tensorboard=True)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ImportError, match="pip install tensorboard"):
        run(cfg, store, tmp_path / "missing")
    assert not (tmp_path / "missing").exists()  # failed before anything was written

    scalars, logdirs = [], []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            logdirs.append(log_dir)

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            logdirs.append("closed")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    run(cfg, store, tmp_path / "tb_run")
    assert logdirs == [str(tmp_path / "tb_run" / "tb"), "closed"]
    tags = {tag for tag, _, _ in scalars}
    assert {f"loss/{k}" for k in LOSS_KEYS} | {"train/lr", "train/samples_per_s", "train/data_wait"} <= tags
    assert sorted({step for _, _, step in scalars}) == [1, 2]


def test_trains_from_an_lmdb_source_with_worker_processes(persons, tmp_path, train_config, read_metrics, make_lmdb,
                                                          store_extract_config):
    # LUPerson ships as LMDB; DataLoader workers fork from a process that already read it (the start-up check)
    from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
    from dpal_cache.extract.run import extract

    folder, _ = persons
    db = make_lmdb(tmp_path / "lup", {p.name.encode(): p.read_bytes() for p in sorted(folder.iterdir())})
    scan(open_source(db), tmp_path / "lup.parquet", ScanConfig(workers=1))
    store = str(tmp_path / "lup.zarr")
    extract(store_extract_config(), open_source(db), read_manifest(tmp_path / "lup.parquet"), store)
    summary = train(train_config("max_steps=3", "workers=2"), store, open_source(db), tmp_path / "run")
    assert summary.steps == 3 and len(read_metrics(tmp_path / "run")) == 3


def test_a_store_masked_at_extraction_trains_without_its_zeroed_rows(make_store, tmp_path, train_config,
                                                                     read_metrics, monkeypatch):
    import dpal_cache.train.model as model_module
    from dpal_cache.store.codecs import decode_targets
    from dpal_cache.train.data import StoreDataset
    from dpal_cache.train.loop import build_model

    masked = make_store("masked", mask_at_extract=0.5)
    cfg = train_config("max_steps=2")
    dataset = StoreDataset(masked.url, open_source(masked.folder))
    model = build_model(cfg, dataset)
    assert model.zeroed_background
    seen = {}
    real = model_module.compute_losses
    monkeypatch.setattr(model_module, "compute_losses", lambda *a, **kw: seen.update(kw) or real(*a, **kw))
    batch = decode_targets(dataset.__getitems__(list(range(4))), torch.as_tensor(dataset.token_scales))
    model(batch, 0)
    keep = seen["keep_tokens"]
    stored = batch["t_tokens"][:, 1:]
    assert torch.equal(keep, stored.ne(0).any(-1)) and bool((~keep).any()) and bool(keep.any())
    assert bool((batch["t_mask_score"][~keep] <= 0.5 + 1e-3).all())  # the rows extraction zeroed
    monkeypatch.undo()
    summary = run(cfg, masked, tmp_path / "run")
    assert summary.steps == 2 and all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "run"))
    unmasked = build_model(cfg, StoreDataset(make_store("main", gram=True).url, open_source(masked.folder)))
    assert not unmasked.zeroed_background


def test_parameter_counts_are_logged_and_recorded(store, tmp_path, train_config, caplog):
    import json

    with caplog.at_level("INFO", logger="dpal_cache.train.loop"):
        summary = run(train_config("max_steps=1"), store, tmp_path / "run")
    sizes = json.loads((tmp_path / "run" / "model.json").read_text())
    assert sizes["student"]["parameters"] == summary.parameters["student"] > 5_000_000  # the paper's ViT-Ti: 5.5M
    assert sizes["decoder"]["parameters"] == summary.parameters["decoder"] > 0
    assert sizes["decoder"]["projected_to"] is None  # ViT-Ti is 192 wide: no down-projection
    assert f"{sizes['student']['parameters'] / 1e6:.2f}M parameters" in caplog.text


def test_learned_tokens_and_norms_are_not_decayed():
    from dpal_cache.train.decoders import build_decoder
    from dpal_cache.train.decoders.config import DecoderConfig
    from dpal_cache.train.loop import param_groups

    decoder = build_decoder("dpade", 32, 48, DecoderConfig())
    decay, no_decay = param_groups(decoder, 0.05)
    names = {id(p): n for n, p in decoder.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"router.token", "generator.queries"} <= skipped  # the release does not decay them
    assert not any(n.endswith("weight") and "norm" not in n and p.ndim > 1 for n, p in decoder.named_parameters()
                   if n in skipped)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05


def test_ema_follows_the_cosine_momentum_schedule(store, tmp_path, train_config):
    from dpal_cache.train.schedule import ema_decay_at

    assert ema_decay_at(0, 100, 0.996, "cosine") == pytest.approx(0.996)
    assert ema_decay_at(50, 100, 0.996, "cosine") == pytest.approx(0.998)
    assert ema_decay_at(100, 100, 0.996, "cosine") == pytest.approx(1.0)
    assert ema_decay_at(37, 100, 0.996) == 0.996
    with pytest.raises(ValueError, match="cosine"):
        ema_decay_at(1, 10, 0.9, "linear")
    summary = run(train_config("max_steps=2", "ema_decay=0.5", "ema_schedule=cosine"), store, tmp_path / "run")
    assert summary.steps == 2 and load_checkpoint(tmp_path / "run" / "last.pt")["ema"] is not None
