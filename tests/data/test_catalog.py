"""``Catalog`` reads a folder as it was scanned: a file deleted or added since keeps no index shifted."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpal_cache.data.catalog import Catalog, ImageUnavailable
from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
from dpal_cache.data.sources import open_source
from dpal_cache.store.io import StoreError, check_store_source


@pytest.fixture()
def scanned(tmp_path: Path, noise_jpeg) -> tuple[Path, object]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.jpg").write_bytes(noise_jpeg(seed=i))
    scan(open_source(folder), tmp_path / "m.parquet", ScanConfig(workers=1))
    return folder, read_manifest(tmp_path / "m.parquet")


def test_deleted_file_keeps_its_index_and_new_files_are_left_out(scanned, noise_jpeg):
    folder, manifest = scanned
    reference = Catalog(open_source(folder), manifest).load(2)
    (folder / "1.jpg").unlink()
    (folder / "0a.jpg").write_bytes(noise_jpeg(seed=9))  # sorts between 0 and 1: would shift every index
    catalog = Catalog(open_source(folder), manifest)
    with pytest.raises(ImageUnavailable, match="missing"):
        catalog.load(1)
    assert (catalog.load(2) == reference).all()
    check_store_source(manifest, open_source(folder))  # verify / viz / train accept the same folder


def test_another_folder_is_refused(scanned, tmp_path, noise_jpeg):
    _, manifest = scanned
    other = tmp_path / "other"
    other.mkdir()
    for i in range(4):
        (other / f"x{i}.jpg").write_bytes(noise_jpeg(seed=i))
    with pytest.raises(StoreError, match="none of the 4 scanned images"):
        check_store_source(manifest, open_source(other))


def test_the_change_warning_names_only_what_changed(scanned, noise_jpeg, caplog):
    folder, manifest = scanned
    (folder / "9.jpg").write_bytes(noise_jpeg(seed=9))
    with caplog.at_level("WARNING", logger="dpal_cache.data.catalog"):
        Catalog(open_source(folder), manifest)
    assert "1 new file(s) are left out" in caplog.text and "gone" not in caplog.text
    caplog.clear()
    (folder / "9.jpg").unlink()
    (folder / "3.jpg").unlink()
    with caplog.at_level("WARNING", logger="dpal_cache.data.catalog"):
        Catalog(open_source(folder), manifest)
    assert "1 scanned file(s) are gone" in caplog.text and "new" not in caplog.text
