"""The Market-1501 writer: layout, names, query/gallery rules, attributes, determinism, refusals."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dpal_cache.config import ConfigError, load_config
from dpal_cache.synth import SynthConfig, synthesize
from dpal_cache.synth.draw import LIP_LABELS
from dpal_cache.synth.identity import ATTRIBUTE_NAMES, identity_for
from dpal_cache.synth.market import plan, query_images

SMALL = dict(ids=6, images_per_id=4, cameras=3, height=64, width=32, distractors=3, crowd_backgrounds=2,
             background_size=(40, 48), workers=1)  # fmt: skip
NAME = re.compile(r"^(\d{4})_c(\d)s1_(\d{6})_(\d{2})\.jpg$")
MARKET = re.compile(r"([-\d]+)_c(\d)")  # the pattern Market-1501 loaders use


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, SynthConfig]:
    out = tmp_path_factory.mktemp("synth") / "market"
    cfg = SynthConfig(**SMALL)
    synthesize(out, cfg)
    return out, cfg


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _parse(folder: Path) -> list[tuple[int, int, int]]:
    out = []
    for p in sorted(folder.glob("*.jpg")):
        m = NAME.match(p.name)
        assert m, p.name
        pid, cam = map(int, MARKET.search(p.name).groups())
        out.append((pid, cam, int(m.group(3))))
    return out


def test_layout_names_and_splits(made):
    out, cfg = made
    train, gallery, query = (_parse(out / f) for f in ("bounding_box_train", "bounding_box_test", "query"))
    assert {p for p, _, _ in train} == {1, 2, 3}
    assert {p for p, _, _ in query} == {4, 5, 6}
    assert {p for p, _, _ in gallery} == {0, 4, 5, 6}
    assert sum(p == 0 for p, _, _ in gallery) == cfg.distractors
    assert len(train) + len(gallery) + len(query) == cfg.ids * cfg.images_per_id + cfg.distractors
    frames = [f for _, _, f in train + gallery + query]
    assert len(set(frames)) == len(frames)
    assert all(1 <= c <= cfg.cameras for _, c, _ in train + gallery + query)
    assert Image.open(next((out / "query").glob("*.jpg"))).size == (cfg.width, cfg.height)
    bgs = sorted((out / "backgrounds").glob("*.jpg"))
    assert [p.name for p in bgs] == ["bg_00000.jpg", "bg_00001.jpg"]
    assert Image.open(bgs[0]).size == (48, 40)
    assert load_config(SynthConfig, out / "synth.yaml") == cfg


def test_every_query_has_a_cross_camera_gallery_match(made):
    out, _ = made
    gallery = [(p, c) for p, c, _ in _parse(out / "bounding_box_test") if p > 0]
    query = [(p, c) for p, c, _ in _parse(out / "query")]
    assert len(set(query)) == len(query)  # at most one query per (id, camera)
    for pid, cam in query:
        assert any(gp == pid and gc != cam for gp, gc in gallery), (pid, cam)


def test_query_rule_on_all_small_camera_patterns():
    for n in range(2, 6):
        for cams in itertools.product(range(1, 4), repeat=n):
            if len(set(cams)) < 2:
                continue  # every id is seen by at least two cameras
            is_query = query_images(list(cams))
            assert any(is_query)
            for q in (i for i in range(n) if is_query[i]):
                assert any(not is_query[g] and cams[g] != cams[q] for g in range(n)), cams
            assert len({cams[i] for i in range(n) if is_query[i]}) == sum(is_query)


def test_masks_match_images(made):
    out, cfg = made
    images = sorted(p for f in ("bounding_box_train", "bounding_box_test", "query") for p in (out / f).glob("*.jpg"))
    masks = sorted((out / "masks").rglob("*.png"))
    assert len(masks) == len(images)
    for img in images[::5]:
        mask = Image.open(out / "masks" / img.parent.name / f"{img.stem}.png")
        assert mask.mode == "L" and mask.size == (cfg.width, cfg.height)
        assert set(np.unique(np.asarray(mask))) <= set(LIP_LABELS)


def test_attribute_table(made):
    out, cfg = made
    table = pq.read_table(out / "attributes.parquet")
    assert table.column_names == ["image", "split", "person_id", "camera", *ATTRIBUTE_NAMES]
    assert str(table.schema.field("person_id").type) == "int32"
    assert str(table.schema.field("camera").type) == "int32"
    assert all(str(table.schema.field(n).type) == "bool" for n in ATTRIBUTE_NAMES)
    rows = table.to_pylist()
    assert len(rows) == cfg.ids * cfg.images_per_id  # distractors are not people
    assert [(r["split"], r["image"]) for r in rows] == sorted((r["split"], r["image"]) for r in rows)
    folder = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query"}
    for r in rows:
        assert (out / folder[r["split"]] / r["image"]).is_file()
        pid, cam = map(int, MARKET.search(r["image"]).groups())
        assert (r["person_id"], r["camera"]) == (pid, cam)
        assert {n: r[n] for n in ATTRIBUTE_NAMES} == identity_for(cfg.seed, pid).attributes()


def test_output_is_byte_identical_across_runs_and_worker_counts(made, tmp_path):
    out, cfg = made
    again = tmp_path / "again"
    done = []
    summary = synthesize(again, SynthConfig(**{**SMALL, "workers": 2}), progress=done.append)
    assert sum(done) == len(plan(cfg)) == summary.images + summary.backgrounds
    a, b = _files(out), _files(again)
    assert a.keys() == b.keys()
    # synth.yaml records the worker count; everything else must match byte for byte
    assert [k for k in a if a[k] != b[k]] == ["synth.yaml"]


def test_a_different_seed_gives_different_images(made, tmp_path):
    out, _ = made
    other = tmp_path / "other"
    synthesize(other, SynthConfig(**{**SMALL, "seed": 1, "distractors": 0, "crowd_backgrounds": 0}))
    a, b = _files(out / "bounding_box_train"), _files(other / "bounding_box_train")
    assert not set(a.values()) & set(b.values())


def test_rerun_replaces_an_earlier_output_and_refuses_foreign_folders(tmp_path):
    out = tmp_path / "s"
    synthesize(out, SynthConfig(**{**SMALL, "ids": 4, "distractors": 0, "crowd_backgrounds": 0, "masks": False}))
    synthesize(out, SynthConfig(**{**SMALL, "ids": 2, "train_fraction": 1.0, "distractors": 0, "crowd_backgrounds": 0}))
    assert {p for p, _, _ in _parse(out / "bounding_box_train")} == {1, 2}
    assert not list((out / "query").iterdir()) and not (out / "backgrounds").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    small = SynthConfig(**{**SMALL, "ids": 1, "images_per_id": 2, "distractors": 0, "crowd_backgrounds": 0})
    with pytest.raises(ValueError, match="not empty"):
        synthesize(foreign, small)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    synthesize(foreign, small, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "attributes.parquet").is_file()
    with pytest.raises(ValueError, match="is a file"):
        synthesize(foreign / "notes.txt", small)


@pytest.mark.parametrize(
    "bad",
    [dict(ids=0), dict(images_per_id=1), dict(cameras=1), dict(cameras=10), dict(seed=-1), dict(height=8),
     dict(train_fraction=1.5), dict(distractors=-1), dict(background_size=(8, 64)), dict(jpeg_quality=0),
     dict(workers=-2)],  # fmt: skip
)
def test_config_errors_name_the_key(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        SynthConfig(**bad)


def test_config_from_yaml_and_sets(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("ids: 7\nbackground_size: [32, 48]\n")
    cfg = load_config(SynthConfig, path, sets=["cameras=4"], overrides={"seed": 3, "ids": None})
    assert (cfg.ids, cfg.cameras, cfg.seed, cfg.background_size) == (7, 4, 3, (32, 48))
    with pytest.raises(ConfigError, match="idz"):
        load_config(SynthConfig, sets=["idz=3"])
