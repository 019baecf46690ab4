"""The decoder registry is the one list of kinds: the config, ``build_decoder`` and the ``--decoder`` help follow it."""

from __future__ import annotations

import inspect
import pkgutil
import subprocess
import sys

import pytest
import torch.nn as nn

import dpal_cache.train.decoders as decoders
from dpal_cache.cli.train import train_command
from dpal_cache.config import ConfigError, load_config
from dpal_cache.train.config import TrainConfig
from dpal_cache.train.decoders import DECODERS, DECODERS_HELP, DecoderConfig, build_decoder, register_decoder

DS, DT = 32, 48
NOT_DECODERS = {"config", "registry"}  # the package's modules that hold no decoder


def _decoder_help() -> str:
    """The help text of ``dpal-cache train --decoder``."""
    return inspect.signature(train_command).parameters["decoder"].default.help


def test_every_decoder_module_registers_its_kind():
    # each decoder module is named after its kind and imported by the package (else its kind is missing here)
    modules = {m.name for m in pkgutil.iter_modules(decoders.__path__)} - NOT_DECODERS
    assert modules and set(DECODERS) == modules
    assert DecoderConfig.kind in DECODERS and f"{DecoderConfig.kind} (default)" in DECODERS_HELP


@pytest.mark.parametrize("kind", list(DECODERS))
def test_every_registered_kind_is_accepted_and_listed(kind):
    cfg = load_config(TrainConfig, sets=[f"decoder.kind={kind}"])
    assert cfg.decoder.kind == kind and DecoderConfig(kind=kind).kind == kind
    assert isinstance(build_decoder(None, DS, DT, cfg.decoder), DECODERS[kind])
    assert kind in [part.removesuffix(" (default)") for part in DECODERS_HELP.split(", ")]
    assert kind in _decoder_help()


def test_unknown_kind_is_refused_naming_the_known_ones():
    known = ", ".join(DECODERS)
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, sets=["decoder.kind=transformer"])
    assert str(err.value) == f"decoder.kind: unknown decoder kind 'transformer'; choose one of {known}"
    with pytest.raises(ConfigError, match=f"^kind: unknown decoder kind 'transformer'; choose one of {known}$"):
        DecoderConfig(kind="transformer")
    with pytest.raises(ConfigError, match="decoder.kind: expected a string"):
        load_config(TrainConfig, sets=["decoder.kind=3"])
    with pytest.raises(ValueError, match=f"unknown decoder kind 'transformer'; choose one of {known}"):
        build_decoder("transformer", DS, DT)


def test_a_new_registration_reaches_the_config_and_the_builder(monkeypatch):
    class Toy(nn.Module):
        def __init__(self, student_dim: int, teacher_dim: int, cfg: DecoderConfig | None = None) -> None:
            super().__init__()
            self.proj = nn.Linear(student_dim, teacher_dim)

    monkeypatch.setitem(DECODERS, "toy", Toy)
    cfg = load_config(TrainConfig, sets=["decoder.kind=toy"])
    assert isinstance(build_decoder(None, DS, DT, cfg.decoder), Toy)
    with pytest.raises(ValueError, match="registered twice"):
        register_decoder("toy")(Toy)


def test_config_module_imported_first_sees_a_full_registry():
    # no import cycle: config.py and the decoder modules import only registry.py, the package fills it
    code = ("from dpal_cache.train.decoders.config import DecoderConfig\n"
            "from dpal_cache.train.decoders.registry import DECODERS\n"
            "print(','.join(DECODERS), DecoderConfig(kind='moe').kind)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [",".join(DECODERS), "moe"]
