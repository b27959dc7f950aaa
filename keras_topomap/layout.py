"""Filter layouts fitted after training: filters that respond alike placed next to each other.

The order of a layer's filters on its grid is arbitrary as far as the network is concerned:
permuting the layer's output channels, and with them the per-channel weights downstream and
the input axis of the next layer that mixes channels, leaves every output unchanged. So a
trained layer can be *laid out* after the fact: :class:`FilterLayout` searches the grid
positions that make the layer's response maps (GradNAP profiles, one row per phoneme) as
smooth as possible, and :func:`reorder_filters` builds the equivalent model whose filters sit
in that order, which every tool of the package (GradNAP, plots, the callback) then reads.

What is maximised is the mean Moran's I (:func:`keras_topomap.metrics.morans_i`) of the
fitted profiles' maps: with every map centered and scaled to unit norm, the sum of
``m[cell(a), cell(b)] * s[a, b]`` over filter pairs, where ``m`` is the grid's neighbour
matrix (:func:`keras_topomap.grid.neighbor_matrix`) and ``s`` the filters' profile
similarity. It starts from a spectral layout (the similarity's two leading eigenvectors as
rows and columns), or with ``init="identity"`` from the layer's own order, and improves it by
the best pairwise swap until none helps, restarted from random perturbations of the best layout
found.

Which start to take: a layer trained without a topographic constraint has an arbitrary order,
and the spectral start is the better one. A layer trained *with* one (e.g. the activity
regularizer) already has a layout that orders its activity; starting from it keeps a little more
of that order, at slightly less smooth maps (docs/results.md measures both).

A fitted layout is fitted to its data: maps of the *same* profiles are smooth by
construction. Fit it on training data (e.g. GradNAP of the training split) and read, and test
against permuted layouts, maps of held-out data; docs/results.md does so.

Example:

>>> rng = np.random.default_rng(0)
>>> ramp = np.linspace(-1, 1, 16)
>>> profiles = np.stack([ramp, ramp ** 2]) [:, rng.permutation(16)]
>>> layout = FilterLayout(grid=(4, 4), seed=0).fit(profiles)
>>> bool(layout.score_ > layout.initial_score_)
True
>>> layout.transform(profiles).shape
(2, 16)
"""

from __future__ import annotations

import numpy as np

from keras_topomap import checks
from keras_topomap import grid as grid_lib

__all__ = ["INITS", "FilterLayout", "fit_layouts", "reorder_filters"]

#: Starts of :class:`FilterLayout`'s search (``init=``).
INITS = ("spectral", "identity")


def _check_profiles(profiles, owner):
    p = np.asarray(profiles, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(
            f"{owner}: profiles must be a 2-D array (n_groups, n_filters) with at least two "
            f"filters. Received shape {p.shape}"
        )
    if not np.isfinite(p).all():
        raise ValueError(f"{owner}: profiles hold NaN or inf values (shape {p.shape}).")
    return p


def _unit_rows(p):
    """Rows centered over the filters and scaled to unit norm; constant rows dropped."""
    centered = p - p.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centered, axis=1)
    keep = norms > 1e-12 * max(1.0, float(np.abs(p).max()))
    return centered[keep] / norms[keep, None]


def _spectral_cells(similarity, grid):
    """``cell_of[filter]``: rows by the leading eigenvector, columns by the second."""
    h, w = grid
    _, vectors = np.linalg.eigh(similarity)
    first, second = vectors[:, -1], vectors[:, -2]
    cell_of = np.empty(len(first), dtype=np.int64)
    by_first = np.argsort(first, kind="stable")
    for row in range(h):
        filters = by_first[row * w:(row + 1) * w]
        filters = filters[np.argsort(second[filters], kind="stable")]
        cell_of[filters] = row * w + np.arange(w)
    return cell_of


def _best_swaps(similarity, weights, cell_of, max_swaps):
    """Steepest ascent by pairwise swaps, in place on ``cell_of``; returns the swap count.

    ``t = similarity @ m`` with ``m = weights[cell_of][:, cell_of]`` is kept up to date by a
    rank-2 update per swap, so a swap costs O(F^2) instead of a matrix product.
    """
    m = weights[np.ix_(cell_of, cell_of)]
    t = similarity @ m
    tolerance = 1e-10 * max(1.0, float(np.abs(similarity).sum()))
    n = len(cell_of)
    for swaps in range(max_swaps):
        d = np.diag(t)
        # objective change of swapping the cells of filters a and b (both orders counted)
        gain = t + t.T - d[:, None] - d[None, :] + 2.0 * similarity * m
        np.fill_diagonal(gain, -np.inf)
        a, b = divmod(int(np.argmax(gain)), n)
        if gain[a, b] <= tolerance:
            return swaps
        pair = [a, b]
        old_rows = m[pair].copy()
        cell_of[a], cell_of[b] = cell_of[b], cell_of[a]
        m[pair] = m[[b, a]]
        m[:, pair] = m[:, [b, a]]
        t += similarity[:, pair] @ (m[pair] - old_rows)
        t[:, pair] = similarity @ m[:, pair]
    return max_swaps


