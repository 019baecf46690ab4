"""``run_demo`` end to end at a tiny scale: every stage runs and every promised file exists.

Whether the trained student beats the untrained one is measured at demo scale, not here: at this
size the probe is noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpal_cache.demo import DEMO_ENTRIES, STAGES, DemoConfig, run_demo
from dpal_cache.demo.teacher import DemoTeacherConfig
from dpal_cache.outputs import OutputRefused, matches

TINY = DemoConfig(ids=6, images_per_id=4, crowd_backgrounds=2, distractors=2,
                  teacher=DemoTeacherConfig(steps=3, batch_size=4),
                  epochs=1, batch_size=4, pattern_images=2, untrained_patterns=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[tuple[str, float, float]]]:
    calls: list[tuple[str, float, float]] = []
    result = run_demo(tmp_path_factory.mktemp("demo"), seed=0, cfg=TINY,
                      progress=lambda s, c, t: calls.append((s, c, t)))
    return result, calls


def test_every_file_exists(demo):
    result, _ = demo
    for name in ("synth", "manifest", "demo_teacher", "store", "run", "student", "reid_teacher", "reid_trained",
                 "reid_untrained", "patterns", "curves", "report", "json"):
        assert Path(result["files"][name]).exists(), name
    assert Path(result["files"]["student"]).with_suffix(".json").exists()


def test_report_has_the_numbers_and_the_label(demo):
    result, _ = demo
    text = Path(result["files"]["report"]).read_text()
    assert "not PATH-B" in text and result["teacher"]["label"] in text
    for key in ("teacher", "trained", "untrained"):
        m = result["reid"][key]["metrics"]
        assert f"{100 * m['mAP']:.2f}" in text and f"{100 * m['rank1']:.2f}" in text
    assert "untrained student" in text
    assert "not PATH-B" in Path(result["files"]["patterns"]).read_text()
    saved = json.loads(Path(result["files"]["json"]).read_text())
    assert saved["reid"]["trained"]["metrics"] == result["reid"]["trained"]["metrics"]
    assert saved["student_beats_untrained"] == result["student_beats_untrained"]
    assert result["verdict"] in text


def test_probes_label_the_models(demo):
    result, _ = demo
    assert "not PATH-B" in result["reid"]["teacher"]["model"]["label"]
    assert result["reid"]["untrained"]["model"]["trained"] is False
    assert result["reid"]["trained"]["model"]["trained"] is True
    assert result["teacher"]["steps"] >= 1


def test_progress_reports_every_stage(demo):
    result, calls = demo
    assert {s for s, _, _ in calls} == set(STAGES)
    assert all(0 <= c <= t for _, c, t in calls)
    assert set(STAGES) - {"report"} <= set(result["seconds"])


def test_verdict_needs_higher_map_and_no_lower_rank():
    from dpal_cache.demo import beats, verdict_line

    base = {"rank1": 0.05, "rank5": 0.20, "rank10": 0.25, "mAP": 0.07}
    assert beats({**base, "mAP": 0.12, "rank5": 0.3}, base)  # Rank-1 tie is allowed
    assert not beats(base, base)  # equal mAP is not a win
    assert not beats({**base, "mAP": 0.12, "rank1": 0.025}, base)  # a lower rank loses
    assert "does NOT beat" in verdict_line(base, base)
    assert "mAP 12.00 vs 7.00" in verdict_line({**base, "mAP": 0.12}, base)


def test_a_rerun_may_replace_the_demo_folder_but_no_other(demo, tmp_path):
    result, _ = demo
    out = Path(result["out_dir"])
    assert matches(DEMO_ENTRIES)(out), sorted(p.name for p in out.iterdir())  # every entry it wrote is its own
    other = tmp_path / "precious"
    (other / "sub").mkdir(parents=True)
    (other / "notes.txt").write_text("important")
    with pytest.raises(OutputRefused, match="notes.txt"):
        run_demo(other, cfg=TINY)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt", "sub"]
