"""SpecAugment-style masking of feature frames and bands, active only while training.

:class:`SpecAugment` is a Keras layer for ``(batch, time, features)`` inputs. In training
(``training=True``, which ``model.fit`` passes) it sets ``freq_masks`` bands of up to
``freq_width`` consecutive features and ``time_masks`` spans of up to ``time_width`` consecutive
frames of every utterance to ``mask_value`` (Park et al., 2019, without time warping); at
inference it returns its input unchanged. Widths and positions are drawn per utterance and per
mask from a :class:`keras.random.SeedGenerator`, so a seeded layer draws the same masks on
every run, and its seed state travels with the model (resumed runs continue the sequence).

Features of the package are standardised per utterance (``FeatureConfig(normalize=True)``), so
the default ``mask_value=0`` is each feature's utterance mean.

Padding: without a Keras mask on its input, time masks are placed over the padded length of
the batch (a span that falls on padding masks nothing). With one (the recognizer's
``Masking`` layer, ``models.wav2letter(mask_padding=True)``), the layer passes the mask on,
keeps padded frames at 0 (whatever ``mask_value``), and places each utterance's time masks
within its real frames: span starts are drawn over the first ``n`` frames, ``n`` the number
of real frames of that utterance (its length, for trailing padding). That costs one sum over
the mask and draws the same random numbers as without a mask, so the masks of an utterance
do not depend on how much padding its batch adds.

Example:

>>> layer = SpecAugment(freq_masks=2, freq_width=8, time_masks=2, time_width=20, seed=0)
>>> x = np.ones((2, 100, 40), "float32")
>>> bool((layer(x, training=False) == x).all()), float(layer(x, training=True).min())
(True, 0.0)
"""

from __future__ import annotations

import keras
from keras import ops

from keras_topomap import checks
from keras_topomap.masking import attached_mask

__all__ = ["SpecAugment"]


def _check_count(name, value):
    return int(checks.non_negative_int(value, name, owner="SpecAugment"))


@keras.saving.register_keras_serializable(package="keras_topomap")
class SpecAugment(keras.layers.Layer):
    """Random frequency and time masks on ``(batch, time, features)``, in training only.

    A Keras padding mask on the input passes through; padded frames stay 0 and time masks fall
    on real frames only (see :mod:`keras_topomap.augment`).

    Args:
        freq_masks: frequency masks per utterance.
        freq_width: the largest width of a frequency mask, in features (widths are uniform in
            ``0 .. freq_width``).
        time_masks: time masks per utterance.
        time_width: the largest width of a time mask, in frames.
        mask_value: the value written into masked cells (padded frames of a masked input
            stay 0).
        seed: seed of the masks' :class:`keras.random.SeedGenerator` (``None``: unseeded).
    """

    def __init__(self, freq_masks=2, freq_width=8, time_masks=2, time_width=20,
                 mask_value=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.freq_masks = _check_count("freq_masks", freq_masks)
        self.freq_width = _check_count("freq_width", freq_width)
        self.time_masks = _check_count("time_masks", time_masks)
        self.time_width = _check_count("time_width", time_width)
        self.mask_value = float(mask_value)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"SpecAugment '{self.name}' expects (batch, time, features) inputs. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        if input_shape[-1] is not None and self.freq_width > input_shape[-1]:
            raise ValueError(
                f"SpecAugment '{self.name}': freq_width ({self.freq_width}) exceeds the number "
                f"of features. Received: input_shape={tuple(input_shape)}"
            )

    def _spans(self, batch, n_masks, max_width, size, lengths=None):
        """``(batch, size)`` bool: True inside any of ``n_masks`` random spans per row, each
        within the row's first ``lengths`` positions (a ``(batch,)`` tensor; None: ``size``)."""
        shape = (batch, n_masks)
        limit = ops.cast(size, "float32") if lengths is None else lengths[:, None]
        width = ops.floor(
            keras.random.uniform(shape, 0.0, max_width + 1.0, seed=self.seed_generator)
        )
        width = ops.minimum(width, limit)
        start = ops.floor(
            keras.random.uniform(shape, seed=self.seed_generator) * (limit - width + 1.0)
        )
        position = ops.cast(ops.arange(size), "float32")[None, None, :]
        inside = (position >= start[..., None]) & (position < (start + width)[..., None])
        return ops.any(inside, axis=1)

    def call(self, inputs, training=None):
        if not training or (self.freq_masks == 0 and self.time_masks == 0):
            return inputs
        shape = ops.shape(inputs)
        batch, steps, features = shape[0], shape[1], shape[2]
        # Read from the input tensor, as the package's masked convolutions do (it keeps the
        # mask's computation out of the model's graph); Keras passes it on to the output.
        mask = attached_mask(inputs)
        lengths = None if mask is None else ops.sum(ops.cast(mask, "float32"), axis=1)
        masked = ops.zeros((batch, steps, features), dtype="bool")
        if self.freq_masks and self.freq_width:
            bands = self._spans(batch, self.freq_masks, self.freq_width, features)
            masked = masked | bands[:, None, :]
        if self.time_masks and self.time_width:
            frames = self._spans(batch, self.time_masks, self.time_width, steps, lengths)
            masked = masked | frames[:, :, None]
        fill = ops.cast(self.mask_value, inputs.dtype)
        outputs = ops.where(masked, fill, inputs)
        if mask is not None:  # padded frames stay 0
            outputs = ops.where(ops.cast(mask, "bool")[:, :, None], outputs,
                                ops.zeros_like(outputs))
        return outputs

    def compute_mask(self, inputs, mask=None):
        return mask  # frames are masked in place: the padding mask passes through

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "freq_masks": self.freq_masks,
            "freq_width": self.freq_width,
            "time_masks": self.time_masks,
            "time_width": self.time_width,
            "mask_value": self.mask_value,
            "seed": self.seed,
        }
