"""Frame timing of the layers of a 1D (time-axis) Keras model: stride, receptive field, centre.

A layer of a convolutional speech model produces one output frame every ``stride`` input frames
(its cumulative stride) and each of its frames sees ``size`` consecutive input frames (its
receptive field). This module computes both for every layer, plus the ``offset`` that pins where
a layer frame sits on the input's time axis::

    centre of layer frame t  ==  t * stride + offset      (in input frames, may end in .5)

The receptive field of frame ``t`` covers input frames ``centre - (size - 1) / 2`` to
``centre + (size - 1) / 2`` (parts of it may lie in the padding outside ``[0, n_frames)``).
*The* input frame of a layer frame -- the one whose label the frame carries in
:mod:`keras_topomap.gradnap` -- is ``floor(centre)``: for an even-sized field the left one of
the two middle frames. With that convention a stride-1 ``"same"`` layer keeps frame ``t`` on
input frame ``t`` whatever its kernel size.

Padding semantics (the same on the TensorFlow, JAX and PyTorch backends of Keras 3): a
convolution or pooling with kernel ``k``, dilation ``d`` (effective kernel
``k_eff = d (k - 1) + 1``) and stride ``s`` reads input frames
``t * s - pad_left ... t * s - pad_left + k_eff - 1``, with

- ``"valid"``: ``pad_left = 0``, output length ``floor((n - k_eff) / s) + 1``;
- ``"causal"``: ``pad_left = k_eff - 1``, output length ``ceil(n / s)``;
- ``"same"``: output length ``ceil(n / s)``; total padding
  ``max((ceil(n / s) - 1) * s + k_eff - n, 0)`` and ``pad_left = total // 2`` (the extra frame
  of an odd total goes to the right). For ``s == 1`` this is ``(k_eff - 1) // 2``; for ``s > 1``
  it depends on ``n mod s``. :func:`receptive_fields` with ``n_frames=None`` assumes each layer's
  input length is a multiple of its stride (true when ``n_frames`` is a multiple of the total
  stride); give ``n_frames`` for the exact value of a given input length.

The cumulative quantities follow from composing layers: with the previous layer's
``(S, R, O)`` and a layer ``(k_eff, s, pad_left)``::

    stride = S * s,   size = R + (k_eff - 1) * S,   offset = O + S * ((k_eff - 1) / 2 - pad_left)

Example:

>>> model = keras.Sequential([
...     keras.Input((None, 40)),
...     keras.layers.Conv1D(8, 48, strides=2, padding="same", name="conv_0"),
...     keras.layers.Conv1D(8, 7, padding="same", name="conv_1"),
... ])
>>> receptive_fields(model)["conv_1"]
LayerTiming(stride=2, size=60, offset=0.5, length=None)
>>> layer_frame_centers(model, "conv_0", n_frames=6)
array([0.5, 2.5, 4.5])
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from keras_topomap import checks

__all__ = [
    "LayerTiming",
    "receptive_fields",
    "layer_frame_centers",
    "input_frames_to_layer",
    "check_frame_labels",
    "layer_kind",
]


class LayerTiming(NamedTuple):
    """Where the frames of one layer sit on the input's time axis.

    Attributes:
        stride: cumulative stride, input frames per layer frame.
        size: receptive field in input frames.
        offset: input-frame position of the centre of layer frame 0 (``t * stride + offset`` for
            frame ``t``); a multiple of 0.5.
        length: the layer's number of output frames for the ``n_frames`` passed to
            :func:`receptive_fields` (None when no length was given or the input length is
            dynamic).
    """

    stride: int
    size: int
    offset: float
    length: int | None = None

    # Frame arithmetic: every tool that maps input frames to a layer's frames (GradNAP,
    # TopoMapCallback, OptimalInputs) goes through these methods, so that the convention of the
    # module doc is written once. ``n_layer_frames=None`` means ``length``.

    def _n(self, n_layer_frames):
        n = self.length if n_layer_frames is None else n_layer_frames
        if n is None:
            raise ValueError(
                "This LayerTiming has no length (receptive_fields was called without "
                "n_frames); pass n_layer_frames."
            )
        return int(n)

    def centers(self, n_layer_frames=None):
        """Input-frame centres of layer frames ``0 .. n_layer_frames - 1`` (float array)."""
        return np.arange(self._n(n_layer_frames)) * self.stride + self.offset

    def field_starts(self, n_layer_frames=None):
        """First input frame of each layer frame's receptive field (float; may lie in the
        padding before frame 0)."""
        return self.centers(n_layer_frames) - (self.size - 1) / 2

    def input_frame(self, n_layer_frames=None):
        """The input frame each layer frame is attributed to: ``floor(centre)`` (int array)."""
        return np.floor(self.centers(n_layer_frames)).astype(np.int64)

    def input_frame_of(self, frames):
        """``input_frame`` of the layer frames ``frames`` (an int array of any shape; frame
        indices outside ``0 .. length - 1`` are extrapolated)."""
        return np.floor(np.asarray(frames) * self.stride + self.offset).astype(np.int64)

    def frames_before_end(self, lengths, n_layer_frames=None):
        """Bool ``(batch, n_layer_frames)``: the layer frames attributed to an input frame before
        each sequence's end (``input_frame < lengths``). Frames centred in the padding before
        the first input frame count: they exist and read the sequence's first frames. This is
        what a model's output frames per sequence are (the CTC output length)."""
        lengths = np.asarray(lengths).reshape(-1)
        return self.input_frame(n_layer_frames)[None, :] < lengths[:, None]

    def valid_frames(self, lengths, frames=None):
        """Bool mask of the layer frames that carry a label of a sequence: the frame exists
        (``0 <= frame < length``) and its input frame lies inside the sequence
        (``0 <= input_frame < length of the sequence``).

        Args:
            lengths: int ``(batch,)`` valid input frames per sequence.
            frames: layer frame indices, ``(n,)`` (one row of frames for every sequence) or
                ``(batch, n)`` (a row per sequence); default all frames ``0 .. length - 1``.

        Returns:
            bool ``(batch, n)``.
        """
        lengths = np.asarray(lengths).reshape(-1)
        if frames is None:
            frames = np.arange(self._n(None))
        frames = np.asarray(frames)
        inside = self.input_frame_of(frames)
        exists = (frames >= 0) & (frames < self._n(None))
        return exists & (inside >= 0) & (inside < lengths[:, None])

    def labels_at_frames(self, labels, lengths=None, n_layer_frames=None, fill=-1):
        """Per-input-frame labels ``(batch, T_in)`` -> the labels of the layer's frames
        ``(batch, n_layer_frames)``: each frame carries the label of its input frame; ``fill``
        where that lies outside ``[0, T_in)`` or, with ``lengths``, past the sequence's end."""
        n = self._n(n_layer_frames)
        picked = input_frames_to_layer(labels, self, n, fill=fill)
        if lengths is None:
            return picked
        return np.where(self.frames_before_end(lengths, n), picked, fill)

    def nearest_frame(self, positions):
        """The layer frame whose centre is nearest each input-frame position (float array of
        any shape; halfway ties go to the later frame). May lie outside ``0 .. length - 1``."""
        return np.floor((np.asarray(positions) - self.offset) / self.stride + 0.5).astype(
            np.int64
        )

    def frames_within(self, starts, ends):
        """First and last layer frame attributed to an input frame in ``[start, end]`` (int
        arrays like ``starts``); ``last < first`` where a span holds no layer frame."""
        starts, ends = np.asarray(starts), np.asarray(ends)
        first = np.maximum(np.ceil((starts - self.offset) / self.stride), 0).astype(np.int64)
        last = np.ceil((ends + 1 - self.offset) / self.stride) - 1
        return first, np.minimum(last, self._n(None) - 1).astype(np.int64)


