"""The calibration fit: person-positive component, scores in [0, 1], and the same bits for any BLAS thread count."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from dpal_cache.store.calibration import centre_mask, fit_calibration, mask_score
from dpal_cache.store.quant import relative_l2

GRID = (8, 4)


def person_tokens(n: int = 64, dim: int = 256, seed: int = 0) -> np.ndarray:
    """(n, 1 + h*w, dim) tokens whose centre patches lie along one direction, the border along its opposite."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    tokens = rng.normal(size=(n, 1 + GRID[0] * GRID[1], dim)) + rng.normal(size=dim) * 3
    tokens[:, 1:] += np.where(centre_mask(GRID), 4.0, -4.0)[None, :, None] * direction
    return tokens.astype(np.float32)


def test_component_makes_the_centre_positive_and_scores_stay_in_unit_range():
    tokens = person_tokens()
    calib = fit_calibration(tokens, GRID, images=len(tokens))
    score = mask_score(tokens[:, 1:], calib)
    assert score.shape == (len(tokens), GRID[0] * GRID[1]) and score.min() >= 0 and score.max() <= 1
    centre = centre_mask(GRID)
    assert score[:, centre].mean() > 0.8 and score[:, ~centre].mean() < 0.2


def test_stored_results_do_not_depend_on_the_blas_thread_count():
    # dask workers run numpy's BLAS on one thread, a main process on every core: eigh and BLAS dots sum in
    # another order per thread count (seen on this size), and these values are written into the store
    tokens = person_tokens()
    results = []
    for threads in (1, 2):
        with threadpool_limits(threads):
            calib = fit_calibration(tokens, GRID, images=len(tokens))
            score = mask_score(tokens[:, 1:], calib)
            results.append((calib.info, calib.component.tobytes(), calib.mean.tobytes(), score.tobytes(),
                            relative_l2(tokens, tokens.astype(np.float16))))
    assert results[0] == results[1]
