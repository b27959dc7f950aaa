"""The topographic regularizer: neighbouring filters on a 2D grid are pushed to be similar.

The penalty follows Krug & Stober's "learned topographic filter maps" (after Kavukcuoglu et al.,
2009). A layer's F filters sit on an ``H x W`` grid (row-major); for every filter ``c`` and every
neighbour ``j`` in the ``n x n`` block around it::

    P = strength * sum_c sum_{j in N(c)} alpha_cj * (1 - cos(w_c, w_j))

where ``w_i`` is filter ``i`` flattened over every kernel axis but the last, and ``alpha_cj`` is
the reciprocal grid distance normalised to sum to one per neighbourhood (see
:func:`keras_topomap.grid.neighbor_weights`).

Implementation notes (what makes it cheap): the kernel is only ever *reshaped* -- the filter
axis stays last, so ``(..., F)`` -> ``(D, F)`` costs nothing, and neighbours are flat shifts of
that last axis (circular, so a torus is exact too; pairs leaving a flat grid get weight 0).
Because cosine similarity is symmetric, ``sum_c sum_j alpha_cj cos = 1/2 sum_c <u_c, v_c>`` with
``u = k / ||k||`` and ``v_c = sum_j beta_cj u_j`` (``beta = alpha + alpha^T``, precomputed once
per grid); ``v`` is built straight from the raw kernel (``beta_cj / ||k_j||`` weights on shifted
copies of ``k``), so ``u`` is never materialised. ``v`` is also, up to the normalisation's
projection, the gradient, so the penalty carries a hand-written gradient
(:func:`keras.ops.custom_gradient`) that reuses it: value and gradient together read the kernel
a few times and write ``v`` and the gradient. The neighbour sum of a large kernel is built in
slabs of rows (no loop over filters): memory, not arithmetic, is the cost, and slab-sized
temporaries are recycled by the allocator while kernel-sized ones are fresh pages every step.
On TensorFlow and PyTorch a faster path of the same value and gradient
(:mod:`keras_topomap.fast_penalty`) takes over for large kernels on the CPU; this code is its
reference and fallback.
"""

from __future__ import annotations

import functools
import weakref

import keras
import numpy as np
from keras import ops

from keras_topomap import _deprecation, checks, fast_penalty
from keras_topomap import _keras_internals as internals
from keras_topomap import grid as grid_lib

__all__ = [
    "MAX_GLOBAL_CHANNELS",
    "TopographicRegularizer",
    "distance_target_error",
    "distance_target_penalty",
    "filter_kernel",
    "neighbor_sum",
    "topographic_layers",
    "topographic_penalty",
]

_REDUCTIONS = ("sum", "mean")


# The neighbour sum of a large kernel is built in slabs of rows of at most this many elements
# (16 MB in float32): its padded copy and partial sums are then slab-sized blocks the allocator
# recycles step after step, whereas a buffer the size of a big kernel (64 MB for the paper's
# 2048x32 layer) is a fresh memory mapping, whose page faults cost more than the arithmetic.
_SLAB_ELEMENTS = 1 << 22


def neighbor_sum(slab, shifts, coefficients):
    """``t[:, c] = sum_i coefficients[i, c] * slab[:, (c + s_i) mod F]`` for a ``(rows, F)`` slab.

    The neighbour sum both regularizers are built on (``keras.ops``; the shifts and weights come
    from :func:`keras_topomap.grid.flat_shift_weights`).

    One circular padding (a concatenation) and ``len(shifts)`` slices of it: XLA computes the sum
    in one fused pass over the padded copy, and torch slices are views. Of the formulations tried
    it was the cheapest across the three backends (``ops.roll`` per shift is slightly cheaper in
    TensorFlow but twice as slow under XLA; per-shift concatenation and ``ops.conv`` are worse).
    """
    n_filters = slab.shape[-1]
    reach = max(min(s, n_filters - s) for s in shifts)
    padded = ops.concatenate([slab[:, n_filters - reach :], slab, slab[:, :reach]], axis=1)
    total = None
    for i, s in enumerate(shifts):  # unrolled at trace time: one term per flat shift
        start = reach + (s if s <= n_filters - s else s - n_filters)
        term = padded[:, start : start + n_filters] * coefficients[i]
        total = term if total is None else total + term
    return total


