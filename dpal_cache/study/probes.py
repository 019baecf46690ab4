"""The study's probes: reid, attributes and parsing for the teacher once, then for each student with the
student/teacher ratio of every headline metric and the top-k neighbour agreement (``dpal_cache.eval.compare``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from dpal_cache.demo.stages import DemoData
from dpal_cache.eval.compare import agreement, metric_ratios, reid_agreement
from dpal_cache.study.config import StudyConfig

log = logging.getLogger(__name__)


class Prober:
    """Runs ``cfg.probes`` on the study's data. The teacher is probed once (its metrics cached in
    ``teacher_json``; its features, needed for agreement, recomputed once per process)."""

    def __init__(self, cfg: StudyConfig, data: DemoData, teacher: dict[str, Any], teacher_json: Path):
        self.cfg, self.data, self.teacher, self.teacher_json = cfg, data, teacher, teacher_json
        self._teacher: dict[str, tuple[dict[str, Any], Any]] | None = None

    def _run(self, probe: str, extractor) -> tuple[dict[str, Any], Any]:
        """(result, features for agreement) of one probe."""
        root = self.data.root
        if probe == "reid":
            from dpal_cache.eval.reid import run_reid

            return run_reid(extractor, root)
        if probe == "attributes":
            from dpal_cache.eval.attributes import run_attributes

            return run_attributes(extractor, root, root / "attributes.parquet")
        from dpal_cache.eval.parsing import run_parsing

        return run_parsing(extractor, root, root / "masks")

    def _teacher_probes(self) -> dict[str, tuple[dict[str, Any], Any]]:
        if self._teacher is None:
            from dpal_cache.eval.features import teacher_extractor

            fx = teacher_extractor(self.teacher["teacher"], self.teacher["checkpoint"], img_size=self.cfg.view_size,
                                   seed=self.cfg.data_seed)
            self._teacher = {probe: self._run(probe, fx) for probe in self.cfg.probes}
            self.teacher_json.write_text(json.dumps(self.teacher_results(), indent=2) + "\n")
        return self._teacher

    def teacher_results(self) -> dict[str, dict[str, float]]:
        """The teacher's headline metrics per probe."""
        return {probe: result["metrics"] for probe, (result, _) in self._teacher_probes().items()}

    def probe_student(self, student: Path, seed: int) -> dict[str, dict[str, Any]]:
        """Per probe: the student's ``metrics``, ``ratio`` to the teacher's and ``topk_agreement`` with it."""
        from dpal_cache.eval.features import open_model

        fx = open_model(student, seed=seed)
        out = {}
        for probe, (t_result, t_feats) in self._teacher_probes().items():
            s_result, s_feats = self._run(probe, fx)
            if probe == "reid":
                topk = reid_agreement(s_feats, t_feats)
            else:
                topk = agreement(np.asarray(s_feats), np.asarray(t_feats))
            out[probe] = {"metrics": s_result["metrics"], "ratio": metric_ratios(s_result["metrics"],
                                                                                 t_result["metrics"]),
                          "topk_agreement": topk}
        return out
