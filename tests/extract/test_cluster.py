"""``extract_distributed`` on local dask clusters: every array, attribute and the stored manifest must be
bitwise equal to a single-process ``extract`` of the same config, also after a resume, a task that
raised mid-write, a worker that died mid-write, and through ``dpal-cache extract --scheduler``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster, WorkerPlugin
from typer.testing import CliRunner

from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
from dpal_cache.data.sources import open_source
from dpal_cache.extract.cluster import extract_distributed
from dpal_cache.extract.config import ExtractConfig
from dpal_cache.extract.run import extract
from dpal_cache.store.io import get_bytes
from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewsConfig

SHARD = 3  # 10 persons + 1 broken file: 11 images in blocks of 3, 3, 3, 2



@pytest.fixture(scope="module")
def inputs(tmp_path_factory, persons_dir):
    """(images folder, manifest path, config): the synthetic persons (conftest.py) and one broken file."""
    root = tmp_path_factory.mktemp("cluster")
    images = root / "images"
    shutil.copytree(persons_dir, images)
    (images / "0003_broken.jpg").write_text("not an image")  # recorded as failed_scan, counted, never rendered
    manifest = root / "manifest.parquet"
    scan(open_source(images), manifest, ScanConfig(workers=1))
    views = ViewsConfig(
        global_view=GlobalViewConfig(size=(64, 32)),  # 4x2 patches of random:vit_tiny (patch 16)
        local_crops=LocalCropConfig(size=(32, 16)),
        crowd=CrowdConfig(size=(64, 64)),  # 4x4 patches
    )
    cfg = ExtractConfig(teacher="random:vit_tiny", views=views, shard_images=SHARD, calibration_images=5,
                        batch_size=3, workers=0, device="cpu", token_precision="int8", map_precision="log8")
    return images, manifest, cfg


def _single(inputs, out: Path, **kwargs):
    images, manifest, cfg = inputs
    return extract(cfg, open_source(images), read_manifest(manifest), str(out), **kwargs)


def _distributed(inputs, out: Path, client, **kwargs):
    images, manifest, cfg = inputs
    return extract_distributed(cfg, images, None, manifest, str(out), client, **kwargs)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "feats.zarr"
    return out, _single(inputs, out)


@pytest.fixture
def process_client():
    """Two single-threaded worker processes (spawned, with nannies that restart a dead worker).

    The slowest fixture (each worker imports torch and builds its teacher): one test uses it, so a
    ``-n 2`` run starts it once.
    """
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


@pytest.fixture
def thread_client(request):
    """In-process workers: fast to start (``request.param`` workers)."""
    with LocalCluster(n_workers=request.param, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


def _arrays(group) -> dict[str, zarr.Array]:
    return {name: node for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}


def assert_same_store(expected: Path, actual: Path) -> None:
    """Every array (bytes, dtype, shape, chunks, shards), the attributes and the stored manifest are equal."""
    a, b = zarr.open_group(str(expected), mode="r"), zarr.open_group(str(actual), mode="r")
    arrays_a, arrays_b = _arrays(a), _arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    assert len(arrays_a) >= 10
    for name, x in arrays_a.items():
        y = arrays_b[name]
        assert (x.shape, x.dtype, x.chunks, x.shards) == (y.shape, y.dtype, y.chunks, y.shards), name
        vx, vy = x[...], y[...]
        assert vx.tobytes() == vy.tobytes(), f"{name}: {np.count_nonzero(vx != vy)} values differ"
    assert a.attrs.asdict() == b.attrs.asdict()
    assert a.attrs["dpal_cache"]["complete"] is True
    assert get_bytes(a, "manifest.parquet") == get_bytes(b, "manifest.parquet")


def _assert_same_counts(expected, actual) -> None:
    for field in ("images", "ok", "failed", "blocks_total", "failures_by_reason", "bytes_per_image"):
        assert getattr(actual, field) == getattr(expected, field), field


@pytest.mark.parametrize("thread_client", [1, 2], indirect=True, ids=["1-thread-worker", "2-thread-workers"])
def test_threaded_workers_match_single_process(inputs, reference, thread_client, tmp_path):
    ref_out, ref_summary = reference
    seen = []
    summary = _distributed(inputs, tmp_path / "feats.zarr", thread_client, progress=lambda n, f: seen.append((n, f)))
    assert_same_store(ref_out, tmp_path / "feats.zarr")
    _assert_same_counts(ref_summary, summary)
    assert summary.blocks_written == 4 and summary.blocks_done_before == 0
    assert sorted(n for n, _ in seen) == [2, 3, 3, 3] and sum(f for _, f in seen) == 1  # one call per block


@pytest.mark.parametrize("thread_client", [2], indirect=True)
def test_resume_single_process_store(inputs, reference, thread_client, tmp_path):
    """A store that a single-process run left after two blocks is completed by the cluster."""
    out = tmp_path / "feats.zarr"
    _single(inputs, out, max_blocks=2)
    assert zarr.open_group(str(out), mode="r")["shards/done"][:].tolist() == [1, 1, 0, 0]
    summary = _distributed(inputs, out, thread_client)
    assert (summary.blocks_done_before, summary.blocks_written, summary.images) == (2, 2, 11 - 2 * SHARD)
    assert_same_store(reference[0], out)


class FailOnce(WorkerPlugin):
    """Makes the first write of one block (over all workers) scribble on the block, then raise or kill the worker.

    The flag file is removed by exactly one attempt, so later attempts write normally.
    """

    name = "fail-once"

    def __init__(self, block: int, flag: Path, kill: bool):
        self.block, self.flag, self.kill = block, str(flag), kill

    def setup(self, worker):
        from dpal_cache.store import io

        original = self.original = io.write_block

        def write_block(group, layout, block, arrays):
            if block == self.block and _take(self.flag):
                rows = layout.shard_images_range(block)
                v = layout.views_per_image
                group["views/tokens"][rows.start * v : rows.stop * v] = 7  # half-written block: no done flag
                if self.kill:
                    os._exit(1)
                raise RuntimeError("injected failure")
            return original(group, layout, block, arrays)

        io.write_block = write_block

    def teardown(self, worker):
        from dpal_cache.store import io

        io.write_block = self.original


def _take(flag: str) -> bool:
    try:
        os.remove(flag)
        return True
    except FileNotFoundError:
        return False


@pytest.fixture
def fail_once(tmp_path):
    """``fail_once(client, block, kill)``: a ``FailOnce`` on every worker of ``client`` (and on restarted ones)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # worker processes cannot import this test module
    flag = tmp_path / "fail.flag"
    clients = []

    def install(client, block: int, kill: bool = False) -> Path:
        flag.write_text("")
        client.register_plugin(FailOnce(block, flag, kill))
        clients.append(client)
        return flag

    yield install
    for client in clients:
        client.unregister_worker_plugin(FailOnce.name)
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.parametrize("thread_client", [1], indirect=True)
def test_task_that_raised_is_retried(inputs, reference, thread_client, fail_once, tmp_path):
    flag = fail_once(thread_client, block=2)
    summary = _distributed(inputs, tmp_path / "feats.zarr", thread_client)
    assert not flag.exists(), "the failure was not injected"
    assert summary.blocks_written == 4
    assert_same_store(reference[0], tmp_path / "feats.zarr")