def topographic_penalty(kernel, grid, neighborhood=3, wrap=False, epsilon=1e-7, *, size=None,
                        implementation="auto"):
    """Unscaled topographic penalty ``sum_c sum_j alpha_cj (1 - cos(w_c, w_j))`` of a kernel.

    A pure, differentiable function of ``kernel`` (any shape ``(..., F)``) with a hand-written
    gradient; computed in float32 whatever the kernel's dtype. This is the building block of
    :class:`TopographicRegularizer`; most users want that class.

    Args:
        kernel: tensor whose last axis is the filter axis.
        grid: ``(H, W)`` with ``H * W == F`` (already validated).
        neighborhood: odd neighbourhood side.
        wrap: whether the grid is a torus.
        epsilon: added to squared filter norms, so an all-zero filter is finite.
        size: deprecated name of ``neighborhood``.
        implementation: ``"auto"`` (the default), ``"reference"`` or ``"fused"``: whether a
            backend's faster path (:mod:`keras_topomap.fast_penalty`; TensorFlow and PyTorch)
            computes the same value and gradient. ``"auto"`` takes it for large kernels on the
            CPU, where it was measured faster; ``"reference"`` always runs this ``keras.ops``
            code.

    Returns:
        float32 scalar tensor.

    Example:

    >>> import numpy as np
    >>> kernel = np.ones((3, 16, 4), "float32")  # four identical filters on a 2 x 2 grid
    >>> round(float(topographic_penalty(kernel, (2, 2))), 4)
    0.0
    """
    neighborhood = _deprecation.renamed_argument("topographic_penalty", "size", "neighborhood",
                                                 size, neighborhood)
    implementation = checks.choice(implementation, "implementation", fast_penalty.IMPLEMENTATIONS)
    shape = tuple(kernel.shape)
    n_elements = int(np.prod(shape)) if shape else 1
    if fast_penalty.use_fast_path(implementation, kernel, n_elements):
        value = fast_penalty.penalty(kernel, grid, neighborhood, wrap, epsilon, _penalty_terms)
        if value is not None:
            return value
    kernel = ops.cast(kernel, "float32")

    @ops.custom_gradient
    def _penalty(k):
        value, gradient = _penalty_terms(
            ops.reshape(k, (-1, shape[-1])), epsilon, grid, neighborhood, wrap, lazy=True
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return ops.reshape(gradient(ops.cast(upstream, "float32")), shape)

        return value, grad

    return _penalty(kernel)


def _penalty_terms(k2, epsilon, grid, neighborhood, wrap, lazy=False):
    """Value and gradient of the penalty of a ``(D, F)`` float32 kernel, in ``keras.ops``.

    Returns ``(value, gradient)``: the gradient tensor for an upstream of 1, or with
    ``lazy=True`` a function of the upstream computing it (the reference's backward pass).
    """
    shifts, weights_np, gather_np, n_centers = grid_lib.flat_shift_weights(grid, neighborhood, wrap)
    depth, n_filters = k2.shape
    slab_rows = max(1, _SLAB_ELEMENTS // n_filters)
    bounds = [(lo, min(lo + slab_rows, depth)) for lo in range(0, depth, slab_rows)]
    slabs = [k2[lo:hi] for lo, hi in bounds] if len(bounds) > 1 else [k2]
    # Whole-kernel reductions: fewer operations than per slab (in eager TF/torch each one
    # pays a thread-pool round trip), and XLA reads the kernel in place.
    sq_norm = ops.sum(ops.square(k2), axis=0)
    inv_norm = ops.rsqrt(sq_norm + epsilon)  # (F,)
    # v_c = sum_j beta_cj u_j with u = k / ||k||: the weights of the raw neighbours k_j.
    coefficients = ops.convert_to_tensor(weights_np) * ops.take(
        inv_norm, ops.convert_to_tensor(gather_np)
    )
    v_parts = [neighbor_sum(slab, shifts, coefficients) for slab in slabs]
    v = ops.concatenate(v_parts, axis=0) if len(v_parts) > 1 else v_parts[0]
    kv = ops.sum(k2 * v, axis=0)
    uv = inv_norm * kv  # <u_c, v_c> = sum_j beta_cj cos(c, j)
    value = n_centers - 0.5 * ops.sum(uv)

    def gradient(upstream):
        # d(-1/2 sum <u, v>)/dk = -(v - <u, v> u) / ||k||   (projection of the unit norm)
        scale = inv_norm * upstream
        along_k = uv * inv_norm * scale
        return k2 * along_k - v * scale

    return value, (gradient if lazy else gradient(1.0))


#: Default number of anchor channels of the global term: layers up to this width use all pairs.
MAX_GLOBAL_CHANNELS = 1024


@functools.lru_cache(maxsize=64)
def _global_constants(grid, wrap, max_channels):
    """Anchor channels, targets and pair mask of the global term (once per grid).

    Returns:
        ``(anchors, target, off_diagonal, n_pairs)``: every ``step``-th channel in row-major
        order with ``step = ceil(F / max_channels)`` (all channels when ``F <= max_channels``),
        int32 ``(K,)``; ``target[a, c] = 1 / d(anchor a, c)``, float32 ``(K, F)``, 0 where the
        anchor meets itself; the float32 mask of the pairs that count; and their number.
    """
    n_filters = grid[0] * grid[1]
    step = -(-n_filters // max_channels)
    anchors = np.arange(0, n_filters, step)
    d = grid_lib.distances(grid, wrap)[anchors]
    off_diagonal = d > 0
    target = np.where(off_diagonal, 1.0 / np.where(off_diagonal, d, 1.0), 0.0)
    arrays = (anchors.astype(np.int32), target.astype(np.float32), off_diagonal.astype(np.float32))
    for array in arrays:
        array.flags.writeable = False
    return (*arrays, float(off_diagonal.sum()))


def distance_target_penalty(columns, grid, wrap=False, max_channels=MAX_GLOBAL_CHANNELS):
    """The global term: every pair's similarity pulled towards ``1 / grid distance``.

    Poli, Dupoux & Riad (2023)'s form, ``mean over pairs (s_ij - 1 / d_ij)^2``, scaled by the
    number of channels ``F`` so that it is a sum over channels like the local term (and a
    strength means the same for both). ``s_ij = <columns_i, columns_j>``: pass unit-norm columns
    (filters, or standardised activity divided by ``sqrt(n)``, so that ``s`` is the cosine or
    the Pearson correlation). An absolute target, unlike TDANN's correlation between ``s`` and
    the target, penalises a layer whose channels all share one component (``s ~ 1`` at every
    distance); a target-correlation loss is blind to that shift.

    Pairs: all of them for ``F <= max_channels``; for wider layers every pair of an anchor
    channel (every ``ceil(F / max_channels)``-th in row-major order) with any channel, so every
    channel is still pulled at every distance while the matrix stays ``max_channels x F``. One
    matrix product, no loop over channels.

    Args:
        columns: ``(N, F)`` float32 tensor of unit-norm columns.
        grid: ``(H, W)`` with ``H * W == F`` (validated).
        wrap: measure distances on the torus.
        max_channels: most anchor channels.

    Returns:
        float32 scalar tensor.
    """
    anchors, _, _, _ = _global_constants(tuple(grid), bool(wrap), int(max_channels))
    if len(anchors) == grid[0] * grid[1]:
        similarity = ops.matmul(ops.transpose(columns), columns)
    else:
        chosen = ops.take(columns, ops.convert_to_tensor(anchors), axis=1)
        similarity = ops.matmul(ops.transpose(chosen), columns)
    return distance_target_error(similarity, grid, wrap, max_channels)


def distance_target_error(similarity, grid, wrap=False, max_channels=MAX_GLOBAL_CHANNELS):
    """:func:`distance_target_penalty` from the anchors' similarities ``(K, F)`` already computed.

    ``similarity[a, c]`` is the similarity of anchor channel ``a`` (all ``F`` channels when
    ``F <= max_channels``: then it is the full ``(F, F)`` matrix) with channel ``c``.
    """
    _, target, off_diagonal, n_pairs = _global_constants(
        tuple(grid), bool(wrap), int(max_channels)
    )
    error = ops.square(similarity - ops.convert_to_tensor(target))
    return ops.sum(error * ops.convert_to_tensor(off_diagonal)) * (grid[0] * grid[1] / n_pairs)



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
    ``Conv3D`` and ``Dense`` ``(in, F)`` kernels alike, and for a ``SeparableConv``'s pointwise
    kernel (``pointwise_regularizer=``).

    Transposed convolutions (kernel ``(k, filters, in)``: the last axis is the *input*) and
    depthwise ones (``(k, in, multiplier)`` for ``in x multiplier`` outputs, also a
    ``SeparableConv``'s ``depthwise_regularizer=``) are refused with a ValueError naming the
    layer, its class and the kernel's shape, not supported: the kernel alone cannot tell them
    from a ``Conv1D`` (``(3, 16, 16)`` is either), so a layout argument would be one more
    setting to keep in step with the layer; the transposed kernel would need a transposed copy
    every step; and depthwise filters each see one input channel. Keras calls the regularizer
    with the weight alone, so the check runs where the layer is known: in
    :func:`topographic_layers`, and the first time Keras calls the regularizer for a layer's
    weight (``fit``, ``evaluate``, ``model.losses``), which finds the layer in Keras' calling
    frame once per weight -- at trace time on TensorFlow and JAX, a dict lookup per step on
    PyTorch. For a map of such a layer's outputs use a
    :class:`~keras_topomap.TopographicActivityRegularizer`. See docs/regularizer.md.

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
        global_strength: multiplier of a global term over pairs at every grid distance,
            ``F * mean_pairs (cos(w_i, w_j) - 1 / d_ij)^2`` (see
            :func:`distance_target_penalty`), added to the penalty above. The default 0 leaves
            the paper's penalty unchanged.
        max_global_channels: layers wider than this compute the global term on the pairs of
            every ``ceil(F / max_global_channels)``-th filter with all filters.
        input_strength: multiplier of the *input side*: the same neighbour penalty on the
            kernel's second-to-last axis, its input channels, laid out on ``input_grid`` (the
            grid of the layer below). Input channel ``c`` is then the vector of every weight
            that reads it (``w[..., c, :]``), and neighbouring input channels are pushed to be
            read alike. That is what makes the *gradient* reaching the layer below smooth on
            its grid (``dL/da_c = sum w[..., c, :] * dL/dz``), and so its gradient-weighted
            maps (GradNAP): a smooth activity alone is multiplied by a gradient that no
            output-side term constrains. The default 0 leaves the paper's penalty unchanged.
            It reuses the output-side penalty on a transposed copy of the kernel (one copy
            per step; its cost on top of the training step is not yet benchmarked).
            A regularizer with only this side on (``strength=0``, ``global_strength=0``)
            orders no grid of its own layer, which :func:`topographic_layers` then leaves
            out (e.g. on a recognizer's output layer, for its last hidden layer's grid).
        input_grid: ``(rows, columns)`` of the input channels; ``None`` infers it from the
            kernel's input-channel count like ``grid``.
        implementation: ``"auto"``, ``"reference"`` or ``"fused"``: which code computes the
            neighbour penalty (see :func:`topographic_penalty`); all give the same value and
            gradient, ``"auto"`` the fastest measured on the backend and device.

    Example:

    ```python
    import keras
    from keras_topomap import TopographicRegularizer

    layer = keras.layers.Conv1D(
        256, 7, padding="same",
        kernel_regularizer=TopographicRegularizer(grid=(16, 16), strength=0.01),
    )
    # The layer above also reads neighbouring channels of that grid alike:
    above = keras.layers.Conv1D(
        256, 7, padding="same",
        kernel_regularizer=TopographicRegularizer(
            grid=(16, 16), strength=0.01, input_strength=0.01, input_grid=(16, 16)
        ),
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
        global_strength=0.0,
        max_global_channels=MAX_GLOBAL_CHANNELS,
        input_strength=0.0,
        input_grid=None,
        implementation="auto",
    ):
        self.implementation = checks.choice(
            implementation, "implementation", fast_penalty.IMPLEMENTATIONS
        )
        if grid is not None:
            grid = grid_lib.validate_grid(grid)
        if input_grid is not None:
            input_grid = grid_lib.validate_grid(input_grid)
            grid_lib.validate_neighborhood(neighborhood, input_grid)
        self.input_strength = checks.number(input_strength, "input_strength", minimum=0)
        self.input_grid = input_grid
        strength = checks.number(strength, "strength", minimum=0)
        self.global_strength = checks.number(global_strength, "global_strength", minimum=0)
        self.max_global_channels = checks.integer(
            max_global_channels, "max_global_channels", minimum=2
        )
        neighborhood = grid_lib.validate_neighborhood(neighborhood)
        if grid is not None:
            grid_lib.validate_neighborhood(neighborhood, grid)
        reduction = checks.choice(reduction, "reduction", _REDUCTIONS)
        epsilon = checks.positive_number(epsilon, "epsilon")
        self.grid = grid
        self.strength = strength
        self.neighborhood = neighborhood
        self.wrap = bool(wrap)
        self.reduction = reduction
        self.epsilon = epsilon
        # id(weight) -> (weak reference, owner label) of the layer weights already checked.
        self._checked = {}

    def resolve_grid(self, kernel_shape, owner=None):
        """The ``(H, W)`` grid used for a kernel of this shape (explicit or inferred).

        Args:
            kernel_shape: the kernel's shape, filters last.
            owner: what the kernel belongs to (a layer name or a variable path), for messages.

        Raises:
            ValueError: naming the owner and the kernel shape, when the grid does not fit it.
        """
        return self._axis_grid(self.grid, kernel_shape, -1, owner)

    def _axis_grid(self, given, kernel_shape, axis, owner):
        """The grid of the kernel's channel ``axis`` (-1: filters, -2: inputs): ``given`` or
        inferred from that axis' length, checked against the neighbourhood."""
        kernel_shape = tuple(kernel_shape)
        of = f"kernel of shape {kernel_shape}" + (f" of {owner}" if owner else "")
        outputs = axis == -1
        side = "" if outputs else ", input side"
        if len(kernel_shape) < -axis or kernel_shape[axis] is None:
            who, needs = (("TopographicRegularizer", "a known last (filter) axis") if outputs else
                          ("TopographicRegularizer's input side",
                           "a known input-channel axis (second to last)"))
            raise ValueError(f"{who} needs a kernel with {needs}. Received: {of}")
        what = f"TopographicRegularizer {'grid' if outputs else 'input grid'} for {of}"
        grid = grid_lib.resolve_grid(given, int(kernel_shape[axis]), what=what)
        try:
            grid_lib.validate_neighborhood(self.neighborhood, grid)
        except ValueError as e:
            raise ValueError(f"{e} ({of}{side})") from None
        return grid

    @property
    def orders_outputs(self):
        """Whether the penalty orders the layer's own output channels (False only when the
        input side is the one term on: ``strength == global_strength == 0 < input_strength``)."""
        return self.strength > 0 or self.global_strength > 0 or self.input_strength == 0

    def resolve_input_grid(self, kernel_shape, owner=None):
        """The ``(H, W)`` grid of the kernel's input channels (its second-to-last axis).

        Raises:
            ValueError: naming the owner and the kernel shape, when the kernel has no input
                axis or the grid does not fit it.
        """
        return self._axis_grid(self.input_grid, kernel_shape, -2, owner)

    def _owner(self, x):
        """What ``x`` belongs to, for messages; on first sight of a layer's weight (from Keras'
        loss sum), checks that its last axis is the layer's output channels.

        Keras passes a layer's regularizer the variable (TensorFlow, PyTorch) or, inside a
        stateless JAX step, its value alone; the variable and the layer or model summing the
        losses are found from Keras' calling frame, at trace time on TensorFlow and JAX. A
        weight already checked costs a dict lookup (PyTorch calls this eagerly every step).
        """
        seen = self._seen(x)
        if seen is not None:
            return seen
        found = internals.regularized_weight()
        if found is None or found[1] is None:  # not called by Keras for a layer's weight
            return getattr(x, "path", None)
        root, variable = found
        seen = self._seen(variable)
        if seen is not None:
            return seen
        layer = _weight_owner(root, variable)
        if layer is None:
            return getattr(variable, "path", None)
        _check_kernel_layout(layer, variable)
        owner = f"{_layer_label(layer)}, weight {getattr(variable, 'path', variable.name)!r}"
        try:
            self._checked[id(variable)] = (weakref.ref(variable), owner)
        except TypeError:  # a weight type without weak references: found again each call
            pass
        return owner

    def _seen(self, weight):
        entry = self._checked.get(id(weight))
        return entry[1] if entry is not None and entry[0]() is weight else None

    def __call__(self, x):
        owner = self._owner(x)
        value = ops.zeros((), "float32")
        if self.orders_outputs:
            grid = self.resolve_grid(x.shape, owner=owner)
            value = self.strength * topographic_penalty(
                x, grid, self.neighborhood, self.wrap, self.epsilon,
                implementation=self.implementation,
            )
            if self.global_strength > 0:
                k2 = ops.reshape(ops.cast(x, "float32"), (-1, grid[0] * grid[1]))
                unit = k2 * ops.rsqrt(ops.sum(ops.square(k2), axis=0) + self.epsilon)
                pull = distance_target_penalty(unit, grid, self.wrap, self.max_global_channels)
                value = value + self.global_strength * pull
            if self.reduction == "mean":
                value = value / float(grid[0] * grid[1])
        if self.input_strength > 0:
            in_grid = self.resolve_input_grid(x.shape, owner=owner)
            # Input channels last: the same penalty then compares the weights that read them.
            rank = len(x.shape)
            reads = ops.transpose(x, [*range(rank - 2), rank - 1, rank - 2])
            side = self.input_strength * topographic_penalty(
                reads, in_grid, self.neighborhood, self.wrap, self.epsilon,
                implementation=self.implementation,
            )
            if self.reduction == "mean":
                side = side / float(in_grid[0] * in_grid[1])
            value = value + side
        return value

    def get_config(self):
        return {
            "grid": None if self.grid is None else list(self.grid),
            "strength": self.strength,
            "neighborhood": self.neighborhood,
            "wrap": self.wrap,
            "reduction": self.reduction,
            "epsilon": self.epsilon,
            "global_strength": self.global_strength,
            "max_global_channels": self.max_global_channels,
            "input_strength": self.input_strength,
            "input_grid": None if self.input_grid is None else list(self.input_grid),
            "implementation": self.implementation,
        }

    def __repr__(self):
        return (
            f"TopographicRegularizer(grid={self.grid}, strength={self.strength}, "
            f"neighborhood={self.neighborhood}, wrap={self.wrap}, "
            f"reduction={self.reduction!r}, epsilon={self.epsilon}, "
            f"global_strength={self.global_strength}, input_strength={self.input_strength}, "
            f"input_grid={self.input_grid})"
        )


# Layers whose kernel's last axis is not (or not only) their output channels: a transposed
# convolution's kernel is (..., filters, in) and a depthwise one's (..., in, multiplier) with
# in * multiplier outputs. A topographic kernel regularizer on them would order the wrong units.
_OTHER_KERNEL_LAYOUTS = (
    "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D",
)


_TRANSPOSED_LAYOUTS = _OTHER_KERNEL_LAYOUTS[:3]


def _is_other_layout(layer, names=_OTHER_KERNEL_LAYOUTS):
    return any(isinstance(layer, getattr(keras.layers, name, ())) for name in names)


def _output_channels(layer):
    """The number of output channels of ``layer`` (its units on a grid), or None if unknown.

    ``filters`` of a convolution (transposed or separable too), ``units`` of ``Dense``,
    ``in * depth_multiplier`` of a depthwise convolution; else the last axis of the layer's
    symbolic output, if it has one (``DepthwiseConv1D(3, depth_multiplier=4)`` on 8 input
    channels: 32).
    """
    for name in ("filters", "units"):
        value = getattr(layer, name, None)
        if checks.is_integer(value):
            return int(value)
    kernel = getattr(layer, "kernel", None)
    if kernel is not None and hasattr(layer, "depth_multiplier") and len(kernel.shape) >= 2:
        return int(kernel.shape[-2]) * int(kernel.shape[-1])
    try:
        channels = layer.output.shape[-1]
    except (AttributeError, ValueError, IndexError, TypeError):
        return None
    return None if channels is None else int(channels)


def _variable_label(variable):
    return getattr(variable, "name", None) or "kernel"


def _check_kernel_layout(layer, variable=None):
    """Refuses a TopographicRegularizer on a weight whose last axis is not ``layer``'s outputs.

    The regularizer puts the kernel's *last* axis on its grid, which is a layer's output
    channels for ``Conv1D``/``Conv2D``/``Conv3D``, ``Dense`` and the pointwise kernel of a
    ``SeparableConv``, but not for transposed convolutions (``(..., filters, in)``: the last axis
    is the *input*), depthwise convolutions (``(..., in, multiplier)`` for ``in x multiplier``
    outputs) or a ``SeparableConv``'s depthwise kernel. The regularizer is called with the
    kernel alone, which cannot tell these apart (``Conv1D`` ``(3, 16, 16)`` and
    ``Conv1DTranspose`` ``(3, 16, 16)`` look the same), so this check runs where the layer is
    known: in :func:`topographic_layers` and, at the first loss evaluation, in the
    regularizer's own call.

    Args:
        layer: the layer that owns the weight.
        variable: the regularized weight (None: the layer's ``kernel``).

    Raises:
        ValueError: naming the layer, its class, the weight's shape and the layer's output
            channels.
    """
    if variable is None:
        variable = getattr(layer, "kernel", None)
    if variable is None:
        return
    shape = tuple(variable.shape)
    label = _variable_label(variable)
    outputs = _output_channels(layer)
    kind = type(layer).__name__
    transposed = _is_other_layout(layer, _TRANSPOSED_LAYOUTS)
    if transposed:
        why = ("a transposed convolution's kernel is (..., filters, in): its last axis is the "
               "layer's input channels")
    elif _is_other_layout(layer) or label == "depthwise_kernel":
        why = ("a depthwise kernel is (..., in, multiplier): its last axis is the multiplier, "
               "not the layer's in x multiplier output channels")
    elif outputs is not None and shape and shape[-1] is not None and int(shape[-1]) != outputs:
        why = f"it holds {shape[-1]}"
    else:
        return
    count = "" if outputs is None else f"{outputs} "
    raise ValueError(
        f"Layer {layer.name!r} ({kind}) has a {label} of shape {shape} whose last axis is not "
        f"its {count}output channels: {why}. TopographicRegularizer puts the kernel's last "
        "axis on its grid, so it would order the wrong units; it supports Conv1D/2D/3D and "
        "Dense kernels and the pointwise kernel of a SeparableConv (pointwise_regularizer=). "
        "For a map of this layer's outputs use a TopographicActivityRegularizer, or follow it "
        f"with a 1x1 Conv. Received: {kind} with a TopographicRegularizer on its {label}"
    )


# (regularizer attribute, weight attribute) pairs of the Keras layers that take a weight
# regularizer, in the order they are looked up.
_REGULARIZED_WEIGHTS = (
    ("kernel_regularizer", "kernel"),
    ("pointwise_regularizer", "pointwise_kernel"),  # SeparableConv: filters last
    ("depthwise_regularizer", "depthwise_kernel"),  # SeparableConv: refused
    ("depthwise_regularizer", "kernel"),  # DepthwiseConv: refused
)


def _topographic_weight(layer):
    """``(regularizer, weight)`` of the first weight of ``layer`` that carries a
    :class:`TopographicRegularizer`, else ``(None, None)``."""
    for reg_name, weight_name in _REGULARIZED_WEIGHTS:
        reg = getattr(layer, reg_name, None)
        if not isinstance(reg, TopographicRegularizer) or not reg.orders_outputs:
            continue
        weight = getattr(layer, weight_name, None)
        if weight is not None:
            return reg, weight
    return None, None


def filter_kernel(layer):
    """The weight of ``layer`` whose last axis is its output channels, or None.

    That is a ``Conv``'s or ``Dense``'s kernel and a ``SeparableConv``'s pointwise kernel: the
    weight a :class:`TopographicRegularizer` can order and a topography score can read. None
    for transposed convolutions (kernel ``(..., filters, in)``), depthwise ones
    (``(..., in, multiplier)``) and layers without a kernel.

    Example:

    >>> conv = keras.layers.Conv1D(16, 3)
    >>> conv.build((None, 20, 4))
    >>> filter_kernel(conv) is conv.kernel
    True
    >>> up = keras.layers.Conv1DTranspose(16, 3)
    >>> up.build((None, 20, 4))
    >>> filter_kernel(up) is None
    True
    """
    kernel = getattr(layer, "pointwise_kernel", None)
    if kernel is None:
        kernel = getattr(layer, "kernel", None)
    if kernel is None or not hasattr(kernel, "shape"):
        return None
    try:
        _check_kernel_layout(layer, kernel)
    except ValueError:
        return None
    return kernel


def topographic_layers(model):
    """The layers of ``model`` that carry a topographic constraint, on weights or on activity.

    A layer counts when its kernel carries a :class:`TopographicRegularizer` or its output a
    :class:`~keras_topomap.TopographicActivityRegularizer`. Searches nested models too. Returns
    a dict ``{layer_name: info}`` in model order, where ``info`` is a dict with

    - ``layer``: the layer;
    - ``kind``: ``"weight"``, ``"activity"`` or ``"both"`` -- which constraint it carries;
    - ``grid``: ``(H, W)`` of the layer's output channels, resolved from the regularized
      kernel (whose last axis they are) or, for activity, from the layer's output channels;
    - ``regularizer``: the kernel's :class:`TopographicRegularizer`, or None;
    - ``activity_regularizer``: the :class:`~keras_topomap.TopographicActivityRegularizer`,
      or None;
    - ``kernel``: the regularized kernel (a ``SeparableConv``'s pointwise kernel), or for an
      activity-only layer the kernel whose last axis is its output channels (None for a layer
      without one, and for transposed and depthwise convolutions).

    Raises:
        ValueError: naming the layer, when its grid does not fit its kernel, its kernel's
            last axis is not its output channels (transposed and depthwise convolutions, a
            SeparableConv's depthwise kernel), or its two regularizers put its channels on
            different grids.

    Example:

    >>> for name, info in topographic_layers(model).items():
    ...     print(name, info["kind"], info["grid"])
    """
    from keras_topomap.activity import TopographicActivityRegularizer

    found = {}
    for layer in internals.all_sublayers(model):
        weight_reg, kernel = _topographic_weight(layer)
        activity_reg = getattr(layer, "activity_regularizer", None)
        if not isinstance(activity_reg, TopographicActivityRegularizer):
            activity_reg = None
        if weight_reg is None and activity_reg is None:
            continue
        grid = None
        if weight_reg is not None:
            _check_kernel_layout(layer, kernel)
            grid = weight_reg.resolve_grid(kernel.shape, owner=_layer_label(layer))
        else:
            kernel = filter_kernel(layer)
        if activity_reg is not None:
            channels = _output_channels(layer)
            try:
                activity_grid = activity_reg.resolve_grid((None, channels))
            except ValueError as e:
                raise ValueError(f"{e} (activity of {_layer_label(layer)})") from None
            if grid is not None and tuple(grid) != tuple(activity_grid):
                raise ValueError(
                    f"Layer '{layer.name}' puts its channels on two grids: {tuple(grid)} for "
                    f"its kernel regularizer and {tuple(activity_grid)} for its activity "
                    "regularizer. Give both the same grid."
                )
            grid = activity_grid
        kind = "both" if weight_reg and activity_reg else "weight" if weight_reg else "activity"
        found[layer.name] = {
            "layer": layer,
            "kind": kind,
            "grid": grid,
            "regularizer": weight_reg,
            "activity_regularizer": activity_reg,
            "kernel": kernel,
        }
    return found


def _weight_owner(root, variable):
    """The sublayer of ``root`` (``root`` itself included) that owns ``variable``: the one named
    by the variable's path, else the deepest that holds it; None if none does."""
    layers = internals.all_sublayers(root)
    parts = str(getattr(variable, "path", "")).split("/")
    name = parts[-2] if len(parts) >= 2 else None
    for layer in layers:
        if layer.name == name and any(w is variable for w in layer.weights):
            return layer
    owner = None
    for layer in layers:  # pre-order: a later match is nested deeper
        if any(w is variable for w in layer.weights):
            owner = layer
    return owner


def _layer_label(layer):
    return f"layer {layer.name!r} ({type(layer).__name__})"
