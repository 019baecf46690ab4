"""Image sources: folder, list file and LMDB give the same ordered, random-access, picklable interface."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpal_cache.data.sources import (
    FolderSource,
    ImageSource,
    ListSource,
    LmdbSource,
    SourceError,
    SourceReadError,
    open_source,
)

FOLDER_KEYS = ["A.PNG", "b.jpg", "e.bmp", "sub/c.JpEg", "sub/deeper/d.webp"]  # sorted by relative POSIX path
LUP_KEYS = ["34_01_0341_00001865", "00_00_0000_00000000", "12_03_0007_00000042", "12_03_0007_00000041"]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Five images (mixed-case extensions, nested) plus files and folders that are not images."""
    root = tmp_path / "imgs"
    for i, key in enumerate(FOLDER_KEYS):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(f"image {i} {key}".encode())  # sources never decode: any bytes do
    (root / "notes.txt").write_text("not an image")
    (root / "anim.gif").write_bytes(b"GIF89a")
    (root / "sub" / "README").write_text("x")
    (root / "folder.jpg").mkdir()  # a folder with an image extension is not an image
    return root


def _keys(src: ImageSource) -> list[str]:
    return [src.key(i) for i in range(len(src))]


def _read_error(src: ImageSource, index: int) -> SourceReadError:
    with pytest.raises(SourceReadError) as info:
        src.read(index)
    return info.value


# ---------------------------------------------------------------------------------------------- folder


def test_folder_lists_images_recursively_sorted_case_insensitive(folder: Path):
    src = FolderSource(folder)
    assert _keys(src) == FOLDER_KEYS
    assert len(src) == 5 and src.kind == "folder"
    assert src.read(3) == b"image 3 sub/c.JpEg"
    assert Path(src.path(4)) == folder / "sub" / "deeper" / "d.webp"


def test_folder_extension_filter_is_case_insensitive(folder: Path):
    assert _keys(FolderSource(folder, extensions=(".png",))) == ["A.PNG"]
    assert _keys(FolderSource(folder, extensions=(".JPEG", ".Jpg"))) == ["b.jpg", "sub/c.JpEg"]
    assert len(FolderSource(folder, extensions=(".tiff",))) == 0


def test_folder_must_exist(tmp_path: Path):
    with pytest.raises(SourceError, match="not a folder"):
        FolderSource(tmp_path / "nope")
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(SourceError):
        FolderSource(tmp_path / "f.jpg")


def test_random_access_negative_index_and_index_error(folder: Path):
    src = FolderSource(folder)
    assert src.read(-1) == src.read(4) == b"image 4 sub/deeper/d.webp"
    assert src.key(-5) == "A.PNG"
    for bad in (5, -6, 100):
        with pytest.raises(IndexError):
            src.read(bad)
        with pytest.raises(IndexError):
            src.key(bad)


def test_iteration_yields_index_key_bytes_in_order(folder: Path):
    items = list(FolderSource(folder))
    assert [(i, k) for i, k, _ in items] == list(enumerate(FOLDER_KEYS))
    assert [data for _, _, data in items] == [f"image {i} {k}".encode() for i, k in enumerate(FOLDER_KEYS)]


