"""Process pools for CPU-bound stages: clean worker start and bounded, ordered result streams.

    with process_pool(4, initializer=init, initargs=(source,)) as pool:
        for result in ordered_map(pool, work, tasks, window=16): ...
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def process_pool(workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Executor:
    """A process pool whose workers start clean.

    forkserver (spawn where missing): no inherited threads, locks or torch state from the parent,
    and a dead worker raises BrokenProcessPool instead of hanging, unlike multiprocessing.Pool.
    Callers' entry scripts need the usual ``if __name__ == "__main__"`` guard.
    """
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer, initargs=initargs)


def ordered_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """Like ``pool.map`` but with at most ``window`` tasks in flight, so memory stays bounded
    however long the stream and however slow the consumer."""
    pending: deque[Any] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
