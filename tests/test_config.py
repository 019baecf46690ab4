"""Tests for dpal_cache.config: typed loading, precedence, and errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from dpal_cache.config import ConfigError, check, dump_yaml, from_dict, load_config, load_yaml, parse_set, to_dict


@dataclass(frozen=True)
class Inner:
    scale: tuple[float, float] = (0.8, 1.0)
    mode: Literal["pca", "attention", "none"] = "pca"

    def __post_init__(self) -> None:
        check(self.scale[0] <= self.scale[1], "scale", "low must not exceed high")


@dataclass(frozen=True)
class Outer:
    seed: int = 0
    lr: float = 1e-3
    name: str = "run"
    amp: bool = True
    out: Path | None = None
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)


def test_defaults_and_types():
    cfg = load_config(Outer)
    assert cfg == Outer()
    cfg = from_dict(Outer, {"lr": 1, "out": "x/y", "sizes": [3, 4, 5], "inner": {"scale": [0.5, 0.6]}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert load_config(Outer, sets=["lr=2e-3"]).lr == 0.002  # YAML 1.1 reads 2e-3 as a string
    assert cfg.out == Path("x/y")
    assert cfg.sizes == (3, 4, 5)
    assert cfg.inner == Inner(scale=(0.5, 0.6))


def test_precedence_yaml_then_sets_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nname: from_yaml\ninner:\n  mode: attention\n")
    cfg = load_config(Outer, path)
    assert (cfg.seed, cfg.name, cfg.inner.mode) == (1, "from_yaml", "attention")
    cfg = load_config(Outer, path, sets=["seed=2", "inner.scale=[0.1, 0.2]"])
    assert (cfg.seed, cfg.inner.scale, cfg.inner.mode) == (2, (0.1, 0.2), "attention")
    cfg = load_config(Outer, path, sets=["seed=2"], overrides={"seed": 3, "name": None})
    assert cfg.seed == 3 and cfg.name == "from_yaml"  # None means "option not given"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"sed": 1}, "sed"),
        ({"inner": {"mdoe": "pca"}}, "inner.mdoe"),
        ({"seed": "1"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"amp": "yes"}, "amp"),
        ({"lr": "fast"}, "lr"),
        ({"inner": {"scale": [1.0]}}, "inner.scale"),
        ({"inner": {"scale": [0.9, 0.1]}}, "inner.scale"),
        ({"inner": {"mode": "gram"}}, "inner.mode"),
        ({"inner": 3}, "inner"),
        ({"sizes": 3}, "sizes"),
        ({"sizes": [1, "a"]}, "sizes[1]"),
    ],
)
def test_errors_name_the_key(data, needle):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data)
    assert needle in str(err.value)


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(Outer, empty) == Outer()


def test_parse_set():
    assert parse_set("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_set("flag=false") == ("flag", False)
    assert parse_set("name=") == ("name", "")
    with pytest.raises(ConfigError, match="key=value"):
        parse_set("novalue")
    with pytest.raises(ConfigError, match="not a section"):
        load_config(Outer, sets=["seed=1", "seed.x=2"])


def test_round_trip_through_yaml(tmp_path):
    cfg = from_dict(Outer, {"out": "o", "sizes": [7], "inner": {"scale": [0.2, 0.3], "mode": "none"}})
    dump_yaml(cfg, tmp_path / "resolved.yaml")
    assert load_config(Outer, tmp_path / "resolved.yaml") == cfg
    assert to_dict(cfg)["inner"] == {"scale": [0.2, 0.3], "mode": "none"}


def test_repo_config_files_load():
    """Every YAML in configs/ loads into its stage config (keeps the files true to the code)."""
    from dpal_cache.data.manifest import ScanConfig
    from dpal_cache.extract.config import ExtractConfig
    from dpal_cache.study import StudyConfig
    from dpal_cache.synth import SynthConfig
    from dpal_cache.train.config import TrainConfig
    from dpal_cache.views.config import ViewsConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    expected = {"synth.yaml": SynthConfig, "scan.yaml": ScanConfig, "views.yaml": ViewsConfig,
                "extract.yaml": ExtractConfig, "train.yaml": TrainConfig, "study.yaml": StudyConfig}
    variants = {"study-smoke.yaml": StudyConfig}  # smaller settings of a stage config: they load, and differ
    assert sorted(p.name for p in root.glob("*.yaml")) == sorted({**expected, **variants})
    for name, cls in expected.items():
        assert load_config(cls, root / name) == cls(), name
    for name, cls in variants.items():
        assert load_config(cls, root / name) != cls(), name


def test_differences_of_nested_configs():
    from dpal_cache.config import differences

    old = {"a": 1, "inner": {"b": [1, 2], "c": "x"}, "runtime": 4}
    new = {"a": 1, "inner": {"b": [1, 3], "c": "x", "d": True}, "runtime": 5}
    assert differences(old, new, skip=["runtime"]) == ["inner.b: was [1, 2], now [1, 3]", "inner.d: was None, now True"]
    assert differences(old, old) == []
