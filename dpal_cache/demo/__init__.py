"""``dpal-cache demo``: the whole product on generated data (run.py), its stages as reusable functions
(stages.py), the demo teacher (teacher.py) and the report (report.py)."""

from dpal_cache.demo.report import beats, verdict_line, write_report
from dpal_cache.demo.run import DEMO_ENTRIES, STAGES, DemoConfig, check_demo_folder, run_demo
from dpal_cache.demo.teacher import DemoTeacherConfig, train_demo_teacher

__all__ = ["DEMO_ENTRIES", "STAGES", "DemoConfig", "DemoTeacherConfig", "beats", "check_demo_folder", "run_demo",
           "train_demo_teacher", "verdict_line", "write_report"]