class FilterLayout:
    """Grid positions for a layer's filters that make its response maps smooth.

    Args:
        grid: ``(H, W)`` with ``H * W`` filters (None: :func:`keras_topomap.grid.infer_grid`
            of the profiles' filter count).
        neighborhood: odd side of the neighbourhood block of Moran's I (3: the 8 surrounding
            cells).
        n_restarts: searches restarted from random perturbations of the best layout so far
            (0: the first local optimum).
        max_swaps: most swaps per search (None: ``50 * n_filters``).
        seed: seeds the perturbations.
        init: where the search starts: ``"spectral"`` (the similarity's leading eigenvectors;
            for layers trained without a topographic constraint) or ``"identity"`` (the
            filters' current order; keeps more of a trained topographic order).

    Attributes (after :meth:`fit`):
        order_: ``(n_filters,)`` the filter shown at each grid cell, row-major (what
            :meth:`transform` and :func:`reorder_filters` apply).
        position_: ``(n_filters,)`` the cell of each filter (the inverse of ``order_``).
        grid_: the ``(H, W)`` grid.
        score_: mean Moran's I of the fitted profiles' maps in the fitted layout.
        initial_score_: the same in the original (identity) layout.
        n_groups_: the non-constant profiles the layout was fitted on.
        n_swaps_: swaps made over all searches.

    Example:

    >>> profiles = np.random.default_rng(1).normal(size=(5, 64))
    >>> layout = FilterLayout(grid=(8, 8), n_restarts=2).fit(profiles)
    >>> sorted(layout.order_) == list(range(64))
    True
    """

    def __init__(self, grid=None, neighborhood=3, n_restarts=20, max_swaps=None, seed=0,
                 init="spectral"):
        self.grid = grid
        self.neighborhood = neighborhood
        self.n_restarts = n_restarts
        self.max_swaps = max_swaps
        self.seed = seed
        self.init = init

    def fit(self, profiles):
        """Fits the layout to ``profiles``, ``(n_groups, n_filters)`` (e.g.
        ``GradNAP.profiles_[layer]``). Returns self.

        Raises:
            ValueError: for profiles that are not 2-D and finite, fewer than two non-constant
                rows, or a grid that does not hold the filters.
        """
        owner = type(self).__name__
        p = _check_profiles(profiles, owner)
        n_filters = p.shape[1]
        grid = grid_lib.resolve_grid(self.grid, n_filters, what=f"{owner} grid")
        neighborhood = grid_lib.validate_neighborhood(self.neighborhood, grid)
        n_restarts = checks.non_negative_int(self.n_restarts, "n_restarts", owner=owner)
        max_swaps = checks.positive_int(self.max_swaps, "max_swaps", allow_none=True,
                                        owner=owner)
        max_swaps = 50 * n_filters if max_swaps is None else max_swaps
        init = checks.choice(self.init, "init", INITS, owner=owner)
        unit = _unit_rows(p)
        if len(unit) < 2:
            raise ValueError(
                f"{owner}: at least two profiles must vary over the filters to fit a layout; "
                f"{len(unit)} of {len(p)} do."
            )
        similarity = unit.T @ unit
        np.fill_diagonal(similarity, 0.0)
        weights = np.array(grid_lib.neighbor_matrix(grid, neighborhood), dtype=np.float64)

        def objective(cells):
            return float((similarity * weights[np.ix_(cells, cells)]).sum())

        identity = np.arange(n_filters)
        rng = np.random.default_rng(self.seed)
        best = _spectral_cells(similarity, grid) if init == "spectral" else identity.copy()
        swaps = _best_swaps(similarity, weights, best, max_swaps)
        best_value = objective(best)
        n_kicked = max(2, n_filters // 16)
        for _ in range(n_restarts):
            cells = best.copy()
            for _ in range(n_kicked):
                a, b = rng.choice(n_filters, 2, replace=False)
                cells[a], cells[b] = cells[b], cells[a]
            swaps += _best_swaps(similarity, weights, cells, max_swaps)
            value = objective(cells)
            if value > best_value + 1e-12:
                best, best_value = cells, value
        self.grid_ = grid
        self.position_ = best
        self.order_ = np.argsort(best)
        # the neighbour matrix has a zero diagonal, so the objective over filter pairs is the
        # sum of the maps' Moran's I (unit-norm centered rows)
        self.initial_score_ = objective(identity) / len(unit)
        self.score_ = best_value / len(unit)
        self.n_groups_ = len(unit)
        self.n_swaps_ = int(swaps)
        return self

    def _check_fitted(self):
        if not hasattr(self, "order_"):
            raise ValueError(f"This {type(self).__name__} is not fitted yet: call fit first.")

    def transform(self, profiles):
        """``profiles[..., order_]``: the values of each grid cell in the fitted layout, for
        ``(..., n_filters)`` profiles of the same layer (e.g. GradNAP of held-out data)."""
        self._check_fitted()
        p = np.asarray(profiles)
        if p.ndim < 1 or p.shape[-1] != len(self.order_):
            raise ValueError(
                f"{type(self).__name__}: expected profiles with {len(self.order_)} filters on "
                f"the last axis. Received shape {p.shape}"
            )
        return p[..., self.order_]

    def maps(self, profiles):
        """The profiles in the fitted layout on the grid: ``(..., H, W)``."""
        return grid_lib.to_grid(self.transform(profiles), self.grid_)

    def __repr__(self):
        return (f"FilterLayout(grid={self.grid!r}, neighborhood={self.neighborhood!r}, "
                f"n_restarts={self.n_restarts!r}, max_swaps={self.max_swaps!r}, "
                f"seed={self.seed!r}, init={self.init!r})")


def fit_layouts(gradnap, layers=None, exclude=(), **kwargs):
    """A :class:`FilterLayout` per layer, fitted on a fitted :class:`~keras_topomap.GradNAP`'s
    profiles (groups without frames and those named in ``exclude`` left out).

    Args:
        gradnap: a fitted GradNAP (of training data: the layout is then read on other data).
        layers: layer names (None: all of the GradNAP's layers).
        exclude: group names to leave out (e.g. ``("sil",)``).
        **kwargs: :class:`FilterLayout` arguments (the grid is the GradNAP's).

    Returns:
        ``{layer: FilterLayout}``, for :func:`reorder_filters`.

    Example::

        train_maps = GradNAP(model, layers).fit(train_batches)
        layouts = fit_layouts(train_maps, exclude=("sil",))
        readable = reorder_filters(model, layouts)      # same outputs, filters laid out
        test_maps = GradNAP(readable, layers).fit(test_batches)
    """
    if not hasattr(gradnap, "profiles_"):
        raise ValueError("fit_layouts needs a fitted GradNAP: call its fit first.")
    names = list(gradnap.profiles_) if layers is None else list(layers)
    excluded = {gradnap.group_index(g) for g in exclude}
    layouts = {}
    for name in names:
        if name not in gradnap.profiles_:
            raise ValueError(f"fit_layouts: the GradNAP has no layer {name!r}; it has "
                             f"{sorted(gradnap.profiles_)}.")
        counts = np.asarray(gradnap.counts_[name])
        rows = [k for k in range(len(counts)) if counts[k] > 0 and k not in excluded]
        layouts[name] = FilterLayout(grid=gradnap.grids_[name], **kwargs).fit(
            np.asarray(gradnap.profiles_[name])[rows])
    return layouts


# ------------------------------------------------------------------ the equivalent model

def _order_of(layout, n_filters, name):
    order = np.asarray(layout.order_ if isinstance(layout, FilterLayout) else layout)
    if order.shape != (n_filters,) or not np.array_equal(np.sort(order), np.arange(n_filters)):
        raise ValueError(
            f"reorder_filters: the order for layer {name!r} must be a permutation of its "
            f"{n_filters} filters. Received shape {order.shape}"
        )
    return order.astype(np.int64)


def reorder_filters(model, layouts):
    """A copy of ``model`` whose named layers have their filters in the given order; its
    outputs equal the model's.

    Each layer's kernel (last axis), bias and per-channel normalization weights are permuted,
    and so are the per-channel weights of the channel-wise layers that follow (batch or layer
    normalization, activations, dropout, pooling) up to the layers that read the channels
    (convolutions, ``Dense``), whose kernel's input axis gets the same permutation.

    A topographic regularizer of a reordered layer now sees the new order: the copy is for
    reading maps; training it on with the constraint would pull the filters to the old
    neighbourhoods' similarities in the new positions.

    Args:
        model: a Functional or Sequential model built on ``keras.Input``.
        layouts: ``{layer name: FilterLayout or order array}`` (``order[cell]`` = the filter
            at that cell, as :attr:`FilterLayout.order_`).

    Returns:
        a new ``keras.Model`` (not compiled).

    Raises:
        ValueError: an unknown layer, an order that is not a permutation, or channels that
            reach the model's output or a layer the reordering does not know (e.g. ``Add``,
            ``Concatenate``, ``Flatten``), named in the message.
    """
    import keras

    from keras_topomap import _keras_internals as internals

    if not internals.is_graph_model(model):
        raise ValueError(
            "reorder_filters needs a Functional or Sequential model built on keras.Input. "
            f"Received: {type(model).__name__} '{getattr(model, 'name', model)}'"
        )
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    _, steps, _, output_ids = internals.graph_steps(copy)
    consumers = {}
    for layer, inputs, outputs in steps:
        for tensor in inputs:
            consumers.setdefault(tensor, []).append((layer, outputs))
    produced = {layer.name: outputs for layer, _, outputs in steps}
    for name, layout in layouts.items():
        if name not in produced:
            raise ValueError(f"reorder_filters: model {model.name!r} has no layer {name!r}.")
        layer = copy.get_layer(name)
        n_filters = _output_channels(layer)
        order = _order_of(layout, n_filters, name)
        _permute_own(layer, order)
        _permute_downstream(name, produced[name], consumers, set(output_ids), order)
    return copy


def _output_channels(layer):
    base = _base_kind(layer)
    if base not in ("Conv1D", "Conv2D", "Conv3D", "Dense"):
        raise ValueError(
            f"reorder_filters: layer {layer.name!r} ({type(layer).__name__}) has no filters to "
            "reorder; expected a convolution or Dense layer."
        )
    return int(layer.kernel.shape[-1])


def _base_kind(layer):
    import keras

    for kind in ("Conv1D", "Conv2D", "Conv3D", "Dense"):
        if isinstance(layer, getattr(keras.layers, kind)):
            return kind
    return type(layer).__name__


def _value(variable):
    import keras

    return keras.ops.convert_to_numpy(variable)


def _assign(variable, value):
    variable.assign(value.astype(_value(variable).dtype))


def _permute_vectors(layer, order):
    """Every per-channel ``(F,)`` weight of a channel-wise layer (normalization, PReLU)."""
    for variable in layer.weights:
        value = _value(variable)
        if value.ndim >= 1 and value.shape[-1] == len(order):
            _assign(variable, value[..., order])


def _permute_own(layer, order):
    _assign(layer.kernel, _value(layer.kernel)[..., order])
    if getattr(layer, "bias", None) is not None:
        _assign(layer.bias, _value(layer.bias)[order])
    normalization = getattr(layer, "normalization", None)  # models.NormConv1D
    if normalization is not None:
        _permute_vectors(normalization, order)


#: Layers that act on each channel alone (their per-channel weights are permuted).
_CHANNELWISE = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                "GaussianDropout", "GaussianNoise", "AlphaDropout", "Activation", "ReLU",
                "LeakyReLU", "ELU", "PReLU", "Softmax", "BatchNormalization",
                "LayerNormalization", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D",
                "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
                "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Masking", "Identity")


