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

from keras_topomap import checks
from keras_topomap import grid as grid_lib
from keras_topomap._arrays import to_numpy

__all__ = [
    "ActivityStatistics",
    "CorrelationCurve",
    "MoransITest",
    "TopographyResult",
    "blur_error_auc",
    "connected_regions",
    "correlation_by_distance",
    "dead_unit_share",
    "is_constant_map",
    "localization",
    "morans_i",
    "morans_i_test",
    "topography_score",
    "topography_test",
    "unit_filters",
]


class TopographyResult(NamedTuple):
    """Result of :func:`topography_test`.

    Attributes:
        score: the kernel's topography score ``S``.
        null_mean: mean score over random permutations of its filters.
        null_std: their standard deviation.
        z: ``(score - null_mean) / null_std`` (``+-inf`` if the null has no spread, 0 if
            the score equals the null too; spreads and differences within float rounding
            count as none). Never NaN.
        n_permutations: how many permutations were drawn.
    """

    score: float
    null_mean: float
    null_std: float
    z: float
    n_permutations: int

    def __str__(self):
        return (
            f"topography S = {self.score:.3f} (permuted layouts {self.null_mean:+.3f} "
            f"± {self.null_std:.3f}, z = {self.z:.1f}, {self.n_permutations} permutations): "
            f"{_reading(self.z)}"
        )


def _z_score(value, mean, std):
    """``(value - mean) / std``; +-inf (0 when equal) for a null without spread.

    Spreads and differences within float rounding of the values (``1e-12`` of their size) count
    as none: identical filters give every order the same score up to rounding, and dividing one
    rounding error by another gave any z at all (-0.9, 0.9, -inf) instead of 0.
    """
    tolerance = 1e-12 * max(1.0, abs(value), abs(mean))
    if std > tolerance:
        return (value - mean) / std
    if abs(value - mean) <= tolerance:
        return 0.0
    return float(np.copysign(np.inf, value - mean))


def _reading(z, threshold=3.0):
    """One line saying what a permutation z-score means for a map."""
    if not np.isfinite(z) and z > 0:
        return "ordered (the permuted layouts have no spread)"
    if z >= threshold:
        return f"ordered: neighbours are more alike than in permuted layouts (z >= {threshold:g})"
    return f"not topographic: no more order than permuted layouts (z < {threshold:g})"


def unit_filters(kernel, epsilon=1e-7):
    """``(D, F)`` float64 array of unit-norm filter vectors (last axis of the kernel = filters)."""
    k = np.asarray(to_numpy(kernel), dtype=np.float64)
    if k.ndim < 1:
        raise ValueError(f"Expected a kernel with a filter axis. Received: shape={k.shape}")
    k = k.reshape(-1, k.shape[-1])
    if not np.all(np.isfinite(k)):
        raise ValueError(f"Kernel of shape {k.shape} holds NaN or infinite values.")
    return k / np.sqrt((k * k).sum(axis=0) + epsilon)


