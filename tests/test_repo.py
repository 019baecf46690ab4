"""Repository hygiene that CI would otherwise catch late."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def test_test_file_basenames_are_unique():
    """Test folders have no __init__.py: two test files with one basename break pytest's collection."""
    root = Path(__file__).resolve().parent
    names = Counter(p.name for p in root.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]


def test_the_store_package_depends_on_no_stage_that_writes_or_reads_it():
    """dpal_cache/store owns the format: it may use data/, config and numerics, never extract/, train/ or views/."""
    import ast

    package = Path(__file__).resolve().parent.parent / "dpal_cache" / "store"
    upward = []
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            upward += [f"{path.name}: {n}" for n in names
                       if n.startswith(("dpal_cache.extract", "dpal_cache.train", "dpal_cache.views"))]
    assert not upward


def test_store_attributes_are_read_only_inside_the_store_package():
    """Everything else asks a typed StoreMeta (dpal_cache/store/meta.py), never the attributes by key."""
    root = Path(__file__).resolve().parent.parent / "dpal_cache"
    readers = [str(p.relative_to(root)) for p in root.rglob("*.py")
               if p.parent.name != "store" and (".attrs[" in (text := p.read_text()) or ".attrs.get(" in text
                                                 or '"dpal_cache"]' in text)]
    assert not readers
