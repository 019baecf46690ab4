"""The cache-fidelity study at its smoke size (configs/study-smoke.yaml): every arm and seed trained and probed,
the table, plot and JSON written, a rerun resumes instead of retraining, another config is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpal_cache.cli import _register, app
from dpal_cache.config import load_config
from dpal_cache.outputs import OutputRefused
from dpal_cache.study import StudyConfig, run_study
from dpal_cache.study.report import gap, spread

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "study-smoke.yaml"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    cfg = load_config(StudyConfig, SMOKE)
    out = tmp_path_factory.mktemp("study") / "out"
    seen = []
    result = run_study(out, cfg, progress=lambda stage, done, total: seen.append((stage, done, total)))
    return cfg, out, result, seen


def test_every_arm_and_seed_is_trained_and_probed(study):
    cfg, out, result, seen = study
    assert cfg.arms == ["V=1", "V=2", "fresh"]
    assert [(r["arm"], r["seed"]) for r in result["runs"]] == [(a, s) for a in cfg.arms for s in cfg.seeds]
    for run in result["runs"]:
        assert run["steps"] > 0 and math.isfinite(run["last_loss"])
        assert set(run["probes"]) == {"reid", "attributes", "parsing"}
        for probe in run["probes"].values():
            assert all(v is None or v > 0 for v in probe["ratio"].values())
            assert probe["topk_agreement"] and all(0 <= v <= 1 for v in probe["topk_agreement"].values())
        assert run["config"]["fresh_views"] == (run["arm"] == "fresh")
    # a store of 2 views holds twice the view rows of one of 1 view, and took longer to extract
    stores = result["stores"]
    assert stores["V=2"]["bytes"] > 1.5 * stores["V=1"]["bytes"] and stores["V=1"]["images"] > 0
    for arm in cfg.arms:
        s = result["arms"][arm]
        assert s["reid"]["ratio"]["n"] == len(cfg.seeds) and s["reid"]["ratio"]["sd"] >= 0
    assert set(result["gaps_to_fresh"]) == {"V=1", "V=2"}
    assert ("runs", len(result["runs"]), len(result["runs"])) in seen
    within = [done for stage, done, _ in seen if stage == "runs" and not float(done).is_integer()]
    assert within and within == sorted(within)  # the bar moves during each run, never back


def test_the_table_plot_and_json_are_written(study):
    _, out, result, _ = study
    table = (out / "study.md").read_text()
    for arm in ("| V=1 |", "| V=2 |", "| fresh |", "Teacher: reid mAP", "V=2 minus fresh views"):
        assert arm in table
    assert (out / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "study.json").read_text())
    assert saved["arms"].keys() == result["arms"].keys() and len(saved["runs"]) == len(result["runs"])


def test_a_rerun_resumes_and_another_config_is_refused(study):
    cfg, out, result, _ = study
    done = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    (out / "runs" / "fresh-s1" / "result.json").unlink()  # as if killed while training that run
    again = run_study(out, cfg)
    assert [r["arm"] for r in again["runs"]] == [r["arm"] for r in result["runs"]]
    for path, mtime in done.items():
        if path.parent.name != "fresh-s1":
            assert path.stat().st_mtime_ns == mtime, path  # kept, not retrained
    assert again["runs"][-1]["last_loss"] == result["runs"][-1]["last_loss"]  # the retrained run: same numbers
    with pytest.raises(OutputRefused, match="another config"):
        run_study(out, load_config(StudyConfig, SMOKE, ["epochs=3"]))


def test_cli_prints_the_table_of_a_finished_study_and_refuses_a_foreign_folder(study, tmp_path):
    _, out, _, _ = study
    _register()
    runner = CliRunner()
    res = runner.invoke(app, ["study", "--config", str(SMOKE), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "cache fidelity" in res.output and "fresh" in res.output and "V=2" in res.output
    (tmp_path / "mine.txt").write_text("keep me")
    res = runner.invoke(app, ["study", "--config", str(SMOKE), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not empty" in res.output
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_spread_and_gap():
    s = spread([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "sd": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([4.0])["sd"] == 0.0 and spread([])["n"] == 0
    g = gap(s, spread([0.0, 0.0, 0.0]))
    assert g["difference"] == 2.0 and g["standard_error"] == pytest.approx(math.sqrt(1 / 3))


def test_config_refuses_bad_settings():
    from dpal_cache.config import ConfigError

    for sets in (["views=[]"], ["views=[2,2]"], ["seeds=[]"], ["probes=[pose]"]):
        with pytest.raises(ConfigError):
            load_config(StudyConfig, None, sets)


def test_another_teacher_is_studied_without_pretraining_the_demo_one(tmp_path):
    cfg = load_config(StudyConfig, SMOKE, ["views=[1]", "seeds=[0]", "fresh=false", "epochs=1", "probes=[reid]",
                                           "teacher_name=random:vit_tiny"])
    result = run_study(tmp_path / "out", cfg)
    assert not (tmp_path / "out" / "teacher.safetensors").exists()
    assert json.loads((tmp_path / "out" / "teacher.json").read_text())["teacher"] == "random:vit_tiny"
    assert [r["arm"] for r in result["runs"]] == ["V=1"] and set(result["runs"][0]["probes"]) == {"reid"}
    assert "| V=1 |" in (tmp_path / "out" / "study.md").read_text()
