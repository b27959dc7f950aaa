"""TopographicActivityRegularizer and the weight regularizer's global term.

Exact values against plain loops, gradients, padding, degenerate channels, serialization, errors.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_topomap import (
    TopographicActivityRegularizer,
    TopographicRegularizer,
    models,
    topographic_layers,
)
from keras_topomap import activity as activity_module
from keras_topomap.masking import MaskedConv1D
from keras_topomap.receptive_field import receptive_fields
from tests.gradient_utils import value_and_grad


def _neighbours(c, g, size, wrap):
    """(j, alpha_cj) of centre c, written out cell by cell."""
    h, w = g
    y, x = divmod(c, w)
    r = size // 2
    found = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            yy, xx = y + dy, x + dx
            if wrap:
                yy, xx = yy % h, xx % w
            elif not (0 <= yy < h and 0 <= xx < w):
                continue
            found.append((yy * w + xx, 1.0 / np.hypot(dy, dx)))
    total = sum(a for _, a in found)
    return [(j, a / total) for j, a in found]


def _distance(a, b, g, wrap):
    h, w = g
    (ya, xa), (yb, xb) = divmod(a, w), divmod(b, w)
    dy, dx = abs(ya - yb), abs(xa - xb)
    if wrap:
        dy, dx = min(dy, h - dy), min(dx, w - dx)
    return np.hypot(dy, dx)


def reference(activity, g, size=3, wrap=False, mask=None, eps=1e-6, anchors=None):
    """(local, global) of the method written plainly: one Pearson r per pair, loops over pairs."""
    x = np.asarray(activity, np.float64).reshape(-1, activity.shape[-1])
    if mask is not None:
        x = x[np.asarray(mask).reshape(-1).astype(bool)]
    n_ch = x.shape[1]

    def r(a, b):
        xa, xb = x[:, a] - x[:, a].mean(), x[:, b] - x[:, b].mean()
        va, vb = (xa * xa).mean(), (xb * xb).mean()
        return (xa * xb).mean() / np.sqrt((va + eps) * (vb + eps))

    local = sum(a * (1 - r(c, j)) for c in range(n_ch) for j, a in _neighbours(c, g, size, wrap))
    anchors = range(n_ch) if anchors is None else anchors
    errors = [
        (r(a, c) - 1.0 / _distance(a, c, g, wrap)) ** 2
        for a in anchors
        for c in range(n_ch)
        if c != a
    ]
    return local, n_ch * float(np.mean(errors))


def _np(x):
    return ops.convert_to_numpy(x)


CASES = [
    # (activity shape, grid, neighbourhood, wrap, max_global_channels)
    ((3, 7, 16), (4, 4), 3, False, 1024),  # Conv1D
    ((3, 7, 16), (4, 4), 3, True, 1024),  # Conv1D on a torus
    ((12, 15), (3, 5), 3, False, 1024),  # Dense
    ((2, 3, 4, 25), (5, 5), 5, False, 1024),  # Conv2D, 5x5 neighbourhood
    ((3, 6, 24), (6, 4), 3, False, 5),  # wide-layer sampling: every 5th channel as anchor
]


@pytest.mark.backend
@pytest.mark.parametrize("shape,g,size,wrap,max_channels", CASES)
def test_matches_plain_reference(shape, g, size, wrap, max_channels):
    x = np.random.default_rng(hash(shape) % 2**32).normal(size=shape).astype("float32")
    x[..., 1] += 0.8 * x[..., 0]  # some correlated pairs, so r is not ~0 everywhere
    reg = TopographicActivityRegularizer(
        grid=g, strength=0.3, neighborhood=size, wrap=wrap, global_strength=0.7,
        max_global_channels=max_channels,
    )
    n = x.shape[-1]
    anchors = None if max_channels >= n else range(0, n, -(-n // max_channels))
    local, pull = reference(x, g, size, wrap, anchors=anchors)
    np.testing.assert_allclose(float(_np(reg.penalty(x))), 0.3 * local + 0.7 * pull, rtol=1e-5)
    # Keras divides an activity regularizer by the batch size; __call__ undoes it
    np.testing.assert_allclose(float(_np(reg(x))), float(_np(reg.penalty(x))) * shape[0], rtol=1e-6)


@pytest.mark.backend
@pytest.mark.parametrize("path", ["neighbour-sum", "correlation-matrix"])
@pytest.mark.parametrize("global_strength", [0.0, 0.7])
def test_both_local_term_paths_match_the_reference(monkeypatch, path, global_strength):
    # The local term comes from the full correlation matrix where that is cheaper (see
    # DENSE_LOCAL_MAX_CHANNELS) and from a neighbour sum otherwise: both must be the method.
    dense = path == "correlation-matrix"
    monkeypatch.setattr(activity_module, "DENSE_LOCAL_MAX_CHANNELS", 10**6 if dense else 0)
    calls = []
    real_neighbor_sum = activity_module.reg_lib.neighbor_sum
    monkeypatch.setattr(activity_module.reg_lib, "neighbor_sum",
                        lambda *a: calls.append(1) or real_neighbor_sum(*a))
    # With the global term on, only a layer wider than max_global_channels (anchor-sampled
    # pairs) takes the neighbour sum.
    max_channels, anchors = (1024, None) if dense else (10, range(0, 20, 2))
    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 8, 20)).astype("float32")
    x[..., 5] += 0.9 * x[..., 4]
    mask = np.ones((3, 8), bool)
    mask[0, 6:] = mask[2, 3:] = False
    reg = TopographicActivityRegularizer(grid=(4, 5), strength=0.3,
                                         global_strength=global_strength,
                                         max_global_channels=max_channels)
    local, pull = reference(x, (4, 5), mask=mask, anchors=anchors)
    value, grad = value_and_grad(lambda t: reg.penalty(t, mask=ops.convert_to_tensor(mask)), x)
    assert bool(calls) is not dense  # the path under test is the one taken
    np.testing.assert_allclose(value, 0.3 * local + global_strength * pull, rtol=1e-5)
    assert np.all(grad[~mask] == 0)  # padding gets no gradient on either path
    if global_strength == 0:  # the same function on both paths: the same gradient
        monkeypatch.setattr(activity_module, "DENSE_LOCAL_MAX_CHANNELS", 0 if dense else 10**6)
        _, other = value_and_grad(lambda t: reg.penalty(t, mask=ops.convert_to_tensor(mask)), x)
        np.testing.assert_allclose(grad, other, rtol=1e-4, atol=1e-6)


@pytest.mark.backend
def test_mask_leaves_samples_out_like_the_reference():
    x = np.random.default_rng(2).normal(size=(3, 9, 16)).astype("float32")
    mask = np.ones((3, 9), bool)
    mask[1, 5:] = mask[2, 2:] = False
    x[~mask] = 50.0  # what padding holds must not matter
    reg = TopographicActivityRegularizer(grid=(4, 4), strength=1.0, global_strength=1.0)
    local, pull = reference(x, (4, 4), mask=mask)
    value = float(_np(reg.penalty(x, mask=ops.convert_to_tensor(mask))))
    np.testing.assert_allclose(value, local + pull, rtol=1e-5)


@pytest.mark.backend
def test_weight_global_term_matches_plain_reference():
    kernel = np.random.default_rng(3).normal(size=(5, 3, 16)).astype("float32")
    plain = TopographicRegularizer(grid=(4, 4), strength=0.5)
    both = TopographicRegularizer(grid=(4, 4), strength=0.5, global_strength=2.0)
    u = kernel.reshape(-1, 16).astype(np.float64)
    u /= np.sqrt((u * u).sum(axis=0) + 1e-7)
    errors = [
        (u[:, a] @ u[:, c] - 1.0 / _distance(a, c, (4, 4), False)) ** 2
        for a in range(16)
        for c in range(16)
        if a != c
    ]
    expected = float(_np(plain(kernel))) + 2.0 * 16 * np.mean(errors)
    np.testing.assert_allclose(float(_np(both(kernel))), expected, rtol=1e-5)
    assert TopographicRegularizer(grid=(4, 4)).global_strength == 0.0  # default: unchanged


@pytest.mark.backend
def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 5, 9)).astype(np.float64)
    reg = TopographicActivityRegularizer(grid=(3, 3), strength=1.0, global_strength=0.5)
    _, grad = value_and_grad(lambda t: reg.penalty(t), x.astype("float32"))
    step = 1e-3
    for index in [(0, 0, 0), (1, 3, 4), (0, 4, 8), (1, 1, 2)]:
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        numeric = (sum(reference(up, (3, 3))[k] * (1, 0.5)[k] for k in range(2))
                   - sum(reference(down, (3, 3))[k] * (1, 0.5)[k] for k in range(2))) / (2 * step)
        np.testing.assert_allclose(grad[index], numeric, rtol=2e-3, atol=2e-4)


@pytest.mark.backend
def test_constant_and_zero_channels_and_half_precision_are_finite():
    x = np.random.default_rng(5).normal(size=(2, 6, 16)).astype("float32")
    x[..., 3] = 0.0  # a dead ReLU unit
    x[..., 7] = 2.5  # a constant channel
    reg = TopographicActivityRegularizer(grid=(4, 4), strength=1.0, global_strength=1.0)
    value, grad = value_and_grad(lambda t: reg.penalty(t), x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # their correlations count as 0: the reference with r = 0 for those channels
    np.testing.assert_allclose(value, sum(reference(x, (4, 4))), rtol=1e-5)
    for dtype in ("float16", "bfloat16"):
        low = reg.penalty(ops.cast(ops.convert_to_tensor(x), dtype))
        assert keras.backend.standardize_dtype(low.dtype) == "float32"
        np.testing.assert_allclose(float(_np(low)), value, rtol=2e-2)


def _tiny(**kwargs):
    return models.wav2letter("tiny", n_features=8, seed=0, activity_strength=1.0,
                             activity_global_strength=1.0, **kwargs)


@pytest.mark.backend
def test_extra_padding_leaves_the_compiled_loss_unchanged():
    """Through the compiled test step (what ``fit`` runs): more padding, same loss."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 40, 8)).astype("float32")
    x[1, 30:] = 0.0
    padded = np.concatenate([x, np.zeros((2, 24, 8), "float32")], axis=1)
    model = _tiny()
    model.compile(loss=lambda y_true, y_pred: 0.0 * ops.mean(y_pred))
    y = np.zeros((2, 1), "float32")
    np.testing.assert_allclose(*[model.evaluate(v, y, verbose=0) for v in (x, padded)], rtol=1e-5)
    # the mask's computation stays out of the graph that layer walkers see
    assert receptive_fields(model)["logits"].stride == 2
    # without the mask, padding does enter (so the check above can fail)
    plain = _tiny(mask_padding=False)
    totals = []
    for v in (x, padded):
        plain(v)
        totals.append(sum(float(_np(loss)) for loss in plain.losses))
    assert abs(totals[0] - totals[1]) > 1e-3 * abs(totals[0])


