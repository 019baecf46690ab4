"""The study's summary (mean and spread over seeds per arm), its markdown table and its plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dpal_cache.config import to_dict
from dpal_cache.outputs import write_atomic
from dpal_cache.study.config import StudyConfig

# per probe: the headline metric the table and the plot show (all metrics stay in study.json)
HEADLINE = {"reid": "mAP", "attributes": "mA", "parsing": "miou"}
LABEL = {"reid": "reid mAP", "attributes": "attribute mA", "parsing": "parsing mIoU"}
# the plot: a dark line for each mean, a light one for its spread
COLOURS = {"cached, mean": (31, 119, 180), "cached, -1 sd": (158, 202, 225), "cached, +1 sd": (158, 202, 225),
           "fresh views, mean": (214, 39, 40), "fresh views, -1 sd": (247, 182, 182),
           "fresh views, +1 sd": (247, 182, 182)}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min, max and count."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return {"mean": float(x.mean()), "sd": sd, "min": float(x.min()), "max": float(x.max()), "n": int(x.size)}


def _top_agreement(topk: dict[str, float]) -> float | None:
    """The agreement at the largest k the probe had (10 where it fits)."""
    return topk[max(topk, key=int)] if topk else None


def arm_summary(runs: list[dict[str, Any]], probes: tuple[str, ...]) -> dict[str, Any]:
    """Mean and spread over the seeds of one arm: per probe its headline metric, the ratio to the teacher and the
    top-k agreement; the training seconds."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "train_seconds": spread([r["train_seconds"]
                                                                                        for r in runs])}
    for probe in probes:
        key = HEADLINE[probe]
        out[probe] = {
            "metric": key,
            "value": spread([r["probes"][probe]["metrics"][key] for r in runs]),
            "ratio": spread([r["probes"][probe]["ratio"][key] for r in runs]),
            "agreement": spread([_top_agreement(r["probes"][probe]["topk_agreement"]) for r in runs]),
        }
        if probe == "reid":
            out[probe]["rank1"] = spread([r["probes"][probe]["metrics"]["rank1"] for r in runs])
    return out


def gap(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """``a - b`` of two means and the standard error of that difference (from their sample spreads)."""
    se = math.sqrt((a["sd"] ** 2) / max(a["n"], 1) + (b["sd"] ** 2) / max(b["n"], 1))
    return {"difference": a["mean"] - b["mean"], "standard_error": se}


def summarize(cfg: StudyConfig, teacher: dict[str, dict[str, float]], stores: dict[int, dict[str, Any]],
              runs: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The study's result: config, teacher metrics, stores, every run, per-arm summaries, gaps to fresh views."""
    arms = {arm: arm_summary([r for r in runs if r["arm"] == arm], cfg.probes) for arm in cfg.arms}
    gaps = {}
    if "fresh" in arms:
        for arm in arms:
            if arm != "fresh":
                gaps[arm] = {p: gap(arms[arm][p]["ratio"], arms["fresh"][p]["ratio"]) for p in cfg.probes}
    return {"config": to_dict(cfg), "teacher": teacher, "stores": {f"V={v}": s for v, s in stores.items()},
            "runs": runs, "arms": arms, "gaps_to_fresh": gaps, "seconds": seconds}


def _pm(s: dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
    if s["n"] == 0:
        return "-"
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['sd']:.{digits}f}"


def markdown_table(result: dict[str, Any]) -> str:
    """One row per arm: the disk and time it costs and what the student reaches (mean ± sd over seeds)."""
    probes = tuple(result["config"]["probes"])
    head = ["setting", "extract s", "store MB", "train s"]
    for p in probes:
        head += [f"{LABEL[p]} %", f"{LABEL[p]} / teacher"]
    head += ["reid top-10 agreement"] if "reid" in probes else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, s in result["arms"].items():
        store = result["stores"].get(arm)
        cells = [arm, f"{store['seconds']:.0f}" if store else "(teacher in the loop)",
                 f"{store['bytes'] / 1e6:.1f}" if store else "0", f"{s['train_seconds']['mean']:.0f}"]
        for p in probes:
            cells += [_pm(s[p]["value"], 100), _pm(s[p]["ratio"], 1, 3)]
        if "reid" in probes:
            cells.append(_pm(s["reid"]["agreement"], 1, 3))
        lines.append("| " + " | ".join(cells) + " |")
    teacher = ", ".join(f"{LABEL[p]} {100 * result['teacher'][p][HEADLINE[p]]:.1f} %" for p in probes)
    lines += ["", f"Teacher: {teacher}. Mean ± sample standard deviation over seeds {result['runs'][0]['seed']}"
              f"..{result['runs'][-1]['seed']} ({len(result['arms'][next(iter(result['arms']))]['seeds'])} runs per "
              "setting)."]
    for arm, per_probe in result["gaps_to_fresh"].items():
        g = per_probe.get("reid") or next(iter(per_probe.values()))
        lines.append(f"- {arm} minus fresh views, reid mAP / teacher: {g['difference']:+.3f} "
                     f"(standard error {g['standard_error']:.3f})")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Per probe: student / teacher vs log2 V (mean and ± one sd over seeds), fresh views as a flat line."""
    from dpal_cache.viz import draw

    probes = tuple(result["config"]["probes"])
    cached = [(int(arm[2:]), s) for arm, s in result["arms"].items() if arm.startswith("V=")]
    xs = [math.log2(v) for v, _ in cached]
    panels = []
    for p in probes:
        mean = np.array([s[p]["ratio"]["mean"] for _, s in cached])
        sd = np.array([s[p]["ratio"]["sd"] for _, s in cached])
        series = {"cached, mean": (xs, mean), "cached, -1 sd": (xs, mean - sd), "cached, +1 sd": (xs, mean + sd)}
        if "fresh" in result["arms"]:
            f = result["arms"]["fresh"][p]["ratio"]
            ends = [min(xs), max(xs)]
            series.update({"fresh views, mean": (ends, [f["mean"]] * 2),
                           "fresh views, -1 sd": (ends, [f["mean"] - f["sd"]] * 2),
                           "fresh views, +1 sd": (ends, [f["mean"] + f["sd"]] * 2)})
        panels.append(draw.line_chart(series, title=f"{LABEL[p]}: student / teacher", xlabel="log2 V (views per "
                                      "image in the store)", ylabel="student / teacher", size=(720, 320),
                                      colours=COLOURS))
    fig = draw.vstack(panels, title="What the cache costs: cached views vs fresh views",
                      notes=[f"{len(result['runs'])} runs; mean and ±1 sd over seeds"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.save(path, format="PNG")
    return path


def write_outputs(out: Path, result: dict[str, Any]) -> dict[str, str]:
    """``study.json``, ``study.md`` (the table) and ``fidelity.png`` (the plot) in ``out``."""
    files = {"json": out / "study.json", "table": out / "study.md", "plot": out / "fidelity.png"}
    table = (f"# Cache fidelity study\n\n{markdown_table(result)}\nPlot: [fidelity.png](fidelity.png); every run: "
             "[study.json](study.json).\n")
    write_atomic(files["json"], lambda tmp: tmp.write_text(json.dumps(result, indent=2, default=str) + "\n"))
    write_atomic(files["table"], lambda tmp: tmp.write_text(table))
    write_atomic(files["plot"], lambda tmp: plot(result, tmp))
    result["files"] = {k: str(v) for k, v in files.items()}
    return result["files"]
