"""Repository hygiene that CI would otherwise catch late."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def test_test_file_basenames_are_unique():
    """Test folders have no __init__.py: two test files with one basename break pytest's collection."""
    root = Path(__file__).resolve().parent
    names = Counter(p.name for p in root.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]
