"""Grid geometry: where each filter sits on a 2D map, and who its neighbours are.

Everything in keras-topomap that places filters on a grid goes through this module: the
regularizer's neighbourhood weights, the topography score, map smoothing, and the search for the
most responsive region. Filters are laid out row-major: filter ``i`` of a layer on an ``H x W``
grid sits at row ``i // W``, column ``i % W``.

All functions here are vectorised numpy; the tensor code that runs inside training
(:mod:`keras_topomap.regularizers`) only takes precomputed constants from here.

Example:

>>> from keras_topomap import grid
>>> grid.infer_grid(2048)
(64, 32)
>>> grid.index_to_position(17, (16, 16))
(1, 1)
>>> grid.smooth(grid.to_grid(np.arange(16.0), (4, 4)), size=3).shape
(4, 4)
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from keras_topomap import _deprecation, checks

__all__ = [
    "MAX_ASPECT",
    "Region",
    "validate_grid",
    "validate_neighborhood",
    "infer_grid",
    "resolve_grid",
    "index_to_position",
    "position_to_index",
    "neighbor_offsets",
    "neighbor_weights",
    "pair_weights",
    "neighbor_pairs",
    "flat_shift_weights",
    "neighbor_matrix",
    "distances",
    "to_grid",
    "from_grid",
    "smooth",
    "region_filters",
    "most_responsive_region",
]

#: Largest row/column ratio :func:`infer_grid` accepts; beyond it a grid is too thin to show
#: topography and the user must give one explicitly.
MAX_ASPECT = 8


class Region(NamedTuple):
    """An ``size x size`` block of a grid map.

    Attributes:
        center: ``(row, col)`` of the block's centre cell.
        filters: indices of the filters in the block that lie inside the grid (row-major order).
        value: the smoothed map's value at the centre (mean of the block over in-grid cells).
        size: side length of the block (odd).
        grid: the ``(H, W)`` grid the block lives on.
    """

    center: tuple[int, int]
    filters: np.ndarray
    value: float
    size: int
    grid: tuple[int, int]


def validate_grid(grid, n_filters=None, what="grid"):
    """Checks a grid and returns it as a tuple of two Python ints ``(H, W)``.

    Args:
        grid: a pair of positive integers ``(rows, columns)``.
        n_filters: if given, ``H * W`` must equal it.
        what: how to name the grid in error messages (e.g. the layer it belongs to).

    Raises:
        ValueError: when ``grid`` is not two positive integers, or does not hold ``n_filters``.
    """
    try:
        values = tuple(grid)
    except TypeError:
        values = None
    ok = (
        values is not None
        and len(values) == 2
        and all(checks.is_integer(v) for v in values)
        and all(v > 0 for v in values)
    )
    if not ok:
        raise ValueError(
            f"{what} must be a pair of positive integers (rows, columns), e.g. (16, 16). "
            f"Received: grid={grid!r}"
        )
    h, w = int(values[0]), int(values[1])
    if n_filters is not None and h * w != int(n_filters):
        suggestion = _suggest_grid(int(n_filters))
        raise ValueError(
            f"{what} {h}x{w} holds {h * w} filters but there are {int(n_filters)}. "
            f"Use a grid whose product is {int(n_filters)}"
            + (f", e.g. grid={suggestion}." if suggestion else ".")
            + f" Received: grid={grid!r}"
        )
    return h, w


def _suggest_grid(n_filters):
    try:
        return infer_grid(n_filters)
    except ValueError:
        return None


def validate_neighborhood(neighborhood=None, grid=None, what="neighborhood", *, size=None):
    """Checks an ``n x n`` neighbourhood (or block) side: an odd integer >= 3, no larger than
    the grid. (``size=`` is the deprecated name of ``neighborhood``.)"""
    neighborhood = _deprecation.renamed_argument("validate_neighborhood", "size", "neighborhood",
                                                 size, neighborhood)
    n = checks.odd_int(neighborhood, what, minimum=3)
    if grid is not None:
        h, w = grid
        if n > h or n > w:
            raise ValueError(
                f"{what} {n}x{n} is larger than the {h}x{w} grid. Use a neighborhood no "
                f"larger than {min(h, w)} or a squarer grid. Received: {what}={n}, grid={grid}"
            )
    return n


def infer_grid(n_filters):
    """The most square ``(H, W)`` grid with ``H * W == n_filters`` and ``H >= W``.

    Examples: 256 -> (16, 16), 2048 -> (64, 32), 96 -> (12, 8).

    Raises:
        ValueError: if ``n_filters`` has no factorisation with ``H / W <= MAX_ASPECT``
            (e.g. a prime), asking for an explicit grid.
    """
    n = int(n_filters)
    if n < 1:
        raise ValueError(f"Cannot place {n} filters on a grid. Received: n_filters={n_filters}")
    w = math.isqrt(n)
    while n % w:
        w -= 1
    h = n // w
    if h / w > MAX_ASPECT or w == 1:
        raise ValueError(
            f"Cannot infer a useful grid for {n} filters: the squarest factorisation is {h}x{w}, "
            f"too thin to show topography (rows/columns must be <= {MAX_ASPECT}). Pass an explicit "
            f"grid=(rows, columns), or use a filter count such as {_nearby_count(n)}."
        )
    return h, w


def _nearby_count(n):
    for candidate in range(max(n, 4), n + 4096):
        c = math.isqrt(candidate)
        if c * c == candidate:
            return candidate
    return n  # pragma: no cover


def resolve_grid(grid, n_filters, what="grid"):
    """Returns ``grid`` validated against ``n_filters``, or the inferred grid when it is None."""
    if grid is None:
        try:
            return infer_grid(n_filters)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
    return validate_grid(grid, n_filters, what=what)


def index_to_position(index, grid):
    """Filter index -> ``(row, col)``, row-major. Works on ints and integer arrays."""
    h, w = validate_grid(grid)
    index = np.asarray(index)
    if np.any((index < 0) | (index >= h * w)):
        raise ValueError(f"Filter index out of range for a {h}x{w} grid. Received: {index}")
    rows, cols = np.divmod(index, w)
    if rows.ndim == 0:
        return int(rows), int(cols)
    return rows, cols


def position_to_index(row, col, grid):
    """``(row, col)`` -> filter index, row-major. Works on ints and integer arrays."""
    h, w = validate_grid(grid)
    row, col = np.asarray(row), np.asarray(col)
    if np.any((row < 0) | (row >= h) | (col < 0) | (col >= w)):
        raise ValueError(f"Position off the {h}x{w} grid. Received: row={row}, col={col}")
    index = row * w + col
    return int(index) if index.ndim == 0 else index


@functools.cache
def _offsets(size):
    r = size // 2
    dy, dx = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    offsets = np.stack([dy.ravel(), dx.ravel()], axis=1)
    offsets = offsets[np.any(offsets != 0, axis=1)]
    offsets.flags.writeable = False
    return offsets


def neighbor_offsets(neighborhood=3, *, size=None):
    """The ``(dy, dx)`` offsets of an ``n x n`` neighbourhood without its centre
    (``n = neighborhood``; ``size=`` is its deprecated name).

    Returns an int array of shape ``(n**2 - 1, 2)``, rows in row-major order of the block.
    """
    neighborhood = _deprecation.renamed_argument("neighbor_offsets", "size", "neighborhood",
                                                 size, neighborhood)
    return _offsets(validate_neighborhood(neighborhood)).copy()


@functools.lru_cache(maxsize=64)
def _neighbor_weights(grid, size, wrap):
    h, w = grid
    offsets = _offsets(size)
    dist = np.sqrt((offsets.astype(np.float64) ** 2).sum(axis=1))
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    inside = np.ones((len(offsets), h, w), dtype=bool)
    if not wrap:
        nr = rows[None] + offsets[:, 0, None, None]
        nc = cols[None] + offsets[:, 1, None, None]
        inside = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
    inv = np.where(inside, 1.0 / dist[:, None, None], 0.0)
    total = inv.sum(axis=0, keepdims=True)
    alpha = np.divide(inv, total, out=np.zeros_like(inv), where=total > 0)
    alpha.flags.writeable = False
    return offsets, alpha


def neighbor_weights(grid, neighborhood=3, wrap=False, *, size=None):
    """Reciprocal-distance neighbour weights, normalised per neighbourhood.

    ``alpha[k, r, c]`` is the weight of the neighbour at ``(r, c) + offsets[k]`` in the
    neighbourhood centred on ``(r, c)``: ``(1 / d) / sum(1 / d)`` over the neighbours that exist
    (in-grid ones without wrap; all of them on the torus with wrap). Missing neighbours weigh 0.

    ``neighborhood`` is the odd side of the neighbourhood block (``size=`` is its deprecated
    name).

    Returns:
        ``(offsets, alpha)``: offsets ``(K, 2)`` ints and alpha ``(K, H, W)`` float64, with
        ``K = neighborhood**2 - 1``.
    """
    neighborhood = _deprecation.renamed_argument("neighbor_weights", "size", "neighborhood", size,
                                                 neighborhood)
    grid = validate_grid(grid)
    neighborhood = validate_neighborhood(neighborhood, grid)
    offsets, alpha = _neighbor_weights(grid, neighborhood, bool(wrap))
    return offsets.copy(), alpha.copy()


@functools.lru_cache(maxsize=64)
def _pair_weights(grid, size, wrap):
    h, w = grid
    offsets, alpha = _neighbor_weights(grid, size, wrap)
    # beta[k, r, c] = alpha(centre=(r,c) -> nb) + alpha(centre=nb -> (r,c)). The reverse offset of
    # k is K-1-k because the offsets are listed in row-major order of a symmetric block.
    k_rev = len(offsets) - 1 - np.arange(len(offsets))
    beta = alpha.copy()
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for k, (dy, dx) in enumerate(offsets):  # once per (grid, size, wrap); never per step
        nr, nc = rows + dy, cols + dx
        if wrap:
            nr, nc = nr % h, nc % w
            beta[k] += alpha[k_rev[k], nr, nc]
        else:
            ok = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
            beta[k][ok] += alpha[k_rev[k], nr[ok], nc[ok]]
    beta.flags.writeable = False
    return offsets, beta


def pair_weights(grid, neighborhood=3, wrap=False, *, size=None):
    """Symmetrised neighbour weights ``beta = alpha + alpha^T``, one map per offset.

    ``beta[k, r, c]`` is the total weight of the pair {(r, c), (r, c) + offsets[k]} over both
    neighbourhoods it appears in. Since cosine similarity is symmetric,
    ``sum_c sum_j alpha_cj cos(c, j) == 1/2 * sum_c sum_k beta[k, c] cos(c, c + offsets[k])``,
    and ``beta`` gives the gradient of that sum directly.

    ``neighborhood`` is the odd side of the neighbourhood block (``size=`` is its deprecated
    name).

    Returns:
        ``(offsets, beta)`` with the shapes of :func:`neighbor_weights`.
    """
    neighborhood = _deprecation.renamed_argument("pair_weights", "size", "neighborhood", size,
                                                 neighborhood)
    grid = validate_grid(grid)
    neighborhood = validate_neighborhood(neighborhood, grid)
    offsets, beta = _pair_weights(grid, neighborhood, bool(wrap))
    return offsets.copy(), beta.copy()


@functools.lru_cache(maxsize=64)
def _flat_shift_weights(grid, size, wrap):
    """The cached, read-only arrays of :func:`flat_shift_weights`."""
    h, w = grid
    n_filters = h * w
    offsets, alpha = _neighbor_weights(grid, size, wrap)
    n_centers = float(np.count_nonzero(alpha.sum(axis=0) > 0))
    centers = np.arange(n_filters)
    rows, cols = np.divmod(centers, w)
    forward = {}  # flat shift -> (F,) weight alpha(c -> c + s) summed over the offsets giving s
    for k, (dy, dx) in enumerate(offsets):  # once per (grid, size, wrap)
        nr, nc = rows + dy, cols + dx
        if wrap:
            nr, nc = nr % h, nc % w
        inside = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
        shift = (nr * w + nc - centers) % n_filters
        for s in np.unique(shift[inside]):
            hit = inside & (shift == s)
            forward.setdefault(int(s), np.zeros(n_filters))[hit] += alpha[k][hit.reshape(h, w)]
    shifts = sorted(set(forward) | {(n_filters - s) % n_filters for s in forward})
    zero = np.zeros(n_filters)
    weights = np.stack(
        [
            # alpha(c -> c+s) + alpha(c+s -> c); the reverse pair is shift F-s from centre c+s.
            forward.get(s, zero) + np.roll(forward.get((n_filters - s) % n_filters, zero), -s)
            for s in shifts
        ]
    ).astype(np.float32)
    gather = ((centers[None] + np.array(shifts)[:, None]) % n_filters).astype(np.int32)
    for array in (weights, gather):
        array.flags.writeable = False
    return tuple(shifts), weights, gather, n_centers


def flat_shift_weights(grid, neighborhood=3, wrap=False):
    """The neighbour weights as flat shifts of the row-major filter order, for tensor code.

    The regularizers' neighbour sums (:mod:`keras_topomap.regularizers`,
    :mod:`keras_topomap.activity`) run on the flat filter axis with a circular index: neighbour
    ``j`` of centre ``c`` is ``c + s (mod F)`` for a *flat shift* ``s``. On a torus that is exact
    (a vertical wrap is a flat shift by a multiple of ``W``; a horizontal wrap is one more flat
    shift); without wrap, pairs that leave the grid simply get weight 0. Computed once per grid,
    never per step.

    Args:
        grid: ``(H, W)``.
        neighborhood: odd side of the neighbourhood block.
        wrap: whether the grid is a torus.

    Returns:
        ``(shifts, weights, gather, n_centers)``: the distinct flat shifts (tuple of ints in
        ``[1, F)``); ``weights[i, c] = alpha(c -> c+s_i) + alpha(c+s_i -> c)``, float32 ``(S, F)``,
        so that ``v_c = sum_i weights[i, c] * u_{c+s_i}``; ``gather[i, c] = (c + s_i) mod F``
        (int32); and the number of centres with at least one neighbour. The arrays are shared
        and read-only.
    """
    grid = validate_grid(grid)
    neighborhood = validate_neighborhood(neighborhood, grid)
    return _flat_shift_weights(grid, neighborhood, bool(wrap))


@functools.lru_cache(maxsize=64)
def _neighbor_matrix(grid, size, wrap):
    h, w = grid
    offsets, alpha = _neighbor_weights(grid, size, wrap)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    centers = np.broadcast_to(rows * w + cols, alpha.shape)
    nr = rows[None] + offsets[:, 0, None, None]
    nc = cols[None] + offsets[:, 1, None, None]
    if wrap:
        nr, nc = nr % h, nc % w
    inside = alpha > 0  # a neighbour outside a flat grid has weight 0
    matrix = np.zeros((h * w, h * w))
    np.add.at(matrix, (centers[inside], (nr * w + nc)[inside]), alpha[inside])
    matrix = (0.5 * (matrix + matrix.T)).astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def neighbor_matrix(grid, neighborhood=3, wrap=False):
    """The neighbour weights as one symmetric ``(F, F)`` matrix, for dense pair scores.

    ``m[a, b] = (alpha_ab + alpha_ba) / 2``, so that for any symmetric ``(F, F)`` score ``s``
    (a correlation or cosine matrix) ``sum(m * s) == sum_c sum_{j in N(c)} alpha_cj s(c, j)``.
    Where a layer's full similarity matrix is computed anyway (the activity regularizer's
    global term), the local term is then one elementwise product instead of a neighbour sum.

    Returns:
        float32 ``(F, F)`` array, read-only and shared (copy it to modify).

    Example:

    >>> m = neighbor_matrix((4, 4))
    >>> round(float(m.sum()), 4)  # one unit of weight per centre
    16.0
    """
    grid = validate_grid(grid)
    neighborhood = validate_neighborhood(neighborhood, grid)
    return _neighbor_matrix(grid, neighborhood, bool(wrap))


@functools.lru_cache(maxsize=64)
def _neighbor_pairs(grid, size, wrap):
    h, w = grid
    offsets, beta = _pair_weights(grid, size, wrap)
    half = len(offsets) // 2  # offsets[k] and offsets[K-1-k] describe the same unordered pair
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    nr = rows[None] + offsets[:half, 0, None, None]
    nc = cols[None] + offsets[:half, 1, None, None]
    if wrap:
        valid = np.ones(nr.shape, dtype=bool)
        nr, nc = nr % h, nc % w
    else:
        valid = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
    first = np.broadcast_to(rows * w + cols, nr.shape)[valid]
    second = (nr * w + nc)[valid]
    weight = beta[:half][valid]
    for a in (first, second, weight):
        a.flags.writeable = False
    return first, second, weight


def neighbor_pairs(grid, neighborhood=3, wrap=False, *, size=None):
    """Every unordered neighbour pair of the grid once, with its symmetrised weight.

    ``neighborhood`` is the odd side of the neighbourhood block (``size=`` is its deprecated
    name).

    Returns:
        ``(first, second, weight)``: filter indices of each pair and ``alpha_ab + alpha_ba``, so
        that ``sum_c sum_j alpha_cj s(c, j) == sum(weight * s(first, second))`` for any
        symmetric pair score ``s``.
    """
    neighborhood = _deprecation.renamed_argument("neighbor_pairs", "size", "neighborhood", size,
                                                 neighborhood)
    grid = validate_grid(grid)
    neighborhood = validate_neighborhood(neighborhood, grid)
    return tuple(a.copy() for a in _neighbor_pairs(grid, neighborhood, bool(wrap)))


@functools.lru_cache(maxsize=64)
def _distances(grid, wrap):
    h, w = grid
    rows, cols = np.divmod(np.arange(h * w), w)
    dy = np.abs(rows[:, None] - rows[None, :])
    dx = np.abs(cols[:, None] - cols[None, :])
    if wrap:  # the shorter way round the torus
        dy, dx = np.minimum(dy, h - dy), np.minimum(dx, w - dx)
    d = np.hypot(dy, dx)
    d.flags.writeable = False
    return d


def distances(grid, wrap=False):
    """Euclidean grid distance between every two filters, ``(F, F)`` float64 (row-major order).

    With ``wrap`` the grid is a torus and each offset is taken the shorter way round.
    """
    grid = validate_grid(grid)
    return _distances(grid, bool(wrap)).copy()


def to_grid(values, grid):
    """Reshapes ``(..., F)`` filter values to ``(..., H, W)`` maps (row-major)."""
    values = np.asarray(values)
    h, w = validate_grid(grid, values.shape[-1] if values.ndim else None)
    return values.reshape(values.shape[:-1] + (h, w))


def from_grid(maps, grid=None):
    """Reshapes ``(..., H, W)`` maps back to ``(..., F)`` filter values."""
    maps = np.asarray(maps)
    if maps.ndim < 2:
        raise ValueError(f"Expected maps of shape (..., H, W). Received: shape={maps.shape}")
    if grid is not None:
        h, w = validate_grid(grid)
        if maps.shape[-2:] != (h, w):
            raise ValueError(f"Maps of shape {maps.shape} do not end in the grid {(h, w)}.")
    return maps.reshape(maps.shape[:-2] + (-1,))


def _box_sum(maps, size):
    """Sum over the size x size block around each cell (zero outside the grid)."""
    r = size // 2
    pad = [(0, 0)] * (maps.ndim - 2) + [(r + 1, r), (r + 1, r)]
    integral = np.pad(maps, pad).cumsum(axis=-2).cumsum(axis=-1)
    h, w = maps.shape[-2:]
    s = size
    return (
        integral[..., s : s + h, s : s + w]
        - integral[..., :h, s : s + w]
        - integral[..., s : s + h, :w]
        + integral[..., :h, :w]
    )


def smooth(maps, size=3):
    """Non-strided ``size x size`` average pooling of grid maps, same size out.

    Each cell becomes the mean of the block around it; border cells average over the cells of
    the block that lie inside the grid (no zero padding bias). Works on any leading batch axes.

    Args:
        maps: array ``(..., H, W)``.
        size: odd block side; 1 returns the maps unchanged.

    Returns:
        float64 array of the same shape.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim < 2:
        raise ValueError(f"smooth expects maps of shape (..., H, W). Received: shape={maps.shape}")
    size = checks.odd_int(size, "size")
    if size == 1:
        return maps.copy()
    if not np.all(np.isfinite(maps)):
        raise ValueError("smooth received maps with NaN or infinite values.")
    counts = _box_sum(np.ones(maps.shape[-2:]), size)
    return _box_sum(maps, size) / counts