def test_short_fit_lowers_the_term():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 16)).astype("float32")
    reg = TopographicActivityRegularizer(grid=(4, 4), strength=1.0, global_strength=1.0)
    layer = keras.layers.Dense(16, activity_regularizer=reg)
    model = keras.Sequential([keras.Input((16,)), layer])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    before = float(_np(reg.penalty(model(x))))
    model.fit(x, np.zeros((32, 16), "float32"), epochs=12, batch_size=32, verbose=0)
    after = float(_np(reg.penalty(model(x))))
    assert after < 0.8 * before


@pytest.mark.backend
def test_save_and_load_keeps_regularizers_and_losses(tmp_path):
    model = _tiny(global_strength=0.5)
    x = np.random.default_rng(8).normal(size=(2, 32, 8)).astype("float32")
    model(x)
    expected = [float(_np(v)) for v in model.losses]
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    reg = loaded.get_layer("conv_2").activity_regularizer
    assert isinstance(reg, TopographicActivityRegularizer)
    assert reg.get_config() == model.get_layer("conv_2").activity_regularizer.get_config()
    assert loaded.get_layer("conv_2").kernel_regularizer.global_strength == 0.5
    loaded(x)
    np.testing.assert_allclose([float(_np(v)) for v in loaded.losses], expected, rtol=1e-5)


