"""TopographicRegularizer: exact penalty, gradient, properties, serialization and errors."""

import functools
import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_topomap import TopographicRegularizer, grid, topographic_layers
from tests.gradient_utils import value_and_grad


def reference_penalty(kernel, g, size=3, wrap=False, reduction="sum", eps=1e-7):
    """The method note's formula written plainly: loops over centres and their neighbours."""
    w = np.asarray(kernel, dtype=np.float64).reshape(-1, kernel.shape[-1])
    h, wd = g
    r = size // 2
    total = 0.0
    for c in range(h * wd):
        y, x = divmod(c, wd)
        neighbours = []
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dy == 0 and dx == 0:
                    continue
                yy, xx = y + dy, x + dx
                if wrap:
                    yy, xx = yy % h, xx % wd
                elif not (0 <= yy < h and 0 <= xx < wd):
                    continue
                neighbours.append((yy * wd + xx, 1.0 / np.hypot(dy, dx)))
        norm = sum(weight for _, weight in neighbours)
        a = w[:, c]
        for j, weight in neighbours:
            b = w[:, j]
            cos = a @ b / np.sqrt((a @ a + eps) * (b @ b + eps))
            total += weight / norm * (1.0 - cos)
    return total / (h * wd) if reduction == "mean" else total


def penalty_value(reg, kernel):
    return float(ops.convert_to_numpy(reg(ops.convert_to_tensor(kernel))))


@functools.cache
def _case(g, size, shape, wrap):
    """Random kernel and its reference penalty (sum reduction), shared across parametrizations."""
    rng = np.random.default_rng(abs(hash((g, size, shape, wrap))) % 2**32)
    kernel = rng.normal(size=shape).astype("float32")
    return kernel, reference_penalty(kernel, g, size, wrap)


CASES = [
    # (grid, neighbourhood, kernel shape)
    ((16, 16), 3, (5, 3, 256)),  # Conv1D
    ((64, 32), 3, (4, 2048)),  # Dense
    ((3, 5), 3, (2, 2, 3, 15)),  # Conv2D
    ((8, 8), 5, (3, 4, 64)),  # Conv1D, 5x5 neighbourhood
]


@pytest.mark.backend
@pytest.mark.parametrize("g,size,shape", CASES)
@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_plain_reference(g, size, shape, wrap, reduction):
    kernel, reference_sum = _case(g, size, shape, wrap)
    reg = TopographicRegularizer(
        grid=g, strength=0.7, neighborhood=size, wrap=wrap, reduction=reduction
    )
    expected = 0.7 * reference_sum / (g[0] * g[1] if reduction == "mean" else 1)
    np.testing.assert_allclose(penalty_value(reg, kernel), expected, rtol=1e-5)


@pytest.mark.backend
def test_conv3d_kernel_and_inferred_grid():
    kernel = np.random.default_rng(1).normal(size=(2, 2, 2, 3, 16)).astype("float32")
    reg = TopographicRegularizer(strength=1.0)
    np.testing.assert_allclose(
        penalty_value(reg, kernel), reference_penalty(kernel, (4, 4)), rtol=1e-5
    )
    assert reg.grid is None  # inference does not overwrite the argument


@pytest.mark.backend
@pytest.mark.parametrize("wrap", [False, True])
def test_gradient_matches_finite_differences(wrap):
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(3, 2, 12)).astype("float64")
    reg = TopographicRegularizer(grid=(4, 3), strength=1.0, wrap=wrap)

    def fn(k):
        return reg(k)

    _, grad = value_and_grad(fn, kernel.astype("float32"))
    numeric = np.zeros_like(kernel)
    h = 1e-6
    flat = kernel.reshape(-1)
    for i in range(flat.size):  # small kernel: 72 entries
        plus, minus = flat.copy(), flat.copy()
        plus[i] += h
        minus[i] -= h
        numeric.reshape(-1)[i] = (
            reference_penalty(plus.reshape(kernel.shape), (4, 3), wrap=wrap)
            - reference_penalty(minus.reshape(kernel.shape), (4, 3), wrap=wrap)
        ) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-5)


@pytest.mark.backend
def test_hand_written_gradient_matches_autodiff_of_plain_formula():
    rng = np.random.default_rng(4)
    kernel = rng.normal(size=(7, 64)).astype("float32")
    reg = TopographicRegularizer(grid=(8, 8), strength=2.0, neighborhood=5)
    first, second, weight = grid.neighbor_pairs((8, 8), 5)
    n_centres = 64.0

    def plain(k):  # differentiated by the backend's autodiff through gathers
        u = k / ops.sqrt(ops.sum(k * k, axis=0) + 1e-7)
        cos = ops.sum(ops.take(u, first, axis=1) * ops.take(u, second, axis=1), axis=0)
        return 2.0 * (n_centres - ops.sum(cos * ops.convert_to_tensor(weight, "float32")))

    v1, g1 = value_and_grad(reg, kernel)
    v2, g2 = value_and_grad(plain, kernel)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6)


