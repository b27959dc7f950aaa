"""Fast input gradients of stride-1 ``Conv1D`` layers: the kernels behind ``fast_conv_grad``.

:class:`~keras_topomap.gradients.ActivationGradients` (``fast_conv_grad=True``, the default)
replays a model with every eligible ``Conv1D`` (:func:`fast_conv_eligible`) called through a
:class:`FastGradConv1D` that shares its weights and computes the same forward pass, but whose
input gradient is cheaper than the backend's own rule:

- as a *forward* convolution of the output gradient with the flipped kernel (reversed in time,
  input and output channels swapped, stored contiguously): a ``jax.custom_vjp`` with the
  flipped kernel kept as a weight on JAX, a ``tf.custom_gradient`` that flips inside the
  compiled step on TensorFlow, an ``autograd.Function`` with a cached flipped kernel on PyTorch;
- for wide kernels (JAX and TensorFlow, ``fft_conv_grad``) by overlap-save FFT with the
  kernel's precomputed spectrum.

The weights are constants of this path: the adapter never asks for weight gradients. Speed
figures are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_topomap._arrays import to_numpy

__all__ = ["FastGradConv1D", "fast_conv_eligible", "fast_conv_override", "fft_size", "on_cpu"]


def fast_conv_override(fft_min_kernel=None):
    """``layer_override``: stride-1 ``Conv1D`` layers -> :class:`FastGradConv1D` (with the FFT
    input gradient when their kernel is at least ``fft_min_kernel`` wide; None: never)."""
    cache = {}

    def override(layer):
        if type(layer) is not keras.layers.Conv1D or not fast_conv_eligible(layer):
            return None
        if id(layer) not in cache:
            fft = fft_min_kernel is not None and int(layer.kernel_size[0]) >= fft_min_kernel
            cache[id(layer)] = FastGradConv1D(layer, fft=fft)
        return cache[id(layer)]

    return override


def fast_conv_eligible(layer):
    return (
        tuple(layer.strides) == (1,)
        and tuple(layer.dilation_rate) == (1,)
        and getattr(layer, "groups", 1) == 1
        and layer.data_format == "channels_last"
        and layer.padding in ("same", "valid", "causal")
        and not getattr(layer, "lora_enabled", False)
    )


def _conv1d_fast_vjp(kernel_size, pad_left, pad_right):
    """A stride-1 NWC conv ``f(x, w, w_flipped)`` whose input gradient is a forward conv with
    ``w_flipped`` (``w`` reversed along width, in/out channels swapped, stored contiguously)."""
    import jax
    import jax.numpy as jnp

    numbers = ("NWC", "WIO", "NWC")
    k = kernel_size

    def conv(x, w, padding):
        return jax.lax.conv_general_dilated(x, w, (1,), [padding], dimension_numbers=numbers)

    @jax.custom_vjp
    def f(x, w, w_flipped):
        return conv(x, w, (pad_left, pad_right))

    def f_fwd(x, w, w_flipped):
        return f(x, w, w_flipped), (x, w, w_flipped)

    def f_bwd(residuals, cotangent):
        x, w, w_flipped = residuals
        # d/dx of y[t] = sum_j x[t - pad_left + j] w[j]: correlate the cotangent with the
        # flipped kernel, padded by k - 1 - pad on each side.
        dx = conv(cotangent, w_flipped, (k - 1 - pad_left, k - 1 - pad_right))
        # Weight gradient by XLA's own rule; dead code (dropped) when weights aren't requested.
        dw = jax.vjp(lambda w_: conv(x, w_, (pad_left, pad_right)), w)[1](cotangent)[0]
        return dx, dw, jnp.zeros_like(w_flipped)

    f.defvjp(f_fwd, f_bwd)
    return f


def fft_size(kernel_size):
    """FFT length for the overlap-save input gradient: the power of two >= 4 x kernel width.

    Each block of ``n_fft`` gradient frames yields ``n_fft - kernel_size + 1`` input frames;
    longer blocks waste fewer frames on overlap, but the kernel spectrum grows with ``n_fft``.
    4x the width was the fastest of 2x, 4x and 8x on the paper stack's 32-wide layer
    (``docs/benchmarks.md``).
    """
    return 1 << max(1, math.ceil(math.log2(4 * kernel_size)))


def _overlap_save_input_gradient(dy, spec_re, spec_im, kernel_size, pad_left, t_in, n_fft):
    """``d/dx`` of a stride-1 conv ``y[t] = sum_j x[t - pad_left + j] @ w[j]`` from the output
    gradient ``dy`` ``(rows, t_out, out)``, by overlap-save FFT with the kernel's spectrum
    (:func:`_kernel_spectrum`). ``keras.ops`` only: JAX (static shapes) and TensorFlow (time
    axis dynamic) run the same code.

    ``dx[s] = sum_j dy[s + pad_left - j] @ w[j]^T`` is the full linear convolution ``z`` of
    ``dy`` with ``h[j] = w[j]^T``, read at ``z[pad_left : pad_left + t_in]``. Block ``b`` gives
    ``z[pad_left + b*block + (0 .. block-1)]`` from the ``n_fft`` frames of ``dy`` starting at
    ``pad_left + b*block - (k-1)`` (the first ``k-1`` only as history).
    """
    k = kernel_size
    block = n_fft - k + 1
    dtype = dy.dtype
    dy = ops.cast(dy, "float32")
    rows = ops.shape(dy)[0]
    c_out, c_in = dy.shape[-1], spec_re.shape[-1]
    freqs = n_fft // 2 + 1
    n_blocks = (t_in + block - 1) // block
    # Zeros before dy for the first block's history, and n_fft after: always enough for the
    # last block (static widths, so the same code runs with a dynamic time axis).
    dy = ops.pad(dy, [[0, 0], [k - 1 - pad_left, n_fft], [0, 0]])
    index = ops.arange(n_blocks)[:, None] * block + ops.arange(n_fft)[None, :]
    blocks = ops.transpose(ops.take(dy, index, axis=1), (0, 1, 3, 2))  # (rows, blocks, o, n_fft)
    real, imag = ops.rfft(blocks, fft_length=n_fft)  # (rows, blocks, o, freqs)
    # Complex product as real matmuls, one batched matmul per kernel part: real and imaginary
    # rows stacked, so each kernel spectrum is read once.
    parts = ops.transpose(ops.stack([real, imag]), (4, 0, 1, 2, 3))  # (freqs, 2, rows, blocks, o)
    parts = ops.reshape(parts, (freqs, -1, c_out))
    by_re = ops.reshape(ops.matmul(parts, spec_re), (freqs, 2, -1, c_in))
    by_im = ops.reshape(ops.matmul(parts, spec_im), (freqs, 2, -1, c_in))
    product = (by_re[:, 0] - by_im[:, 1], by_re[:, 1] + by_im[:, 0])  # (freqs, rows x blocks, i)
    product = tuple(ops.transpose(part, (1, 2, 0)) for part in product)
    z = ops.irfft(product, fft_length=n_fft)[..., k - 1:]  # (rows x blocks, i, block)
    z = ops.reshape(ops.transpose(z, (0, 2, 1)), (rows, -1, c_in))
    return ops.cast(z[:, :t_in], dtype)


def _conv1d_fft_vjp(kernel_size, pad_left, pad_right, n_fft):
    """A stride-1 NWC conv ``f(x, w, spectrum_real, spectrum_imag)`` whose input gradient is
    computed by overlap-save FFT with the kernel's precomputed spectrum (see
    :func:`_kernel_spectrum`)."""
    import jax
    import jax.numpy as jnp

    numbers = ("NWC", "WIO", "NWC")
    k = kernel_size

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1,), [(pad_left, pad_right)],
                                            dimension_numbers=numbers)

    @jax.custom_vjp
    def f(x, w, spec_re, spec_im):
        return conv(x, w)

    def f_fwd(x, w, spec_re, spec_im):
        return conv(x, w), (x, w, spec_re, spec_im)

    def f_bwd(residuals, cotangent):
        x, w, spec_re, spec_im = residuals
        dx = _overlap_save_input_gradient(cotangent, spec_re, spec_im, k, pad_left, x.shape[1],
                                          n_fft)
        # Weight gradient by XLA's own rule; dead code (dropped) when weights aren't requested.
        dw = jax.vjp(lambda w_: conv(x, w_), w)[1](cotangent)[0]
        return dx, dw, jnp.zeros_like(spec_re), jnp.zeros_like(spec_im)

    f.defvjp(f_fwd, f_bwd)
    return f


def _kernel_spectrum(kernel, n_fft):
    """Real and imaginary parts of ``rfft(kernel.swapaxes(1, 2), n_fft, axis=0)``, float32
    ``(n_fft // 2 + 1, out_channels, in_channels)`` each, computed outside the step.

    As two matmuls with the DFT's cosine and sine tables (kernel_size taps, zero-padded to
    ``n_fft``): faster than XLA's CPU FFT along the leading axis of a large kernel
    (``docs/benchmarks.md``).
    """
    import numpy as np

    taps = np.arange(int(kernel.shape[0]))
    angle = 2.0 * np.pi * np.outer(np.arange(n_fft // 2 + 1), taps) / n_fft
    # Transposed first, so each table multiplies a contiguous (taps, out x in) matrix.
    h = ops.swapaxes(ops.cast(kernel, "float32"), 1, 2)
    return tuple(ops.einsum("fj,joi->foi", table.astype(np.float32), h)
                 for table in (np.cos(angle), -np.sin(angle)))


_EQUAL = {}


def _same_array(kernel, other, flipped=False):
    """Whether ``kernel`` equals ``other`` (or, ``flipped=True``, the kernel that
    :func:`_flip_kernel` turned into ``other``; JAX), compared on the device."""
    if tuple(kernel.shape) != tuple(
        (other.shape[0], other.shape[2], other.shape[1]) if flipped else other.shape
    ):
        return False
    if keras.backend.backend() != "jax":
        return bool(to_numpy(ops.all(ops.equal(kernel, other))))
    import jax
    import jax.numpy as jnp

    if kernel.dtype != other.dtype:
        return False
    if flipped not in _EQUAL:
        unflip = (lambda f: jnp.swapaxes(jnp.flip(f, axis=0), 1, 2)) if flipped else (lambda f: f)
        _EQUAL[flipped] = jax.jit(lambda a, b: jnp.array_equal(a, unflip(b)))
    return bool(_EQUAL[flipped](kernel, other))


def _kernel_values(conv):
    """The conv's kernel as a backend array (TensorFlow: a tensor read from the variable)."""
    value = conv.kernel.value
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(value)
    return value


