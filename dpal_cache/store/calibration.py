"""The calibration pass: one principal component for the shape mask, and int8 token scales.

The release fits PCA on every batch and min-max scales it, so its mask depends on the batch
and cannot be cached. Here one component is fitted once per store on the patch tokens of the
first ``calibration_images`` usable images, and every view's patch tokens are projected on
it. The component's sign is chosen so that the person is positive: person crops put the
person in the middle, so the centre of the patch grid must project higher than its border.
The projection is mapped to [0, 1] with the calibration's 1st and 99th percentiles.

    calib = fit_calibration(tokens, grid=(16, 8))   # tokens (N, 1 + L, D) float32
    score = mask_score(tokens[:, 1:], calib)        # (N, L) in [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dpal_cache.numerics import one_blas_thread
from dpal_cache.store.meta import CalibrationInfo
from dpal_cache.store.quant import fit_int8_scales


@dataclass(frozen=True)
class Calibration:
    component: np.ndarray  # (D,) float32, unit norm, person-positive
    mean: np.ndarray  # (D,) float32, mean patch token
    low: float  # 1st percentile of the calibration projections
    high: float  # 99th percentile
    explained: float  # fraction of patch-token variance the component explains
    token_scales: np.ndarray  # (2, D) float32 int8 scales: row 0 class tokens, row 1 patch tokens
    token_stats: np.ndarray  # (4, D) float32: class mean, class std, patch mean, patch std
    images: int
    measured: dict | None = None  # codec error on the calibration outputs (codecs.measure_precision)

    ARRAYS: ClassVar[tuple[str, ...]] = ("pca_component", "pca_mean", "token_scales", "token_stats")  # calibration/*

    @property
    def info(self) -> CalibrationInfo:
        """The scalar results, for the store's metadata (the arrays go to ``calibration/*``)."""
        return CalibrationInfo(low=self.low, high=self.high, explained_variance=self.explained, images=self.images)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of ``calibration/*`` by name."""
        return {"pca_component": self.component, "pca_mean": self.mean, "token_scales": self.token_scales,
                "token_stats": self.token_stats}

    @classmethod
    def from_store(cls, arrays: dict[str, np.ndarray], info: CalibrationInfo, measured: dict | None = None
                   ) -> Calibration:
        """Rebuild from the stored ``calibration/*`` arrays and the metadata's scalars."""
        return cls(component=arrays["pca_component"], mean=arrays["pca_mean"], low=info.low, high=info.high,
                   explained=info.explained_variance, token_scales=arrays["token_scales"],
                   token_stats=arrays["token_stats"], images=info.images, measured=measured)


def centre_mask(grid: tuple[int, int]) -> np.ndarray:
    """Boolean (h*w,) of the patches in the middle of a person crop (rows 20-85%, columns 25-75%)."""
    h, w = grid
    rows = (np.arange(h) + 0.5) / h
    cols = (np.arange(w) + 0.5) / w
    m = ((rows >= 0.2) & (rows <= 0.85))[:, None] & ((cols >= 0.25) & (cols <= 0.75))[None, :]
    return m.reshape(-1)


def fit_calibration(tokens: np.ndarray, grid: tuple[int, int], images: int) -> Calibration:
    """Fit on ``tokens`` (N, 1 + L, D): class token first, then the L = h*w patch tokens.

    The linear algebra runs on one BLAS thread: the fit is stored, and must have the same bits in the
    main process and in a dask worker (dpal_cache/numerics.py).
    """
    with one_blas_thread():
        return _fit(np.asarray(tokens, dtype=np.float32), grid, images)


def _fit(tokens: np.ndarray, grid: tuple[int, int], images: int) -> Calibration:
    patches = tokens[:, 1:].astype(np.float64)  # (N, L, D)
    n, length, dim = patches.shape
    flat = patches.reshape(-1, dim)
    mean = flat.mean(axis=0)
    centred = flat - mean
    cov = centred.T @ centred / max(1, len(flat) - 1)  # (D, D)
    evals, evecs = np.linalg.eigh(cov)
    component = evecs[:, -1]
    explained = float(evals[-1] / max(evals.sum(), 1e-30))
    proj = (centred @ component).reshape(n, length)
    centre = centre_mask(grid)
    # grids too small to have both a centre and a border keep eigh's sign
    if centre.any() and not centre.all() and proj[:, centre].mean() < proj[:, ~centre].mean():
        component, proj = -component, -proj
    low, high = np.percentile(proj, [1, 99])
    return Calibration(
        component=component.astype(np.float32),
        mean=mean.astype(np.float32),
        low=float(low),
        high=float(max(high, low + 1e-6)),
        explained=explained,
        token_scales=np.stack([fit_int8_scales(tokens[:, 0]), fit_int8_scales(tokens[:, 1:])]),
        token_stats=np.stack([tokens[:, 0].mean(0), tokens[:, 0].std(0), mean, flat.std(0)]).astype(np.float32),
        images=images,
    )


def mask_score(patches: np.ndarray, calib: Calibration) -> np.ndarray:
    """(..., L, D) patch tokens -> (..., L) float32 person score in [0, 1] (one BLAS thread, as the fit)."""
    with one_blas_thread():
        proj = (np.asarray(patches, dtype=np.float32) - calib.mean) @ calib.component
    return np.clip((proj - calib.low) / (calib.high - calib.low), 0.0, 1.0).astype(np.float32)
