"""Shared fixtures for the reliability tests: one clean reference store, its inputs, and a bitwise comparison.

The reference is the tiny store of tests/conftest.py (10 synthetic 64x32 persons, random ViT-Ti) in
blocks and batches of 2 images: 5 blocks, so a kill can land before, between and after blocks.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from dpal_cache.store.io import get_bytes, read_failures

BLOCKS = {"shard_images": 2, "batch_size": 2}


@dataclass(frozen=True)
class Reference:
    store: Path  # the uninterrupted run's store
    folder: Path  # its images (read-only: copy before changing them)
    manifest: Path
    config: Any  # its ExtractConfig

    def config_file(self, where: Path) -> Path:
        """The config pickled into ``where`` (for subprocesses)."""
        path = where / "extract_config.pkl"
        path.write_bytes(pickle.dumps(self.config))
        return path


@pytest.fixture(scope="session")
def reference(tmp_path_factory, tiny_builders) -> Reference:
    store, folder = tiny_builders.store(tmp_path_factory.mktemp("rel_reference"), **BLOCKS)
    return Reference(store, folder, store.parent / "manifest.parquet", tiny_builders.config(**BLOCKS))


def _arrays(group) -> dict[str, zarr.Array]:
    return {name: node for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}


def assert_same_store_as(expected: Path, actual: Path | str) -> None:
    """Every array's bytes, the attributes, the stored manifest and the failure records are equal."""
    a, b = zarr.open_group(str(expected), mode="r"), zarr.open_group(str(actual), mode="r")
    arrays_a, arrays_b = _arrays(a), _arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b) and len(arrays_a) >= 10
    for name, x in arrays_a.items():
        vx, vy = x[...], arrays_b[name][...]
        assert vx.dtype == vy.dtype and vx.tobytes() == vy.tobytes(), f"{name}: {np.count_nonzero(vx != vy)} differ"
    assert a.attrs.asdict() == b.attrs.asdict()
    assert a.attrs["dpal_cache"]["complete"] is True
    assert get_bytes(a, "manifest.parquet") == get_bytes(b, "manifest.parquet")
    assert read_failures(a) == read_failures(b)


@pytest.fixture(scope="session")
def same_store():
    """``same_store(expected, actual)``: assert two stores are bitwise equal (see assert_same_store_as)."""
    return assert_same_store_as