_INPUT = LayerTiming(1, 1, 0.0)


# ----------------------------------------------------------------------------------------------
# Per-layer rules


def layer_kind(layer, pointwise=()):
    """How a layer moves frames in time: ``"conv"``, ``"pool"``, ``"pad"``, ``"crop"``,
    ``"pointwise"``, ``"merge"``, ``"global"``, ``"model"``, ``"input"`` or None (unknown).

    Args:
        layer: a Keras layer.
        pointwise: names or class names of layers to treat as pointwise (as for
            :func:`receptive_fields`).
    """
    import keras

    from keras_topomap._keras_internals import layer_base_classes

    BaseConv, BasePooling, Merge = layer_base_classes()
    if layer.name in pointwise or type(layer).__name__ in pointwise:
        return "pointwise"
    if isinstance(layer, keras.layers.InputLayer):
        return "input"
    if isinstance(layer, keras.Model):
        return "model"
    if isinstance(layer, BaseConv):
        if getattr(layer, "rank", 1) != 1 or getattr(layer, "transposed", False):
            return None
        return "conv"
    if isinstance(layer, BasePooling):
        return "pool" if len(layer.pool_size) == 1 else None
    if isinstance(layer, (keras.layers.GlobalAveragePooling1D, keras.layers.GlobalMaxPooling1D,
                          keras.layers.Flatten)):
        return "global"
    if isinstance(layer, keras.layers.ZeroPadding1D):
        return "pad"
    if isinstance(layer, keras.layers.Cropping1D):
        return "crop"
    if isinstance(layer, Merge):
        return "merge"
    if isinstance(layer, _pointwise_types()):
        return "pointwise"
    return None


