"""Optimal inputs: what maximally drives a filter or a grid region (activation maximisation).

Gradient ascent on an input window, after Yosinski et al. (2015), "Understanding Neural Networks
Through Deep Visualization": start from a small random input and repeatedly step along the
gradient of the target activation, applying regularisers between steps so the result stays
interpretable (smooth, bounded, free of high-frequency noise):

- **L2 decay**: ``x <- (1 - l2) * x`` every step;
- **Gaussian blur** over time x feature (``sigma = blur`` frames / feature bins) every
  ``blur_every`` steps;
- **clipping of small values**: the ``clip`` fraction of smallest-magnitude values of each input
  is set to 0 (the mean of normalised features) every step;
- **random time jitter**: the gradient is taken at the input rolled by a random shift of up to
  ``jitter`` frames and rolled back, so the pattern must work at slightly different positions;
- **value range**: values are clipped to ``value_range`` (normalised features rarely leave
  +-3 standard deviations).
- **polish**: the last ``polish`` fraction of the steps (default 20%) skip blur and jitter and
  take smaller steps, so every input ends at a maximum of its target; without it the result is
  whatever the last blur left, and comparisons between inputs (is a filter's own input its best?
  does the joint input beat every single-filter input on the region?) become a matter of luck.

The *target* is the activation of a filter of ``layer`` at the layer's **centre time step**: the
layer frame whose receptive field sits in the middle of the input window. With ``filters`` each
filter gets its own input, all optimised together in one batched run (the batch axis runs over
filters); with ``joint=True`` one input maximises the *sum* of the chosen filters (e.g. a grid
region from :meth:`keras_topomap.gradnap.GradNAP.most_responsive_region`).

**Images and other models.** For a layer with outputs other than ``(batch, time, filters)`` on a
``(batch, time, features)`` model -- a ``Conv2D`` on images ``(batch, H, W, channels)``, a
``Dense`` layer on images or vectors -- the input has the model's fixed input shape (or
``image_size`` where the model leaves height and width open) and the target is the unit's
activation at the **centre position** of the layer's output (row ``(H' - 1) // 2``, column
``(W' - 1) // 2`` of a Conv2D output; the unit itself for a Dense layer). Jitter rolls the image
by up to ``jitter`` pixels in both directions, blur runs over rows and columns (each channel on
its own, so colour survives), decay, clipping and bounds are as above; a flat ``(batch, D)`` input
gets neither jitter nor blur. These layers are optimised through the full model (no cone).

Steps use the gradient adapter :class:`keras_topomap.gradients.ActivationGradients` (compiled
once, every backend); the step size is normalised per input (the gradient is divided by its root
mean square), so filters with very different gradient magnitudes progress alike.

**Cone model (speed).** Only the receptive field of the centre frame matters, but running the
whole "same"-padded model computes every frame of every layer. When the path from the input to
``layer`` is a chain of 1D convolutions, 1D poolings and per-frame layers (Wav2Letter is), the
optimisation runs on a *cone model*: copies of those layers with ``"valid"`` padding (same
weights) after a crop that aligns frames, which computes exactly the frames whose receptive field
lies inside the window. Values agree with the original model at those frames (checked once per
fit on a random input; on a mismatch, or for other architectures, the full model is used:
``cone_`` says which). The last convolution's activation is applied in the target, with a small
leak (``0.01 * pre-activation``) so that a filter whose ReLU is off at the start still gets a
gradient; reported activations are the plain layer outputs. Image and vector layers with an
``activation`` (Conv2D, Dense) get the same leak, through a copy of the layer without its
activation.

Example:

>>> from keras_topomap import optimal_inputs
>>> inputs, acts = optimal_inputs(model, "conv_big_1", filters=[0, 5, 9], steps=200,
...                               return_activations=True)
>>> inputs.shape             # (filters, receptive field + margin, n_features)
(3, 202, 40)
>>> region = gradnap.most_responsive_region("conv_big_1", "AE")
>>> single = optimal_inputs(model, "conv_big_1", region=region)
>>> joint = optimal_inputs(model, "conv_big_1", region=region, joint=True)   # (1, T, F)
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
from keras import ops

from keras_topomap import _keras_internals as internals
from keras_topomap import checks
from keras_topomap import grid as grid_lib
from keras_topomap._arrays import to_numpy
from keras_topomap.gradients import ActivationGradients, find_layer, flatten_model
from keras_topomap.receptive_field import receptive_fields

__all__ = ["OptimalInputs", "optimal_inputs"]

#: Gradient weight of the pre-activation added to the activation in the cone model's target, so
#: that a filter whose ReLU is off still moves (does not change where the ReLU is on much).
_LEAK = 0.01

#: Step size of the polishing steps relative to ``learning_rate``.
_POLISH_RATE = 0.2


class OptimalInputs:
    """Activation maximisation for filters of one layer (scikit-learn style: ``fit()`` -> self).

    Args:
        model: a Functional or Sequential Keras model on ``(batch, time, features)`` inputs, or
            on images ``(batch, H, W, channels)`` or vectors (see the module doc).
        layer: name of the layer whose filters (Conv1D/Conv2D) or units (Dense) are maximised.
        filters: filter indices (each gets its own input). Default: every filter of the layer
            (or of ``region``).
        region: a :class:`keras_topomap.grid.Region` (e.g. from ``GradNAP.most_responsive_region``
            or :func:`keras_topomap.grid.most_responsive_region`), or ``(center, size)`` with
            ``center = (row, col)`` on the layer's grid. Its filters replace ``filters``.
        joint: one input maximising the *sum* of the filters (region or ``filters``) instead of
            one input per filter.
        length: input frames. Default: the layer's receptive field plus ``2 * jitter`` (plus a
            frame where the layer's frame alignment needs it). Shorter than the receptive field
            is an error.
        steps: gradient-ascent steps (Yosinski et al. used 1000; 200 is usually enough here).
        learning_rate: step size in units of the input (the gradient is RMS-normalised per
            input).
        l2: multiplicative decay per step.
        blur: Gaussian blur sigma in frames and feature bins (0 disables).
        blur_every: blur every this many steps.
        clip: fraction (0..1) of the smallest-magnitude values of each input set to 0 per step.
        jitter: largest random time shift (frames) per step, or image shift (pixels, rows and
            columns independently) (0 disables).
        value_range: ``(low, high)`` bounds on input values (None: unbounded). The default suits
            per-utterance normalised features (:class:`keras_topomap.datasets.FeatureConfig`).
        polish: fraction of the steps, at the end, run without blur and jitter at a fifth of
            the step size (decay, clipping and bounds stay), so each input ends at a maximum of
            its target rather than just after a blur (0: regularise to the last step, as
            Yosinski et al.).
        restarts: random starts per target, optimised together as extra rows of the batch; the
            one reaching the highest activation is kept. Default: 8 with ``joint`` (one target,
            so extra starts are nearly free and a sum of filters has more local maxima), else 1.
        init_scale: standard deviation of the random start.
        grid: ``(H, W)`` grid of the layer for ``region=(center, size)``; default: the grid of
            the layer's :class:`~keras_topomap.TopographicRegularizer`.
        seed: seed of the random start and the jitter (same seed, same result).
        cone: use the cone model when the architecture allows (see the module doc); False
            always differentiates the full model.
        progress: show a progress bar.
        image_size: ``(H, W)`` of the optimised images when the model's input leaves them open
            (``keras.Input((None, None, 3))``); must match where the model fixes them.

    Attributes (after :meth:`fit`):
        inputs_: float32 ``(n, T, n_features)``: one row per filter, or one row for ``joint``
            (``(n, H, W, channels)`` for image models).
        inputs_shape_: the shape of one input (``inputs_.shape[1:]``).
        activations_: float ``(n,)``: what each input achieves on the original model at the
            centre frame: the filter's activation, or for ``joint`` the sum over the filters.
        filters_: int ``(n,)`` filter per input; for ``joint`` the summed filters (``(k,)``).
        region_: the :class:`~keras_topomap.grid.Region` (None without one).
        center_frame_: the layer frame (of the original model on ``T`` frames) that is the
            target (None for image and vector layers).
        position_: the target's index along the layer's axes between batch and units:
            ``(center_frame_,)``, ``(row, col)`` of a Conv2D output, ``()`` for Dense.
        receptive_field_: the layer's receptive field in input frames (None for image and
            vector layers).
        history_: float ``(steps, n)``: the (surrogate) target per input at each step (of the
            kept start).
        cone_: True if the cone model was used.

    Example:

    >>> opt = OptimalInputs(model, "conv_big_1", region=((3, 4), 3), steps=300).fit()
    >>> opt.inputs_.shape, opt.activations_.shape
    ((9, 202, 40), (9,))
    >>> opt.layer_response(opt.inputs_).shape      # every filter at the centre frame
    (9, 256)
    """

    def __init__(self, model, layer, filters=None, region=None, joint=False, length=None,
                 steps=200, learning_rate=0.5, l2=1e-4, blur=1.0, blur_every=4, clip=0.0,
                 jitter=4, value_range=(-3.0, 3.0), polish=0.2, restarts=None, init_scale=0.1,
                 grid=None, seed=0, cone=True, progress=False, image_size=None):
        self.model = model
        self.layer = layer
        self.filters = filters
        self.region = region
        self.joint = joint
        self.length = length
        self.steps = steps
        self.learning_rate = learning_rate
        self.l2 = l2
        self.blur = blur
        self.blur_every = blur_every
        self.clip = clip
        self.jitter = jitter
        self.value_range = value_range
        self.polish = polish
        self.restarts = restarts
        self.init_scale = init_scale
        self.grid = grid
        self.seed = seed
        self.cone = cone
        self.progress = progress
        self.image_size = image_size

    # -- checks ---------------------------------------------------------------------------------

    def _check_params(self):
        owner = "OptimalInputs"
        self._steps = checks.positive_int(self.steps, "steps", owner=owner)
        self._blur_every = checks.positive_int(self.blur_every, "blur_every", owner=owner)
        self._jitter = checks.non_negative_int(self.jitter, "jitter", owner=owner)
        restarts = (8 if self.joint else 1) if self.restarts is None else self.restarts
        self._restarts = checks.positive_int(restarts, "restarts", owner=owner)
        checks.positive_number(self.learning_rate, "learning_rate", owner=owner)
        for name in ("blur", "init_scale"):
            checks.number(getattr(self, name), name, minimum=0, owner=owner)
        for name in ("l2", "clip"):
            checks.fraction(getattr(self, name), name, owner=owner)
        checks.number(self.polish, "polish", minimum=0, maximum=1, owner=owner)
        if self.value_range is not None:
            low, high = (float(v) for v in self.value_range)
            if not low < high:
                raise ValueError(
                    f"OptimalInputs: value_range must be (low, high) with low < high. "
                    f"Received: value_range={self.value_range!r}"
                )

    def _resolve_filters(self, n_filters):
        """(filter indices, region) from ``filters`` / ``region``."""
        if self.region is not None and self.filters is not None:
            raise ValueError(
                "OptimalInputs: give filters or region, not both. Received: "
                f"filters={self.filters!r}, region={self.region!r}"
            )
        region = None
        if self.region is not None:
            region = self._resolve_region(n_filters)
            filters = np.asarray(region.filters, dtype=np.int64)
        elif self.filters is None:
            filters = np.arange(n_filters)
        else:
            raw = np.atleast_1d(np.asarray(self.filters))
            if raw.ndim != 1 or raw.size == 0 or not np.issubdtype(raw.dtype, np.integer):
                raise ValueError(
                    f"filters of layer '{self.layer}' must be a non-empty list of integer indices."
                    f" Received: filters={self.filters!r}"
                )
            bad = raw[(raw < 0) | (raw >= n_filters)]
            if bad.size:
                raise ValueError(
                    f"Layer '{self.layer}' has {n_filters} filters (indices 0..{n_filters - 1}). "
                    f"Received out-of-range filters: {bad.tolist()}"
                )
            if np.unique(raw).size != raw.size:
                raise ValueError(
                    f"filters of layer '{self.layer}' must not repeat. Received: "
                    f"filters={raw.tolist()}"
                )
            filters = raw.astype(np.int64)
        return filters, region

    def _layer_grid(self, n_filters):
        if self.grid is not None:
            what = f"grid of layer '{self.layer}'"
            return grid_lib.validate_grid(self.grid, n_filters, what=what)
        from keras_topomap.regularizers import topographic_layers

        found = topographic_layers(self.model)
        if self.layer not in found:
            raise ValueError(
                f"Layer '{self.layer}' has no TopographicRegularizer, so its grid is unknown; pass "
                f"grid=(H, W) or a Region. Received: region={self.region!r}"
            )
        return tuple(found[self.layer]["grid"])

    def _resolve_region(self, n_filters):
        region = self.region
        if isinstance(region, grid_lib.Region):
            h, w = region.grid
            if h * w != n_filters:
                raise ValueError(
                    f"Region grid {h}x{w} holds {h * w} filters but layer '{self.layer}' has "
                    f"{n_filters}. Received: region={region!r}"
                )
            filters = np.asarray(region.filters, dtype=np.int64)
            if filters.size == 0 or filters.min() < 0 or filters.max() >= n_filters:
                raise ValueError(
                    f"Region filters must be indices 0..{n_filters - 1} of layer '{self.layer}'. "
                    f"Received: {filters.tolist()}"
                )
            return region
        try:
            center, size = region
            center = tuple(int(v) for v in center)
        except (TypeError, ValueError):
            raise ValueError(
                "region must be a keras_topomap.grid.Region or (center, size) with center = "
                f"(row, col). Received: region={region!r}"
            ) from None
        grid = self._layer_grid(n_filters)
        try:
            filters = grid_lib.region_filters(center, size, grid)
        except ValueError as err:
            raise ValueError(f"Region of layer '{self.layer}': {err}") from None
        return grid_lib.Region(center=center, filters=filters, value=float("nan"), size=int(size),
                               grid=grid)

    # -- geometry -------------------------------------------------------------------------------

    def _timing(self, length):
        """(LayerTiming for ``length`` frames, frame starts of fully covered frames)."""
        timing = receptive_fields(self.model, n_frames=int(length))
        if self.layer not in timing:
            raise ValueError(
                f"Layer '{self.layer}' has no time axis (receptive_fields cannot time it). "
                f"Layers with a time axis: {list(timing)}"
            )
        lt = timing[self.layer]
        starts = lt.field_starts()
        inside = (starts >= 0) & (starts + lt.size <= length)
        return lt, starts, inside

    def _resolve_length(self):
        field = receptive_fields(self.model)
        if self.layer not in field:
            raise ValueError(
                f"Layer '{self.layer}' has no time axis (receptive_fields cannot time it). "
                f"Layers with a time axis: {list(field)}"
            )
        size = field[self.layer].size
        if self.length is None:
            length = size + 2 * self._jitter
            # A strided layer may need one more frame for a frame to fit entirely inside.
            for extra in range(2 * field[self.layer].stride + 1):
                if self._timing(length + extra)[2].any():
                    return length + extra, size
            raise ValueError(
                f"No frame of layer '{self.layer}' fits inside {length} input frames."
            )
        if not checks.is_integer(self.length) or self.length < size:
            raise ValueError(
                f"length must be an integer >= the receptive field of layer '{self.layer}', "
                f"{size} input frames (a shorter window cuts off part of what the centre frame "
                f"sees). Received: length={self.length!r}"
            )
        length = int(self.length)
        if not self._timing(length)[2].any():
            raise ValueError(
                f"With length={length} no frame of layer '{self.layer}' (receptive field {size} "
                f"frames, stride {field[self.layer].stride}) lies entirely inside the input; "
                f"use length={length + 1} or more."
            )
        return length, size

    # -- the models -----------------------------------------------------------------------------

    def _chain(self):
        """Layers from the input to ``layer`` if that path is a plain chain, else None."""
        try:
            mode, steps, input_ids, _ = internals.graph_steps(self.model)
        except ValueError:
            return None
        if mode == "chain":  # an unbuilt Sequential
            chain = []
            for layer in steps:
                chain.append(layer)
                if layer.name == self.layer:
                    return chain
            return None
        if len(input_ids) != 1:
            return None
        # Walk the model's own graph (layers may also be used in other models, e.g. the
        # flattened copies of the gradient adapter, so their node lists are not enough).
        chain, current = [], input_ids[0]
        for layer, ins, outs in steps:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if ins != [current] or len(outs) != 1:
                return None
            chain.append(layer)
            current = outs[0]
            if layer.name == self.layer:
                return chain
        return None

    def _build_cone(self, crop, n_features):
        """The "valid"-padded copy of the path to ``layer`` (or None if not a supported chain).

        ``crop = (left, right)`` cuts the window down to the target frame's receptive field, so
        the cone model computes exactly one frame of ``layer``.
        """
        from keras_topomap.receptive_field import layer_kind

        chain = self._chain()
        if chain is None:
            return None, None
        kinds = [layer_kind(layer) for layer in chain]
        if any(kind not in ("conv", "pool", "pointwise") for kind in kinds):
            return None, None
        x_in = keras.Input(shape=(None, n_features), name="window")
        crop = (int(crop[0]), int(crop[1]))
        x = keras.layers.Cropping1D(crop, name="receptive_field")(x_in) if any(crop) else x_in
        activation = None
        for i, (layer, kind) in enumerate(zip(chain, kinds)):
            last = i == len(chain) - 1
            if kind == "pointwise":
                x = layer(x)
                continue
            config = layer.get_config()
            config.update(padding="valid", name=f"{layer.name}_cone")
            for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                        "kernel_constraint", "bias_constraint"):
                if key in config:
                    config[key] = None
            if last and kind == "conv" and "activation" in config:
                activation = layer.activation
                config["activation"] = "linear"
            clone = type(layer).from_config(config)
            clone.build(x.shape)
            clone.set_weights(layer.get_weights())
            x = clone(x)
        return keras.Model(x_in, x, name=f"{self.layer}_cone"), activation

    # -- fit ------------------------------------------------------------------------------------

    def fit(self):
        """Runs the optimisation. Returns self."""
        self._check_params()
        model_layer = find_layer(self.model, self.layer)
        out_shape = tuple(model_layer.output.shape)
        in_shape = tuple(internals.graph_inputs(self.model)[0].shape)
        if len(out_shape) < 2 or out_shape[-1] is None:
            raise ValueError(
                f"Layer '{self.layer}' must output (batch, ..., units) with a known number of "
                f"units. Received: output shape {out_shape}"
            )
        n_filters = int(out_shape[-1])
        filters, region = self._resolve_filters(n_filters)
        if len(in_shape) == 3 and len(out_shape) == 3:
            step, weights, shape, cone_model = self._prepare_sequence(in_shape, filters, n_filters)
        else:
            step, weights, shape = self._prepare_positions(in_shape, out_shape, filters)
            cone_model = None

        # Restarts are extra rows of the same batch; the best start of each target is kept.
        restarts = self._restarts
        starts_weights = np.repeat(weights, restarts, axis=0)
        x = self._optimize(step, starts_weights, shape)
        achieved = np.sum(self.layer_response(x) * starts_weights, axis=1)
        first = np.arange(len(weights)) * restarts
        best = first + np.argmax(achieved.reshape(-1, restarts), axis=1)
        self.inputs_ = x[best]
        self.activations_ = achieved[best]
        self.history_ = self.history_[:, best]
        self.filters_ = filters.copy()
        self.region_ = region
        self.position_ = self._position
        self.cone_ = cone_model is not None
        return self

    def _target_weights(self, filters, n_filters):
        """One row per input; the weights select the filters whose activation it maximises."""
        if self.joint:
            weights = np.zeros((1, n_filters), np.float32)
            weights[0, filters] = 1.0
        else:
            weights = np.zeros((len(filters), n_filters), np.float32)
            weights[np.arange(len(filters)), filters] = 1.0
        return weights

    def _prepare_sequence(self, in_shape, filters, n_filters):
        """(step, weights, input shape, cone model) for a time layer of a sequence model."""
        if in_shape[-1] is None:
            raise ValueError(
                f"Model '{self.model.name}' must take (batch, time, n_features) inputs with a "
                f"known number of features. Received: input shape {in_shape}"
            )
        n_features = int(in_shape[-1])
        length, size = self._resolve_length()
        if in_shape[1] is not None and int(in_shape[1]) != length:
            raise ValueError(
                f"Model '{self.model.name}' takes exactly {in_shape[1]} frames; length is {length}."
            )
        lt, starts, inside = self._timing(length)
        centers = lt.centers()
        candidates = np.flatnonzero(inside)
        center = int(candidates[np.argmin(np.abs(centers[candidates] - (length - 1) / 2))])
        self._taps = flatten_model(self.model, [self.layer], include_output=False)
        self.inputs_shape_ = (length, n_features)
        self._position = (center,)
        self._spatial_axes = (1, 2)  # blur over time and feature
        self._jitter_axes = (1,)  # jitter in time only
        weights = self._target_weights(filters, n_filters)

        cone_model, activation = (None, None)
        if self.cone:
            start = int(starts[center])
            crop = (start, length - start - int(size))
            cone_model, activation = self._build_cone(crop, n_features)
            if cone_model is not None and not self._cone_agrees(cone_model, activation, 0,
                                                                length, n_features):
                warnings.warn(
                    f"The cone model of layer '{self.layer}' disagrees with the model; "
                    "optimising through the full model instead (slower).",
                    stacklevel=3,
                )
                cone_model = None
        if cone_model is not None:
            step = _objective(cone_model, None, (0,), activation)
        else:
            step = _objective(self.model, self.layer, self._position, None)
        self.center_frame_ = center
        self.receptive_field_ = int(size)
        return step, weights, (length, n_features), cone_model

    def _prepare_positions(self, in_shape, out_shape, filters):
        """(step, weights, input shape) for an image layer or a layer without positions.

        The target is the unit's activation at the centre position of the layer's spatial axes
        (Conv2D: the middle row and column of its output; Dense: the unit itself).
        """
        shape = list(in_shape[1:])
        if len(in_shape) == 4 and self.image_size is not None:
            size = tuple(self.image_size)
            ok = len(size) == 2 and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                for v in size
            )
            if not ok:
                raise ValueError(
                    f"image_size must be (height, width) in pixels. Received: "
                    f"image_size={self.image_size!r}"
                )
            for axis, (known, wanted) in enumerate(zip(shape[:2], size)):
                if known is not None and int(known) != int(wanted):
                    raise ValueError(
                        f"Model '{self.model.name}' takes images of {tuple(in_shape[1:3])} "
                        f"pixels. Received: image_size={self.image_size!r}"
                    )
                shape[axis] = int(wanted)
        elif len(in_shape) == 3 and shape[0] is None and self.length is not None:
            shape[0] = self.length
        if any(v is None for v in shape):
            hint = "image_size=(H, W)" if len(in_shape) == 4 else "length"
            raise ValueError(
                f"Optimal inputs of layer '{self.layer}' need a fixed input shape; model "
                f"'{self.model.name}' takes {in_shape}: pass {hint}."
            )
        shape = tuple(int(v) for v in shape)
        self._taps = flatten_model(self.model, [self.layer], include_output=False)
        self.inputs_shape_ = shape
        probe = to_numpy(self._taps(np.zeros((1, *shape), np.float32), training=False))
        # Positions are the axes between batch and units; the target sits at their middle.
        self._position = tuple((int(n) - 1) // 2 for n in probe.shape[1:-1])
        # Blur and jitter run over the input's spatial axes: rows and columns of an image,
        # time and feature of a sequence (jitter in time only); none for a flat vector.
        rank = len(shape)
        self._spatial_axes = (1, 2) if rank >= 2 else ()
        self._jitter_axes = (1, 2) if rank == 3 else ((1,) if rank == 2 else ())
        weights = self._target_weights(filters, int(out_shape[-1]))
        self.center_frame_ = None
        self.receptive_field_ = None
        # As in the cone model, differentiate the pre-activation through the activation with a
        # leak, so a unit whose ReLU is off at the random start still moves.
        pre_model, activation = self._pre_activation_model(shape)
        if pre_model is not None:
            return _objective(pre_model, None, self._position, activation), weights, shape
        return _objective(self.model, self.layer, self._position, None), weights, shape

    def _pre_activation_model(self, shape):
        """(model from the input to ``layer``'s pre-activation, the activation), or (None, None)
        when the layer has no separate activation or the copy disagrees with the model."""
        layer = find_layer(self.model, self.layer)
        clone, activation = _linear_copy(layer)
        if clone is None:
            return None, None

        def override(candidate):
            return clone if candidate is layer else None

        pre_model = flatten_model(self.model, [self.layer], include_output=False,
                                  layer_override=override)
        probe = np.random.default_rng(12345).normal(size=(2, *shape)).astype(np.float32)
        full = to_numpy(self._taps(probe, training=False))
        part = to_numpy(activation(pre_model(probe, training=False)))
        scale = max(float(np.abs(full).max()), 1e-6)
        if not np.allclose(part, full, rtol=1e-3, atol=1e-4 * scale):
            return None, None
        return pre_model, activation

    def _cone_agrees(self, cone_model, activation, frame, length, n_features):
        rng = np.random.default_rng(12345)
        probe = rng.normal(size=(2, length, n_features)).astype(np.float32)
        full = self.layer_response(probe)
        pre = to_numpy(cone_model(probe, training=False))[:, frame, :]
        part = to_numpy(activation(ops.convert_to_tensor(pre))) if activation is not None else pre
        scale = max(float(np.abs(full).max()), 1e-6)
        return np.allclose(part, full, rtol=1e-3, atol=1e-4 * scale)

    def _optimize(self, step, weights, shape):
        n = weights.shape[0]
        rng = np.random.default_rng(self.seed)
        x = (self.init_scale * rng.standard_normal((n, *shape))).astype(np.float32)
        low, high = self.value_range if self.value_range is not None else (None, None)
        kernel = _gaussian_kernel(self.blur)
        history = np.zeros((self._steps, n), np.float64)
        input_axes = tuple(range(1, x.ndim))
        bar = keras.utils.Progbar(self._steps, unit_name="step") if self.progress else None
        # The last `polish` fraction of steps: no blur or jitter, a fifth of the step size, so
        # the input ends at a maximum of its (decayed, bounded) target, not just after a blur.
        start_polish = int(round(self._steps * (1 - self.polish)))
        for i in range(self._steps):
            polishing = i >= start_polish
            lr = self.learning_rate * (_POLISH_RATE if polishing else 1.0)
            if self._jitter and self._jitter_axes and not polishing:
                shifts = rng.integers(-self._jitter, self._jitter + 1,
                                      size=(n, len(self._jitter_axes)))
                index = _roll_index(x.shape, self._jitter_axes, shifts)
                grad, value = step(x[index], weights)
                back = np.empty_like(grad)
                back[index] = grad  # roll the gradient back onto the unshifted positions
                grad = back
            else:
                grad, value = step(x, weights)
            rms = np.sqrt(np.mean(np.square(grad), axis=input_axes, keepdims=True))
            x = x + lr * grad / (rms + 1e-12)
            if self.l2:
                x *= 1.0 - self.l2
            blur_now = (i + 1) % self._blur_every == 0 and not polishing
            if kernel is not None and blur_now and self._spatial_axes:
                x = _blur(x, kernel, self._spatial_axes)
            if self.clip:
                cut = np.quantile(np.abs(x), self.clip, axis=input_axes, keepdims=True)
                x = np.where(np.abs(x) < cut, 0.0, x)
            if low is not None:
                x = np.clip(x, low, high)
            x = x.astype(np.float32, copy=False)
            history[i] = value
            if bar is not None:
                bar.update(i + 1, values=[("target", float(np.mean(value)))])
        if not np.all(np.isfinite(x)):
            raise ValueError(
                f"Optimal inputs of layer '{self.layer}' became NaN or infinite; lower "
                f"learning_rate or set value_range. Received: learning_rate={self.learning_rate}"
            )
        self.history_ = history
        return x

    def layer_response(self, inputs):
        """Activations of every filter of ``layer`` at the centre frame, ``(n, n_filters)``.

        Evaluated on the original model (not the cone model), for inputs of the fitted length.
        """
        if not hasattr(self, "inputs_shape_"):
            raise ValueError("OptimalInputs is not fitted yet: call fit() first.")
        inputs = np.asarray(inputs, dtype=np.float32)
        if inputs.ndim == len(self.inputs_shape_):
            inputs = inputs[None]
        if inputs.shape[1:] != self.inputs_shape_:
            wanted = ", ".join(map(str, self.inputs_shape_))
            raise ValueError(
                f"layer_response expects inputs shaped (n, {wanted}) like the fitted ones. "
                f"Received: shape={inputs.shape}"
            )
        out = to_numpy(self._taps(inputs, training=False))
        return out[(slice(None), *self._position)].astype(np.float64)


def _objective(model, layer, position, activation):
    """A compiled ``(x, weights) -> (d target / d x, per-input achieved value)`` step.

    ``model``'s output (``layer=None``) or ``layer``'s activation is read at ``position`` (a
    tuple of indices along the axes between batch and units: ``(frame,)``, ``(row, col)`` or
    ``()``); ``activation`` (cone model) turns the pre-activation into the layer's activation,
    and the leak keeps a gradient where it is 0.
    """
    index = (slice(None), *position)

    def center(output, activations):
        values = output if layer is None else activations[layer]
        return values[index]

    def surrogate(pre):
        if activation is None:
            return pre, pre
        act = activation(pre)
        return act + _LEAK * pre, act

    def target(output, activations, weights):
        value, _ = surrogate(center(output, activations))
        return ops.sum(value * weights)

    def reduce(result, weights):
        value, _ = surrogate(center(result.output, result.activations))
        return result.input_gradient, ops.sum(value * weights, axis=1)

    fn = ActivationGradients(
        model, [] if layer is None else [layer], target, reduce=reduce, layer_gradients=False,
        input_gradient=True, include_output=layer is None,
    )
    return fn


def _linear_copy(layer):
    """(a copy of ``layer`` without its activation, weights copied, the activation), or
    (None, None) for a layer without a non-linear ``activation`` argument."""
    config = layer.get_config()
    activation = getattr(layer, "activation", None)
    linear = keras.activations.get("linear")
    if "activation" not in config or activation is None or activation is linear:
        return None, None
    config.update(activation="linear", name=f"{layer.name}_pre_activation")
    for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                "kernel_constraint", "bias_constraint"):
        if key in config:
            config[key] = None
    clone = type(layer).from_config(config)
    clone.build(layer.input.shape)
    clone.set_weights(layer.get_weights())
    return clone, activation


def _gaussian_kernel(sigma):
    if not sigma:
        return None
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _blur(x, kernel, axes=(1, 2)):
    """Separable Gaussian blur of ``x`` along ``axes`` (time and feature of ``(n, T, F)``,
    rows and columns of ``(n, H, W, C)``), reflecting at borders."""
    radius = len(kernel) // 2
    for axis in axes:
        n = x.shape[axis]
        r = min(radius, n - 1)  # reflect padding needs r < n
        if r < 1:
            continue
        taps = kernel[radius - r: radius + r + 1] / kernel[radius - r: radius + r + 1].sum()
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        padded = np.pad(x, pad, mode="reflect")

        def window(k, axis=axis, n=n, padded=padded):  # a shifted view (no copy)
            return padded[(slice(None),) * axis + (slice(k, k + n),)]

        out = taps[0] * window(0)
        for k in range(1, len(taps)):
            out += taps[k] * window(k)
        x = out
    return x


def _roll_index(shape, axes, shifts):
    """An advanced index that rolls row ``r`` of an array of ``shape`` by ``shifts[r, j]``
    along ``axes[j]`` (one gather for the whole batch; axes after the last one stay whole)."""
    n, last = shape[0], max(axes)
    index = [np.arange(n).reshape((n,) + (1,) * last)]
    for axis in range(1, last + 1):
        size = shape[axis]
        positions = np.arange(size).reshape((1,) * axis + (size,) + (1,) * (last - axis))
        if axis in axes:
            shift = shifts[:, axes.index(axis)].reshape((n,) + (1,) * last)
            positions = (positions - shift) % size
        index.append(positions)
    return tuple(index)


def optimal_inputs(model, layer, filters=None, region=None, joint=False, length=None, steps=200,
                   learning_rate=0.5, l2=1e-4, blur=1.0, blur_every=4, jitter=4, seed=0, *,
                   clip=0.0, value_range=(-3.0, 3.0), polish=0.2, restarts=None, init_scale=0.1,
                   grid=None, cone=True, progress=False, image_size=None,
                   return_activations=False):
    """Inputs that maximally drive filters of ``layer`` (see :class:`OptimalInputs`).

    Returns:
        float32 array ``(n, T, n_features)`` (``(n, H, W, channels)`` for image models): one
        input per filter (``n = len(filters)``, or the
        region's filters), or one (``n = 1``) with ``joint=True``. With
        ``return_activations=True``: ``(inputs, activations)`` where ``activations[i]`` is what
        input ``i`` achieves at the centre frame (its filter's activation, or the sum over the
        filters for ``joint``).

    Example:

    >>> x = optimal_inputs(model, "conv_big_1", filters=[3, 7])
    >>> x.shape[0]
    2
    """
    fitted = OptimalInputs(
        model, layer, filters=filters, region=region, joint=joint, length=length, steps=steps,
        learning_rate=learning_rate, l2=l2, blur=blur, blur_every=blur_every, clip=clip,
        jitter=jitter, value_range=value_range, polish=polish, restarts=restarts,
        init_scale=init_scale, grid=grid, seed=seed,
        cone=cone, progress=progress, image_size=image_size,
    ).fit()
    if return_activations:
        return fitted.inputs_, fitted.activations_
    return fitted.inputs_