@pytest.mark.backend
def test_zero_filter_and_half_precision_are_finite():
    kernel = np.random.default_rng(5).normal(size=(3, 16)).astype("float32")
    kernel[:, 5] = 0.0
    reg = TopographicRegularizer(grid=(4, 4))
    value, grad = value_and_grad(reg, kernel)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    for dtype in ("float16", "bfloat16"):
        half = ops.cast(ops.convert_to_tensor(kernel), dtype)
        out = reg(half)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        np.testing.assert_allclose(
            float(ops.convert_to_numpy(out)), penalty_value(reg, kernel), rtol=1e-2
        )


def _smooth_kernel(h, w, depth=6, seed=0):
    """Filters that vary smoothly with grid position (a low-frequency field per input weight)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    phases = rng.uniform(0, 2 * np.pi, size=(depth, 2))
    field = np.sin(2 * rows[None] + phases[:, :1, None]) + np.cos(
        2 * cols[None] + phases[:, 1:, None]
    )
    return field.reshape(depth, h * w).astype("float32")


@pytest.mark.backend
def test_smooth_filters_score_lower_than_permuted():
    kernel = _smooth_kernel(8, 8)
    reg = TopographicRegularizer(grid=(8, 8), strength=1.0)
    smooth_penalty = penalty_value(reg, kernel)
    rng = np.random.default_rng(0)
    for _ in range(5):
        permuted = kernel[:, rng.permutation(64)]
        assert smooth_penalty < 0.5 * penalty_value(reg, permuted)


@pytest.mark.backend
def test_invariances_flip_without_wrap_and_shift_with_wrap():
    kernel = np.random.default_rng(6).normal(size=(4, 6, 5)).astype("float32").reshape(4, 30)
    as_grid = kernel.reshape(4, 6, 5)
    no_wrap = TopographicRegularizer(grid=(6, 5), strength=1.0)
    base = penalty_value(no_wrap, kernel)
    for flipped in (as_grid[:, ::-1, :], as_grid[:, :, ::-1], as_grid[:, ::-1, ::-1]):
        np.testing.assert_allclose(penalty_value(no_wrap, flipped.reshape(4, 30)), base, rtol=1e-5)
    wrapped = TopographicRegularizer(grid=(6, 5), strength=1.0, wrap=True)
    base = penalty_value(wrapped, kernel)
    shifted = np.roll(as_grid, (2, 3), axis=(1, 2)).reshape(4, 30)
    np.testing.assert_allclose(penalty_value(wrapped, shifted), base, rtol=1e-5)
    # without wrap a shift changes which filters sit at the border: generally not invariant
    assert not np.isclose(penalty_value(no_wrap, shifted), penalty_value(no_wrap, kernel))


def _model(reg, filters=16):
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.Conv1D(filters, 3, padding="same", kernel_regularizer=reg, name="topo"),
            keras.layers.Conv1D(2, 1, name="out"),
        ]
    )


@pytest.mark.backend
def test_save_and_load_without_custom_objects(tmp_path):
    reg = TopographicRegularizer(grid=(4, 4), strength=0.3, wrap=True, reduction="mean")
    model = _model(reg)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    new_reg = loaded.get_layer("topo").kernel_regularizer
    assert isinstance(new_reg, TopographicRegularizer)
    assert new_reg.get_config() == reg.get_config()
    a = float(ops.convert_to_numpy(model.losses[0]))
    b = float(ops.convert_to_numpy(loaded.losses[0]))
    assert a == b


def test_get_config_round_trip_keeps_every_argument():
    reg = TopographicRegularizer(
        grid=None, strength=0.5, neighborhood=5, wrap=True, reduction="mean", epsilon=1e-6
    )
    config = reg.get_config()
    assert config == {
        "grid": None,
        "strength": 0.5,
        "neighborhood": 5,
        "wrap": True,
        "reduction": "mean",
        "epsilon": 1e-6,
        "global_strength": 0.0,
        "max_global_channels": 1024,
        "input_strength": 0.0,
        "input_grid": None,
        "implementation": "auto",
    }
    again = TopographicRegularizer.from_config(config)
    assert again.get_config() == config
    serialized = keras.saving.serialize_keras_object(reg)
    assert serialized["registered_name"] == "keras_topomap>TopographicRegularizer"
    assert keras.regularizers.get(serialized).get_config() == config


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"grid": (16,)}, r"pair of positive integers.*Received: grid=\(16,\)"),
        ({"grid": (0, 16)}, "pair of positive integers"),
        ({"grid": (4.0, 4)}, "pair of positive integers"),
        ({"neighborhood": 4}, r"odd integer >= 3.*Received: neighborhood=4"),
        ({"neighborhood": 1}, "odd integer >= 3"),
        ({"grid": (2, 8), "neighborhood": 3}, "larger than the 2x8 grid"),
        ({"strength": -1.0}, r"finite number >= 0.*Received: strength=-1.0"),
        ({"strength": "a lot"}, "strength must be a finite number >= 0"),
        (
            {"reduction": "max"},
            r"reduction must be one of \['sum', 'mean'\]. Received: reduction='max'",
        ),
        ({"epsilon": 0}, "epsilon must be a finite number > 0"),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TopographicRegularizer(**kwargs)


def test_call_errors_name_the_kernel_shape():
    reg = TopographicRegularizer(grid=(16, 15))
    with pytest.raises(ValueError, match=r"kernel of shape \(7, 4, 256\).*grid=\(16, 16\)"):
        reg(np.zeros((7, 4, 256), "float32"))
    with pytest.raises(ValueError, match=r"\(3, 31\).*explicit grid"):
        TopographicRegularizer()(np.zeros((3, 31), "float32"))
    with pytest.raises(ValueError, match=r"larger than the 3x3 grid.*kernel of shape \(2, 9\)"):
        TopographicRegularizer(neighborhood=5)(np.zeros((2, 9), "float32"))
    with pytest.raises(ValueError, match="too thin"):
        TopographicRegularizer()(np.zeros((3, 2 * 29), "float32"))


def test_error_on_layer_build_names_the_shape():
    layer = keras.layers.Dense(
        10, kernel_regularizer=TopographicRegularizer(grid=(4, 4)), name="wide"
    )
    layer.build((None, 3))
    with pytest.raises(ValueError, match=r"\(3, 10\) of layer 'wide' \(Dense\), weight 'wide/k"):
        _ = layer.losses
    model = keras.Sequential([keras.Input((3,)), layer])
    with pytest.raises(ValueError, match=r"\(3, 10\) of layer 'wide'"):
        topographic_layers(model)


# Transposed and depthwise kernels: tests/test_regularizer_layers.py.


def test_topographic_layers_lists_regularized_layers_with_grids():
    inner = keras.Sequential(
        [
            keras.Input((None, 16)),
            keras.layers.Conv1D(64, 1, kernel_regularizer=TopographicRegularizer(), name="inner"),
        ]
    )
    model = keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.Conv1D(
                16, 3, kernel_regularizer=TopographicRegularizer(grid=(4, 4)), name="a"
            ),
            keras.layers.Conv1D(16, 3, name="plain"),
            inner,
        ]
    )
    found = topographic_layers(model)
    assert list(found) == ["a", "inner"]
    assert found["a"]["grid"] == (4, 4)
    assert found["inner"]["grid"] == (8, 8)
    assert found["a"]["layer"] is model.get_layer("a")


@pytest.mark.backend
def test_short_fit_lowers_the_penalty():
    reg = TopographicRegularizer(grid=(4, 4), strength=1.0)
    model = _model(reg)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 20, 3)).astype("float32")
    y = rng.normal(size=(32, 20, 2)).astype("float32")
    before = float(ops.convert_to_numpy(model.losses[0]))
    model.fit(x, y, epochs=8, batch_size=8, verbose=0)
    after = float(ops.convert_to_numpy(model.losses[0]))
    assert np.isfinite(after)
    assert after < 0.5 * before


@pytest.mark.backend
@pytest.mark.parametrize("wrap", [False, True])
def test_slabbed_neighbour_sum_matches_reference(monkeypatch, wrap):
    # Large kernels are processed in slabs of rows; force several (uneven) slabs on a small one.
    from keras_topomap import regularizers

    monkeypatch.setattr(regularizers, "_SLAB_ELEMENTS", 7 * 48)
    kernel = np.random.default_rng(9).normal(size=(5, 6, 48)).astype("float32")  # 30 rows
    reg = TopographicRegularizer(grid=(8, 6), strength=1.0, wrap=wrap, neighborhood=3)
    value, grad = value_and_grad(reg, kernel)
    np.testing.assert_allclose(value, reference_penalty(kernel, (8, 6), wrap=wrap), rtol=1e-5)
    monkeypatch.setattr(regularizers, "_SLAB_ELEMENTS", 1 << 22)
    _, whole = value_and_grad(reg, kernel)
    np.testing.assert_allclose(grad, whole, rtol=1e-5, atol=1e-7)
