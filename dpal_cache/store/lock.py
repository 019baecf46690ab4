"""One writer per store: an exclusive ``flock`` on ``<store>.lock`` (e.g. ``feats.zarr.lock``) next to a local store.

Two ``extract`` runs writing one store would rewrite each other's shards (a shard is rewritten
whole on every write) and interleave attribute updates. The extract coordinator (a single
process run, or the process holding the dask ``Client``) takes this lock for the whole run;
dask workers write disjoint blocks under their coordinator's lock and never take it.

The kernel drops a ``flock`` when its holder dies, so a killed run leaves no stale lock: the
file may remain, with the last holder's description in it, but it locks nothing. The file sits
beside the store, not inside it, because ``--overwrite`` deletes the store's folder. Only local
paths (and ``file://`` URLs) are locked; ``flock`` over NFS v4 works through the kernel's
emulation, other network filesystems and object stores (s3://, gs://, memory://) are not
protected: run one extract per store there.

    with StoreLock("feats.zarr", "dpal-cache extract ..."):
        ...  # create or resume, write blocks, finalize
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path

from dpal_cache.store.io import StoreError, local_store_path

log = logging.getLogger(__name__)


class StoreLocked(StoreError):
    """Another process holds the store's writer lock."""


def lock_path(store: Path) -> Path:
    """``feats.zarr`` -> ``feats.zarr.lock`` (beside the store: ``--overwrite`` empties the store's folder)."""
    store = Path(os.path.abspath(store))
    return store.with_name(store.name + ".lock")


def _describe(owner: dict) -> str:
    if not owner:
        return "a process that has not written its name yet"
    return (f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}, "
            f"command: {owner.get('command')}")


class StoreLock:
    """Exclusive, non-blocking writer lock of the store at ``url`` (a no-op for non-local stores).

    Args:
        url: the store (path, URL or zarr store).
        command: what the holder is doing, shown to a process that finds the lock taken.

    Raises:
        StoreLocked: on enter, naming the holder (pid, host, start time, command) and what to do.
    """

    def __init__(self, url, command: str | None = None):
        self.url = url
        self.command = command or " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
        self.path: Path | None = None
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        store = local_store_path(self.url)
        if store is None:
            log.warning("%s is not a local path: no writer lock; make sure no other extract writes it", self.url)
            return self
        path = lock_path(store)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise StoreLocked(
                    f"{store} is being written by another process ({_describe(read_owner(path))}). Two writers "
                    "would corrupt it: wait for that run to finish, or stop it and re-run this command to resume "
                    f"(the lock is {path}; it is released when its holder exits)."
                ) from None
            # the holder we waited on may have unlinked the file it locked: retry on the current file
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                 "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        self._fd, self.path = fd, path
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        # unlink while still holding the lock, so a waiter never locks a file that is going away unnoticed
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None


def read_owner(path: Path) -> dict:
    """The holder description written in a lock file ({} when empty or unreadable)."""
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
