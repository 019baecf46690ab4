"""The benchmark suite of ``dpal-cache bench``: the disk-for-teacher-compute trade, measured side by side.

One module per benchmark (training, extraction, store, loader, scaling), each a function of a
shared :class:`~dpal_cache.bench.common.BenchContext` returning a plain dict; ``suite`` runs
the chosen ones and ``targets`` judges the result. Ratios are measured within one run.
"""
