"""Single-machine extraction: determinism, resume, refusal of mismatches, bad inputs, precision."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
import zarr

from dpal_cache.data.catalog import Catalog
from dpal_cache.extract.run import extract
from dpal_cache.store.codecs import decode_map, decode_tokens
from dpal_cache.store.io import StoreError, open_store, read_meta
from dpal_cache.store.layout import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED
from dpal_cache.store.quant import kl_per_row, relative_l2
from dpal_cache.views.crowd import CrowdRecipe


def arrays(url: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(url, mode="r")
    out = {}
    for name in ("views/tokens", "views/attn_cls", "views/mask_score", "views/params", "crowds/attn",
                 "crowds/recipe", "images/status", "shards/done", "calibration/pca_component",
                 "calibration/pca_mean", "calibration/token_scales"):
        out[name] = group[name][:]
    return out


def assert_same_store(a: str, b: str) -> None:
    x, y = arrays(a), arrays(b)
    for name in x:
        assert np.array_equal(x[name], y[name]), name


def test_two_runs_are_bitwise_identical(tmp_path, loaded, small_config):
    source, manifest = loaded
    cfg = small_config()
    s1 = extract(cfg, source, manifest, str(tmp_path / "a.zarr"))
    extract(cfg, source, manifest, str(tmp_path / "b.zarr"))
    assert_same_store(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"))
    assert s1.images == len(source) == s1.ok and s1.blocks_written == s1.blocks_total == 5
    got = arrays(str(tmp_path / "a.zarr"))
    assert (got["images/status"] == STATUS_OK).all() and got["shards/done"].all()
    tokens = got["views/tokens"]
    assert tokens.shape == (2 * len(source), 1 + 4 * 2, 192) and tokens.dtype == np.float16
    assert np.isfinite(tokens).all() and np.abs(tokens).sum(axis=(1, 2)).min() > 0  # every row written
    # attention rows are distributions; the mask score is normalised
    assert np.allclose(got["views/attn_cls"].astype(np.float32).sum(-1), 1, atol=1e-2)
    assert np.allclose(got["crowds/attn"].astype(np.float32).sum(-1), 1, atol=2e-2)
    assert 0 <= got["views/mask_score"].min() and got["views/mask_score"].max() <= 1
    meta = read_meta(open_store(str(tmp_path / "a.zarr")))
    assert meta.complete and meta.teacher["random"] and meta.calibration.images == 4


def test_resume_after_partial_run_equals_full_run(tmp_path, loaded, small_config):
    source, manifest = loaded
    cfg = small_config()
    part = extract(cfg, source, manifest, str(tmp_path / "r.zarr"), max_blocks=2)
    assert part.blocks_written == 2 and not read_meta(open_store(str(tmp_path / "r.zarr"))).complete
    rest = extract(cfg.__class__(**{**cfg.__dict__, "batch_size": 1}), source, manifest, str(tmp_path / "r.zarr"))
    assert rest.blocks_done_before == 2 and rest.blocks_written == 3
    extract(cfg, source, manifest, str(tmp_path / "full.zarr"))
    # batch_size is a runtime field: it may change on resume (values may differ in the last bits on
    # some CPUs; on this one the teacher is batch-invariant, which the equality below relies on)
    x, y = arrays(str(tmp_path / "r.zarr")), arrays(str(tmp_path / "full.zarr"))
    for name in x:
        if name == "views/tokens" or name.startswith("crowds/attn") or name.endswith("attn_cls"):
            assert np.allclose(x[name].astype(np.float32), y[name].astype(np.float32), atol=2e-3), name
        else:
            assert np.array_equal(x[name], y[name]), name


def test_resume_refuses_a_different_config(tmp_path, loaded, small_config):
    source, manifest = loaded
    out = str(tmp_path / "m.zarr")
    extract(small_config(), source, manifest, out, max_blocks=1)
    other = small_config()
    other = other.__class__(**{**other.__dict__, "views": other.views.__class__(
        **{**other.views.__dict__, "seed": 5})})
    with pytest.raises(StoreError, match=r"views\.seed: store has 0, this run has 5"):
        extract(other, source, manifest, out)
    with pytest.raises(StoreError, match="token_precision"):
        extract(small_config(token_precision="int8"), source, manifest, out)
    summary = extract(other, source, manifest, out, overwrite=True)
    assert summary.blocks_done_before == 0 and summary.blocks_written == 5


def test_store_opens_with_plain_zarr_and_dask(tmp_path, loaded, small_config):
    import dask.array as da

    source, manifest = loaded
    out = str(tmp_path / "z.zarr")
    extract(small_config(), source, manifest, out)
    group = zarr.open_group(out, mode="r")
    tokens = group["views/tokens"]
    lazy = da.from_zarr(tokens, chunks=tokens.shards)
    assert lazy.numblocks[0] == 5
    assert np.array_equal(lazy[3].compute(), tokens[3])


def test_memory_url_store(loaded, small_config):
    source, manifest = loaded
    summary = extract(small_config(), source, manifest, "memory://dpal-test-store")
    assert summary.ok == len(source)
    group = open_store("memory://dpal-test-store")
    assert group["shards/done"][:].all()
    # the resolved config travels with the store, remote stores too
    from dpal_cache.config import from_dict
    from dpal_cache.extract.config import ExtractConfig
    from dpal_cache.store.io import get_bytes

    assert from_dict(ExtractConfig, yaml.safe_load(get_bytes(group, "extract.yaml"))) == small_config()


def test_corrupt_and_changed_images_are_recorded_not_fatal(tmp_path, dataset, small_config):
    from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
    from dpal_cache.data.sources import open_source

    folder, _ = dataset
    names = sorted(p.name for p in folder.iterdir())
    (folder / names[1]).write_bytes(b"not an image")  # fails the scan
    manifest_path = tmp_path / "m2.parquet"
    scan(open_source(folder), manifest_path, ScanConfig(workers=1))
    manifest = read_manifest(manifest_path)
    source = open_source(folder)
    (folder / names[4]).write_bytes((folder / names[5]).read_bytes())  # changed after the scan
    out = str(tmp_path / "c.zarr")
    summary = extract(small_config(), source, manifest, out)
    assert summary.failed >= 2
    got = arrays(out)
    status = got["images/status"]
    assert status[1] == STATUS_SKIPPED and status[4] == STATUS_FAILED
    assert not got["views/tokens"][2:4].any() and not got["views/tokens"][8:10].any()  # rows left empty
    assert "changed" in summary.failures_by_reason
    # crowd recipes never use an image that failed the scan
    ok = Catalog(source, manifest).ok
    for i, vec in enumerate(got["crowds/recipe"]):
        if status[i] == STATUS_OK:
            assert set(CrowdRecipe.from_vector(vec).dataset_indices()) <= set(ok.tolist())


def test_compact_precision_within_limits(tmp_path, loaded, small_config):
    source, manifest = loaded
    ref, compact = str(tmp_path / "fp16.zarr"), str(tmp_path / "int8.zarr")
    extract(small_config(), source, manifest, ref)
    # calibrate on every image: the int8 clip is fitted on the calibration tokens
    compact_cfg = small_config(token_precision="int8", map_precision="log8", calibration_images=10)
    extract(compact_cfg, source, manifest, compact)
    a, b = arrays(ref), arrays(compact)
    assert b["views/tokens"].dtype == np.int8 and b["crowds/attn"].dtype == np.uint8
    tokens = decode_tokens(b["views/tokens"], b["calibration/token_scales"]).numpy()
    assert relative_l2(a["views/tokens"].astype(np.float32), tokens) < 2e-2
    assert kl_per_row(a["crowds/attn"].astype(np.float32), decode_map(b["crowds/attn"]).numpy()) < 1e-3
    assert np.array_equal(a["views/params"], b["views/params"])


def test_mask_at_extract_zeroes_background_tokens(tmp_path, loaded, small_config):
    source, manifest = loaded
    out = str(tmp_path / "mask.zarr")
    extract(small_config(mask_at_extract=0.5), source, manifest, out)
    got = arrays(out)
    patches = got["views/tokens"][:, 1:]
    background = got["views/mask_score"].astype(np.float32) <= 0.5
    assert background.any() and (~background).any()
    assert not patches[background].any()
    assert np.abs(patches[~background]).sum(-1).min() > 0
    assert got["views/tokens"][:, 0].any()  # class tokens are kept
    assert read_meta(open_store(out)).precision.mask_at_extract == 0.5


def test_views_rendered_on_the_teachers_device_make_the_same_store(tmp_path, loaded, small_config):
    # render: device = the batched renderer where the teacher runs (here the CPU); the store records it
    source, manifest = loaded
    extract(small_config(), source, manifest, str(tmp_path / "workers.zarr"))
    extract(small_config(render="device"), source, manifest, str(tmp_path / "device.zarr"))
    a, b = arrays(str(tmp_path / "workers.zarr")), arrays(str(tmp_path / "device.zarr"))
    assert np.array_equal(a["views/params"], b["views/params"]) and np.array_equal(a["crowds/recipe"],
                                                                                   b["crowds/recipe"])
    tokens_a, tokens_b = a["views/tokens"].astype(np.float32), b["views/tokens"].astype(np.float32)
    assert relative_l2(tokens_a, tokens_b) < 1e-2  # inputs within the renderer tolerance
    if __import__("torch").backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert_same_store(str(tmp_path / "workers.zarr"), str(tmp_path / "device.zarr"))  # the same bytes here
    renders = [read_meta(open_store(str(tmp_path / f"{m}.zarr"))).identity["render"] for m in ("workers", "device")]
    assert renders == ["per-sample/cpu", "batched/cpu"]
    with pytest.raises(StoreError, match="render"):  # a store never mixes two renderers' views
        extract(small_config(render="device"), source, manifest, str(tmp_path / "workers.zarr"))
