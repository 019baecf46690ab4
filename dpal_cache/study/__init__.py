"""``dpal-cache study``: what the cache costs in accuracy, cached views (V per image) against fresh views."""

from dpal_cache.study.config import PROBES, StudyConfig
from dpal_cache.study.run import STAGES, check_study_folder, run_study

__all__ = ["PROBES", "STAGES", "StudyConfig", "check_study_folder", "run_study"]
