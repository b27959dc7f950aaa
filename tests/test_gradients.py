"""The gradient adapter: closed-form gradients w.r.t. activations and input, on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_topomap.gradients import ActivationGradients, find_layer, flatten_model

L = keras.layers


def _linear_model(sequential=False, nested=False):
    """x (B,T,2) -> h1 = x @ A -> h2 = h1 @ B -> out = h2 @ C, per frame, fixed weights."""
    a = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]], "float32")
    b = np.array([[2.0, 0.0], [1.0, -1.0], [0.5, 4.0]], "float32")
    c = np.array([[1.0, 2.0, -1.0], [3.0, 0.0, 1.0]], "float32")
    layers = [
        L.Dense(3, use_bias=False, name="h1"),
        L.Dense(2, use_bias=False, name="h2"),
        L.Dense(3, use_bias=False, name="out"),
    ]
    if sequential:
        model = keras.Sequential([keras.Input((None, 2)), *layers])
    elif nested:
        x = keras.Input((None, 2))
        middle = keras.Sequential([keras.Input((None, 3)), layers[1]], name="middle")
        model = keras.Model(x, layers[2](middle(layers[0](x))))
    else:
        x = keras.Input((None, 2))
        model = keras.Model(x, layers[2](layers[1](layers[0](x))))
    for layer, w in zip(layers, (a, b, c)):
        layer.kernel.assign(w)
    return model, a, b, c


def _weighted_sum(weights):
    def target(output, activations):
        return ops.sum(output * ops.convert_to_tensor(weights))

    return target


@pytest.mark.backend
@pytest.mark.parametrize("kind", ["functional", "sequential", "nested"])
def test_closed_form_gradients(kind):
    model, a, b, c = _linear_model(sequential=kind == "sequential", nested=kind == "nested")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 2)).astype("float32")
    w = rng.normal(size=(2, 4, 3)).astype("float32")
    fn = ActivationGradients(model, ["h1", "h2"], _weighted_sum(w), input_gradient=True)
    r = fn(x)
    h1 = x @ a
    h2 = h1 @ b
    out = h2 @ c
    np.testing.assert_allclose(r.activations["h1"], h1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.activations["h2"], h2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.output, out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.value, float((out * w).sum()), rtol=1e-4)
    np.testing.assert_allclose(r.gradients["h2"], w @ c.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.gradients["h1"], w @ c.T @ b.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.input_gradient, w @ c.T @ b.T @ a.T, rtol=1e-5, atol=1e-4)


@pytest.mark.backend
def test_reduce_extras_and_compile_count(backend):
    model, a, b, c = _linear_model()

    def target(output, activations, weights):
        return ops.sum(output * weights)

    def reduce(result, weights):
        return {"gx": ops.sum(result.gradients["h1"] * result.activations["h1"], axis=(0, 1))}

    fn = ActivationGradients(model, ["h1"], target, reduce=reduce)
    rng = np.random.default_rng(1)
    for t in (3, 5, 3):
        x = rng.normal(size=(2, t, 2)).astype("float32")
        w = rng.normal(size=(2, t, 3)).astype("float32")
        got = fn(x, w)
        expected = ((x @ a) * (w @ c.T @ b.T)).sum(axis=(0, 1))
        np.testing.assert_allclose(got["gx"], expected, rtol=1e-4, atol=1e-5)
    # TensorFlow: one trace for every shape; JAX: one per distinct shape; torch: eager.
    assert fn.trace_count == {"tensorflow": 1, "jax": 2, "torch": 0}[backend]


@pytest.mark.backend
def test_no_weight_gradients_and_unchanged_model(backend):
    model, *_ = _linear_model()
    fn = ActivationGradients(model, ["h2"], lambda out, acts: ops.sum(out))
    x = np.ones((1, 2, 2), "float32")
    before = model.predict(x, verbose=0)
    fn(x)
    np.testing.assert_allclose(model.predict(x, verbose=0), before)
    if backend == "torch":
        assert all(v.value.grad is None for v in model.trainable_variables)


@pytest.mark.backend
def test_input_gradient_only_stops_at_tapped_layer():
    model, a, b, c = _linear_model()

    def target(output, activations):
        return ops.sum(activations["h1"][:, 0, 1])

    fn = ActivationGradients(model, ["h1"], target, layer_gradients=False, input_gradient=True,
                             include_output=False)
    x = np.zeros((1, 3, 2), "float32")
    r = fn(x)
    assert r.output is None and r.gradients == {}
    expected = np.zeros((1, 3, 2), "float32")
    expected[0, 0] = a[:, 1]
    np.testing.assert_allclose(r.input_gradient, expected)


def test_flatten_and_errors():
    model, *_ = _linear_model(nested=True)
    assert find_layer(model, "h2").name == "h2"
    flat = flatten_model(model, ["h2"], probes=True)
    assert len(flat.inputs) == 2 and len(flat.outputs) == 2
    with pytest.raises(ValueError, match="Layer 'nope' is not in model.*Available layers: .*h1"):
        ActivationGradients(model, ["nope"], lambda o, a: ops.sum(o))
    with pytest.raises(ValueError, match="target must be callable"):
        ActivationGradients(model, ["h1"], "prediction")
    with pytest.raises(ValueError, match="unique"):
        flatten_model(model, ["h1", "h1"])
    x1, x2 = keras.Input((None, 2)), keras.Input((None, 2))
    two = keras.Model([x1, x2], L.Add(name="add")([x1, x2]))
    with pytest.raises(ValueError, match="one input and one output"):
        flatten_model(two, ["add"])
    shared = L.Dense(2, name="shared")
    x = keras.Input((None, 2))
    twice = keras.Model(x, shared(shared(x)))
    with pytest.raises(ValueError, match="'shared' is called more than once"):
        flatten_model(twice, ["shared"])


@pytest.mark.backend
def test_fast_conv_gradient_path_matches_autodiff():
    """Stride-1 Conv1D layers get a flipped-kernel input gradient; values must not change."""
    model, names = _conv_stack([(6, 4, "same", "relu"), (5, 3, "causal", None),
                                (5, 2, "valid", "tanh")])

    def target(output, activations):
        return ops.sum(ops.max(output, axis=-1))

    fast = ActivationGradients(model, names, target, input_gradient=True)
    plain = ActivationGradients(model, names, target, input_gradient=True, fast_conv_grad=False)
    assert len(fast.flat_model.trainable_variables) == len(model.trainable_variables)
    xb = np.random.default_rng(0).random((2, 17, 3)).astype("float32")
    a, b = fast(xb), plain(xb)
    for name in names:
        np.testing.assert_allclose(a.gradients[name], b.gradients[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.activations[name], b.activations[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.input_gradient, b.input_gradient, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.output, b.output, rtol=1e-5, atol=1e-6)
    # New weights (e.g. more training) reach the fast path's cached flipped kernels too.
    layer = model.get_layer("c1")
    layer.kernel.assign(np.random.default_rng(1).normal(size=layer.kernel.shape))
    a, b = fast(xb), plain(xb)
    np.testing.assert_allclose(a.gradients["c0"], b.gradients["c0"], rtol=1e-5, atol=1e-6)


def _conv_stack(specs):
    """x (B, T, 3) -> stride-2 conv "c0" -> stride-1 convs "c1", ... given as (filters, width,
    padding, activation) -> 1x1 conv "out". Returns the model and the hidden layers' names."""
    x = keras.Input((None, 3))
    h = L.Conv1D(4, 5, strides=2, padding="same", activation="relu", name="c0")(x)
    for i, (filters, width, padding, activation) in enumerate(specs, start=1):
        h = L.Conv1D(filters, width, padding=padding, activation=activation, name=f"c{i}")(h)
    names = [f"c{i}" for i in range(len(specs) + 1)]
    return keras.Model(x, L.Conv1D(4, 1, name="out")(h)), names


