"""Learning-rate schedules for the recognizer.

:class:`WarmupCosineDecay`: a linear warm-up from 0 to ``peak`` over ``warmup_steps`` optimizer
steps, then a half-cosine decay to ``peak * final_fraction`` at ``warmup_steps + decay_steps``,
constant afterwards. A warm-up lets Adam's moment estimates settle before the largest steps
(the first updates of a freshly initialised deep convolutional stack are the least reliable),
and the decay takes the last epochs in small steps.

It is a :class:`keras.optimizers.schedules.LearningRateSchedule`, registered for
serialization, so it is saved with the optimizer in ``.keras`` files and a resumed run continues
the same curve.

Example:

>>> schedule = WarmupCosineDecay(peak=3e-3, warmup_steps=100, decay_steps=900)
>>> [round(float(schedule(s)), 6) for s in (0, 50, 100, 550, 1000, 2000)]
[0.0, 0.0015, 0.003, 0.001515, 3e-05, 3e-05]
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_topomap import checks

__all__ = ["WarmupCosineDecay"]


@keras.saving.register_keras_serializable(package="keras_topomap")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak``, then cosine decay to ``peak * final_fraction``.

    Args:
        peak: the learning rate at the end of the warm-up.
        warmup_steps: optimizer steps of the linear warm-up (0: start at ``peak``).
        decay_steps: optimizer steps of the cosine decay after the warm-up (> 0).
        final_fraction: the decayed rate as a fraction of ``peak`` (in ``[0, 1]``).
    """

    def __init__(self, peak, warmup_steps, decay_steps, final_fraction=0.01):
        owner = "WarmupCosineDecay"
        checks.positive_number(peak, "peak", owner=owner)
        checks.non_negative_int(warmup_steps, "warmup_steps", owner=owner)
        checks.positive_int(decay_steps, "decay_steps", owner=owner)
        checks.number(final_fraction, "final_fraction", minimum=0, maximum=1, owner=owner)
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        self.final_fraction = float(final_fraction)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.peak * step / max(self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / self.decay_steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        final = self.peak * self.final_fraction
        decayed = final + (self.peak - final) * cosine
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "final_fraction": self.final_fraction,
        }
