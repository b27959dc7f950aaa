"""The topographic activity regularizer: neighbouring channels on a 2D grid should respond alike.

Where :class:`~keras_topomap.TopographicRegularizer` orders a layer's *filters* (weights), this
orders its *responses*, the regularizer the seed paper names as future work. A layer's output
``(batch, ..., F)`` is read as ``N`` samples of ``F`` channels, ``N`` = batch x positions (all
time frames of a ``Conv1D``, all pixels of a ``Conv2D``, just the batch for a ``Dense`` layer).
With ``r_cj`` the Pearson correlation of channels ``c`` and ``j`` over those samples::

    local  = sum_c sum_{j in N(c)} alpha_cj * (1 - r_cj)
    global = F * mean over pairs (r_ij - 1 / d_ij)^2
    P      = strength * local + global_strength * global

``alpha`` are the neighbourhood weights of :func:`keras_topomap.grid.neighbor_weights` (the same
as the weight regularizer's) and ``d`` the grid distance. The local term alone lets a layer
satisfy it by making *every* channel alike (one shared component); the global term (Poli, Dupoux
& Riad, 2023; see :func:`~keras_topomap.regularizers.distance_target_penalty`) asks for
correlations that fall with distance instead.

Padding: samples can be excluded with a mask. The regularizer uses the Keras mask attached to
the tensor it receives (``keras`` sets one on the outputs of masking-aware layers; the
recognizer's convolutions, :class:`keras_topomap.masking.MaskedConv1D` and
:class:`keras_topomap.models.NormConv1D`, attach theirs before the regularizer runs), or a mask
passed to :meth:`TopographicActivityRegularizer.penalty`.
Masked samples enter no mean, variance or correlation, so extra padding changes nothing.

Implementation: the activity is standardised per channel once (masked mean and variance,
``(N, F)``). Up to ``max_global_channels`` channels the global term needs the whole correlation
matrix ``R = z^T z`` (one ``(F, N) x (N, F)`` product), and the local term is then read off it
with the dense neighbour weights (:func:`keras_topomap.grid.neighbor_matrix`); the same holds
without the global term up to :data:`DENSE_LOCAL_MAX_CHANNELS` channels. Wider layers take the
local term from a weighted sum of flat shifts of ``z`` (the weight regularizer's shift
constants, ``O(N F)``) and the global term from the anchors' ``(K, N) x (N, F)`` product.
Everything runs in float32 whatever the layer's dtype.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_topomap import _deprecation, checks
from keras_topomap import _keras_internals as internals
from keras_topomap import grid as grid_lib
from keras_topomap import regularizers as reg_lib
from keras_topomap.masking import attached_mask

__all__ = ["TopographicActivityRegularizer", "topographic_activity_penalty"]

_REDUCTIONS = ("sum", "mean")

#: Without the global term, layers up to this width still take the local term from the full
#: correlation matrix: up to here one ``F x N x F`` product is no slower than a neighbour sum
#: of shifted ``(N, F)`` copies (JAX; benchmarks/activity_penalty_forms.py).
DENSE_LOCAL_MAX_CHANNELS = 512


def _same_shape(a, b):
    """Shapes agree on rank and on every axis both know (traced shapes may hold None)."""
    a, b = tuple(a), tuple(b)
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def _standardize(flat, weights, epsilon):
    """``(N, F)`` activity -> ``z`` with ``z^T z = R``, the correlation matrix of the samples.

    ``weights`` is a float ``(N, 1)`` 0/1 column (None: all samples count). Masked rows of ``z``
    are 0. A channel without variance gets ``z = 0`` (its correlation with anything is 0), and
    ``epsilon`` in the denominator keeps its gradient finite.
    """
    if weights is None:
        count = ops.cast(ops.shape(flat)[0], "float32")
        mean = ops.mean(flat, axis=0)
        centered = flat - mean
    else:
        count = ops.maximum(ops.sum(weights), 1.0)
        mean = ops.sum(flat * weights, axis=0) / count
        centered = (flat - mean) * weights
    variance = ops.sum(ops.square(centered), axis=0) / count
    return centered * ops.rsqrt((variance + epsilon) * count)


def topographic_activity_penalty(
    activity,
    grid,
    neighborhood=3,
    wrap=False,
    mask=None,
    epsilon=1e-6,
    global_term=True,
    max_global_channels=reg_lib.MAX_GLOBAL_CHANNELS,
    *,
    size=None,
):
    """Unscaled local and global terms of a layer's activity (see the module docstring).

    Args:
        activity: tensor ``(batch, ..., F)``.
        grid: ``(H, W)`` with ``H * W == F`` (validated).
        neighborhood: odd neighbourhood side.
        wrap: whether the grid is a torus.
        mask: optional boolean or 0/1 tensor of shape ``activity.shape[:-1]``; samples where it
            is 0 are left out.
        epsilon: added to each channel's variance (a constant channel stays finite).
        global_term: compute the global term (otherwise it is returned as 0).
        max_global_channels: anchor channels of the global term for wide layers.
        size: deprecated name of ``neighborhood``.

    Returns:
        ``(local, global)``, float32 scalar tensors.
    """
    neighborhood = _deprecation.renamed_argument("topographic_activity_penalty", "size",
                                                 "neighborhood", size, neighborhood)
    n_filters = grid[0] * grid[1]
    flat = ops.reshape(ops.cast(activity, "float32"), (-1, n_filters))
    weights = None
    if mask is not None:
        weights = ops.reshape(ops.cast(mask, "float32"), (-1, 1))
    z = _standardize(flat, weights, epsilon)
    shifts, pair_weights, _, n_centers = grid_lib.flat_shift_weights(grid, neighborhood, wrap)
    every_pair = n_filters <= max_global_channels
    if every_pair and (global_term or n_filters <= DENSE_LOCAL_MAX_CHANNELS):
        # The whole correlation matrix (one matrix product) serves both terms: the local one is
        # its elementwise product with the neighbour weights, which is cheaper than a neighbour
        # sum of the (N, F) activity wherever R is computed anyway or F is small.
        correlation = ops.matmul(ops.transpose(z), z)
        neighbors = ops.convert_to_tensor(grid_lib.neighbor_matrix(grid, neighborhood, wrap))
        local = n_centers - ops.sum(correlation * neighbors)
        if not global_term:
            return local, ops.zeros((), "float32")
        return local, reg_lib.distance_target_error(correlation, grid, wrap, max_global_channels)
    # sum_c sum_j alpha_cj r_cj = 1/2 sum_c <z_c, sum_i beta_ic z_{c+s_i}> (alpha symmetrised)
    neighbors = reg_lib.neighbor_sum(z, shifts, ops.convert_to_tensor(pair_weights))
    local = n_centers - 0.5 * ops.sum(z * neighbors)
    if not global_term:
        return local, ops.zeros((), "float32")
    return local, reg_lib.distance_target_penalty(z, grid, wrap, max_global_channels)


@keras.saving.register_keras_serializable(package="keras_topomap")
class TopographicActivityRegularizer(keras.regularizers.Regularizer):
    """Makes neighbouring channels of a layer on a 2D grid respond alike (an activity regularizer).

    A drop-in ``activity_regularizer=`` for any layer whose output's last axis is the channel
    axis: ``Conv1D`` ``(B, T, F)``, ``Conv2D`` ``(B, H, W, F)``, ``Dense`` ``(B, F)``. The
    penalty (reduction ``"sum"``)::

        P = strength * sum_c sum_{j in N(c)} alpha_cj * (1 - r_cj)
            + global_strength * F * mean_pairs (r_ij - 1 / d_ij)^2

    with ``r`` the Pearson correlation of two channels over every position of every sample in
    the batch (for ``Dense``: over the batch), ``N(c)``, ``alpha`` and the grid layout as for
    :class:`~keras_topomap.TopographicRegularizer`, and ``d`` the grid distance. Samples under a
    Keras mask attached to the output are left out (see :mod:`keras_topomap.activity`).

    Keras divides what an activity regularizer returns by the batch size (right for a sum over
    samples such as L2, not for a statistic of the whole batch like this one); calling the
    regularizer therefore returns ``P`` times the batch size, so that the model's loss receives
    ``P`` whatever the batch size. :meth:`penalty` returns ``P`` itself.

    Args:
        grid: ``(rows, columns)`` with ``rows * columns == F``; ``None`` infers it from the
            output's last axis like the weight regularizer does from the kernel.
        strength: multiplier of the local term.
        neighborhood: odd side ``n >= 3`` of the neighbourhood block.
        wrap: treat the grid as a torus.
        global_strength: multiplier of the global term (0: none).
        reduction: ``"sum"`` or ``"mean"`` (``P / F``).
        epsilon: added to each channel's variance, so a constant or all-zero channel (a dead
            ReLU unit) gives a finite value and gradient; its correlations count as 0.
        max_global_channels: layers wider than this compute the global term on the pairs of
            every ``ceil(F / max_global_channels)``-th channel with all channels.

    Example:

    ```python
    import keras
    from keras_topomap import TopographicActivityRegularizer

    layer = keras.layers.Conv1D(
        256, 7, padding="same",
        activity_regularizer=TopographicActivityRegularizer(grid=(16, 16), strength=0.1,
                                                            global_strength=0.4),
    )
    ```
    """

    def __init__(
        self,
        grid=None,
        strength=0.1,
        neighborhood=3,
        wrap=False,
        global_strength=0.0,
        reduction="sum",
        epsilon=1e-6,
        max_global_channels=reg_lib.MAX_GLOBAL_CHANNELS,
    ):
        if grid is not None:
            grid = grid_lib.validate_grid(grid, what="TopographicActivityRegularizer grid")
        self.strength = checks.number(strength, "strength", minimum=0)
        self.global_strength = checks.number(global_strength, "global_strength", minimum=0)
        neighborhood = grid_lib.validate_neighborhood(neighborhood)
        if grid is not None:
            grid_lib.validate_neighborhood(neighborhood, grid)
        self.grid = grid
        self.neighborhood = neighborhood
        self.wrap = bool(wrap)
        self.reduction = checks.choice(reduction, "reduction", _REDUCTIONS)
        self.epsilon = checks.positive_number(epsilon, "epsilon")
        self.max_global_channels = checks.integer(
            max_global_channels, "max_global_channels", minimum=2
        )

    def resolve_grid(self, activity_shape):
        """The ``(H, W)`` grid used for an output of this shape (explicit or inferred).

        Raises:
            ValueError: naming the shape, for an output without a known channel axis or a
                grid that does not hold its channels.
        """
        activity_shape = tuple(activity_shape)
        if len(activity_shape) < 2 or activity_shape[-1] is None:
            raise ValueError(
                "TopographicActivityRegularizer needs an output of shape (batch, ..., channels) "
                f"with a known channel axis. Received: output shape {activity_shape}"
            )
        n_filters = int(activity_shape[-1])
        what = f"TopographicActivityRegularizer grid for output of shape {activity_shape}"
        grid = grid_lib.resolve_grid(self.grid, n_filters, what=what)
        try:
            grid_lib.validate_neighborhood(self.neighborhood, grid)
        except ValueError as e:
            raise ValueError(f"{e} (output of shape {activity_shape})") from None
        return grid

    def penalty(self, activity, mask=None):
        """``P`` of one batch of activity (float32 scalar), leaving out samples where ``mask`` is 0.

        Args:
            activity: tensor ``(batch, ..., F)``.
            mask: boolean tensor of shape ``activity.shape[:-1]``; ``None`` uses the Keras mask
                attached to ``activity`` if there is one.
        """
        grid = self.resolve_grid(activity.shape)
        if mask is None:
            mask = attached_mask(activity)
        if mask is not None and not _same_shape(mask.shape, activity.shape[:-1]):
            raise ValueError(
                "TopographicActivityRegularizer: the mask must have the output's shape without "
                f"the channel axis, {tuple(activity.shape[:-1])}. Received: mask shape "
                f"{tuple(mask.shape)}"
            )
        local, pull = topographic_activity_penalty(
            activity,
            grid,
            self.neighborhood,
            self.wrap,
            mask=mask,
            epsilon=self.epsilon,
            global_term=self.global_strength > 0,
            max_global_channels=self.max_global_channels,
        )
        value = self.strength * local + self.global_strength * pull
        if self.reduction == "mean":
            value = value / float(grid[0] * grid[1])
        return value

    def __call__(self, x):
        try:
            value = self.penalty(x)
        except ValueError as e:  # name the layer Keras is calling this for, if it is one
            layer = internals.calling_layer(
                lambda candidate: getattr(candidate, "activity_regularizer", None) is self
            )
            if layer is None:
                raise
            raise ValueError(
                f"{e} (activity of layer {layer.name!r} ({type(layer).__name__}))"
            ) from None
        # times the batch size: Keras divides activity regularizers by it (see the class doc)
        return value * ops.cast(ops.shape(x)[0], "float32")

    def get_config(self):
        return {
            "grid": None if self.grid is None else list(self.grid),
            "strength": self.strength,
            "neighborhood": self.neighborhood,
            "wrap": self.wrap,
            "global_strength": self.global_strength,
            "reduction": self.reduction,
            "epsilon": self.epsilon,
            "max_global_channels": self.max_global_channels,
        }

    def __repr__(self):
        return (
            f"TopographicActivityRegularizer(grid={self.grid}, strength={self.strength}, "
            f"neighborhood={self.neighborhood}, wrap={self.wrap}, "
            f"global_strength={self.global_strength}, reduction={self.reduction!r})"
        )
