"""Run the chosen benchmarks in one process, sharing data, teacher and store, and judge the targets.

Extraction runs first when chosen: its timed ``extract`` makes the store and its bare-teacher
pass the float32 outputs that the store, training and loader benchmarks then reuse.

    result = run_suite(BenchSettings(), Path("/tmp/bench_run"), sections=("training", "store"))
    json.dumps(result)
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dpal_cache.bench.common import SECTIONS, BenchContext, BenchSettings, as_dict, machine
from dpal_cache.bench.targets import judge

log = logging.getLogger(__name__)

ORDER = ("extraction", "store", "training", "loader", "render", "scaling")


def _runner(name: str) -> Callable[[BenchContext], dict[str, Any]]:
    if name == "extraction":
        from dpal_cache.bench.extraction import run_extraction_bench as fn
    elif name == "store":
        from dpal_cache.bench.store import run_store_bench as fn
    elif name == "training":
        from dpal_cache.bench.training import run_training_bench as fn
    elif name == "loader":
        from dpal_cache.bench.loader import run_loader_bench as fn
    elif name == "render":
        from dpal_cache.bench.render import run_render_bench as fn
    elif name == "scaling":
        from dpal_cache.bench.scaling import run_scaling_bench as fn
    else:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(SECTIONS)}")
    return fn


def run_suite(settings: BenchSettings, workdir: Path, sections: Iterable[str] = SECTIONS,
              on_section: Callable[[str], None] | None = None,
              on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every benchmark in ``sections`` (in the order extraction, store, training, loader, render, scaling).

    A benchmark that raises is recorded under ``errors`` (with its traceback) and the others still
    run; ``on_result`` gets the result so far after each benchmark (long runs keep what they measured).

    Returns:
        {"machine", "settings", "command", "sections": {name: result}, "seconds": {name: s},
        "errors": {name: traceback}, "targets": [...]}
    """
    chosen = list(dict.fromkeys(sections))
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    ctx = BenchContext(settings, workdir)
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    about = {"machine": machine(), "settings": settings, "command": " ".join(sys.argv)}

    def result() -> dict[str, Any]:
        return as_dict({**about, "sections": results, "seconds": seconds, "errors": errors,
                        "targets": judge(results)})

    for name in [s for s in ORDER if s in chosen]:
        if on_section is not None:
            on_section(name)
        start = time.perf_counter()
        try:
            results[name] = _runner(name)(ctx)
        except Exception:
            errors[name] = traceback.format_exc()
            log.error("benchmark %s failed:\n%s", name, errors[name])
        seconds[name] = time.perf_counter() - start
        log.info("benchmark %s done in %.1fs", name, seconds[name])
        if on_result is not None:
            on_result(result())
    return result()
