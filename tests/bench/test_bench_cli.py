"""``dpal-cache bench`` end to end at tiny sizes: valid JSON with every section, and the targets judged."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dpal_cache.cli import _register, app

_register()
runner = CliRunner()


def test_bench_cli_writes_json_with_its_sections_and_targets(tmp_path, tiny_bench_args):
    """One section through the CLI (the sections themselves are tested in test_bench_<section>.py)."""
    out = tmp_path / "bench.json"
    res = runner.invoke(app, ["bench", *tiny_bench_args, "--only", "store", "--out", str(out),
                              "--workdir", str(tmp_path / "work")])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())  # strict JSON: no NaN
    assert set(result["sections"]) == {"store"} and not result["errors"]
    assert result["machine"]["cpus"] >= 1 and result["machine"]["torch"]
    assert result["settings"]["teacher"] == "random:vit_tiny"
    assert result["settings"]["views"]["global_view"]["size"] == [64, 32]
    targets = {row["target"]: row for row in result["targets"]}
    assert set(targets) == {"int8+log8 bytes / fp16 bytes per image", "int8 token relative L2",
                            "log8 attention KL per row (worst kind)"}
    assert targets["int8 token relative L2"]["value"] == result["sections"]["store"]["options"][
        result["sections"]["store"]["compact"]]["tokens_rel_l2"]
    assert "targets" in res.output


def test_bench_cli_refuses_bad_sizes_without_a_traceback(tmp_path):
    res = runner.invoke(app, ["bench", "--view-size", "0x0", "--out", str(tmp_path / "b.json")])
    assert res.exit_code == 2 and "must be positive" in res.output


def test_bench_cli_refuses_unknown_sections(tmp_path):
    res = runner.invoke(app, ["bench", "--only", "training,speed", "--out", str(tmp_path / "b.json")])
    assert res.exit_code == 2
    assert "speed" in res.output


def test_bench_cli_refuses_a_folder_as_out_before_any_benchmark(tmp_path):
    res = runner.invoke(app, ["bench", "--only", "store", "--out", str(tmp_path), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 2 and "is a folder: name the JSON file to write" in " ".join(res.output.split())
    assert not (tmp_path / "w").exists()


def test_bench_cli_refuses_a_device_that_is_not_here(tmp_path):
    res = runner.invoke(app, ["bench", "--device", "nonsense", "--out", str(tmp_path / "b.json")])
    assert res.exit_code == 2 and "nonsense" in res.output
    assert not (tmp_path / "b.json").exists()


def test_bench_cli_refuses_bad_counts_with_one_error_line(tmp_path):
    res = runner.invoke(app, ["bench", "--loader-workers", "a,b", "--out", str(tmp_path / "b.json")])
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("error")]
    assert errors == ["error: --loader-workers: expected comma-separated integers, got 'a,b'"], res.output
