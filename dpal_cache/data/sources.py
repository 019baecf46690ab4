"""Image sources: one interface over a folder, a list file and a LUPerson-style LMDB.

A source is an ordered, random-access collection of encoded images. ``source.read(i)`` returns
the bytes of image ``i``; iterating yields ``(index, key, bytes)`` in index order. The order is
a pure function of the data (sorted paths, the list file's order, ``keys.pkl`` or the LMDB's
byte-sorted keys), so every stage and every machine numbers images alike. Sources are
picklable and open file handles lazily in each process, so they can be shipped to workers.

    src = open_source("data/LUP1M")          # folder, list file (.txt/.csv/.parquet) or LMDB
    for index, key, data in src: ...
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LIST_SUFFIXES = (".txt", ".csv", ".parquet")


class SourceError(Exception):
    """The source itself cannot be opened (missing folder, bad list file, no images...)."""


class SourceReadError(Exception):
    """One image's bytes cannot be read. ``reason`` is ``missing`` or ``unreadable``."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")

    def __reduce__(self):
        # default pickling passes only the message to __init__; keep reason/detail across processes
        return type(self), (self.reason, self.detail)


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        # a dangling symlink or a file deleted since listing
        raise SourceReadError("missing", f"{path}: {exc.strerror}") from None
    except OSError as exc:  # permissions, symlink loops (ELOOP), directories, I/O errors
        raise SourceReadError("unreadable", f"{path}: {exc.strerror or exc}") from None


class ImageSource(ABC):
    """Ordered, random-access encoded images. Subclasses keep only picklable state."""

    kind: str = ""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def key(self, index: int) -> str:
        """Stable name of image ``index`` (relative path or LMDB key)."""

    @abstractmethod
    def path(self, index: int) -> str:
        """Where image ``index`` lives, for people (absolute file path or ``lmdb_dir::key``)."""

    @abstractmethod
    def read(self, index: int) -> bytes:
        """Encoded bytes of image ``index``; raises SourceReadError if they cannot be read."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-safe description (kind, location, count) saved with manifests and stores."""

    def __str__(self) -> str:
        """For messages: ``the folder /data/imgs (1,200 images)``."""
        d = self.describe()
        where = d.get("root") if self.kind == "folder" else d.get("list_file") or d.get("db")
        return f"the {self.kind} {where} ({len(self):,} images)"

    def folder(self) -> Path | None:
        """The one folder every image lies in (an output must never be inside it), or None where images may
        be anywhere (a list file's absolute paths)."""
        return None

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"image index {index} out of range for {n} images")
        return index % n

    def __iter__(self) -> Iterator[tuple[int, str, bytes]]:
        for i in range(len(self)):
            yield i, self.key(i), self.read(i)

    def fingerprint(self) -> str:
        """Hash of the ordered key list: two sources with the same images in the same order agree."""
        h = hashlib.blake2b(digest_size=16)
        for i in range(len(self)):
            # surrogateescape: file names that are not UTF-8 hash as their raw bytes instead of raising
            h.update(self.key(i).encode("utf-8", "surrogateescape") + b"\0")
        return h.hexdigest()


class _KeyedFiles(ImageSource):
    """Images that are files under ``root`` named by relative keys (folders and list files)."""

    def __init__(self, root: Path, keys: list[str]):
        self.root = Path(root)
        # a numpy string array, not a Python list: no copy-on-access refcount churn in forked workers
        self._keys = np.asarray(keys, dtype=np.str_) if keys else np.zeros(0, dtype="<U1")

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, index: int) -> str:
        return str(self._keys[self._check_index(index)])

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.key(index))

    def read(self, index: int) -> bytes:
        return _read_file(self.path(index))