def region_filters(center, size, grid):
    """Indices of the filters in the ``size x size`` block centred at ``center`` (in-grid only)."""
    h, w = validate_grid(grid)
    size = checks.odd_int(size, "size")
    row, col = (int(v) for v in center)
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(
            f"Region centre {(row, col)} is off the {h}x{w} grid "
            f"(rows 0..{h - 1}, columns 0..{w - 1})."
        )
    r = size // 2
    rows = np.arange(max(row - r, 0), min(row + r, h - 1) + 1)
    cols = np.arange(max(col - r, 0), min(col + r, w - 1) + 1)
    return (rows[:, None] * w + cols[None, :]).ravel()


# The edge correction is calibrated on this many noise-map cells (fixed seed, once per grid).
_CALIBRATION_CELLS = 3_000_000


def _edge_classes(grid, size):
    """Class of each allowed block centre: its row and column distance to the edge of the
    allowed area, capped where blocks stop overlapping the edge blocks (``2 * (size // 2)``)."""
    h, w = grid
    r = size // 2
    cap = 2 * r
    rows, cols = np.arange(h - 2 * r), np.arange(w - 2 * r)
    row_class = np.minimum(np.minimum(rows, rows[::-1]), cap)
    col_class = np.minimum(np.minimum(cols, cols[::-1]), cap)
    return (row_class[:, None] * (cap + 1) + col_class[None, :]).ravel(), (cap + 1) ** 2