def _permute_downstream(name, outputs, consumers, output_ids, order):
    pending = list(outputs)
    seen = set()
    while pending:
        tensor = pending.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in output_ids:
            raise ValueError(
                f"reorder_filters: the channels of layer {name!r} reach the model's output; "
                "reordering them would change the outputs."
            )
        for layer, layer_outputs in consumers.get(tensor, []):
            kind = _base_kind(layer)
            if kind in ("Conv1D", "Conv2D", "Conv3D", "Dense"):
                kernel = _value(layer.kernel)
                _assign(layer.kernel, np.take(kernel, order, axis=kernel.ndim - 2))
            elif type(layer).__name__ in _CHANNELWISE or kind in _CHANNELWISE:
                if type(layer).__name__ == "LayerNormalization" and tuple(
                        np.atleast_1d(layer.axis)) not in ((-1,), (len(layer.input.shape) - 1,)):
                    raise ValueError(
                        f"reorder_filters: layer {layer.name!r} normalizes over more than the "
                        f"channels of layer {name!r}; cannot reorder them."
                    )
                _permute_vectors(layer, order)
                pending.extend(layer_outputs)
            else:
                raise ValueError(
                    f"reorder_filters: the channels of layer {name!r} reach layer "
                    f"{layer.name!r} ({type(layer).__name__}), which reorder_filters does not "
                    "know how to follow (it follows channel-wise layers up to convolutions "
                    "and Dense layers)."
                )