def _grid_score(u, grid, neighborhood, wrap):
    """``(1/F) sum_c sum_j alpha_cj <u_c, u_j>`` for unit filters ``u`` ``(D, F)``.

    Works on the ``(D, H, W)`` view with one shifted-slice contraction per half-offset, so memory
    stays at the kernel's size (no per-pair gathers) even for the paper's 2048-filter layers.
    """
    h, w = grid
    offsets, beta = grid_lib.pair_weights(grid, neighborhood, wrap)
    u3 = u.reshape(u.shape[0], h, w)
    total = 0.0
    for k in range(len(offsets) // 2):  # offsets k and K-1-k name the same unordered pairs
        dy, dx = (int(v) for v in offsets[k])
        if wrap:
            dots = np.einsum("dhw,dhw->hw", u3, np.roll(u3, (-dy, -dx), axis=(1, 2)))
            total += float((beta[k] * dots).sum())
            continue
        rows = slice(max(0, -dy), h - max(0, dy))
        cols = slice(max(0, -dx), w - max(0, dx))
        moved_rows = slice(rows.start + dy, rows.stop + dy)
        moved_cols = slice(cols.start + dx, cols.stop + dx)
        dots = np.einsum("dhw,dhw->hw", u3[:, rows, cols], u3[:, moved_rows, moved_cols])
        total += float((beta[k][rows, cols] * dots).sum())
    return total / (h * w)


def _resolve(kernel_shape, grid, neighborhood):
    n_filters = int(kernel_shape[-1])
    grid = grid_lib.resolve_grid(grid, n_filters, what=f"grid for kernel of shape {kernel_shape}")
    grid_lib.validate_neighborhood(neighborhood, grid)
    return grid


def topography_score(kernel, grid=None, neighborhood=3, wrap=False):
    """The kernel topography score ``S`` (see module docstring).

    Args:
        kernel: array or tensor ``(..., F)``.
        grid: ``(H, W)``; None infers it like :class:`~keras_topomap.TopographicRegularizer`.
        neighborhood: odd side of the neighbourhood block, as for the regularizer.
        wrap: whether the grid is a torus, as for the regularizer.

    Returns:
        float in ``[-1, 1]``.

    Raises:
        ValueError: for a kernel with NaN/inf or a grid that does not hold its filters.
    """
    u = unit_filters(kernel)
    grid = _resolve(u.shape, grid, neighborhood)
    return _grid_score(u, grid, neighborhood, bool(wrap))


def topography_test(kernel, grid=None, neighborhood=3, wrap=False, n_permutations=100, seed=None):
    """Topography score with a permutation z-score.

    The filters are randomly re-ordered ``n_permutations`` times; each order's score forms the
    null distribution of "no topography". The null mean is not 0 when a layer's filters share a
    common component (all pairs similar, wherever they sit): read the score against it.

    Args:
        kernel: array or tensor ``(..., F)``.
        grid: ``(H, W)``; None infers it like :class:`~keras_topomap.TopographicRegularizer`.
        neighborhood: odd side of the neighbourhood block, as for the regularizer.
        wrap: whether the grid is a torus, as for the regularizer.
        n_permutations: number of random orders (at least 2).
        seed: seed of the permutations (same seed, same null distribution).

    Returns:
        :class:`TopographyResult`.

    Raises:
        ValueError: for ``n_permutations < 2``, a kernel with NaN/inf, or a grid that does not
            hold the kernel's filters.

    Example:

    >>> kernel = np.random.default_rng(0).normal(size=(7, 16, 64))
    >>> result = topography_test(kernel, grid=(8, 8), n_permutations=20, seed=0)
    >>> abs(result.z) < 4  # random filters: no topography
    True
    """
    n_permutations = checks.integer(n_permutations, "n_permutations", minimum=2)
    u = unit_filters(kernel)
    grid = _resolve(u.shape, grid, neighborhood)
    wrap = bool(wrap)
    score = _grid_score(u, grid, neighborhood, wrap)
    rng = np.random.default_rng(seed)
    null = np.empty(int(n_permutations))
    for i in range(int(n_permutations)):  # offline analysis; each pass is a few einsums
        null[i] = _grid_score(u[:, rng.permutation(u.shape[1])], grid, neighborhood, wrap)
    mean, std = float(null.mean()), float(null.std(ddof=1))
    z = _z_score(score, mean, std)
    return TopographyResult(score, mean, std, float(z), int(n_permutations))


# --- Smoothness and localisation of grid maps (GradNAP maps, activation maps) ------------------


def _check_map(grid_map, what="map"):
    m = np.asarray(grid_map, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"Expected one (H, W) {what}. Received: shape={m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"The {what} of shape {m.shape} holds NaN or infinite values.")
    return m


def _is_constant(m):
    """True when all cells are equal up to float rounding.

    Tested on the spread of the values themselves: the variance after subtracting a rounded mean
    is not exactly 0 for a constant map like 0.1 everywhere, and would turn rounding noise into
    a pattern.
    """
    return float(np.ptp(m)) <= 1e-12 * float(np.abs(m).max())


def is_constant_map(grid_map):
    """Whether an ``(H, W)`` map is constant up to float rounding (its Moran's I is undefined).

    Raises:
        ValueError: for anything but one finite ``(H, W)`` map.
    """
    return _is_constant(_check_map(grid_map))


def morans_i(grid_map, neighborhood=3, wrap=False):
    """Moran's I spatial autocorrelation of a grid map.

    Uses the grid's neighbour weights ``alpha`` (reciprocal distance within the ``neighborhood``
    block, each cell's weights summing to 1; :func:`keras_topomap.grid.neighbor_weights`)::

        I = (N / S0) * sum_c sum_j alpha_cj (x_c - mean)(x_j - mean) / sum_c (x_c - mean)^2

    with ``S0 = sum of all weights = N``. Near 1 for smooth maps (a linear ramp on a 64 x 64 grid:
    0.998), near ``-1/(N-1)`` for spatially random ones, negative for alternating patterns. A
    checkerboard is not -1 here, as it would be with edge neighbours only: its diagonal
    neighbours have the same sign, so on a torus (``wrap=True``) or far from the border
    ``I = (2 * sqrt(2) - 4) / (2 * sqrt(2) + 4) = 2 * sqrt(2) - 3 ~ -0.172``; border cells
    (fewer diagonals) make it somewhat more negative on a finite grid (-0.232 on 12 x 12).

    Args:
        grid_map: ``(H, W)`` map.
        neighborhood: odd side of the neighbourhood block (3: the 8 surrounding cells).
        wrap: treat the grid as a torus.

    Returns:
        float in ``[-1, 1]``.

    Raises:
        ValueError: for a constant map, where I is undefined, or a map that is not 2-D or holds
            NaN/inf.

    Example:

    >>> rows, cols = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    >>> round(morans_i((rows + cols).astype(float)), 3)
    0.957
    """
    m = _check_map(grid_map)
    first, second, weight = grid_lib.neighbor_pairs(m.shape, neighborhood, wrap)
    if _is_constant(m):
        raise ValueError(f"Moran's I is undefined for a constant map (shape {m.shape}).")
    # each unordered pair appears once in the pair list; w is symmetric, so both orders count
    x = m.ravel() - m.mean()
    denominator = float((x * x).sum())
    s0 = 2.0 * float(weight.sum())
    numerator = 2.0 * float((weight * x[first] * x[second]).sum())
    return (x.size / s0) * numerator / denominator


class MoransITest(NamedTuple):
    """Result of :func:`morans_i_test`.

    Attributes:
        morans_i: Moran's I of the map as laid out.
        null_mean: mean Moran's I of the map's values in randomly permuted layouts (close to
            ``-1 / (N - 1)``).
        null_std: their standard deviation.
        z: ``(morans_i - null_mean) / null_std``.
        p_value: one-sided permutation p-value of "smoother than chance":
            ``(1 + #{permuted I >= I}) / (1 + n_permutations)``.
        n_permutations: how many permuted layouts were drawn.
    """

    morans_i: float
    null_mean: float
    null_std: float
    z: float
    p_value: float
    n_permutations: int

    def is_topographic(self, threshold=3.0):
        """Whether the map is smoother than chance: ``z >= threshold``."""
        return bool(self.z >= float(threshold))

    def __str__(self):
        return (
            f"Moran's I = {self.morans_i:.3f} (permuted layouts {self.null_mean:+.3f} "
            f"± {self.null_std:.3f}, z = {self.z:.1f}, p = {self.p_value:.3g}, "
            f"{self.n_permutations} permutations): {_reading(self.z)}"
        )


# permuted layouts are scored in chunks of about this many pair products (8 bytes each)
_CHUNK_ELEMENTS = 1 << 22


def morans_i_test(grid_map, n_permutations=999, seed=0, neighborhood=3, wrap=False):
    """Moran's I of a map against randomly permuted layouts of its own values.

    The values of the map are shuffled over the grid ``n_permutations`` times; Moran's I of
    those layouts is the null distribution of "no spatial structure" for exactly these values
    (the same histogram, outliers and all). The mean and the denominator of I do not change
    under a permutation, so all layouts are scored at once as one batched product over the
    grid's neighbour pairs.

    A map drawn smoothed or interpolated looks smooth whatever its values; this test is meant
    for the raw map, before any smoothing.

    Args:
        grid_map: ``(H, W)`` map (raw values).
        n_permutations: number of permuted layouts (at least 2).
        seed: seed of the permutations (same seed, same null distribution).
        neighborhood: odd side of the neighbourhood block, as for :func:`morans_i`.
        wrap: treat the grid as a torus.

    Returns:
        :class:`MoransITest`.

    Raises:
        ValueError: for ``n_permutations < 2``, a constant map (I undefined), or a map that is
            not 2-D or holds NaN/inf.

    Example:

    >>> rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    >>> result = morans_i_test((rows + cols).astype(float), n_permutations=199)
    >>> result.z > 3, result.p_value
    (True, 0.005)
    """
    if isinstance(n_permutations, bool) or int(n_permutations) < 2:
        raise ValueError(f"n_permutations must be >= 2. Received: n_permutations={n_permutations}")
    n_permutations = int(n_permutations)
    m = _check_map(grid_map)
    first, second, weight = grid_lib.neighbor_pairs(m.shape, neighborhood, wrap)
    if _is_constant(m):
        raise ValueError(f"Moran's I is undefined for a constant map (shape {m.shape}).")
    x = m.ravel() - m.mean()
    n = x.size
    scale = n / (2.0 * float(weight.sum())) * 2.0 / float((x * x).sum())
    observed = scale * float((weight * x[first] * x[second]).sum())
    rng = np.random.default_rng(seed)
    # one independent shuffle per row; every permuted layout is a row of the same batch
    layouts = rng.permuted(np.broadcast_to(x, (n_permutations, n)), axis=1)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, weight.size))
    null = np.concatenate([
        scale * ((layouts[i:i + chunk, first] * layouts[i:i + chunk, second]) @ weight)
        for i in range(0, n_permutations, chunk)  # bounded memory for the large grids
    ])
    mean, std = float(null.mean()), float(null.std(ddof=1))
    z = _z_score(observed, mean, std)
    p_value = (1.0 + float((null >= observed - 1e-12).sum())) / (1.0 + n_permutations)
    return MoransITest(float(observed), mean, std, float(z), p_value, n_permutations)


