"""Backend tensors to numpy, written once for every module of the package."""

from __future__ import annotations

import numpy as np

__all__ = ["to_numpy"]


def to_numpy(value):
    """``value`` as a numpy array.

    ``None`` and numpy arrays pass through unchanged. PyTorch tensors are detached and moved to
    the CPU first (``np.asarray`` fails on a tensor that requires grad or lives on a GPU); other
    backend tensors and Keras variables go through ``keras.ops.convert_to_numpy``; anything
    else (lists, scalars, objects with ``__array__``) through ``np.asarray``.

    Example:

    >>> to_numpy(keras.ops.ones((2,)))
    array([1., 1.], dtype=float32)
    """
    if value is None or isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch
        return value.detach().cpu().numpy()
    try:
        import keras

        return keras.ops.convert_to_numpy(value)
    except Exception:  # plain Python values the backend will not take
        return np.asarray(value)