def _block_scores(maps, size):
    """Means of the full blocks of standardised maps, in units of their noise spread, flattened:
    ``(..., n_allowed)``. For i.i.d. cells a block mean has standard deviation ``std / size``."""
    r = size // 2
    h, w = maps.shape[-2:]
    spread = maps.std(axis=(-2, -1), keepdims=True)
    z = (maps - maps.mean(axis=(-2, -1), keepdims=True)) / np.where(spread > 0, spread, 1.0)
    blocks = smooth(z, size)[..., r : h - r, r : w - r] * size
    return blocks.reshape(blocks.shape[:-2] + (-1,))


@functools.lru_cache(maxsize=32)
def _edge_offsets(grid, size):
    """Per-position offsets that make the best full block uniform over the allowed positions on
    noise maps.

    Overlapping block means are correlated, and a block at the edge of the allowed area overlaps
    fewer competitors, so the plain maximum lands there more often than chance (on 8 x 8 noise
    the four corner blocks win 1.4 times as often as the central ones). The offsets, one per
    edge-distance class, are fitted by a few fixed-point steps on Gaussian noise maps (fixed
    seed) so that every class wins as often as its share of positions.
    """
    h, w = grid
    classes, n_classes = _edge_classes(grid, size)
    n_maps = int(min(50_000, max(2_000, _CALIBRATION_CELLS // (h * w))))
    scores = _block_scores(np.random.default_rng(20231).normal(size=(n_maps, h, w)), size)
    share = np.bincount(classes, minlength=n_classes) / classes.size
    present = share > 0
    offsets = np.zeros(n_classes)
    for _ in range(25):  # fixed-point steps; the class frequencies settle within ~15
        wins = np.bincount(classes[np.argmax(scores + offsets[classes], axis=1)],
                           minlength=n_classes) / n_maps
        ratio = np.maximum(wins[present], 0.5 / n_maps) / share[present]
        offsets[present] -= 0.5 * np.clip(np.log(ratio), -1.0, 1.0)
        offsets -= offsets[present].mean()
    offsets = offsets[classes]
    offsets.flags.writeable = False
    return offsets


def most_responsive_region(grid_map, size=3, inside=True):
    """The ``size x size`` block with the highest mean value of a grid map.

    This is the one definition of "most responsive region" of the package (GradNAP, plots,
    optimal inputs and metrics all use it).

    Args:
        grid_map: array ``(H, W)`` (unsmoothed values; smoothing happens here).
        size: odd block side.
        inside: ``True`` (default): the best block among those that lie wholly on the grid
            (always ``size * size`` filters). Such blocks overlap fewer competitors at the edge
            of the allowed area, which gives them an edge on noise; a small per-position
            correction, fitted once per grid on noise maps (a few hundredths to a tenth or
            two of a block mean's noise spread), removes it, so that on a map without structure
            every allowed position is equally likely. ``False``: the cut-border variant, the
            maximum of the smoothed map over every cell, where a block may be cut by the border
            (2 x 2 cells around a corner centre); its blocks average fewer cells at the border,
            so on noise it lands on the border and in corners far more often than chance.

    Returns:
        :class:`Region` with the centre, the filter indices of the block, and the block's mean
        (the smoothed map's value at the centre).

    Raises:
        ValueError: for a map that is not 2-D, or (``inside=True``) a grid smaller than the block.
    """
    grid_map = np.asarray(grid_map, dtype=np.float64)
    if grid_map.ndim != 2:
        raise ValueError(
            f"most_responsive_region expects one (H, W) map. Received: shape={grid_map.shape}"
        )
    smoothed = smooth(grid_map, size)
    grid = grid_map.shape
    if inside:
        r = size // 2
        if min(grid) < size:
            raise ValueError(
                f"No {size}x{size} block lies wholly on a {grid[0]}x{grid[1]} grid. Use a "
                f"smaller size or inside=False (blocks cut by the border). "
                f"Received: size={size}, inside=True"
            )
        scores = _block_scores(grid_map, size) + _edge_offsets((int(grid[0]), int(grid[1])),
                                                               int(size))
        row, col = np.unravel_index(int(np.argmax(scores)), (grid[0] - 2 * r, grid[1] - 2 * r))
        row, col = row + r, col + r
    else:
        row, col = np.unravel_index(int(np.argmax(smoothed)), smoothed.shape)
    return Region(
        center=(int(row), int(col)),
        filters=region_filters((row, col), size, grid),
        value=float(smoothed[row, col]),
        size=int(size),
        grid=(int(grid[0]), int(grid[1])),
    )
