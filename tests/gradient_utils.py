"""Test-only gradient helper: value and gradient of a scalar function of one array.

Kept apart from the package's gradient adapter on purpose: tests of the regularizer should not
depend on the code they would be checking elsewhere.
"""

import keras
import numpy as np


def value_and_grad(fn, x):
    """Returns ``(value, grad)`` as numpy for ``fn(tensor) -> scalar tensor`` at numpy ``x``."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        t = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = fn(t)
        grad = tape.gradient(value, t)
        return float(value.numpy()), grad.numpy()
    if backend == "jax":
        import jax

        value, grad = jax.value_and_grad(fn)(jax.numpy.asarray(x))
        return float(value), np.asarray(grad)
    if backend == "torch":
        import torch

        t = torch.tensor(x, requires_grad=True)
        value = fn(t)
        value.backward()
        return float(value.detach()), t.grad.numpy()
    raise NotImplementedError(backend)
