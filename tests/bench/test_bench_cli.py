"""``dpal-cache bench`` end to end at tiny sizes: valid JSON with every section, and the targets judged."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dpal_cache.bench.common import SECTIONS
from dpal_cache.cli import _register, app
from dpal_cache.cli.planned import PLANNED

_register()
runner = CliRunner()


def test_bench_is_built_not_planned():
    assert "bench" not in PLANNED


def test_bench_cli_writes_json_with_every_section(tmp_path, tiny_bench_args):
    out = tmp_path / "bench.json"
    res = runner.invoke(app, ["bench", *tiny_bench_args, "--out", str(out), "--workdir", str(tmp_path / "work")])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())  # strict JSON: no NaN
    assert set(result["sections"]) == set(SECTIONS)
    assert result["machine"]["cpus"] >= 1 and result["machine"]["torch"]
    assert result["settings"]["teacher"] == "random:vit_tiny"
    assert result["settings"]["views"]["global_view"]["size"] == [64, 32]
    targets = {row["target"] for row in result["targets"]}
    assert "cached / online training steps/s" in targets and "int8 token relative L2" in targets
    assert all(row["met"] in (True, False, None) for row in result["targets"])
    assert "targets" in res.output


def test_bench_cli_refuses_unknown_sections(tmp_path):
    res = runner.invoke(app, ["bench", "--only", "training,speed", "--out", str(tmp_path / "b.json")])
    assert res.exit_code == 2
    assert "speed" in res.output