def blur_error_auc(grid_map, sigmas=None):
    """Smoothness as the area under the blur-error curve (after Krug et al., 2023).

    The map is standardised (zero mean, unit standard deviation), blurred with Gaussians of
    increasing width (in grid cells, edges extended), and the mean absolute change is integrated
    over the widths (trapezoid rule) and divided by the width range. A smooth map changes little
    under blurring (small value); a noisy or alternating one changes a lot. A constant map scores 0.
    The standardisation makes the score independent of the map's scale and offset.

    Args:
        grid_map: ``(H, W)`` map.
        sigmas: increasing blur widths in grid cells (default ``0.5, 1.0, ..., 3.0``).

    Returns:
        float >= 0 (lower = smoother).

    Raises:
        ValueError: for bad ``sigmas`` or a map that is not 2-D or holds NaN/inf.

    Example:

    >>> rows, cols = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    >>> ramp, checker = (rows + cols).astype(float), (-1.0) ** (rows + cols)
    >>> blur_error_auc(ramp) < blur_error_auc(checker)
    True
    """
    from scipy import ndimage

    m = _check_map(grid_map)
    sigmas = np.arange(0.5, 3.01, 0.5) if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    if sigmas.ndim != 1 or sigmas.size < 2 or np.any(np.diff(sigmas) <= 0) or sigmas[0] < 0:
        raise ValueError(f"sigmas must be >= 2 increasing non-negative widths. Received: {sigmas}")
    if _is_constant(m):
        return 0.0
    z = (m - m.mean()) / m.std()
    errors = np.array(
        [np.abs(ndimage.gaussian_filter(z, s, mode="nearest") - z).mean() for s in sigmas]
    )  # a handful of widths, each one vectorised filter
    area = float(((errors[1:] + errors[:-1]) / 2 * np.diff(sigmas)).sum())
    return area / float(sigmas[-1] - sigmas[0])


