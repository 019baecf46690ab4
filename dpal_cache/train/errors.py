"""What stops a training run before (or while) it trains, by kind."""

from __future__ import annotations


class StoreMismatch(Exception):
    """The store (or its images) cannot serve this training run; the message says what to do."""