def on_cpu(backend):
    """Whether the backend computes on the CPU (no accelerator visible)."""
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


_FLIP = {}


def _flip_kernel(kernel):
    """``kernel[::-1].swapaxes(1, 2)`` as a contiguous array (computed outside the step: inside
    a jit XLA keeps the transposed view, and its CPU convolution on that layout is slower)."""
    import jax
    import jax.numpy as jnp

    if "fn" not in _FLIP:
        _FLIP["fn"] = jax.jit(lambda w: jnp.swapaxes(jnp.flip(w, axis=0), 1, 2))
    return _FLIP["fn"](kernel)


def _conv1d_fast_grad_tf(forward, kernel_size, pad_left, pad_right):
    """TensorFlow: ``f(x, w) = forward(x, w)`` whose input gradient is a forward conv of the
    padded output gradient with the flipped kernel (flipped in the graph: a real copy in TF)."""
    import tensorflow as tf

    k = kernel_size

    def f(x, w):
        @tf.custom_gradient
        def conv(x):
            def grad(dy):
                flipped = tf.transpose(tf.reverse(w, axis=[0]), [0, 2, 1])
                padded = tf.pad(dy, [[0, 0], [k - 1 - pad_left, k - 1 - pad_right], [0, 0]])
                return tf.nn.conv1d(padded, flipped, stride=1, padding="VALID")

            return forward(x, w), grad

        return conv(x)

    return f