def test_worker_processes_match_single_process_also_after_a_lost_worker(inputs, reference, process_client, fail_once,
                                                                        tmp_path):
    ref_out, ref_summary = reference
    summary = _distributed(inputs, tmp_path / "a.zarr", process_client)
    assert_same_store(ref_out, tmp_path / "a.zarr")
    _assert_same_counts(ref_summary, summary)
    # a second run finds every block done and only re-finalises
    again = _distributed(inputs, tmp_path / "a.zarr", process_client)
    assert (again.blocks_done_before, again.blocks_written, again.images) == (4, 0, 0)
    assert_same_store(ref_out, tmp_path / "a.zarr")

    # a worker process dies in the middle of writing a block: the scheduler gives the block to another worker
    workers = set(process_client.scheduler_info()["workers"])
    flag = fail_once(process_client, block=2, kill=True)
    summary = _distributed(inputs, tmp_path / "b.zarr", process_client)
    assert not flag.exists(), "the failure was not injected"
    assert summary.blocks_written == 4
    assert_same_store(ref_out, tmp_path / "b.zarr")
    process_client.wait_for_workers(2, timeout=60)  # the nanny restarted the dead worker: a new address
    assert set(process_client.scheduler_info()["workers"]) != workers


@pytest.mark.parametrize("thread_client", [1], indirect=True)
def test_block_failing_every_attempt_is_reported(inputs, thread_client, fail_once, tmp_path):
    """Retries exhausted: the other blocks are still written, the error names the block, no completion."""
    flag = fail_once(thread_client, block=1)
    with pytest.raises(RuntimeError, match="injected failure") as info:
        _distributed(inputs, tmp_path / "feats.zarr", thread_client, retries=0)
    assert not flag.exists()
    assert "block(s) failed after 0 retries: [1]" in "".join(getattr(info.value, "__notes__", []))
    group = zarr.open_group(str(tmp_path / "feats.zarr"), mode="r")
    assert group["shards/done"][:].tolist() == [1, 0, 1, 1]
    assert group.attrs["dpal_cache"]["complete"] is False


@pytest.mark.parametrize("thread_client", [1], indirect=True)
def test_cli_scheduler(inputs, reference, thread_client, tmp_path):
    from dpal_cache.cli import _register, app

    _register()
    images, manifest, cfg = inputs
    out = tmp_path / "feats.zarr"
    sets = ["views.global_view.size=[64, 32]", "views.local_crops.size=[32, 16]", "views.crowd.size=[64, 64]",
            f"shard_images={SHARD}", "calibration_images=5", "token_precision=int8", "map_precision=log8"]
    args = ["extract", "--data", str(images), "--manifest", str(manifest), "--out", str(out),
            "--teacher", cfg.teacher, "--batch-size", "3", "--workers", "0", "--device", "cpu",
            "--scheduler", thread_client.scheduler.address]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 written now" in " ".join(result.output.split())
    assert_same_store(reference[0], out)
    bad = CliRunner().invoke(app, [*args, "--dask-workers", "2"])
    assert bad.exit_code == 2 and "exclude each other" in bad.output