class FolderSource(_KeyedFiles):
    """Every image file under a folder, recursively, sorted by relative POSIX path.

    Extensions (case-insensitive): jpg, jpeg, png, bmp, webp. Directory symlinks are not
    followed (no loops); file symlinks are listed and read through.
    """

    kind = "folder"

    def __init__(self, root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
        root = Path(root)
        if not root.is_dir():
            raise SourceError(f"{root} is not a folder")
        exts = tuple(e.lower() for e in extensions)
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            for name in filenames:
                if name.lower().endswith(exts):
                    keys.append(name if rel == "." else f"{Path(rel).as_posix()}/{name}")
        keys.sort()
        super().__init__(root, keys)
        self.extensions = exts

    @classmethod
    def with_keys(cls, root: str | Path, keys: list[str],
                  extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> FolderSource:
        """The folder's images named by ``keys`` (relative paths), without listing it: files may be missing."""
        source = cls.__new__(cls)  # skips the listing of __init__
        _KeyedFiles.__init__(source, Path(root), keys)
        source.extensions = tuple(e.lower() for e in extensions)
        return source

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root.resolve()), "count": len(self)}

    def folder(self) -> Path | None:
        return self.root


class ListSource(_KeyedFiles):
    """Images named by a list file, in the file's order, relative to ``root``.

    ``.txt``: one path per line (blank lines and lines starting with ``#`` are skipped);
    ``.csv`` / ``.parquet``: a ``path`` column. ``root`` defaults to the list file's folder;
    absolute paths in the list are used as they are.
    """

    kind = "list"

    def __init__(self, list_file: str | Path, root: str | Path | None = None):
        list_file = Path(list_file)
        if not list_file.is_file():
            raise SourceError(f"list file {list_file} does not exist")
        suffix = list_file.suffix.lower()
        if suffix == ".txt":
            lines = list_file.read_text(encoding="utf-8-sig").splitlines()  # -sig: tolerate a BOM
            keys = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
        elif suffix in (".csv", ".parquet"):
            keys = self._path_column(list_file, suffix)
        else:
            raise SourceError(f"{list_file}: list files must end in {', '.join(LIST_SUFFIXES)}")
        if len(set(keys)) != len(keys):
            seen: set[str] = set()
            dup = next(k for k in keys if k in seen or seen.add(k))
            raise SourceError(f"{list_file}: path {dup!r} is listed more than once")
        super().__init__(Path(root) if root is not None else list_file.parent, keys)
        self.list_file = list_file

    @staticmethod
    def _path_column(list_file: Path, suffix: str) -> list[str]:
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        # paths are text: without this, type inference turns a column of "0001" into the integer 1
        as_text = pcsv.ConvertOptions(column_types={"path": pa.string()})
        try:
            if suffix == ".csv":
                table = pcsv.read_csv(list_file, convert_options=as_text)
            else:
                table = pq.read_table(list_file, columns=None)
        except Exception as exc:
            raise SourceError(f"{list_file}: cannot read: {exc}") from None
        if "path" not in table.column_names:
            raise SourceError(f"{list_file}: needs a 'path' column (has {', '.join(table.column_names)})")
        column = table.column("path")
        if column.null_count:
            raise SourceError(f"{list_file}: 'path' column has {column.null_count} empty value(s)")
        return [str(p) for p in column.to_pylist()]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "list_file": str(self.list_file.resolve()),
            "root": str(self.root.resolve()),
            "count": len(self),
        }


