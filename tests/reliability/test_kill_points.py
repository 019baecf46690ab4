"""SIGKILL of ``extract`` at exact points (while creating the store, during teacher compute, in the middle of
a shard's write, in the middle of the consolidated-metadata write), then resume: the store equals an
uninterrupted run bitwise (no image lost or duplicated) and no temp file of the dead writer is left.

tests/extract/test_extract_kill.py kills at a time-based point; here the child patches the one function
where the kill must land and kills itself there, so every point is hit on every run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import zarr

from dpal_cache.data.manifest import read_manifest
from dpal_cache.data.sources import open_source
from dpal_cache.extract.run import extract
from dpal_cache.store.io import CREATING_KEY

CHILD = textwrap.dedent(
    """
    import os, pickle, signal
    from pathlib import Path
    import torch
    torch.set_num_threads(1)  # as in the test process that made the reference (tests/conftest.py)
    import zarr.storage._local as local
    from dpal_cache.data.manifest import read_manifest
    from dpal_cache.data.sources import open_source
    from dpal_cache.extract import compute
    from dpal_cache.extract.run import extract

    point, out = {point!r}, Path({out!r})
    cfg = pickle.loads(Path({config!r}).read_bytes())
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    put, step, seen = local._put, compute.TeacherStep.__call__, []

    def half_then_die(path, value):
        # what _put's temp-file-then-rename write looks like when killed half way through the bytes
        data = bytes(value.as_buffer_like())
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".killed.partial"), "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
        die()

    def patched_put(path, value, exclusive=False):
        key = path.relative_to(out).as_posix()
        if point == "create" and key.endswith("zarr.json"):
            seen.append(key)
            if len(seen) == 6:  # the group and a few arrays exist, the attributes do not
                die()
        if point == "shard" and key == "views/attn_cls/c/3/0":  # block 3: tokens written, maps half-way
            half_then_die(path, value)
        if point == "consolidate" and key == "zarr.json" and b'"consolidated_metadata": {{' in value.to_bytes():
            half_then_die(path, value)
        return put(path, value, exclusive)

    def patched_step(self, batch):
        seen.append(1)
        if point == "teacher" and len(seen) == 5:  # 2 calibration batches, blocks 0 and 1, then block 2
            die()
        return step(self, batch)

    local._put, compute.TeacherStep.__call__ = patched_put, patched_step
    extract(cfg, open_source({folder!r}), read_manifest({manifest!r}), str(out))
    """
)


def _root_attrs(out) -> dict:
    return json.loads((out / "zarr.json").read_text())["attributes"]


@pytest.mark.parametrize("point", ["create", "teacher", "shard", "consolidate"])
def test_sigkill_at_an_exact_point_then_resume_is_bitwise_identical(point, reference, tmp_path, same_store):
    out = tmp_path / "feats.zarr"
    script = CHILD.format(point=point, out=str(out), config=str(reference.config_file(tmp_path)),
                          folder=str(reference.folder), manifest=str(reference.manifest))
    proc = subprocess.run([sys.executable, "-c", script], stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]

    attrs = _root_attrs(out)
    if point == "create":
        assert attrs == {CREATING_KEY: True}  # no data yet: the resume creates the store again
    else:
        group = zarr.open_group(str(out), mode="r", use_consolidated=False)
        done = group["shards/done"][:]
        if point == "teacher":
            assert done[2:].sum() == 0 and not attrs["dpal_cache"]["complete"]
        elif point == "shard":
            assert done[3] == 0 and list(out.rglob("*.partial"))
        else:
            assert done.all() and "consolidated_metadata" not in json.loads((out / "zarr.json").read_text())

    summary = extract(reference.config, open_source(reference.folder), read_manifest(reference.manifest), str(out))
    assert summary.blocks_done_before + summary.blocks_written == 5
    same_store(reference.store, out)
    assert not list(out.rglob("*.partial")), "temp files of the killed writer were left in the store"
