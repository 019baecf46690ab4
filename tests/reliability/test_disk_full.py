"""Writes that start failing (disk full, simulated by a store wrapper raising ENOSPC after N writes) stop
``extract`` with a clear error, in the library and in the CLI (no traceback, exit code 2); re-running the
same command on a healthy disk resumes and gives the bitwise-identical store."""

from __future__ import annotations

import errno
import json
import os

import pytest
import zarr
from typer.testing import CliRunner
from zarr.storage import LocalStore, WrapperStore

from dpal_cache.data.manifest import read_manifest
from dpal_cache.data.sources import open_source
from dpal_cache.extract.run import extract
from dpal_cache.store.io import CREATING_KEY, StoreWriteError


class FullDisk(WrapperStore):
    """A store whose writes succeed ``budget`` times, then raise OSError(ENOSPC); counts the writes."""

    def __init__(self, store, budget: float = float("inf")):
        super().__init__(store)
        self.budget, self.writes = budget, 0

    async def set(self, key, value, *args, **kwargs):
        if self.writes >= self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
        self.writes += 1
        return await self._store.set(key, value, *args, **kwargs)


def _inputs(reference):
    return open_source(reference.folder), read_manifest(reference.manifest)


@pytest.fixture(scope="module")
def total_writes(reference, tmp_path_factory) -> int:
    """How many store writes an uninterrupted extract makes."""
    counting = FullDisk(LocalStore(tmp_path_factory.mktemp("rel_count") / "feats.zarr"))
    extract(reference.config, *_inputs(reference), counting)
    return counting.writes


@pytest.mark.parametrize("at", [0.1, 0.5, 1.0], ids=["creating", "blocks", "consolidating"])
def test_a_disk_that_fills_up_stops_with_a_clear_error_and_resumes(reference, total_writes, tmp_path, at, same_store):
    out = tmp_path / "feats.zarr"
    budget = int(at * total_writes) - 1
    with pytest.raises(StoreWriteError, match=r"No space left on device.*re-run the same command"):
        extract(reference.config, *_inputs(reference), FullDisk(LocalStore(out), budget))
    attrs = json.loads((out / "zarr.json").read_text()).get("attributes", {})
    if at == 0.1:  # the write failed while the store was being created
        assert attrs.get(CREATING_KEY) is True
    else:
        done = zarr.open_group(str(out), mode="r", use_consolidated=False)["shards/done"][:]
        if at == 0.5:  # ... while blocks were being written
            assert 0 < done.sum() < len(done) and CREATING_KEY not in attrs
        else:  # ... in the last write: the consolidated metadata
            assert done.all() and "consolidated_metadata" not in json.loads((out / "zarr.json").read_text())
    summary = extract(reference.config, *_inputs(reference), str(out))
    assert summary.blocks_done_before + summary.blocks_written == 5
    same_store(reference.store, out)


def test_cli_reports_a_full_disk_without_traceback_then_resumes(reference, total_writes, tmp_path, monkeypatch,
                                                                 same_store):
    from dpal_cache.cli import _register, app

    _register()
    out = tmp_path / "feats.zarr"
    args = ["extract", "--data", str(reference.folder), "--manifest", str(reference.manifest), "--out", str(out),
            "--teacher", "random:vit_tiny", "--batch-size", "2", "--workers", "0", "--device", "cpu"]
    for item in ("views.global_view.size=[64, 32]", "views.local_crops.size=[32, 16]", "views.crowd.size=[64, 64]",
                 "shard_images=2", "calibration_images=4"):
        args += ["--set", item]
    real_set, writes = LocalStore.set, []

    async def filling_set(self, key, value):
        if len(writes) >= total_writes // 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
        writes.append(key)
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", filling_set)
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "No space left on device" in text and "re-run the same command" in text and "Traceback" not in text
    assert not zarr.open_group(str(out), mode="r").attrs["dpal_cache"]["complete"]

    monkeypatch.setattr(LocalStore, "set", real_set)  # space freed
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    same_store(reference.store, out)