class _KeysUnpickler(pickle.Unpickler):
    """keys.pkl must be plain data: refuse any class, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise SourceError(f"keys.pkl refers to {module}.{name}; only lists of strings/bytes are accepted")


class LmdbSource(ImageSource):
    """A LUPerson-style LMDB: values are raw encoded image bytes.

    Keys come from ``keys.pkl`` next to (or inside) the LMDB folder when present (a pickled
    list of str/bytes in its order, or fast-reid's ``{'keys': [...], 'pids': [...]}``), else from
    the database itself in LMDB's byte order.
    Needs the optional ``lmdb`` package (``pip install dpal-cache[lmdb]``).
    """

    kind = "lmdb"

    def __init__(self, db_path: str | Path, keys_file: str | Path | None = None):
        try:
            import lmdb  # noqa: F401
        except ImportError:
            raise SourceError("LMDB sources need the lmdb package: pip install 'dpal-cache[lmdb]'") from None
        self.db_path = Path(db_path)
        if not (self.db_path / "data.mdb").is_file():
            raise SourceError(f"{self.db_path} is not an LMDB folder (no data.mdb)")
        self._env = None
        self._pid = -1
        self.keys_file = Path(keys_file) if keys_file is not None else self._find_keys_file()
        keys = self._load_keys_file(self.keys_file) if self.keys_file else self._scan_keys()
        self._keys = np.asarray(keys, dtype=np.bytes_) if keys else np.zeros(0, dtype="S1")

    def _find_keys_file(self) -> Path | None:
        for candidate in (self.db_path / "keys.pkl", self.db_path.parent / "keys.pkl"):
            if candidate.is_file():
                return candidate
        return None

    @staticmethod
    def _load_keys_file(path: Path) -> list[bytes]:
        try:
            keys = _KeysUnpickler(io.BytesIO(path.read_bytes())).load()
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"{path}: not a readable keys pickle: {exc}") from None
        if isinstance(keys, dict) and "keys" in keys:
            keys = keys["keys"]  # fast-reid's LUPerson subsets: {'keys': [...], 'pids': [...]}
        if not isinstance(keys, (list, tuple)) or not all(isinstance(k, (str, bytes)) for k in keys):
            raise SourceError(f"{path}: expected a list of str/bytes keys (or a dict with a 'keys' list)")
        keys = [k.encode("utf-8") if isinstance(k, str) else k for k in keys]
        if len(set(keys)) != len(keys):
            raise SourceError(f"{path}: some keys are listed more than once")
        return keys

    def _open(self):
        if self._env is None or self._pid != os.getpid():
            self._env = _lmdb_env(self.db_path)
            self._pid = os.getpid()
        return self._env

    def _scan_keys(self) -> list[bytes]:
        with self._open().begin() as txn:
            return list(txn.cursor().iternext(keys=True, values=False))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_env"] = None
        state["_pid"] = -1
        return state

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, index: int) -> str:
        return self._keys[self._check_index(index)].decode("utf-8", errors="backslashreplace")

    def path(self, index: int) -> str:
        return f"{self.db_path}::{self.key(index)}"

    def folder(self) -> Path | None:
        return self.db_path

    def read(self, index: int) -> bytes:
        raw_key = bytes(self._keys[self._check_index(index)])
        with self._open().begin(buffers=False) as txn:
            value = txn.get(raw_key)
        if value is None:
            raise SourceReadError("missing", f"key {raw_key!r} not in {self.db_path}")
        return bytes(value)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "db": str(self.db_path.resolve()),
            "keys_file": str(self.keys_file.resolve()) if self.keys_file else None,
            "count": len(self),
        }


# LMDB path -> (pid, environment): py-lmdb refuses to open one database twice in a process, so every
# LmdbSource of a process shares one environment, and a forked DataLoader worker replaces the one it
# inherited (LMDB handles must not be used across fork(); closing the child's copy leaves the parent's intact)
_ENVS: dict[str, tuple[int, Any]] = {}


def _lmdb_env(db_path: Path):
    import lmdb

    key = os.path.realpath(db_path)
    pid, env = _ENVS.get(key, (None, None))
    if env is not None and pid == os.getpid():
        return env
    if env is not None:  # inherited through fork(): this process's copy of the parent's handle
        env.close()
    env = lmdb.open(key, readonly=True, lock=False, readahead=False, meminit=False)
    _ENVS[key] = (os.getpid(), env)
    return env


def data_folder(data: str | Path) -> Path | None:
    """The folder ``open_source(data)`` reads its images from (``ImageSource.folder``), without listing it."""
    path = Path(data)
    if path.is_file() and path.name == "data.mdb":
        return path.parent
    return path if path.is_dir() else None


def open_source(data: str | Path, root: str | Path | None = None) -> ImageSource:
    """Open ``data`` as the right kind of source.

    A folder holding ``data.mdb`` (or a ``.lmdb``/``.mdb`` path) is an LMDB; another folder is
    searched for images; a ``.txt``/``.csv``/``.parquet`` file is a list relative to ``root``
    (default: the list's folder).
    """
    path = Path(data)
    if path.is_file() and path.name == "data.mdb":
        return LmdbSource(path.parent)
    if path.is_dir():
        if (path / "data.mdb").is_file():
            return LmdbSource(path)
        source: ImageSource = FolderSource(path)
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        source = ListSource(path, root)
    elif path.exists():
        raise SourceError(f"{path}: expected a folder, an LMDB folder, or a list file ({', '.join(LIST_SUFFIXES)})")
    else:
        raise SourceError(f"{path} does not exist")
    if len(source) == 0:
        raise SourceError(f"{path}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return source
