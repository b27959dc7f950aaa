"""The backends' fast paths of the weight penalty equal the keras.ops reference, and fall back."""

import keras
import numpy as np
import pytest

from keras_topomap import TopographicRegularizer, fast_penalty
from keras_topomap.regularizers import topographic_penalty
from tests.gradient_utils import value_and_grad

CASES = [  # (kernel shape, grid, neighborhood, wrap)
    ((7, 16, 12), (4, 3), 3, False),
    ((7, 16, 12), (4, 3), 3, True),
    ((5, 40, 64), (8, 8), 5, False),
    ((3, 9, 256), (16, 16), 3, True),
    ((24, 36), (6, 6), 3, False),  # a Dense kernel
    ((2, 3, 3, 20), (5, 4), 3, True),  # a Conv2D kernel
]


@pytest.fixture(autouse=True)
def _fresh_fast_path():
    """Each test sees the fast path as a new process does (no failure recorded)."""
    broken = set(fast_penalty._broken)
    fast_penalty._broken.clear()
    yield
    fast_penalty._broken.clear()
    fast_penalty._broken.update(broken)


def _relative(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _both(kernel, grid, neighborhood=3, wrap=False, scale=3.0):
    out = {}
    for implementation in ("reference", "fused"):
        out[implementation] = value_and_grad(
            lambda k, impl=implementation: scale * topographic_penalty(
                k, grid, neighborhood, wrap, implementation=impl),
            kernel,
        )
    return out["reference"], out["fused"]


@pytest.mark.backend
@pytest.mark.parametrize("shape,grid,neighborhood,wrap", CASES)
def test_fused_equals_reference(shape, grid, neighborhood, wrap):
    kernel = np.random.default_rng(3).normal(size=shape).astype("float32")
    (v_ref, g_ref), (v_fast, g_fast) = _both(kernel, grid, neighborhood, wrap)
    assert abs(v_fast - v_ref) <= 1e-6 * abs(v_ref)
    assert g_fast.shape == g_ref.shape == shape
    assert _relative(g_fast, g_ref) <= 1e-6


@pytest.mark.backend
def test_fused_is_finite_for_zero_and_constant_filters_and_low_precision():
    kernel = np.random.default_rng(4).normal(size=(5, 8, 16)).astype("float32")
    kernel[..., 3] = 0.0
    kernel[..., 7] = 0.5
    (v_ref, g_ref), (v_fast, g_fast) = _both(kernel, (4, 4))
    assert np.isfinite(v_fast) and np.isfinite(g_fast).all()
    assert abs(v_fast - v_ref) <= 1e-6 * abs(v_ref) and _relative(g_fast, g_ref) <= 1e-6
    half = kernel.astype("float16")
    (v_ref, g_ref), (v_fast, g_fast) = _both(half, (4, 4))
    assert abs(v_fast - v_ref) <= 1e-6 * abs(v_ref)
    assert _relative(g_fast.astype("float32"), g_ref.astype("float32")) <= 1e-3  # float16 grads


@pytest.mark.backend
def test_auto_takes_the_fast_path_only_for_large_cpu_kernels(backend):
    small = np.zeros((3, 8, 16), "float32")
    large = np.zeros((4, 256, 256), "float32")  # 262,144 values, AUTO_MIN_ELEMENTS
    assert large.size >= fast_penalty.AUTO_MIN_ELEMENTS > small.size
    has = backend in ("tensorflow", "torch")
    assert fast_penalty.has_fast_path() is has
    tensor = keras.ops.convert_to_tensor(large)
    assert fast_penalty.use_fast_path("auto", tensor, large.size) is has
    assert fast_penalty.use_fast_path("auto", tensor, small.size) is False
    assert fast_penalty.use_fast_path("fused", tensor, small.size) is has
    assert fast_penalty.use_fast_path("reference", tensor, large.size) is False


@pytest.mark.backend
def test_auto_on_a_large_kernel_equals_the_reference():
    kernel = np.random.default_rng(5).normal(size=(4, 256, 256)).astype("float32")
    ref = value_and_grad(
        lambda k: topographic_penalty(k, (16, 16), implementation="reference"), kernel)
    auto = value_and_grad(lambda k: topographic_penalty(k, (16, 16)), kernel)
    assert abs(auto[0] - ref[0]) <= 1e-6 * abs(ref[0])
    assert _relative(auto[1], ref[1]) <= 1e-6


@pytest.mark.backend
def test_a_failing_fast_path_warns_once_and_falls_back(monkeypatch, backend):
    if backend not in ("tensorflow", "torch"):
        pytest.skip("JAX has no fast path to fail")
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no fused kernel here")

    name = "_tensorflow_value_and_grad" if backend == "tensorflow" else "_torch_value_and_grad"
    monkeypatch.setattr(fast_penalty, name, broken)
    kernel = np.random.default_rng(6).normal(size=(3, 8, 16)).astype("float32")
    ref = value_and_grad(
        lambda k: topographic_penalty(k, (4, 4), implementation="reference"), kernel)
    with pytest.warns(RuntimeWarning, match=f"the {backend} fast path .* no fused kernel here"):
        first = value_and_grad(
            lambda k: topographic_penalty(k, (4, 4), implementation="fused"), kernel)
    assert first[0] == pytest.approx(ref[0]) and _relative(first[1], ref[1]) <= 1e-6
    assert not fast_penalty.has_fast_path()
    second = value_and_grad(lambda k: topographic_penalty(k, (4, 4), implementation="fused"),
                            kernel)
    assert len(calls) == 1 and _relative(second[1], ref[1]) <= 1e-6


def test_xla_that_fails_to_compile_is_found_before_a_train_step(monkeypatch):
    """On TensorFlow an XLA error would only surface when the step's graph runs: probed once."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow only")

    def no_xla():
        raise RuntimeError("XLA is not built in")

    monkeypatch.setattr(fast_penalty, "_probe_xla", no_xla)
    fast_penalty._probed.discard("tensorflow")
    with pytest.warns(RuntimeWarning, match="XLA is not built in"):
        assert fast_penalty.has_fast_path("tensorflow") is False
    fast_penalty._probed.discard("tensorflow")


@pytest.mark.backend
def test_torch_second_backward_gives_the_same_gradient(backend):
    if backend != "torch":
        pytest.skip("the in-place gradient hand-over is PyTorch's")
    import torch

    kernel = torch.tensor(np.random.default_rng(7).normal(size=(3, 8, 16)).astype("float32"),
                          requires_grad=True)
    value = 2.0 * topographic_penalty(kernel, (4, 4), implementation="fused")
    (first,) = torch.autograd.grad(value, kernel, retain_graph=True)
    first = first.clone()
    (second,) = torch.autograd.grad(value, kernel)
    np.testing.assert_allclose(second.numpy(), first.numpy(), rtol=1e-6, atol=1e-7)


def _step_weights(implementation):
    keras.utils.set_random_seed(11)
    model = keras.Sequential([
        keras.Input((12, 9)),
        keras.layers.Conv1D(16, 3, padding="same", kernel_regularizer=TopographicRegularizer(
            grid=(4, 4), strength=0.5, input_strength=0.1, input_grid=(3, 3),
            implementation=implementation)),
        keras.layers.Conv1D(3, 1),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 12, 9)).astype("float32")
    y = rng.normal(size=(4, 12, 3)).astype("float32")
    losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
    return losses, keras.ops.convert_to_numpy(model.layers[0].kernel)


@pytest.mark.backend
def test_train_steps_match_the_reference():
    """Through Keras' own train step (a graph on TensorFlow, jit on JAX, eager on PyTorch)."""
    ref_losses, ref_kernel = _step_weights("reference")
    losses, kernel = _step_weights("fused")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(kernel, ref_kernel, rtol=1e-5, atol=1e-6)


def test_implementation_is_checked_and_serialized():
    reg = TopographicRegularizer(grid=(4, 4), implementation="reference")
    assert reg.get_config()["implementation"] == "reference"
    assert TopographicRegularizer.from_config(reg.get_config()).implementation == "reference"
    assert TopographicRegularizer().implementation == "auto"
    with pytest.raises(ValueError, match="one of .*Received: implementation='xla'"):
        TopographicRegularizer(implementation="xla")
    with pytest.raises(ValueError, match="Received: implementation='fast'"):
        topographic_penalty(np.zeros((3, 4), "float32"), (2, 2), implementation="fast")


@pytest.mark.backend
def test_auto_keeps_the_reference_off_the_cpu(monkeypatch, backend):
    """Measured faster only on the CPU: on an accelerator "auto" stays with the reference."""
    monkeypatch.setattr(fast_penalty, "_on_cpu", lambda kernel, backend: False)
    large = keras.ops.zeros((4, 256, 256))
    assert fast_penalty.use_fast_path("auto", large, 4 * 256 * 256) is False
    assert fast_penalty.use_fast_path("fused", large, 4 * 256 * 256) is (
        backend in ("tensorflow", "torch"))