def _wide_conv_model():
    """Stride-1 convs of several widths and paddings (even and odd kernels) after a stride-2 one."""
    return _conv_stack([(6, 16, "same", "relu"), (5, 9, "causal", None),
                        (7, 4, "valid", "tanh"), (5, 17, "same", None)])


@pytest.mark.backend
@pytest.mark.parametrize("frames", [9, 40, 150])  # shorter than one FFT block .. several blocks
def test_fft_conv_gradient_path_matches_autodiff(backend, frames):
    """The overlap-save FFT input gradient (JAX, TensorFlow; ignored on PyTorch) equals
    autodiff's, and the forward pass stays the layer's own."""
    model, names = _wide_conv_model()

    def target(output, activations):
        return ops.sum(ops.max(output, axis=-1))

    fft = ActivationGradients(model, names, target, input_gradient=True, fft_conv_grad=True,
                              fft_min_kernel=4)
    plain = ActivationGradients(model, names, target, input_gradient=True, fast_conv_grad=False)
    on_fft = [layer.conv.name for layer in fft.flat_model.layers if getattr(layer, "fft", False)]
    assert on_fft == ([] if backend == "torch" else ["c1", "c2", "c3", "c4"])
    xb = np.random.default_rng(frames).normal(size=(2, frames, 3)).astype("float32")
    a, b = fft(xb), plain(xb)
    for name in names:
        np.testing.assert_allclose(a.gradients[name], b.gradients[name], rtol=1e-4, atol=2e-6)
        np.testing.assert_array_equal(a.activations[name], b.activations[name])  # own forward
    np.testing.assert_allclose(a.input_gradient, b.input_gradient, rtol=1e-4, atol=2e-6)
    assert np.abs(b.gradients["c0"]).max() > 0.01  # the comparison is not between zeros


