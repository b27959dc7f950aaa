"""The topographic regularizer: neighbouring filters on a 2D grid are pushed to be similar.

The penalty follows Krug & Stober's "learned topographic filter maps" (after Kavukcuoglu et al.,
2009). A layer's F filters sit on an ``H x W`` grid (row-major); for every filter ``c`` and every
neighbour ``j`` in the ``n x n`` block around it::

    P = strength * sum_c sum_{j in N(c)} alpha_cj * (1 - cos(w_c, w_j))

where ``w_i`` is filter ``i`` flattened over every kernel axis but the last, and ``alpha_cj`` is
the reciprocal grid distance normalised to sum to one per neighbourhood (see
:func:`keras_topomap.grid.neighbor_weights`).

Implementation notes (why it is fast): the kernel is only ever *reshaped* -- the filter axis
stays last, so ``(..., F)`` -> ``(D, H, W)`` costs nothing. Because cosine similarity is
symmetric, ``sum_c sum_j alpha_cj cos = 1/2 sum_c <u_c, v_c>`` with ``u`` the unit-normalised
filters and ``v = sum_k beta_k * shift_k(u)`` (``beta = alpha + alpha^T``, precomputed once per
grid). ``v`` is also, up to the normalisation's projection, the gradient, so the penalty carries a
hand-written gradient (:func:`keras.ops.custom_gradient`) instead of differentiating through
every shifted slice.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
from keras import ops

from keras_topomap import grid as grid_lib

__all__ = ["TopographicRegularizer", "topographic_layers", "topographic_penalty"]

_REDUCTIONS = ("sum", "mean")


@functools.lru_cache(maxsize=64)
def _constants(grid, size, wrap):
    """Per-grid constants, computed once: offsets, beta maps (float32), neighbourhood count."""
    offsets, alpha = grid_lib._neighbor_weights(grid, size, wrap)
    _, beta = grid_lib._pair_weights(grid, size, wrap)
    n_centres = float(np.count_nonzero(alpha.sum(axis=0) > 0))
    return offsets, beta.astype(np.float32), n_centres


def _neighbour_sum(u3, grid, size, wrap, beta):
    """v[:, r, c] = sum_k beta[k, r, c] * u3[:, (r, c) + offset_k], for u3 of shape (D, H, W)."""
    h, w = grid
    r = size // 2
    if wrap:
        # Circular padding by concatenation: the grid is a torus.
        padded = ops.concatenate([u3[:, h - r :, :], u3, u3[:, :r, :]], axis=1)
        padded = ops.concatenate([padded[:, :, w - r :], padded, padded[:, :, :r]], axis=2)
    else:
        padded = ops.pad(u3, [[0, 0], [r, r], [r, r]])
    offsets = grid_lib._offsets(size)
    total = None
    for k, (dy, dx) in enumerate(offsets):  # unrolled at trace time: (n*n - 1) tensor ops
        shifted = padded[:, r + dy : r + dy + h, r + dx : r + dx + w]
        term = shifted * beta[k]
        total = term if total is None else total + term
    return total


def topographic_penalty(kernel, grid, size=3, wrap=False, epsilon=1e-7):
    """Unscaled topographic penalty ``sum_c sum_j alpha_cj (1 - cos(w_c, w_j))`` of a kernel.

    A pure, differentiable function of ``kernel`` (any shape ``(..., F)``) with a hand-written
    gradient; computed in float32 whatever the kernel's dtype. This is the building block of
    :class:`TopographicRegularizer`; most users want that class.

    Args:
        kernel: tensor whose last axis is the filter axis.
        grid: ``(H, W)`` with ``H * W == F`` (already validated).
        size: odd neighbourhood side.
        wrap: whether the grid is a torus.
        epsilon: added to squared filter norms, so an all-zero filter is finite.

    Returns:
        float32 scalar tensor.
    """
    h, w = grid
    offsets, beta_np, n_centres = _constants(tuple(grid), int(size), bool(wrap))
    shape = tuple(kernel.shape)
    n_filters = shape[-1]
    depth = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    kernel = ops.cast(kernel, "float32")

    @ops.custom_gradient
    def _penalty(k):
        k2 = ops.reshape(k, (depth, n_filters))
        inv_norm = ops.rsqrt(ops.sum(ops.square(k2), axis=0) + epsilon)  # (F,)
        u = k2 * inv_norm
        beta = ops.convert_to_tensor(beta_np)
        v = ops.reshape(
            _neighbour_sum(ops.reshape(u, (depth, h, w)), (h, w), size, wrap, beta),
            (depth, n_filters),
        )
        uv = ops.sum(u * v, axis=0)  # per filter: sum_j beta_cj cos(c, j)
        value = n_centres - 0.5 * ops.sum(uv)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # d(-1/2 sum <u, v>)/dk = -(v - <u, v> u) / ||k||   (projection of the unit norm)
            g = (u * uv - v) * inv_norm
            return ops.reshape(g * ops.cast(upstream, "float32"), shape)

        return value, grad

    return _penalty(kernel)


@keras.saving.register_keras_serializable(package="keras_topomap")
class TopographicRegularizer(keras.regularizers.Regularizer):
    """Makes the filters of a layer similar to their neighbours on a 2D grid.

    The penalty (Krug & Stober; reduction ``"sum"``)::

        P = strength * sum_c sum_{j in N(c)} alpha_cj * (1 - cos(w_c, w_j))

    with filter ``i`` at row ``i // W``, column ``i % W`` of an ``H x W`` grid, ``N(c)`` the
    ``neighborhood x neighborhood`` block around ``c`` without ``c``, and ``alpha_cj`` the
    reciprocal grid distance normalised to sum to 1 over each neighbourhood (over the neighbours
    inside the grid, or all of them on a torus with ``wrap=True``). ``w_i`` is the kernel with
    every axis but the last flattened, so it works for ``Conv1D`` ``(k, in, F)``, ``Conv2D``,
    ``Conv3D`` and ``Dense`` ``(in, F)`` kernels alike.

    Args:
        grid: ``(rows, columns)`` with ``rows * columns == F``. ``None`` infers the most square
            grid with rows >= columns from the kernel at call time (256 -> 16x16,
            2048 -> 64x32); filter counts without a useful factorisation (primes, or
            rows/columns > 8) raise and ask for an explicit grid.
        strength: multiplier of the penalty. The default ``0.01`` is chosen for the paper's
            Wav2Letter recognizer: with ``reduction="sum"`` a layer of random filters costs
            ``~strength * F`` (1 - cos ~ 1 for every pair), so the 6144 filters of its ten
            regularized layers start at a total penalty of ~60, the size of the CTC loss of one
            untrained utterance batch; as training proceeds the CTC loss falls by two orders of
            magnitude and the penalty, falling with it, keeps ordering the filters without
            dominating the fit. Sweep it for other models (see docs/results.md).
        neighborhood: odd side ``n >= 3`` of the neighbourhood block.
        wrap: treat the grid as a torus (no border effects).
        reduction: ``"sum"`` (the paper's) or ``"mean"`` (divided by the number of filters,
            so the strength does not scale with layer width).
        epsilon: added to each filter's squared norm inside the cosine, so an all-zero filter
            gives a finite value and gradient.

    Example:

    ```python
    import keras
    from keras_topomap import TopographicRegularizer

    layer = keras.layers.Conv1D(
        256, 7, padding="same",
        kernel_regularizer=TopographicRegularizer(grid=(16, 16), strength=0.01),
    )
    ```
    """

    def __init__(
        self,
        grid=None,
        strength=0.01,
        neighborhood=3,
        wrap=False,
        reduction="sum",
        epsilon=1e-7,
    ):
        if grid is not None:
            grid = grid_lib.validate_grid(grid)
        try:
            strength = float(strength)
        except (TypeError, ValueError):
            raise ValueError(
                f"strength must be a non-negative number. Received: strength={strength!r}"
            ) from None
        if not np.isfinite(strength) or strength < 0:
            raise ValueError(
                f"strength must be a non-negative finite number. Received: strength={strength}"
            )
        neighborhood = grid_lib.validate_neighborhood(neighborhood)
        if grid is not None:
            grid_lib.validate_neighborhood(neighborhood, grid)
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"reduction must be one of {_REDUCTIONS}. Received: reduction={reduction!r}"
            )
        epsilon = float(epsilon)
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0. Received: epsilon={epsilon}")
        self.grid = grid
        self.strength = strength
        self.neighborhood = neighborhood
        self.wrap = bool(wrap)
        self.reduction = reduction
        self.epsilon = epsilon

    def resolve_grid(self, kernel_shape):
        """The ``(H, W)`` grid used for a kernel of this shape (explicit or inferred).

        Raises:
            ValueError: naming the kernel shape, when the grid does not fit it.
        """
        kernel_shape = tuple(kernel_shape)
        if len(kernel_shape) < 1 or kernel_shape[-1] is None:
            raise ValueError(
                "TopographicRegularizer needs a kernel with a known last (filter) axis. "
                f"Received: kernel shape {kernel_shape}"
            )
        n_filters = int(kernel_shape[-1])
        what = f"TopographicRegularizer grid for kernel of shape {kernel_shape}"
        grid = grid_lib.resolve_grid(self.grid, n_filters, what=what)
        try:
            grid_lib.validate_neighborhood(self.neighborhood, grid)
        except ValueError as e:
            raise ValueError(f"{e} (kernel of shape {kernel_shape})") from None
        return grid

    def __call__(self, x):
        grid = self.resolve_grid(x.shape)
        penalty = topographic_penalty(x, grid, self.neighborhood, self.wrap, self.epsilon)
        if self.reduction == "mean":
            penalty = penalty / float(grid[0] * grid[1])
        return self.strength * penalty

    def get_config(self):
        return {
            "grid": None if self.grid is None else list(self.grid),
            "strength": self.strength,
            "neighborhood": self.neighborhood,
            "wrap": self.wrap,
            "reduction": self.reduction,
            "epsilon": self.epsilon,
        }

    def __repr__(self):
        return (
            f"TopographicRegularizer(grid={self.grid}, strength={self.strength}, "
            f"neighborhood={self.neighborhood}, wrap={self.wrap}, "
            f"reduction={self.reduction!r}, epsilon={self.epsilon})"
        )


def topographic_layers(model):
    """The layers of ``model`` whose kernel carries a :class:`TopographicRegularizer`.

    Searches nested models too. Returns a dict ``{layer_name: info}`` in model order, where
    ``info`` is a dict with ``layer`` (the layer), ``grid`` (``(H, W)``, resolved from the
    kernel), ``regularizer`` and ``kernel`` (the variable).

    Example:

    >>> for name, info in topographic_layers(model).items():
    ...     print(name, info["grid"])
    """
    found = {}
    for layer in _walk_layers(model):
        kernel = getattr(layer, "kernel", None)
        reg = getattr(layer, "kernel_regularizer", None)
        if kernel is None or not isinstance(reg, TopographicRegularizer):
            continue
        found[layer.name] = {
            "layer": layer,
            "grid": reg.resolve_grid(kernel.shape),
            "regularizer": reg,
            "kernel": kernel,
        }
    return found


def _walk_layers(model):
    layers = getattr(model, "_flatten_layers", None)
    if layers is None:
        return [model]
    return list(model._flatten_layers(include_self=True, recursive=True))