def _conv1d_fft_grad_tf(forward, kernel_size, pad_left, n_fft):
    """TensorFlow: ``f(x, w, spectrum_real, spectrum_imag) = forward(x, w)`` whose input
    gradient is computed by overlap-save FFT (as :func:`_conv1d_fft_vjp`, with the time axis
    dynamic: the step is traced once for all lengths)."""
    import tensorflow as tf

    def f(x, w, spec_re, spec_im):
        @tf.custom_gradient
        def conv(x):
            def grad(dy):
                return _overlap_save_input_gradient(dy, spec_re, spec_im, kernel_size, pad_left,
                                                    tf.shape(x)[1], n_fft)

            return forward(x, w), grad

        return conv(x)

    return f


def _conv1d_fast_grad_torch(forward, kernel_size, pad_left, pad_right):
    """PyTorch: ``f(x, w, w_flipped) = forward(x, w)`` whose input gradient is a forward conv
    with ``w_flipped`` (torch layout ``(in, out, k)`` of the original conv, contiguous)."""
    import torch

    k = kernel_size

    class FastGradConv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, w_flipped):
            ctx.save_for_backward(w_flipped)
            return forward(x, w)

        @staticmethod
        def backward(ctx, dy):
            (w_flipped,) = ctx.saved_tensors
            padded = torch.nn.functional.pad(dy.transpose(1, 2), (k - 1 - pad_left,
                                                                  k - 1 - pad_right))
            dx = torch.nn.functional.conv1d(padded, w_flipped).transpose(1, 2)
            return dx, None, None

    return FastGradConv.apply


