"""The decoder registry: every pattern decoder kind, and the class that builds it.

Each decoder module registers its class under its kind; the package imports every decoder module,
so the registry is complete once ``dpal_cache.train.decoders`` is imported (importing any of its
modules imports the package first). It is the one list of kinds: ``DecoderConfig.kind`` is checked
against it, ``build_decoder`` looks kinds up in it and the ``--decoder`` help is made from it.

    @register_decoder("linear")
    class LinearDecoder(nn.Module): ...

A new decoder is one module with a registered class, imported in ``__init__.py``. This module
imports nothing from the package, so config.py and the decoder modules can all import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch.nn as nn

M = TypeVar("M", bound="type[nn.Module]")

DECODERS: dict[str, type[nn.Module]] = {}  # kind -> class(student_dim, teacher_dim, cfg), in registration order


def register_decoder(kind: str) -> Callable[[M], M]:
    """Class decorator: register a decoder class under ``kind`` (a kind is registered once)."""

    def register(cls: M) -> M:
        if kind in DECODERS:
            raise ValueError(f"decoder kind {kind!r} is registered twice: {DECODERS[kind].__name__}, {cls.__name__}")
        DECODERS[kind] = cls
        return cls

    return register


def unknown_decoder(kind: object) -> str:
    """The message for a kind the registry does not hold, naming the ones it does."""
    return f"unknown decoder kind {kind!r}; choose one of {', '.join(DECODERS)}"
