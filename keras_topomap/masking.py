"""Padding masks through a 1D convolutional speech model: which frames of a padded batch are real.

Utterances of a batch are zero-padded to a common length. A ``keras.layers.Masking`` layer at the
input marks the real frames (a frame that is not all zeros); :class:`MaskedConv1D` carries that
Keras mask through each ``"same"``-padded convolution (frame ``t`` of a stride-``s`` layer is real
when input frame ``t * s`` is, which gives the ``ceil(length / s)`` frames of
:func:`keras_topomap.ctc.output_lengths`), and sets its padded output frames to 0.

Why zero them: a ``"same"`` convolution pads its input with zeros, so with padded frames at 0
every layer sees, beyond an utterance's end, exactly what it would see for the utterance alone;
the outputs of real frames then do not depend on how much padding the batch adds. And the mask
is attached to the layer's output *inside* its call, before Keras runs the layer's activity
regularizer, so :class:`~keras_topomap.TopographicActivityRegularizer` leaves padded frames out
of its statistics (Keras itself attaches masks only after that).

The recipe's other layers use the same helpers: :class:`keras_topomap.models.NormConv1D`
(convolution, normalization, activation) strides the mask with :func:`strided_mask`, computes
batch normalization's moments over real frames, and zeroes padded frames with
:func:`zero_padded_frames`; :class:`keras_topomap.augment.SpecAugment` passes the mask on and
keeps padded frames at 0.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_topomap import _keras_internals as internals

__all__ = [
    "MaskedConv1D",
    "attach_mask",
    "attached_mask",
    "check_same_padding",
    "strided_mask",
    "zero_padded_frames",
]


def attach_mask(x, mask):
    """Sets ``mask`` as the Keras mask of tensor ``x`` (None removes it)."""
    internals.set_keras_mask(x, mask)  # not exported by keras 3's public API


def attached_mask(x):
    """The Keras mask attached to tensor ``x`` (None if there is none)."""
    return internals.get_keras_mask(x)  # not exported by keras 3's public API


def strided_mask(mask, stride):
    """The frame mask after a ``"same"`` convolution of this stride: ``mask[:, ::stride]``."""
    return mask if stride == 1 else mask[:, ::stride]


def zero_padded_frames(outputs, frames, propagate=True):
    """``outputs`` ``(batch, time, channels)`` with the frames where ``frames`` is False set to 0.

    With ``propagate``, ``frames`` is also attached to the result as its Keras mask -- inside
    the layer's call, so that an activity regularizer on the layer sees it (see the module
    docstring). ``frames`` is the layer's output mask, e.g. :func:`strided_mask` of its input's.

    Example:

    >>> out = zero_padded_frames(ops.ones((1, 3, 2)), ops.convert_to_tensor([[True, True, False]]))
    >>> ops.convert_to_numpy(out)[0, :, 0].tolist(), attached_mask(out) is not None
    ([1.0, 1.0, 0.0], True)
    """
    outputs = outputs * ops.expand_dims(ops.cast(frames, outputs.dtype), -1)
    if propagate:
        attach_mask(outputs, frames)
    return outputs


def check_same_padding(layer):
    """Raises a ValueError naming ``layer`` unless it is a ``padding="same"`` convolution.

    Example:

    >>> check_same_padding(keras.layers.Conv1D(4, 3, padding="same"))  # passes
    >>> check_same_padding(keras.layers.Conv1D(4, 3, name="c"))
    Traceback (most recent call last):
    ValueError: Conv1D 'c' needs padding='same' (...). Received: padding='valid'
    """
    if layer.padding != "same":
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' needs padding='same' (the frame mask is "
            f"strided like a 'same' convolution). Received: padding={layer.padding!r}"
        )


@keras.saving.register_keras_serializable(package="keras_topomap")
class MaskedConv1D(keras.layers.Conv1D):
    """``Conv1D`` (``padding="same"``) that keeps a frame mask and zeros the padded frames.

    With a Keras mask on its input (from a ``Masking`` layer or a previous ``MaskedConv1D``), it
    sets the output frames that lie in the padding to 0 and attaches the strided mask to its
    output (see :mod:`keras_topomap.masking`). Without a mask it is a plain ``Conv1D``.

    Args:
        filters: as for ``keras.layers.Conv1D``.
        kernel_size: as for ``keras.layers.Conv1D``.
        propagate_mask: attach the mask to the output, so the next layers get it. False for a
            model's last layer: Keras would otherwise weight the loss by the output's mask.
        **kwargs: the other ``keras.layers.Conv1D`` arguments; ``padding`` must be
            ``"same"``.
    """

    def __init__(self, filters, kernel_size, propagate_mask=True, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        check_same_padding(self)
        self.propagate_mask = bool(propagate_mask)
        self.supports_masking = True

    def call(self, inputs):
        # The mask is read from the input tensor, not taken as a ``mask`` argument: Keras would
        # then record the mask's computation as part of the model's graph, where layer walkers
        # (receptive_fields, sub-models) would meet it as extra operations.
        outputs = super().call(inputs)
        mask = attached_mask(inputs)
        if mask is None:
            return outputs
        frames = strided_mask(mask, self.strides[0])
        return zero_padded_frames(outputs, frames, propagate=self.propagate_mask)

    def compute_mask(self, inputs, mask=None):
        if mask is None or not self.propagate_mask:
            return None
        return strided_mask(mask, self.strides[0])

    def get_config(self):
        return {**super().get_config(), "propagate_mask": self.propagate_mask}