def localization(grid_map, size=3):
    """Share of a map's positive mass inside its most responsive ``size x size`` region.

    The region is the block of highest mean value among the blocks that lie wholly on the grid
    (:func:`keras_topomap.grid.most_responsive_region` with ``inside=True``), so that every map
    is measured with the same number of cells: a block cut by the border would count 4 cells
    instead of 9 in a corner, and a map's score would depend on where its peak lies.

    Args:
        grid_map: ``(H, W)`` map (e.g. one phoneme's GradNAP on a layer's grid).
        size: odd side of the region, at least 3 and at most ``min(H, W)``.

    Returns:
        float in ``[0, 1]``: 1.0 when all positive values sit in one block,
        ``size**2 / (H * W)`` for a uniform positive map, and 0.0 for a map without positive
        values (nothing to localise).

    Raises:
        ValueError: for a map that is not 2-D or holds NaN/inf, or a bad ``size``.

    Example:

    >>> m = np.zeros((8, 8)); m[0, 0] = 5.0
    >>> localization(m)
    1.0
    >>> localization(np.ones((8, 8)))  # 9 / 64
    0.140625
    """
    m = _check_map(grid_map)
    grid_lib.validate_neighborhood(size, m.shape, what="size")
    positive = np.clip(m, 0.0, None)
    total = float(positive.sum())
    if total <= 0.0:
        return 0.0
    region = grid_lib.most_responsive_region(m, size, inside=True)
    return float(positive.ravel()[region.filters].sum() / total)


