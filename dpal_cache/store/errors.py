"""What can go wrong with a store, as exceptions every caller can catch by kind."""

from __future__ import annotations


class StoreError(Exception):
    """A store is missing, of another format, or does not match what is asked of it."""


class StoreMissing(StoreError):
    """No store at the path yet (or only one whose creation was interrupted): extract creates it."""


class StoreWriteError(StoreError):
    """A write into the store failed (disk full, permissions, storage errors); re-running resumes."""
