"""SIGKILL in the middle of an extraction, then resume: the store equals an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import zarr

from dpal_cache.extract.run import extract

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)  # as in the test process that makes the clean store (tests/conftest.py)
    sys.path.insert(0, {tests!r})
    from conftest import _small_config
    from dpal_cache.data.manifest import read_manifest
    from dpal_cache.data.sources import open_source
    from dpal_cache.extract.run import extract
    # the sleep in the progress callback slows the run down enough to be killed mid-way
    extract(_small_config(), open_source({folder!r}), read_manifest({manifest!r}), {out!r},
            progress=lambda n, failed: time.sleep(0.4))
    """
)


def test_kill_then_resume_is_bitwise_identical(tmp_path, dataset, loaded, small_config):
    folder, manifest = dataset
    out = str(tmp_path / "killed.zarr")
    script = SCRIPT.format(tests=os.path.dirname(__file__), folder=str(folder), manifest=str(manifest), out=out)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = int(zarr.open_group(out, mode="r")["shards/done"][:].sum())
        except Exception:  # not created yet
            done = 0
        if done >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 2 <= done < 5

    source, table = loaded
    resumed = extract(small_config(), source, table, out)
    assert resumed.blocks_done_before >= 2 and resumed.blocks_done_before + resumed.blocks_written == 5
    extract(small_config(), source, table, str(tmp_path / "clean.zarr"))
    a, b = zarr.open_group(out, mode="r"), zarr.open_group(str(tmp_path / "clean.zarr"), mode="r")
    for name in ("views/tokens", "views/attn_cls", "views/mask_score", "views/params", "crowds/attn",
                 "crowds/recipe", "images/status", "shards/done", "calibration/token_scales"):
        assert np.array_equal(a[name][:], b[name][:]), name
