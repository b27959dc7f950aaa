"""Backend-specific value and gradient of the weight penalty, behind ``topographic_penalty``.

:func:`keras_topomap.regularizers.topographic_penalty` in ``keras.ops`` is the reference: every
path here must equal it (value and gradient to 1e-6 relative, ``tests/test_fast_penalty.py``)
and falls back to it. Two backends have a faster path on the CPU
(``benchmarks/penalty_paths.py``; figures in docs/benchmarks.md):

- **TensorFlow**: the reference maths compiled by XLA (``tf.function(jit_compile=True)``).
  Keras runs a TensorFlow train step on the CPU as a graph without XLA, where each of the
  neighbour sum's shifted products is a kernel-sized operation of its own; XLA fuses them.
- **PyTorch**: the value and gradient computed together in the forward pass, in row slabs,
  by in-place multiply-adds into the gradient's own buffer. Eager PyTorch otherwise allocates
  some five kernel-sized temporaries per layer (a fresh memory mapping each for a large
  kernel, whose page faults cost more than the arithmetic) and one more per shift.

JAX compiles the reference with XLA already; it has no path of its own.

``implementation="auto"`` takes the fast path where the backend has one, the kernel lives on
the CPU and holds at least :data:`AUTO_MIN_ELEMENTS` values (below that TensorFlow gained
nothing, and each kernel shape would pay an XLA compilation); ``"fused"`` takes it wherever
the backend has one (on a backend without one it is the reference); ``"reference"`` never
does. A fast path that fails (e.g. no XLA in a TensorFlow build) warns once and the reference
is used from then on.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from keras_topomap import grid as grid_lib

__all__ = ["AUTO_MIN_ELEMENTS", "IMPLEMENTATIONS", "has_fast_path", "penalty", "use_fast_path"]

IMPLEMENTATIONS = ("auto", "reference", "fused")

#: ``implementation="auto"`` takes the fast path for kernels of at least this many values.
#: ``benchmarks/penalty_paths.py`` measured it 1.2-2.4x faster on every kernel of the paper
#: stack (458,752 values and up) and the small stack's 524,288-value ones, and no faster on
#: the 28,672 values of a 64 x 64 x 7 kernel on TensorFlow (2026-12-03), where an XLA
#: compilation per kernel shape would cost more than it saves.
AUTO_MIN_ELEMENTS = 1 << 18

# Row slabs of the PyTorch path hold at most this many values (4 MB): its eight multiply-adds
# per slab then run on data that is still in cache (512-1,024 rows were fastest for the paper's
# 2048-filter kernel; whole 64 MB kernels took half as long again).
_TORCH_SLAB_ELEMENTS = 1 << 20

_broken = set()  # backends whose fast path failed once: the reference from then on
_probed = set()


def has_fast_path(backend=None):
    """Whether ``backend`` (default: Keras' current one) has a fast path that has not failed."""
    backend = backend or keras.backend.backend()
    if backend not in ("tensorflow", "torch") or backend in _broken:
        return False
    if backend == "tensorflow" and backend not in _probed:
        _probed.add(backend)
        try:
            _probe_xla()
        except Exception as e:
            _fail(backend, e, stacklevel=4)
            return False
    return True


def _probe_xla():
    # An XLA compilation error surfaces when a graph runs, not when it is traced (inside a
    # Keras train step, too late to fall back): try XLA once, eagerly, before relying on it.
    import tensorflow as tf

    with tf.init_scope():
        tf.function(lambda x: x * 2.0, jit_compile=True)(tf.ones((2,)))


def _fail(backend, error, stacklevel):
    _broken.add(backend)
    warnings.warn(
        f"keras_topomap: the {backend} fast path of the topographic penalty failed "
        f"({type(error).__name__}: {error}); using the keras.ops reference from now on.",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


def _on_cpu(kernel, backend):
    if backend == "torch":
        kernel = kernel.value if isinstance(kernel, keras.Variable) else kernel
        return kernel.device.type == "cpu"
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


def use_fast_path(implementation, kernel, n_elements):
    """Whether ``topographic_penalty`` takes the fast path for this kernel (see the module)."""
    backend = keras.backend.backend()
    if implementation == "reference" or not has_fast_path(backend):
        return False
    if implementation == "fused":
        return True
    return n_elements >= AUTO_MIN_ELEMENTS and _on_cpu(kernel, backend)


def penalty(kernel, grid, neighborhood, wrap, epsilon, reference_terms):
    """The penalty of ``kernel`` by the backend's fast path, or None if that path failed.

    ``reference_terms(k2, epsilon, grid, neighborhood, wrap)`` is the reference's ``keras.ops``
    value and gradient for a ``(D, F)`` kernel (what TensorFlow compiles).
    """
    backend = keras.backend.backend()
    shape = tuple(kernel.shape)
    kernel = ops.cast(kernel, "float32")
    try:
        if backend == "tensorflow":
            value, grad = _tensorflow_value_and_grad(kernel, shape, grid, neighborhood, wrap,
                                                     epsilon, reference_terms)
        else:
            value, grad = _torch_value_and_grad(kernel, shape, grid, neighborhood, wrap, epsilon)
    except Exception as e:  # a fast path must never cost the user the reference
        _fail(backend, e, stacklevel=4)
        return None

    @ops.custom_gradient
    def _penalty(k):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return grad(upstream)

        return value, gradient

    return _penalty(kernel)


_tf_compiled = {}


def _tensorflow_value_and_grad(kernel, shape, grid, neighborhood, wrap, epsilon, reference_terms):
    import tensorflow as tf

    key = (shape, grid, neighborhood, wrap, epsilon)  # one trace each: no retracing warnings
    if key not in _tf_compiled:
        def terms(k2):
            return reference_terms(k2, epsilon, grid, neighborhood, wrap)

        _tf_compiled[key] = tf.function(terms, jit_compile=True, autograph=False)
    depth = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    k2 = tf.reshape(tf.stop_gradient(kernel), (depth, shape[-1]))
    value, g = _tf_compiled[key](k2)

    def grad(upstream):
        return tf.reshape(g * tf.cast(upstream, tf.float32), shape)

    return value, grad


def _torch_value_and_grad(kernel, shape, grid, neighborhood, wrap, epsilon):
    import torch

    shifts, _, _, n_centers = grid_lib.flat_shift_weights(grid, neighborhood, wrap)
    with torch.no_grad():
        k2 = kernel.detach().reshape(-1, shape[-1])
        if not k2.is_contiguous():
            k2 = k2.contiguous()
        constants = _torch_constants(grid, neighborhood, wrap, k2.device)
        g = _torch_terms(k2, shifts, *constants, epsilon)
        value_parts = g.pop("value_parts")
        value = n_centers - 0.5 * value_parts.sum()
    holder = [g["gradient"]]

    def grad(upstream):
        # The first backward scales the gradient in place and hands its buffer over; a second
        # one (retain_graph) recomputes it rather than scale a tensor autograd may now hold.
        if holder:
            out = holder.pop()
        else:
            with torch.no_grad():
                out = _torch_terms(k2, shifts, *constants, epsilon)["gradient"]
        return out.mul_(upstream.to(out.dtype)).reshape(shape)

    return value, grad


_torch_cache = {}


def _torch_constants(grid, neighborhood, wrap, device):
    """The neighbour weights and gather indices as tensors on ``device`` (once per grid)."""
    import torch

    key = (grid, neighborhood, wrap, str(device))
    if key not in _torch_cache:
        _, weights, gather, _ = grid_lib.flat_shift_weights(grid, neighborhood, wrap)
        _torch_cache[key] = (torch.tensor(np.array(weights), device=device),
                             torch.tensor(np.array(gather), device=device, dtype=torch.long))
    return _torch_cache[key]


def _torch_terms(k2, shifts, weights, gather, epsilon):
    """``{"value_parts": <u_c, v_c> per filter, "gradient": dP/dk for upstream 1}`` of a
    contiguous ``(D, F)`` float32 kernel, in slabs of rows (see the module)."""
    import torch

    depth, n_filters = k2.shape
    device = k2.device
    sq_norm = torch.linalg.vector_norm(k2, dim=0).square_()
    inv_norm = torch.rsqrt(sq_norm + epsilon)
    coefficients = weights * inv_norm[gather]
    reach = max(min(s, n_filters - s) for s in shifts)
    starts = [reach + (s if s <= n_filters - s else s - n_filters) for s in shifts]
    rows = max(1, _TORCH_SLAB_ELEMENTS // n_filters)
    gradient = torch.empty_like(k2)
    kv = torch.zeros(n_filters, device=device)
    for lo in range(0, depth, rows):  # slabs of rows, not filters: a handful per kernel
        slab = k2[lo : lo + rows]
        padded = torch.cat([slab[:, n_filters - reach :], slab, slab[:, :reach]], dim=1)
        v = gradient[lo : lo + rows]  # the neighbour sum, overwritten by the gradient below
        torch.mul(padded[:, starts[0] : starts[0] + n_filters], coefficients[0], out=v)
        for i in range(1, len(starts)):
            v.addcmul_(padded[:, starts[i] : starts[i] + n_filters], coefficients[i])
        kv.add_(torch.linalg.vecdot(slab, v, dim=0))
    uv = inv_norm * kv
    # d(-1/2 sum <u, v>)/dk = -(v - <u, v> u) / ||k||, as in the reference
    along_k = uv * inv_norm * inv_norm
    for lo in range(0, depth, rows):
        gradient[lo : lo + rows].mul_(-inv_norm).addcmul_(k2[lo : lo + rows], along_k)
    return {"value_parts": uv, "gradient": gradient}