def _pointwise_types():
    import keras

    names = [
        "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D",
        "GaussianNoise", "GaussianDropout", "AlphaDropout", "BatchNormalization",
        "LayerNormalization", "GroupNormalization", "RMSNormalization", "UnitNormalization",
        "Dense", "Masking", "Identity", "Rescaling", "Normalization", "ActivityRegularization",
    ]
    from keras_topomap.augment import SpecAugment

    return (*(getattr(keras.layers, n) for n in names if hasattr(keras.layers, n)), SpecAugment)


def _same_pad_left(n, k_eff, s):
    """Keras' "same" left padding; with ``n`` unknown, assumes ``n`` is a multiple of ``s``."""
    if n is None:
        return max(k_eff - s, 0) // 2 if s > 1 else (k_eff - 1) // 2
    out = -(-n // s)
    return max((out - 1) * s + k_eff - n, 0) // 2


def _window_rule(layer, kind, n):
    """(k_eff, s, pad_left, out_length) for a conv/pool layer acting on ``n`` frames."""
    if kind == "conv":
        k, s, d = layer.kernel_size[0], layer.strides[0], layer.dilation_rate[0]
    else:
        k, s, d = layer.pool_size[0], layer.strides[0], 1
    k_eff = d * (k - 1) + 1
    padding = layer.padding.lower()
    if padding == "valid":
        pad_left = 0
        out = None if n is None else (n - k_eff) // s + 1
        if out is not None and out < 1:
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}, kernel {k_eff} frames, 'valid' "
                f"padding) needs at least {k_eff} input frames. Received: {n} frames."
            )
    elif padding == "causal":
        pad_left = k_eff - 1
        out = None if n is None else -(-n // s)
    elif padding == "same":
        pad_left = _same_pad_left(n, k_eff, s)
        out = None if n is None else -(-n // s)
    else:
        raise ValueError(
            f"Layer '{layer.name}' has an unsupported padding. Received: padding={layer.padding!r}"
        )
    return k_eff, s, pad_left, out


def _compose(prev, k_eff, s, pad_left):
    stride, size, offset = prev
    return (
        stride * s,
        size + (k_eff - 1) * stride,
        offset + stride * ((k_eff - 1) / 2 - pad_left),
    )


class _State(NamedTuple):
    """Timing of one tensor while walking the graph: (stride, size, offset, length)."""

    stride: int
    size: int
    offset: float
    length: int | None


def _unknown_layer_error(layer):
    return ValueError(
        f"receptive_fields does not know how layer '{layer.name}' ({type(layer).__name__}) maps "
        "time frames. Supported: Conv1D/SeparableConv1D/DepthwiseConv1D (any padding, stride, "
        "dilation), MaxPooling1D/AveragePooling1D, ZeroPadding1D, Cropping1D, per-frame layers "
        "(activations, dropout, normalisation, Dense on (batch, time, features)), merges of "
        "tensors with equal timing, GlobalPooling1D/Flatten (end of the time axis), and nested "
        "models of these. If the layer acts on each frame independently, pass "
        f"pointwise=['{layer.name}']."
    )


def _apply(layer, kind, states):
    """Timing of a layer's output from its inputs' timings (None = no time axis)."""
    if kind == "merge":
        timed = [st for st in states if st is not None]
        if not timed:
            return None
        first = timed[0]
        if len(timed) != len(states) or any(
            (st.stride, st.offset, st.length) != (first.stride, first.offset, first.length)
            for st in timed
        ):
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) merges tensors whose frames are "
                "not aligned (different stride, centre offset or length), so its frames have no "
                "single receptive field. Received timings (stride, size, offset, length): "
                f"{[tuple(st) if st is not None else None for st in states]}"
            )
        return _State(first.stride, max(st.size for st in timed), first.offset, first.length)
    if len(states) != 1:
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) takes {len(states)} inputs; only "
            "merge layers may join branches in receptive_fields."
        )
    (state,) = states
    if state is None:
        return None  # the time axis ended earlier (global pooling); nothing to time here
    if kind == "global":
        return None
    if kind == "pointwise":
        return state
    n = state.length
    if kind in ("conv", "pool"):
        k_eff, s, pad_left, out = _window_rule(layer, kind, n)
    elif kind == "pad":
        left, right = layer.padding
        k_eff, s, pad_left, out = 1, 1, left, None if n is None else n + left + right
    elif kind == "crop":
        left, right = layer.cropping
        k_eff, s, pad_left, out = 1, 1, -left, None if n is None else n - left - right
    else:
        raise _unknown_layer_error(layer)
    return _State(*_compose(state[:3], k_eff, s, pad_left), out)