class FastGradConv1D(keras.layers.Layer):
    """Calls a built stride-1 ``Conv1D`` (sharing its weights) with a faster input gradient
    (see ``fast_conv_grad`` of
    :class:`~keras_topomap.gradients.ActivationGradients`).

    JAX: through :func:`_conv1d_fast_vjp`, holding the flipped kernel as a non-trainable weight
    (one extra copy of the kernel), refreshed by :meth:`refresh` whenever the conv's kernel array
    changes. TensorFlow: :func:`_conv1d_fast_grad_tf`. PyTorch: :func:`_conv1d_fast_grad_torch`
    with the flipped kernel cached per kernel version. With ``fft=True`` (JAX, TensorFlow):
    through :func:`_conv1d_fft_vjp` / :func:`_conv1d_fft_grad_tf`, holding the kernel's spectrum
    (and a copy of the kernel, to notice changes) instead.
    """

    def __init__(self, conv, fft=False):
        super().__init__(name=f"{conv.name}_fastgrad", dtype=conv.dtype_policy)
        self.conv = conv
        self._backend = keras.backend.backend()
        self.fft = bool(fft) and self._backend in ("jax", "tensorflow")
        k = int(conv.kernel_size[0])
        pads = {"valid": (0, 0), "causal": (k - 1, 0), "same": ((k - 1) // 2, k - 1 - (k - 1) // 2)}
        pad_left, pad_right = pads[conv.padding]

        def forward(x, w):
            # What Conv1D.call does (stride 1, no dilation), so values match the layer's own.
            padding = conv.padding
            if padding == "causal":
                x, padding = ops.pad(x, [[0, 0], [k - 1, 0], [0, 0]]), "valid"
            return ops.conv(x, w, strides=1, padding=padding, data_format="channels_last")

        if self.fft:
            self.n_fft = fft_size(k)
            if self._backend == "tensorflow":
                self._fn = _conv1d_fft_grad_tf(forward, k, pad_left, self.n_fft)
            else:
                self._fn = _conv1d_fft_vjp(k, pad_left, pad_right, self.n_fft)
            self._source = conv.kernel.value
            current = _kernel_values(conv)
            self._kernel_copy = ops.copy(current)
            parts = _kernel_spectrum(current, self.n_fft)
            self.spectrum_real, self.spectrum_imag = (
                self.add_weight(name=f"spectrum_{part}", shape=value.shape, dtype="float32",
                                trainable=False, initializer=lambda shape, dtype, v=value: v)
                for part, value in zip(("real", "imag"), parts)
            )
        elif self._backend == "tensorflow":
            self._fn = _conv1d_fast_grad_tf(forward, k, pad_left, pad_right)
        elif self._backend == "torch":
            self._fn = _conv1d_fast_grad_torch(forward, k, pad_left, pad_right)
            self._torch_flipped = (None, None)
        else:
            self._fn = _conv1d_fast_vjp(k, pad_left, pad_right)
            kernel = conv.kernel
            self._source = kernel.value
            flipped = _flip_kernel(self._source)
            self.flipped_kernel = self.add_weight(
                name="flipped_kernel", shape=flipped.shape, dtype=kernel.dtype, trainable=False,
                initializer=lambda shape, dtype: flipped,
            )
        self.built = True

    def refresh(self):
        """Recomputes the flipped kernel (JAX) or the kernel spectrum (JAX, TensorFlow) if the
        conv's kernel changed since.

        Keras replaces weight arrays with equal new ones after ``fit``/``predict``/``evaluate`` on
        JAX (and deletes the old ones), and TensorFlow variables change in place, so the kernel is
        compared with what it was (cheaper than recomputing) and only a real change pays for the
        recomputation (``docs/benchmarks.md``). The flipped kernel is compared flipped back; the FFT
        path keeps a copy of the kernel for this. (TensorFlow's flipped kernels are made inside the
        step; PyTorch's are cached per tensor version.)
        """
        if self._backend not in ("jax", "tensorflow") or (
            self._backend == "tensorflow" and not self.fft
        ):
            return
        current = self.conv.kernel.value
        if self._backend == "jax" and current is self._source:
            return
        if self.fft:
            values = _kernel_values(self.conv)
            if not _same_array(values, self._kernel_copy):
                real, imag = _kernel_spectrum(values, self.n_fft)
                self.spectrum_real.assign(real)
                self.spectrum_imag.assign(imag)
                self._kernel_copy = ops.copy(values)
        elif not _same_array(current, self.flipped_kernel.value, flipped=True):
            self.flipped_kernel.assign(_flip_kernel(current))
        self._source = current

    def _flipped_torch(self, kernel):
        # Keyed on the storage and its in-place version counter (assign() bumps it).
        key = (kernel.data_ptr(), kernel._version, kernel.dtype)
        if self._torch_flipped[0] != key:
            import torch

            with torch.no_grad():
                flipped = kernel.detach().flip(0).permute(1, 2, 0).contiguous()
            self._torch_flipped = (key, flipped)
        return self._torch_flipped[1]

    def call(self, inputs):
        kernel = ops.cast(self.conv.kernel, inputs.dtype)
        if self.fft:
            outputs = self._fn(inputs, kernel, ops.convert_to_tensor(self.spectrum_real),
                               ops.convert_to_tensor(self.spectrum_imag))
        elif self._backend == "tensorflow":
            outputs = self._fn(inputs, kernel)
        elif self._backend == "torch":
            # The weights are constants here: no weight gradient is ever computed.
            kernel = kernel.detach()
            outputs = self._fn(inputs, kernel, self._flipped_torch(kernel))
        else:
            flipped = ops.cast(self.flipped_kernel, inputs.dtype)
            outputs = self._fn(inputs, kernel, flipped)
        if self.conv.use_bias:
            outputs = outputs + ops.cast(self.conv.bias, outputs.dtype)
        if self.conv.activation is not None:
            outputs = self.conv.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)
