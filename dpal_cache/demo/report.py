"""The demo's verdict and ``report.md``: reid numbers of teacher, trained and untrained student, links to the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RANKS = ("rank1", "rank5", "rank10")


def beats(trained: dict[str, float], untrained: dict[str, float]) -> bool:
    """The demo's verdict: higher mAP (the probe's summary of every gallery match) and no CMC rank lower.

    Rank-1 alone is too coarse at demo scale (40 queries: one query moves it 2.5 points, and the
    first hit is often a look-alike of another synthetic id for every model), so it may tie.
    """
    return trained["mAP"] > untrained["mAP"] and all(trained[k] >= untrained[k] for k in RANKS)


def verdict_line(trained: dict[str, float], untrained: dict[str, float]) -> str:
    """One sentence with the numbers: whether the trained student beats the untrained one."""
    word = "beats" if beats(trained, untrained) else "does NOT beat"
    ranks = ", ".join(f"Rank-{k[4:]} {_pct(trained[k])} vs {_pct(untrained[k])}" for k in RANKS)
    return (f"The trained student {word} the untrained one: mAP {_pct(trained['mAP'])} vs {_pct(untrained['mAP'])} "
            f"({ranks}); it beats = higher mAP and no rank lower.")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def write_report(path: Path, result: dict[str, Any]) -> Path:
    """``report.md``: what ran, the reid numbers of teacher / trained / untrained student, links to every file."""
    teacher = result["teacher"]
    reid = result["reid"]
    rows = [("teacher", teacher["label"]), ("trained student", "ViT-Ti distilled from the store (this demo)"),
            ("untrained student", "same architecture, random init (the baseline)")]
    lines = [
        "# dpal-cache demo",
        "",
        (f"**{teacher['label']}.** The teacher is a stand-in with real signal so that distillation has something "
         "to transfer; it shows the mechanics, not PATH-B's knowledge."),
        "",
        "## Reid probe (Market-1501 protocol on the synthetic query / gallery)",
        "",
        "| model | what | Rank-1 % | Rank-5 % | Rank-10 % | mAP % |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, (name, what) in zip(("teacher", "trained", "untrained"), rows, strict=True):
        m = reid[key]["metrics"]
        cells = " | ".join(_pct(m[k]) for k in (*RANKS, "mAP"))
        lines.append(f"| {name} | {what} | {cells} |")
    probe = reid["trained"]
    lines += ["", f"{probe['n_valid']} queries, {probe['n_gallery']} gallery images ({probe['n_distractors']} "
              "distractors).", "", verdict_line(probe["metrics"], reid["untrained"]["metrics"]), "",
              "## Stages", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in result["seconds"].items()]
    lines += ["", "## Files", ""]
    base = path.parent
    for name, p in result["files"].items():
        rel = Path(p).relative_to(base) if Path(p).is_relative_to(base) else Path(p)
        lines.append(f"- {name}: [{rel}]({rel})")
    lines += ["", "Numbers as JSON: [demo.json](demo.json). Every probe's full result: reid_*.json.", ""]
    path.write_text("\n".join(lines))
    return path
