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


def test_the_repository_cites_nothing_outside_it():
    """Notes kept beside the repository are not part of it: what a reader needs is in docs/."""
    root = Path(__file__).resolve().parent.parent
    files = [p for d in ("dpal_cache", "tests", "docs", "configs", "pipelines") for p in (root / d).rglob("*")
             if p.suffix in (".py", ".md", ".yaml", ".sh")] + [root / "README.md"]
    assert not [str(p.relative_to(root)) for p in files if "shared/" + "notes" in p.read_text()]


def test_no_private_name_is_imported_across_packages():
    """``from dpal_cache.a.b import _x`` only inside dpal_cache.a: a private name is its package's own business."""
    import ast

    root = Path(__file__).resolve().parent.parent / "dpal_cache"
    crossing = []
    for path in root.rglob("*.py"):
        package = ".".join(("dpal_cache", *path.relative_to(root).parent.parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dpal_cache."):
                source = node.module.rsplit(".", 1)[0]
                crossing += [f"{path.relative_to(root)}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__") and source != package]
    assert not crossing