def connected_regions(grid_map, threshold=None):
    """Connected components of the cells above ``threshold`` (8-connectivity).

    Args:
        grid_map: ``(H, W)`` map.
        threshold: default: mean + one standard deviation of the map.

    Returns:
        ``(labels, sizes)``: an int ``(H, W)`` array (0 = below threshold, 1..n = component) and
        the size of each component, largest first in the labelling order of ``scipy.ndimage``.
    """
    from scipy import ndimage

    m = _check_map(grid_map)
    threshold = m.mean() + m.std() if threshold is None else float(threshold)
    labels, n = ndimage.label(m > threshold, structure=np.ones((3, 3), dtype=int))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return labels, sizes


# --- Activity topography: how channel correlations fall with grid distance ----------------------


class ActivityStatistics:
    """Running sums of one layer's activity over samples: correlations and which units fire.

    Feed it batches of activity ``(..., F)`` (every position a sample; a mask leaves padded
    frames out). Memory is ``F x F`` whatever the amount of data, so a whole test set streams
    through it.

    Example:

    >>> stats = ActivityStatistics(64)
    >>> stats.update(np.random.default_rng(0).normal(size=(8, 50, 64)))
    >>> stats.correlations().shape, stats.count
    ((64, 64), 400)
    """

    def __init__(self, n_channels):
        n_channels = int(n_channels)
        if n_channels < 2:
            raise ValueError(f"ActivityStatistics needs >= 2 channels. Received: {n_channels}")
        self.n_channels = n_channels
        self.count = 0
        self.sum = np.zeros(n_channels)
        self.cross = np.zeros((n_channels, n_channels))
        self.peak = np.full(n_channels, -np.inf)

    def update(self, activity, mask=None):
        """Adds the samples of ``activity`` ``(..., F)`` where ``mask`` (``(...)``) is true."""
        x = np.asarray(to_numpy(activity), dtype=np.float64)
        if x.ndim < 1 or x.shape[-1] != self.n_channels:
            raise ValueError(
                f"ActivityStatistics holds {self.n_channels} channels. Received: activity of "
                f"shape {x.shape}"
            )
        if mask is not None:
            mask = np.asarray(to_numpy(mask), dtype=bool)
            if mask.shape != x.shape[:-1]:
                raise ValueError(
                    f"The mask must have the activity's shape without the channel axis, "
                    f"{x.shape[:-1]}. Received: mask of shape {mask.shape}"
                )
            x = x[mask]
        x = x.reshape(-1, self.n_channels)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"Activity of shape {x.shape} holds NaN or infinite values.")
        if len(x) == 0:
            return self
        self.count += len(x)
        self.sum += x.sum(axis=0)
        self.cross += x.T @ x
        self.peak = np.maximum(self.peak, x.max(axis=0))
        return self

    def correlations(self):
        """Pearson correlation matrix ``(F, F)``; NaN for pairs with a constant channel."""
        if self.count < 2:
            raise ValueError(f"Correlations need >= 2 samples. Received: {self.count}")
        mean = self.sum / self.count
        cov = self.cross / self.count - np.outer(mean, mean)
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        live = sd > 1e-9 * max(1.0, float(np.abs(mean).max()))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.outer(sd, sd)
        r[~live] = np.nan
        r[:, ~live] = np.nan
        return np.clip(r, -1.0, 1.0)

    def dead_units(self, threshold=0.0):
        """Boolean ``(F,)``: channels that never exceed ``threshold`` on any sample seen."""
        if self.count == 0:
            raise ValueError("No samples seen yet: call update() first.")
        return self.peak <= threshold


