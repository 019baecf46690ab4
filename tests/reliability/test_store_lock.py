"""One writer per store: a second extract (library, CLI, --overwrite or a dask coordinator) is refused while
another process writes the store, with a message naming the holder; a SIGKILLed holder leaves no stale lock."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import zarr
from typer.testing import CliRunner

from dpal_cache.data.manifest import read_manifest
from dpal_cache.data.sources import open_source
from dpal_cache.extract.run import extract
from dpal_cache.store.lock import StoreLock, StoreLocked, lock_path, read_owner

# blocks on its third progress call (two blocks computed, their writes under way) until killed
HOLDER = textwrap.dedent(
    """
    import os, pickle, sys, time
    from pathlib import Path
    from dpal_cache.data.manifest import read_manifest
    from dpal_cache.data.sources import open_source
    from dpal_cache.extract.run import extract
    cfg = pickle.loads(Path({config!r}).read_bytes())
    calls = []

    def progress(n, failed):
        calls.append(n)
        if len(calls) == 3:
            Path({waiting!r}).touch()
            time.sleep(600)

    extract(cfg, open_source({folder!r}), read_manifest({manifest!r}), {out!r}, progress=progress)
    """
)


def _cli_args(reference, out) -> list[str]:
    sets = ["views.global_view.size=[64, 32]", "views.local_crops.size=[32, 16]", "views.crowd.size=[64, 64]",
            "shard_images=2", "calibration_images=4"]
    args = ["extract", "--data", str(reference.folder), "--manifest", str(reference.manifest), "--out", str(out),
            "--teacher", "random:vit_tiny", "--batch-size", "2", "--workers", "0", "--device", "cpu"]
    for item in sets:
        args += ["--set", item]
    return args


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_stale_lock(reference, tmp_path, same_store):
    from dpal_cache.cli import _register, app

    out, waiting = tmp_path / "feats.zarr", tmp_path / "waiting"
    script = HOLDER.format(config=str(reference.config_file(tmp_path)), waiting=str(waiting),
                           folder=str(reference.folder), manifest=str(reference.manifest), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not waiting.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert waiting.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
        assert read_owner(lock_path(out))["pid"] == proc.pid

        source, manifest = open_source(reference.folder), read_manifest(reference.manifest)
        for overwrite in (False, True):  # --overwrite must not wipe a store another process is writing
            with pytest.raises(StoreLocked, match=rf"being written by another process \(pid {proc.pid} on .*"
                                                  r"stop it and re-run this command to resume"):
                extract(reference.config, source, manifest, str(out), overwrite=overwrite)
        assert zarr.open_group(str(out), mode="r").attrs["dpal_cache"]["complete"] is False

        _register()
        result = CliRunner().invoke(app, _cli_args(reference, out))
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "error:" in text and f"pid {proc.pid}" in text and "Traceback" not in text
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    assert lock_path(out).exists()  # the dead holder's file stays, but the kernel released its lock
    summary = extract(reference.config, source, manifest, str(out))
    assert summary.blocks_done_before + summary.blocks_written == 5
    same_store(reference.store, out)
    assert not lock_path(out).exists()  # a clean exit removes the file


def test_lock_names_its_holder_and_is_released_on_exit(tmp_path, caplog):
    store = tmp_path / "s.zarr"
    with StoreLock(store, command="dpal-cache extract --out s.zarr"):
        owner = read_owner(lock_path(store))
        assert owner["pid"] == os.getpid() and owner["command"] == "dpal-cache extract --out s.zarr"
        with pytest.raises(StoreLocked, match=r"command: dpal-cache extract --out s.zarr"):
            with StoreLock(str(store)):  # the same process, another open: still refused
                pass
        with pytest.raises(StoreLocked):
            with StoreLock(f"file://{store}"):
                pass
    assert not lock_path(store).exists()
    with StoreLock(store):  # free again
        pass
    with caplog.at_level(logging.WARNING), StoreLock("memory://rel-lock"):  # not lockable: says so
        pass
    assert "no writer lock" in caplog.text


def test_a_dask_coordinator_is_refused_too(reference, tmp_path):
    from distributed import Client, LocalCluster

    from dpal_cache.extract.cluster import extract_distributed

    out = tmp_path / "feats.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client, StoreLock(out, command="another extract"):
        with pytest.raises(StoreLocked, match="another extract"):
            extract_distributed(reference.config, reference.folder, None, reference.manifest, str(out), client)
    assert not out.exists()  # refused before anything was written