@pytest.mark.backend
def test_kernel_caches_follow_weight_changes_only(backend, monkeypatch):
    """The flipped kernels and kernel spectra are recomputed when a kernel's values change,
    not when Keras merely swaps in an equal array (as ``predict`` does on JAX)."""
    from keras_topomap import fast_conv

    model, names = _wide_conv_model()
    calls = {"spectrum": 0, "flip": 0}
    for fn, key in ((fast_conv._kernel_spectrum, "spectrum"), (fast_conv._flip_kernel, "flip")):
        def counted(*args, _fn=fn, _key=key):
            calls[_key] += 1
            return _fn(*args)

        monkeypatch.setattr(fast_conv, fn.__name__, counted)

    def target(output, activations):
        return ops.sum(output[..., 0])

    step = ActivationGradients(model, names, target, fft_conv_grad=True, fft_min_kernel=16)
    plain = ActivationGradients(model, names, target, fast_conv_grad=False)
    built = dict(calls)
    assert built["spectrum"] == (0 if backend == "torch" else 2)  # c1, c4 by FFT
    if backend == "jax":
        assert built["flip"] == 3  # c2, c3, out flipped once (TensorFlow: in the step)
    xb = np.random.default_rng(0).normal(size=(2, 20, 3)).astype("float32")
    step(xb)
    model.predict(xb, verbose=0)  # JAX: new (equal) weight arrays, the old ones deleted
    for layer in model.layers:
        for weight in layer.weights:
            weight.assign(weight.numpy())
    step(xb)
    assert calls == built
    for name in ("c1", "c2"):  # one per path
        layer = model.get_layer(name)
        layer.kernel.assign(layer.kernel.numpy() * -1.5)
    a, b = step(xb), plain(xb)
    if backend != "torch":
        assert calls["spectrum"] == built["spectrum"] + 1
        assert calls["flip"] == built["flip"] + (backend == "jax")
    np.testing.assert_allclose(a.gradients["c0"], b.gradients["c0"], rtol=1e-4, atol=1e-5)


def test_dispatch_fetch_and_fft_argument_errors():
    model, names = _linear_model()[0], ["h1", "h2"]

    def target(output, activations):
        return ops.sum(output)

    step = ActivationGradients(model, names, target)
    xb = np.ones((2, 3, 2), "float32")
    a, b = step(xb), step.fetch(step.dispatch(xb))
    for name in names:
        np.testing.assert_array_equal(a.gradients[name], b.gradients[name])
    with pytest.raises(ValueError, match=r"fft_conv_grad must be one of \[True, False, 'auto'\]"):
        ActivationGradients(model, names, target, fft_conv_grad="yes")
    with pytest.raises(ValueError, match="fft_min_kernel must be an integer >= 2"):
        ActivationGradients(model, names, target, fft_min_kernel=1)


def test_fft_size():
    from keras_topomap.fast_conv import fft_size

    assert [fft_size(k) for k in (2, 7, 16, 17, 32)] == [8, 32, 64, 128, 128]
