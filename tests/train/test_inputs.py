"""Inputs rendered on the training device (``render: device``): the workers only read images and parameters,
the loop decodes and renders the batch. The inputs are the workers' own within the renderer tolerance (the same
bytes on CPUs with torch's AVX2 resize), skipped images stay skipped, and training and online mode run on it."""

from __future__ import annotations

import math

import torch

from dpal_cache.data.sources import open_source
from dpal_cache.train.data import StoreDataset
from dpal_cache.train.inputs import DeviceRender
from dpal_cache.train.loop import train
from dpal_cache.train.online import train_online

INPUTS = ("global_view", "local_crops", "crowd")


def _exact() -> bool:
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    diff = (a.int() - b.int()).abs()
    return bool(diff.max() <= 2) and float((diff == 0).float().mean()) >= 0.999


def test_device_inputs_are_the_workers_inputs(store):
    source = open_source(store.folder)
    workers = StoreDataset(store.url, source)
    device = StoreDataset(store.url, source, render="device")
    keys = list(range(len(workers))) + [len(workers) + k for k in range(4)]  # two epochs: other views and crops
    want = workers.__getitems__(keys)
    gathered = device.__getitems__(keys)
    assert "global_view" not in gathered and len(gathered["sources"]) >= len(workers)  # images, read once each
    got = DeviceRender(device.views, device.local_crop_cfg, torch.device("cpu"))(gathered)
    assert set(got) == set(want)
    for key in INPUTS:
        assert got[key].shape == want[key].shape and got[key].dtype == torch.uint8, key
        assert _close(got[key], want[key]), key
        if _exact():
            assert torch.equal(got[key], want[key]), key
    for key in ("index", "epoch", "valid", "t_tokens", "t_relation"):
        assert torch.equal(got[key], want[key]), key


def test_changed_images_stay_skipped_with_device_inputs(store, images_copy):
    source = open_source(images_copy)
    (images_copy / source.key(1)).write_bytes(source.read(2))  # other bytes under image 1's name
    workers = StoreDataset(store.url, source, skip_changed=True)
    device = StoreDataset(store.url, source, skip_changed=True, render="device")
    keys = list(range(len(workers)))
    assert torch.equal(workers.__getitems__(keys)["valid"], device.__getitems__(keys)["valid"])
    assert not bool(device.__getitems__(keys)["valid"].all())


def test_training_and_online_mode_render_on_the_device(make_store, store, tmp_path, train_config, read_metrics,
                                                       store_extract_config):
    from dpal_cache.data.manifest import read_manifest

    source = open_source(store.folder)
    a = train(train_config("max_steps=3"), store.url, source, tmp_path / "workers")
    b = train(train_config("max_steps=3", "render=device"), store.url, source, tmp_path / "device")
    la, lb = read_metrics(tmp_path / "workers"), read_metrics(tmp_path / "device")
    assert a.steps == b.steps == 3 and all(math.isfinite(r["loss"]) for r in lb)
    if _exact():  # the same inputs: the same run
        assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    online = train_online(train_config("max_steps=2", "render=device"), store_extract_config(gram=True), source,
                          read_manifest(store.manifest), tmp_path / "online")
    assert online.steps == 2 and all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "online"))
