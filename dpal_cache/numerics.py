"""Float results that must not depend on the process they are computed in.

Numpy's BLAS (OpenBLAS in the wheels) splits dot products, matrix-vector products and LAPACK
work over its threads, and the summation order follows the thread count: the same calibration
gave other low bits in the main process (two BLAS threads on two cores) than in a dask worker
(one thread: distributed's nannies set ``OPENBLAS_NUM_THREADS=1``). Values that are stored (the
calibration, the precision measurements, mask scores) are therefore computed on one BLAS thread,
whatever the process.

    with one_blas_thread():
        cov = centred.T @ centred
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator


@functools.cache
def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # inspects the loaded libraries once; limits are set per use


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with every loaded BLAS/LAPACK library on one thread, then restore the counts."""
    with _controller().limit(limits=1, user_api="blas"):
        yield
