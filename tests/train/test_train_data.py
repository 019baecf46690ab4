"""The training data path: batch layout, bitwise replay of the teacher's views with their stored rows, fresh
local crops, seeded epoch choices, and stores or images that cannot serve a run (the sampler: test_sampler.py)."""

from __future__ import annotations

import math

import pytest
import torch
import zarr

from dpal_cache.data.catalog import Catalog
from dpal_cache.data.manifest import read_manifest
from dpal_cache.data.sources import open_source
from dpal_cache.extract.items import ExtractItems
from dpal_cache.store.codecs import decode_targets
from dpal_cache.synth import SynthConfig, synthesize
from dpal_cache.train.data import StoreDataset, StoreMismatch
from dpal_cache.train.loop import train
from dpal_cache.views.crowd import CrowdRecipe


@pytest.fixture(scope="module")
def dataset(store):
    return StoreDataset(store.url, open_source(store.folder))


def test_batches_have_the_documented_shapes_and_dtypes(store, dataset):
    batch = dataset.__getitems__([0, 3, 17])  # 17 = epoch 1, image 7
    expected = {
        "index": ((3,), torch.int64), "epoch": ((3,), torch.int64), "valid": ((3,), torch.bool),
        "global_view": ((3, 3, 64, 32), torch.uint8), "local_crops": ((3, 2, 3, 32, 16), torch.uint8),
        "crowd": ((3, 3, 64, 64), torch.uint8), "t_tokens": ((3, 1 + 8, 192), torch.float16),
        "t_attn_cls": ((3, 8), torch.float16), "t_mask_score": ((3, 8), torch.float16),
        "t_relation": ((3, 16, 16), torch.float16),
    }  # fmt: skip: targets come as stored; the loop decodes them on its device
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    assert batch["epoch"].tolist() == [0, 0, 1] and batch["index"][2] == 7 and batch["valid"].all()
    gram = StoreDataset(store.url, open_source(store.folder), relation="gram").__getitems__([0])
    assert tuple(gram["t_relation"].shape) == (1, 17, 17)  # the class token's row and column too
    decoded = decode_targets(batch, torch.from_numpy(dataset.token_scales))
    for key in ("t_tokens", "t_attn_cls", "t_mask_score", "t_relation"):
        assert decoded[key].dtype == torch.float32 and decoded[key].shape == batch[key].shape, key


def test_inputs_replay_what_the_teacher_saw_with_its_targets(store, dataset):
    """Each epoch's global view is bitwise one of the views extraction rendered, and the targets
    are that view's row; the crowd image is the extracted one with its relation map."""
    views = dataset.views
    items = ExtractItems(Catalog(open_source(store.folder), read_manifest(store.manifest)), views)
    group = zarr.open_group(store.url, mode="r")
    V, C, n = views.views_per_image, views.crowds_per_image, len(dataset)
    chosen = set()
    for epoch in range(3):
        batch = dataset.__getitems__([epoch * n + k for k in range(n)])
        for j, i in enumerate(batch["index"].tolist()):
            item = items[i]
            same = [v for v in range(V) if torch.equal(item["views"][v], batch["global_view"][j])]
            assert len(same) == 1, (epoch, i)
            v = same[0]
            chosen.add(v)
            rows = {"t_tokens": ("views/tokens", i * V + v), "t_attn_cls": ("views/attn_cls", i * V + v),
                    "t_mask_score": ("views/mask_score", i * V + v), "t_relation": ("crowds/attn", i * C)}
            for key, (name, row) in rows.items():  # the stored rows, bit for bit as zarr reads them
                assert torch.equal(batch[key][j], torch.from_numpy(group[name][row])), (key, epoch, i)
            assert torch.equal(batch["crowd"][j], item["crowds"][0]) and C == 1
    assert chosen == set(range(V))  # epochs pick different cached views


def test_local_crops_are_fresh_each_epoch_and_choices_are_seeded(store, dataset):
    n = len(dataset)
    keys = list(range(n)) + [n + k for k in range(n)]
    a = dataset.__getitems__(keys)
    b = StoreDataset(store.url, open_source(store.folder)).__getitems__(keys)  # another process would agree
    for key in ("global_view", "local_crops", "crowd", "t_tokens"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["local_crops"][:n], a["local_crops"][n:])
    assert all(not torch.equal(a["local_crops"][k], a["local_crops"][n + k]) for k in range(n))


def refuse(cfg, url, folder, run_dir, match):
    """train() raises StoreMismatch matching ``match`` before it writes anything."""
    with pytest.raises(StoreMismatch, match=match):
        train(cfg, url, open_source(folder), run_dir)
    assert not run_dir.exists()


def test_stores_that_cannot_serve_the_run_are_refused_before_training(make_store, store, tmp_path, train_config):
    cfg = train_config("max_steps=1")
    partial = make_store("partial", max_blocks=1)
    refuse(cfg, partial.url, partial.folder, tmp_path / "a", r"incomplete \(1 of 5 blocks done\).*re-run the same")
    plain = make_store("plain")  # no --gram
    refuse(train_config("max_steps=1", "loss.relation=gram"), plain.url, plain.folder, tmp_path / "b",
           r"no crowds/gram: re-extract with --gram, or train with relation target 'attention'")
    no_crowds = make_store("no_crowds", crowds=0)
    refuse(cfg, no_crowds.url, no_crowds.folder, tmp_path / "c", r"no crowd images \(extracted with --crowds 0\)")


def test_other_images_are_refused_before_training(store, tmp_path, train_config):
    cfg = train_config("max_steps=1")
    other = tmp_path / "other"
    synthesize(other, SynthConfig(ids=5, images_per_id=2, train_fraction=1.0, height=64, width=32, masks=False,
                                  workers=1, seed=1))
    other_folder = other / "bounding_box_train"
    refuse(cfg, store.url, other_folder, tmp_path / "a", "not the ones the store was extracted from.*same --data")
    # the same file names holding other pictures: the key fingerprint agrees, the content hashes do not
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    ours, theirs = open_source(store.folder), open_source(other_folder)
    for i in range(len(ours)):
        (renamed / ours.key(i)).write_bytes(theirs.read(i))
    refuse(cfg, store.url, renamed, tmp_path / "b", "none of the 4 images checked.*same --data")


def test_a_changed_image_fails_or_is_dropped_with_skip_changed(store, images_copy, tmp_path, train_config,
                                                               read_metrics):
    source = open_source(images_copy)
    changed = 1
    (images_copy / source.key(changed)).write_bytes(source.read(changed + 1))  # valid JPEG, other bytes
    with pytest.raises(StoreMismatch, match=r"image 1: changed.*--skip-changed"):
        ds = StoreDataset(store.url, source)
        ds.__getitems__(list(range(len(ds))))

    ds = StoreDataset(store.url, source, skip_changed=True)
    batch = ds.__getitems__(list(range(len(ds))))
    # dropped: the changed image, and samples whose crowd image pastes it
    needs = [changed in CrowdRecipe.from_vector(ds.reader.recipes[i * ds.c]).dataset_indices() + [i]
             for i in range(len(ds))]
    assert batch["valid"].tolist() == [not x for x in needs] and batch["valid"].sum() >= len(ds) // 2
    assert (batch["global_view"][~batch["valid"]] == 0).all()

    train(train_config("max_steps=3", skip_changed=True), store.url, source, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert len(records) == 3 and all(math.isfinite(r["loss"]) for r in records)