def _walk(model, start, pointwise, result):
    """Propagates timing ``start`` through ``model``; fills ``result`` and returns the output's
    timing."""
    from keras_topomap._keras_internals import graph_steps

    mode, steps, input_ids, output_ids = graph_steps(model)
    if mode == "chain":
        state = start
        for layer in steps:
            state = _step(layer, [state], pointwise, result)
        return state
    if len(input_ids) != 1:
        raise ValueError(
            f"Model '{model.name}' has {len(input_ids)} inputs; receptive_fields handles models "
            "with one time-series input."
        )
    states = {input_ids[0]: start}
    for layer, ins, outs in steps:
        if len(outs) != 1:
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) returns {len(outs)} tensors; "
                "receptive_fields handles layers with one output."
            )
        states[outs[0]] = _step(layer, [states[i] for i in ins], pointwise, result)
    if len(output_ids) != 1:
        raise ValueError(
            f"Model '{model.name}' has {len(output_ids)} outputs; receptive_fields handles "
            "models with one output."
        )
    return states[output_ids[0]]


def _step(layer, states, pointwise, result):
    kind = layer_kind(layer, pointwise)
    if kind == "input":
        return states[0] if states else None
    if kind == "model":
        if len(states) != 1:
            raise ValueError(
                f"Nested model '{layer.name}' takes {len(states)} inputs; receptive_fields "
                "handles nested models with one input."
            )
        out = _walk(layer, states[0], pointwise, result) if states[0] is not None else None
    elif kind is None:
        if all(st is None for st in states):
            return None  # layers after the end of the time axis are not timed
        raise _unknown_layer_error(layer)
    else:
        out = _apply(layer, kind, states)
    if out is not None:
        new = LayerTiming(int(out.stride), int(out.size), float(out.offset), out.length)
        old = result.get(layer.name)
        if old is not None and old != new:
            raise ValueError(
                f"Layer '{layer.name}' is used more than once with different frame timings "
                f"({tuple(old)} and {tuple(new)}); its frames have no single receptive field."
            )
        result[layer.name] = new
    return out


def receptive_fields(model, n_frames=None, pointwise=()):
    """Cumulative stride, receptive field and centre offset of every time-axis layer of a model.

    Args:
        model: a Functional or Sequential Keras model (nested models allowed) whose input is
            ``(batch, time, features)``. Branches are allowed where merge layers join tensors
            with aligned frames (e.g. residual connections around "same" convolutions).
        n_frames: optional input length; then ``offset`` is exact for strided ``"same"`` layers
            (it can depend on the length modulo the stride) and ``length`` holds each layer's
            number of frames. None assumes lengths divisible by the strides (see module doc).
        pointwise: names or class names of extra layers to treat as per-frame (time-preserving).

    Returns:
        dict ``{layer_name: LayerTiming}`` in model order; the input layer is left out, and so are
        layers after the time axis ends (global pooling, flatten).

    Raises:
        ValueError: for layers whose effect on time is unknown (naming the layer and what to do),
            merges of misaligned branches, models with several inputs or outputs.

    Example:

    >>> timing = receptive_fields(model)
    >>> timing["conv_1"].stride, timing["conv_1"].size
    (2, 60)
    """
    n_frames = checks.positive_int(n_frames, "n_frames", allow_none=True)
    pointwise = set(pointwise)
    result = {}
    _walk(model, _State(1, 1, 0.0, n_frames), pointwise, result)
    return result


