"""Topography metrics: how much a layer's filter order reflects filter similarity.

The kernel topography score of a layer on an ``H x W`` grid is::

    S = (1 / F) * sum_c sum_{j in N(c)} alpha_cj * cos(w_c, w_j)

with the neighbourhood weights of :func:`keras_topomap.grid.neighbor_weights`. Random filters in
any order score ``S ~ 0``; a map where every filter equals its neighbours scores 1 (each
neighbourhood's weights sum to 1).
:func:`topography_test` compares ``S`` with the scores of random permutations of the same
filters: the permutation z-score says how far the learned order is from an arbitrary one.

Example:

>>> score = topography_score(layer.kernel, grid=(16, 16))
>>> result = topography_test(layer.kernel, grid=(16, 16), n_permutations=200, seed=0)
>>> result.score, result.z
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from keras_topomap import grid as grid_lib

__all__ = ["TopographyResult", "topography_score", "topography_test", "unit_filters"]


class TopographyResult(NamedTuple):
    """Result of :func:`topography_test`.

    Attributes:
        score: the kernel's topography score ``S``.
        null_mean: mean score over random permutations of its filters.
        null_std: their standard deviation.
        z: ``(score - null_mean) / null_std`` (``inf`` if the null has no spread).
        n_permutations: how many permutations were drawn.
    """

    score: float
    null_mean: float
    null_std: float
    z: float
    n_permutations: int


def unit_filters(kernel, epsilon=1e-7):
    """``(D, F)`` float64 array of unit-norm filter vectors (last axis of the kernel = filters)."""
    k = np.asarray(_to_numpy(kernel), dtype=np.float64)
    if k.ndim < 1:
        raise ValueError(f"Expected a kernel with a filter axis. Received: shape={k.shape}")
    k = k.reshape(-1, k.shape[-1])
    if not np.all(np.isfinite(k)):
        raise ValueError(f"Kernel of shape {k.shape} holds NaN or infinite values.")
    return k / np.sqrt((k * k).sum(axis=0) + epsilon)


def _to_numpy(x):
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        try:
            import keras

            return keras.ops.convert_to_numpy(x)
        except Exception:  # pragma: no cover - plain objects with .numpy()
            return x.numpy()
    return x


def _score_from_units(u, first, second, weight, n_filters):
    # Per pair: <u_a, u_b>, summed over the filter-vector axis.
    return float(np.einsum("dn,dn,n->", u[:, first], u[:, second], weight) / n_filters)


def _pairs_for(kernel_shape, grid, neighborhood, wrap):
    n_filters = int(kernel_shape[-1])
    grid = grid_lib.resolve_grid(grid, n_filters, what=f"grid for kernel of shape {kernel_shape}")
    first, second, weight = grid_lib.neighbor_pairs(grid, neighborhood, wrap)
    return first, second, weight, n_filters


def topography_score(kernel, grid=None, neighborhood=3, wrap=False):
    """The kernel topography score ``S`` (see module docstring).

    Args:
        kernel: array or tensor ``(..., F)``.
        grid: ``(H, W)``; None infers it like :class:`~keras_topomap.TopographicRegularizer`.
        neighborhood, wrap: as for the regularizer.

    Returns:
        float in ``[-1, 1]``.
    """
    u = unit_filters(kernel)
    first, second, weight, n = _pairs_for(u.shape, grid, neighborhood, wrap)
    return _score_from_units(u, first, second, weight, n)


def topography_test(kernel, grid=None, neighborhood=3, wrap=False, n_permutations=100, seed=None):
    """Topography score with a permutation z-score.

    The filters are randomly re-ordered ``n_permutations`` times; each order's score forms the
    null distribution of "no topography".

    Returns:
        :class:`TopographyResult`.
    """
    if int(n_permutations) < 2:
        raise ValueError(f"n_permutations must be >= 2. Received: n_permutations={n_permutations}")
    u = unit_filters(kernel)
    first, second, weight, n = _pairs_for(u.shape, grid, neighborhood, wrap)
    score = _score_from_units(u, first, second, weight, n)
    rng = np.random.default_rng(seed)
    null = np.empty(int(n_permutations))
    for i in range(int(n_permutations)):  # offline analysis; each pass is one vectorised einsum
        perm = rng.permutation(n)
        null[i] = _score_from_units(u, perm[first], perm[second], weight, n)
    mean, std = float(null.mean()), float(null.std(ddof=1))
    z = (score - mean) / std if std > 0 else float("inf") * np.sign(score - mean)
    return TopographyResult(score, mean, std, float(z), int(n_permutations))