def test_get_config_round_trip_and_inferred_grid():
    reg = TopographicActivityRegularizer(strength=0.2, global_strength=0.1, wrap=True,
                                         reduction="mean", max_global_channels=64)
    again = TopographicActivityRegularizer.from_config(reg.get_config())
    assert again.get_config() == reg.get_config()
    assert reg.resolve_grid((None, None, 256)) == (16, 16)
    assert reg.resolve_grid((8, 2048)) == (64, 32)


def test_topographic_layers_says_which_constraint():
    inputs = keras.Input((None, 3))
    a = keras.layers.Conv1D(16, 3, kernel_regularizer=TopographicRegularizer(), name="w")(inputs)
    b = keras.layers.Conv1D(
        16, 3, activity_regularizer=TopographicActivityRegularizer(), name="act"
    )(a)
    c = keras.layers.Conv1D(
        16, 3, kernel_regularizer=TopographicRegularizer(grid=(4, 4)),
        activity_regularizer=TopographicActivityRegularizer(grid=(4, 4)), name="both",
    )(b)
    found = topographic_layers(keras.Model(inputs, keras.layers.Conv1D(2, 1, name="out")(c)))
    assert {n: i["kind"] for n, i in found.items()} == {"w": "weight", "act": "activity",
                                                         "both": "both"}
    assert found["act"]["regularizer"] is None and found["act"]["grid"] == (4, 4)
    assert found["w"]["activity_regularizer"] is None
    odd = keras.layers.Conv1D(
        36, 3, kernel_regularizer=TopographicRegularizer(grid=(6, 6)),
        activity_regularizer=TopographicActivityRegularizer(grid=(9, 4)), name="odd",
    )
    model = keras.Sequential([keras.Input((None, 3)), odd])
    with pytest.raises(ValueError, match=r"two grids: \(6, 6\).*\(9, 4\)"):
        topographic_layers(model)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"strength": -1}, r"strength must be a finite number >= 0. Received: strength=-1"),
        ({"strength": "x"}, r"strength must be a finite number >= 0. Received: strength='x'"),
        ({"global_strength": float("nan")}, r"global_strength must be a finite number >= 0"),
        ({"neighborhood": 4}, r"must be an odd integer >= 3.*Received: neighborhood=4"),
        ({"grid": (3, 3), "neighborhood": 5}, r"5x5 is larger than the 3x3 grid"),
        ({"grid": (0, 4)}, r"pair of positive integers.*Received: grid=\(0, 4\)"),
        ({"reduction": "max"}, r"reduction must be one of .*Received: reduction='max'"),
        ({"epsilon": 0}, r"epsilon must be a finite number > 0. Received: epsilon=0"),
        ({"max_global_channels": 1}, r"max_global_channels must be an integer >= 2. Received: "),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TopographicActivityRegularizer(**kwargs)


def test_call_errors_name_the_shape():
    reg = TopographicActivityRegularizer(grid=(4, 4))
    with pytest.raises(ValueError, match=r"grid for output of shape \(2, 5, 15\).*Received"):
        reg.penalty(np.zeros((2, 5, 15), "float32"))
    with pytest.raises(ValueError, match=r"\(batch, \.\.\., channels\).*Received: output shape"):
        reg.penalty(np.zeros((16,), "float32"))
    with pytest.raises(ValueError, match=r"Cannot infer a useful grid for 13 filters"):
        TopographicActivityRegularizer().penalty(np.zeros((2, 13), "float32"))
    with pytest.raises(ValueError, match=r"mask must have the output's shape.*\(2, 4\)"):
        reg.penalty(np.zeros((2, 5, 16), "float32"), mask=ops.ones((2, 4)))
    with pytest.raises(ValueError, match=r"'c' needs padding='same'.*Received: padding='valid'"):
        MaskedConv1D(4, 3, name="c")