def dead_unit_share(activity, mask=None, threshold=0.0):
    """Share of channels (last axis) that never exceed ``threshold`` (ReLU units that never fire).

    ``activity`` may be an array ``(..., F)`` or an :class:`ActivityStatistics`.
    """
    stats = activity if isinstance(activity, ActivityStatistics) else (
        ActivityStatistics(np.shape(to_numpy(activity))[-1]).update(activity, mask)
    )
    return float(stats.dead_units(threshold).mean())


class CorrelationCurve(NamedTuple):
    """Result of :func:`correlation_by_distance`.

    Attributes:
        distance: bin centres (grid distance 1, 2, ...): pairs at distance ``d`` fall in bin
            ``round(d)``, so bin 1 holds edge and diagonal neighbours. Bins without a pair of
            varying channels are left out, so no entry is NaN.
        mean, sem: mean correlation of the pairs in each bin and its standard error.
        count: pairs per bin.
        null_mean, null_std: mean and spread of each bin's mean over random layouts (the
            channels permuted on the grid).
        falloff: ``mean r of bin 1 - mean r of all pairs``: how much more neighbours correlate
            than pairs at random; ~0 for a layout that ignores the grid, whatever the level.
        falloff_null_mean, falloff_null_std, falloff_z: the same over the random layouts, and
            the z-score of ``falloff`` against them.
        falls: whether the curve falls over its first three bins (``mean[0] > mean[1] > mean[2]``).
        n_live: channels with non-constant activity (pairs with a constant one are left out).
    """

    distance: np.ndarray
    mean: np.ndarray
    sem: np.ndarray
    count: np.ndarray
    null_mean: np.ndarray
    null_std: np.ndarray
    falloff: float
    falloff_null_mean: float
    falloff_null_std: float
    falloff_z: float
    falls: bool
    n_live: int