def test_directory_symlink_loop_does_not_hang(folder: Path):
    os.symlink(folder, folder / "sub" / "loop")  # sub/loop -> root -> sub -> ...
    os.symlink("..", folder / "sub" / "deeper" / "up")
    found: list[list[str]] = []
    worker = threading.Thread(target=lambda: found.append(_keys(FolderSource(folder))), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "listing a folder with a symlink loop hung"
    assert found == [FOLDER_KEYS]  # directory symlinks are not followed at all


def test_file_symlinks_are_read_through_and_loops_are_unreadable(folder: Path, tmp_path: Path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"outside bytes")
    os.symlink(outside, folder / "link.jpg")
    os.symlink(folder / "loop_b.jpg", folder / "loop_a.jpg")
    os.symlink(folder / "loop_a.jpg", folder / "loop_b.jpg")
    os.symlink(tmp_path / "gone.jpg", folder / "dangling.jpg")
    src = FolderSource(folder)
    keys = _keys(src)
    assert keys == sorted(FOLDER_KEYS + ["link.jpg", "loop_a.jpg", "loop_b.jpg", "dangling.jpg"])
    assert src.read(keys.index("link.jpg")) == b"outside bytes"
    for name in ("loop_a.jpg", "loop_b.jpg"):
        err = _read_error(src, keys.index(name))
        assert err.reason == "unreadable" and name in err.detail
    assert _read_error(src, keys.index("dangling.jpg")).reason == "missing"


def test_file_deleted_after_listing_is_missing(folder: Path):
    src = FolderSource(folder)
    (folder / "b.jpg").unlink()
    err = _read_error(src, 1)
    assert err.reason == "missing" and "b.jpg" in err.detail
    assert src.read(0) == b"image 0 A.PNG"  # the others still read


def test_unreadable_permissions(folder: Path):
    target = folder / "b.jpg"
    target.chmod(0)
    try:
        if os.access(target, os.R_OK):
            pytest.skip("running as a user that reads mode-000 files (root)")
        err = _read_error(FolderSource(folder), 1)
        assert err.reason == "unreadable"
    finally:
        target.chmod(0o644)


def test_non_utf8_file_names_are_listed_and_hashed(tmp_path: Path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.jpg"  # latin-1 name, not valid UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"latin")
    (tmp_path / "plain.jpg").write_bytes(b"plain")
    src = FolderSource(tmp_path)
    assert len(src) == 2
    index = [i for i in range(2) if src.key(i) != "plain.jpg"][0]
    assert src.read(index) == b"latin"
    assert len(src.fingerprint()) == 32


def test_folder_pickles_and_reads_the_same(folder: Path):
    src = FolderSource(folder)
    clone = pickle.loads(pickle.dumps(src))
    assert _keys(clone) == FOLDER_KEYS
    assert [clone.read(i) for i in range(5)] == [src.read(i) for i in range(5)]
    assert clone.describe() == src.describe() and clone.fingerprint() == src.fingerprint()


def test_describe_and_fingerprint_are_stable_and_order_sensitive(folder: Path, tmp_path: Path):
    a, b = FolderSource(folder), FolderSource(folder)
    assert a.describe() == {"kind": "folder", "root": str(folder.resolve()), "count": 5}
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 32 and int(a.fingerprint(), 16) >= 0

    same = tmp_path / "same.txt"
    same.write_text("\n".join(FOLDER_KEYS))
    assert ListSource(same, root=folder).fingerprint() == a.fingerprint()  # same images, same order
    reordered = tmp_path / "reordered.txt"
    reordered.write_text("\n".join([FOLDER_KEYS[1], FOLDER_KEYS[0], *FOLDER_KEYS[2:]]))
    assert ListSource(reordered, root=folder).fingerprint() != a.fingerprint()
    (folder / "new.png").write_bytes(b"x")
    assert FolderSource(folder).fingerprint() != a.fingerprint()
    # no ambiguity from joining keys: ["ab", "c"] differs from ["a", "bc"]
    (tmp_path / "x.txt").write_text("ab\nc\n")
    (tmp_path / "y.txt").write_text("a\nbc\n")
    assert ListSource(tmp_path / "x.txt").fingerprint() != ListSource(tmp_path / "y.txt").fingerprint()


# ---------------------------------------------------------------------------------------------- list files


def test_txt_list_skips_comments_and_blank_lines_in_file_order(folder: Path):
    lst = folder / "list.txt"
    lst.write_bytes(
        "\ufeff# images picked by hand\r\nsub/c.JpEg\r\n\r\n   \n  b.jpg  \n  # indented comment\nA.PNG\n".encode()
    )
    src = ListSource(lst)
    assert _keys(src) == ["sub/c.JpEg", "b.jpg", "A.PNG"]  # the list's order, not sorted; BOM and CRLF tolerated
    assert src.kind == "list" and src.read(1) == b"image 1 b.jpg"
    assert src.describe() == {
        "kind": "list",
        "list_file": str(lst.resolve()),
        "root": str(folder.resolve()),
        "count": 3,
    }


def test_csv_list_uses_the_path_column_as_text(tmp_path: Path):
    lst = tmp_path / "list.csv"
    lst.write_text("id,path,label\n7,b.jpg,1\n8,0001,2\n9,2024-01-01,3\n")
    src = ListSource(lst)
    # "0001" must stay a file name, not become the integer 1
    assert _keys(src) == ["b.jpg", "0001", "2024-01-01"]
    (tmp_path / "0001").write_bytes(b"numeric name")
    assert src.read(1) == b"numeric name"
    # a column of nothing but numbers (file names without extension) is still names
    only_numbers = tmp_path / "numbers.csv"
    only_numbers.write_text("path\n0001\n0002\n10\n")
    assert _keys(ListSource(only_numbers)) == ["0001", "0002", "10"]


def test_parquet_list(folder: Path, tmp_path: Path):
    lst = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": ["e.bmp", "A.PNG"], "w": [1, 2]}), lst)
    src = ListSource(lst, root=folder)
    assert _keys(src) == ["e.bmp", "A.PNG"]
    assert [data for _, _, data in src] == [b"image 2 e.bmp", b"image 0 A.PNG"]


def test_root_argument_and_default_root(folder: Path, tmp_path: Path):
    lists = tmp_path / "lists"
    lists.mkdir()
    lst = lists / "l.txt"
    lst.write_text("b.jpg\n")
    assert ListSource(lst, root=folder).read(0) == b"image 1 b.jpg"
    default = ListSource(lst)
    assert Path(default.path(0)) == lists / "b.jpg"
    assert _read_error(default, 0).reason == "missing"


def test_absolute_paths_ignore_root(folder: Path, tmp_path: Path):
    lst = tmp_path / "abs.txt"
    lst.write_text(f"{folder / 'e.bmp'}\nb.jpg\n")
    src = ListSource(lst, root=folder / "sub")
    assert src.key(0) == str(folder / "e.bmp")
    assert src.read(0) == b"image 2 e.bmp"
    assert Path(src.path(1)) == folder / "sub" / "b.jpg"


def test_list_entries_that_are_folders_are_unreadable(folder: Path):
    lst = folder / "l.txt"
    lst.write_text("sub\nb.jpg\n")
    src = ListSource(lst)
    assert _read_error(src, 0).reason == "unreadable"
    assert src.read(1) == b"image 1 b.jpg"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_missing_path_column(tmp_path: Path, suffix: str):
    lst = tmp_path / f"l{suffix}"
    if suffix == ".csv":
        lst.write_text("file,label\na.jpg,1\n")
    else:
        pq.write_table(pa.table({"file": ["a.jpg"]}), lst)
    with pytest.raises(SourceError, match="'path' column") as info:
        ListSource(lst)
    assert "file" in str(info.value)  # names what it found instead


def test_null_paths_are_refused(tmp_path: Path):
    lst = tmp_path / "l.parquet"
    pq.write_table(pa.table({"path": ["a.jpg", None]}), lst)
    with pytest.raises(SourceError, match="empty"):
        ListSource(lst)


@pytest.mark.parametrize("suffix", [".txt", ".csv"])
def test_duplicate_paths_are_refused(tmp_path: Path, suffix: str):
    lst = tmp_path / f"l{suffix}"
    lst.write_text(("path\n" if suffix == ".csv" else "") + "a.jpg\nb.jpg\na.jpg\n")
    with pytest.raises(SourceError, match="'a.jpg' is listed more than once"):
        ListSource(lst)


def test_bad_list_files(tmp_path: Path):
    with pytest.raises(SourceError, match="does not exist"):
        ListSource(tmp_path / "nope.txt")
    (tmp_path / "l.json").write_text("[]")
    with pytest.raises(SourceError, match="must end in"):
        ListSource(tmp_path / "l.json")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(SourceError, match="cannot read"):
        ListSource(tmp_path / "broken.parquet")


# ---------------------------------------------------------------------------------------------- LMDB


def _lup_items(noise_jpeg) -> dict[bytes, bytes]:
    return {k.encode(): noise_jpeg(8, 8, seed=i) for i, k in enumerate(LUP_KEYS)}


def test_lmdb_keys_from_keys_pkl_of_str_in_its_order(tmp_path: Path, make_lmdb, noise_jpeg):
    items = _lup_items(noise_jpeg)
    db = make_lmdb(tmp_path / "lup" / "lmdb", items)
    (db / "keys.pkl").write_bytes(pickle.dumps(LUP_KEYS))
    src = LmdbSource(db)
    assert _keys(src) == LUP_KEYS
    assert [src.read(i) for i in range(4)] == [items[k.encode()] for k in LUP_KEYS]
    assert src.read(-1) == items[LUP_KEYS[-1].encode()]
    assert src.path(0) == f"{db}::34_01_0341_00001865"
    assert src.describe() == {
        "kind": "lmdb",
        "db": str(db.resolve()),
        "keys_file": str((db / "keys.pkl").resolve()),
        "count": 4,
    }
    with pytest.raises(IndexError):
        src.read(4)


def test_lmdb_keys_pkl_of_bytes_next_to_the_folder(tmp_path: Path, make_lmdb, noise_jpeg):
    """LUPerson's layout: data_root/lmdb/data.mdb and data_root/keys.pkl."""
    items = _lup_items(noise_jpeg)
    db = make_lmdb(tmp_path / "lup" / "lmdb", items)
    order = [LUP_KEYS[2], LUP_KEYS[0]]  # keys.pkl may name a subset
    (tmp_path / "lup" / "keys.pkl").write_bytes(pickle.dumps([k.encode() for k in order]))
    src = LmdbSource(db)
    assert _keys(src) == order
    assert [data for _, _, data in src] == [items[k.encode()] for k in order]


def test_lmdb_keys_pkl_in_fast_reid_dict_form_and_duplicates(tmp_path: Path, make_lmdb, noise_jpeg):
    items = _lup_items(noise_jpeg)
    db = make_lmdb(tmp_path / "lmdb", items)
    order = [LUP_KEYS[3], LUP_KEYS[1]]
    (db / "keys.pkl").write_bytes(pickle.dumps({"keys": order, "pids": [7, 9]}))
    assert _keys(LmdbSource(db)) == order
    (db / "keys.pkl").write_bytes(pickle.dumps([LUP_KEYS[0], LUP_KEYS[0]]))
    with pytest.raises(SourceError, match="more than once"):
        LmdbSource(db)


def test_lmdb_without_keys_pkl_uses_byte_order(tmp_path: Path, make_lmdb, noise_jpeg):
    items = _lup_items(noise_jpeg)
    items[b"\xffodd"] = b"raw"  # a key that is not UTF-8 still reads
    db = make_lmdb(tmp_path / "lmdb", items)
    src = LmdbSource(db)
    assert src.keys_file is None
    assert _keys(src)[:4] == sorted(LUP_KEYS)
    assert _keys(src)[4] == "\\xffodd"
    assert src.read(4) == b"raw"
    assert src.describe()["keys_file"] is None


def test_lmdb_missing_key(tmp_path: Path, make_lmdb, noise_jpeg):
    db = make_lmdb(tmp_path / "lmdb", _lup_items(noise_jpeg))
    (db / "keys.pkl").write_bytes(pickle.dumps([LUP_KEYS[0], "99_99_9999_99999999"]))
    src = LmdbSource(db)
    assert len(src.read(0)) > 0
    err = _read_error(src, 1)
    assert err.reason == "missing" and "99_99_9999_99999999" in err.detail


class _RunsCode:
    """Unpickling this calls os.system: what a crafted keys.pkl would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_keys_pkl_that_would_run_code_is_refused_without_running_it(tmp_path: Path, make_lmdb, noise_jpeg):
    db = make_lmdb(tmp_path / "lmdb", _lup_items(noise_jpeg))
    marker = tmp_path / "pwned"
    (db / "keys.pkl").write_bytes(pickle.dumps([LUP_KEYS[0], _RunsCode(marker)]))
    with pytest.raises(SourceError, match="keys.pkl"):
        LmdbSource(db)
    assert not marker.exists()
    with pytest.raises(SourceError):
        open_source(db)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [pickle.dumps({"names": LUP_KEYS}), pickle.dumps([1, 2]), b"not a pickle", pickle.dumps(LUP_KEYS)[:-3]],
    ids=["dict-without-keys", "ints", "garbage", "cut"],
)
def test_malformed_keys_pkl(tmp_path: Path, make_lmdb, noise_jpeg, payload: bytes):
    db = make_lmdb(tmp_path / "lmdb", _lup_items(noise_jpeg))
    (db / "keys.pkl").write_bytes(payload)
    with pytest.raises(SourceError):
        LmdbSource(db)


def test_lmdb_needs_data_mdb(tmp_path: Path):
    pytest.importorskip("lmdb")
    with pytest.raises(SourceError, match="data.mdb"):
        LmdbSource(tmp_path)


def test_lmdb_source_pickles_into_spawned_workers(tmp_path: Path, make_lmdb, noise_jpeg):
    items = _lup_items(noise_jpeg)
    db = make_lmdb(tmp_path / "lmdb", items)
    (db / "keys.pkl").write_bytes(pickle.dumps(LUP_KEYS))
    src = LmdbSource(db)
    src.read(0)  # opens the environment in this process; it must not travel with the pickle
    clone = pickle.loads(pickle.dumps(src))
    assert clone._env is None and _keys(clone) == LUP_KEYS
    with mp.get_context("spawn").Pool(2) as pool:
        read = pool.map(src.read, range(len(src)))
    assert read == [items[k.encode()] for k in LUP_KEYS]
    assert src.read(3) == items[LUP_KEYS[3].encode()]  # the parent's handle still works


def test_lmdb_source_reads_in_forked_workers_after_the_parent_read(tmp_path: Path, make_lmdb, noise_jpeg):
    # DataLoader workers are forked from a process that has read (train checks a few images first): py-lmdb
    # refuses to open a database twice in a process, and a child inherits the parent's registry of open ones
    items = _lup_items(noise_jpeg)
    db = make_lmdb(tmp_path / "lmdb", items)
    src, twin = LmdbSource(db), open_source(db)  # two sources of one database in one process share its handle
    assert src.read(0) == twin.read(0) == items[bytes(src._keys[0])]
    with mp.get_context("fork").Pool(2) as pool:
        read = pool.map(src.read, range(len(src)))
    assert read == [items[bytes(k)] for k in src._keys]
    assert src.read(1) == items[bytes(src._keys[1])]  # the parent's handle still works


def test_read_errors_survive_pickling():
    err = pickle.loads(pickle.dumps(SourceReadError("missing", "a.jpg: No such file")))
    assert isinstance(err, SourceReadError) and (err.reason, err.detail) == ("missing", "a.jpg: No such file")


# ---------------------------------------------------------------------------------------------- open_source


def test_open_source_dispatch(folder: Path, tmp_path: Path, make_lmdb, noise_jpeg):
    assert isinstance(open_source(folder), FolderSource)
    assert isinstance(open_source(str(folder)), FolderSource)

    db = make_lmdb(tmp_path / "lup.lmdb", _lup_items(noise_jpeg))
    for path in (db, db / "data.mdb"):
        src = open_source(path)
        assert isinstance(src, LmdbSource) and src.db_path == db and len(src) == 4

    (tmp_path / "l.txt").write_text("b.jpg\n")
    (tmp_path / "l.csv").write_text("path\nb.jpg\n")
    pq.write_table(pa.table({"path": ["b.jpg"]}), tmp_path / "l.parquet")
    for name in ("l.txt", "l.csv", "l.parquet"):
        src = open_source(tmp_path / name, root=folder)
        assert isinstance(src, ListSource) and src.read(0) == b"image 1 b.jpg"


def test_open_source_errors(tmp_path: Path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images found"):
        open_source(tmp_path / "empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    with pytest.raises(SourceError, match="no images found"):
        open_source(tmp_path / "texts")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(SourceError, match="expected a folder"):
        open_source(tmp_path / "x.json")
    (tmp_path / "empty.txt").write_text("# nothing listed\n")
    with pytest.raises(SourceError, match="no images found"):
        open_source(tmp_path / "empty.txt")