def _timing_for(model_or_timing, layer, n_frames=None):
    if isinstance(model_or_timing, LayerTiming):
        return model_or_timing
    if isinstance(model_or_timing, dict):
        timing = model_or_timing
    else:
        timing = receptive_fields(model_or_timing, n_frames=n_frames)
    if layer not in timing:
        raise ValueError(
            f"No frame timing for layer '{layer}'. Layers with a time axis: {list(timing)}"
        )
    return timing[layer]


def layer_frame_centers(model_or_timing, layer=None, n_frames=None, n_layer_frames=None):
    """Input-frame centres of a layer's frames.

    Args:
        model_or_timing: a model, a ``receptive_fields`` dict, or one :class:`LayerTiming`.
        layer: layer name (not needed for a single ``LayerTiming``).
        n_frames: input length; with a model, used to compute the exact timing and the layer's
            frame count.
        n_layer_frames: number of layer frames, if not derivable from ``n_frames``.

    Returns:
        float array ``(n_layer_frames,)``: ``t * stride + offset``.
    """
    timing = _timing_for(model_or_timing, layer, n_frames)
    if n_layer_frames is None:
        n_layer_frames = timing.length
    if n_layer_frames is None and n_frames is not None:
        n_layer_frames = math.ceil(n_frames / timing.stride)
    if n_layer_frames is None:
        raise ValueError(
            f"layer_frame_centers needs n_frames or n_layer_frames for layer '{layer}'."
        )
    return timing.centers(n_layer_frames)


def input_frames_to_layer(values, timing, n_layer_frames, fill=-1):
    """Picks, for each layer frame, the value of the input frame at its centre.

    Typical use: frame labels ``(batch, T_in)`` -> labels of a layer's ``(batch, T_layer)``
    frames. Layer frames whose centre input frame lies outside ``[0, T_in)`` (in the padding)
    get ``fill``.

    Args:
        values: array ``(batch, T_in, ...)``.
        timing: the layer's :class:`LayerTiming`.
        n_layer_frames: ``T_layer``.
        fill: value for frames centred outside the input.

    Returns:
        array ``(batch, n_layer_frames, ...)`` of ``values.dtype``.

    Example:

    >>> input_frames_to_layer(np.array([[0, 0, 1, 1, 2, 2]]), LayerTiming(2, 48, 0.5), 3)
    array([[0, 1, 2]])
    """
    values = np.asarray(values)
    if values.ndim < 2:
        raise ValueError(
            f"input_frames_to_layer expects values of shape (batch, frames, ...). "
            f"Received: shape={values.shape}"
        )
    index = timing.input_frame(n_layer_frames)
    inside = (index >= 0) & (index < values.shape[1])
    picked = np.take(values, np.clip(index, 0, max(values.shape[1] - 1, 0)), axis=1)
    if not inside.all():
        mask_shape = (1, len(index)) + (1,) * (values.ndim - 2)
        picked = np.where(inside.reshape(mask_shape), picked, np.asarray(fill, dtype=values.dtype))
    return picked


def check_frame_labels(labels, shape, where):
    """Validates per-input-frame labels and returns them as an integer array.

    Frame labels (phoneme ids and the like) are one int per input frame, ``-1`` where a frame
    has no label (silence that is not modelled, padding). Used by every tool that maps labels
    to a layer's frames (GradNAP, TopoMapCallback).

    Args:
        labels: array ``(batch, T_in)``.
        shape: the ``(batch, T_in)`` the labels must have (the inputs' leading axes).
        where: what the labels belong to, for error messages (e.g. ``"Batch 3"``).

    Raises:
        ValueError: naming ``where``, for a wrong shape, a non-integer dtype or labels < -1.
    """
    labels = np.asarray(labels)
    shape = tuple(int(v) for v in shape)
    if labels.shape != shape:
        raise ValueError(
            f"{where}: frame labels must have shape (batch, T_in) = {shape}, one label per "
            f"input frame. Received: shape={labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: frame labels must be integers (-1 = no label). Received: "
            f"dtype={labels.dtype}"
        )
    if labels.size and labels.min() < -1:
        raise ValueError(
            f"{where}: frame labels must be >= -1 (-1 = no label). Received: min={labels.min()}"
        )
    return labels