def _binned_means(r, bins, n_bins):
    count = np.bincount(bins, minlength=n_bins)
    total = np.bincount(bins, weights=r, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count, count


def correlation_by_distance(correlations, grid=None, wrap=False, n_permutations=20, seed=0):
    """Mean channel correlation per grid-distance bin, against permuted layouts.

    Args:
        correlations: ``(F, F)`` correlation matrix (e.g. :meth:`ActivityStatistics.correlations`;
            NaN entries, from constant channels, are left out), or activity ``(..., F)`` from
            which it is computed (every position a sample).
        grid: ``(H, W)``; None infers it like the regularizers.
        wrap: measure distances on the torus.
        n_permutations: random layouts for the baseline (>= 2).
        seed: seed of the layouts.

    Returns:
        :class:`CorrelationCurve`.

    Raises:
        ValueError: for fewer than 3 live channels, none of them neighbours on the grid,
            ``n_permutations < 2`` or a grid that does not hold the channels.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> curve = correlation_by_distance(rng.normal(size=(500, 64)), grid=(8, 8), seed=0)
    >>> abs(curve.falloff_z) < 4  # independent channels: no structure
    True
    """
    r = np.asarray(to_numpy(correlations), dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        stats = ActivityStatistics(r.shape[-1]).update(r)
        r = stats.correlations()
    n = r.shape[0]
    grid = grid_lib.resolve_grid(grid, n, what=f"grid for {n} channels")
    if int(n_permutations) < 2:
        raise ValueError(f"n_permutations must be >= 2. Received: n_permutations={n_permutations}")
    live = np.nonzero(np.isfinite(np.diag(r)))[0]
    if len(live) < 3:
        raise ValueError(
            f"correlation_by_distance needs >= 3 channels that vary. Received: {len(live)} of {n}"
        )
    first, second = np.triu_indices(len(live), k=1)
    first, second = live[first], live[second]
    bins = np.rint(grid_lib.distances(grid, wrap)[first, second]).astype(int)
    n_bins = int(bins.max()) + 1

    def curve(order):  # order[i]: which channel sits at grid cell i
        values = r[order[first], order[second]]
        means, count = _binned_means(values, bins, n_bins)
        return means, count, float(means[1] - values.mean())

    identity = np.arange(n)
    means, count, falloff = curve(identity)
    if count[1] == 0:
        raise ValueError(
            f"correlation_by_distance: no two of the {len(live)} channels that vary are grid "
            "neighbours (distance 1, diagonals included), so the falloff is undefined. "
            f"Received: varying channels {live.tolist()[:20]} on a {grid[0]}x{grid[1]} grid"
        )
    values = r[first, second]
    sums_sq = np.bincount(bins, weights=values**2, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum(sums_sq / count - means**2, 0.0) * count / np.maximum(count - 1, 1)
        sem = np.sqrt(var / count)
    rng = np.random.default_rng(seed)
    null_means, null_falloff = [], []
    for _ in range(int(n_permutations)):  # offline analysis; each layout is two bincounts
        order = identity.copy()
        order[live] = live[rng.permutation(len(live))]
        m, _, f = curve(order)
        null_means.append(m)
        null_falloff.append(f)
    null_means = np.array(null_means)
    f_mean, f_std = float(np.mean(null_falloff)), float(np.std(null_falloff, ddof=1))
    z = _z_score(falloff, f_mean, f_std)
    # Bin 0 is empty (distinct cells are >= 1 apart); so may be others where channels that do
    # not vary leave no pair: only bins with pairs are kept (no NaN means).
    keep = np.nonzero(count > 0)[0]
    head = means[1:4]
    return CorrelationCurve(
        distance=np.arange(n_bins)[keep].astype(float),
        mean=means[keep],
        sem=sem[keep],
        count=count[keep],
        null_mean=null_means.mean(axis=0)[keep],
        null_std=null_means.std(axis=0, ddof=1)[keep],
        falloff=falloff,
        falloff_null_mean=f_mean,
        falloff_null_std=f_std,
        falloff_z=float(z),
        falls=bool(len(head) == 3 and head[0] > head[1] > head[2]),
        n_live=int(len(live)),
    )
