"""Property tests: random valid inputs never give NaN from the regularizers, GradNAP or the metrics.

Few examples and small shapes (the suite runs on 2 cores); the strategies include the edge
cases that produced NaN before: all-zero and constant filters, constant maps, huge and tiny
scales, a single filter per row.
"""

import warnings

import keras
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_topomap import TopographicActivityRegularizer, TopographicRegularizer, metrics
from keras_topomap.gradnap import GradNAP
from tests.gradient_utils import value_and_grad

FAST = settings(
    max_examples=8, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

GRIDS = st.sampled_from([(3, 3), (4, 3), (3, 4), (4, 4), (5, 3)])
SCALES = st.sampled_from([0.0, 1e-12, 1e-3, 1.0, 1e6])


@st.composite
def kernels(draw):
    grid = draw(GRIDS)
    depth = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    kind = draw(st.sampled_from(["normal", "constant", "some zero filters"]))
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(depth, grid[0] * grid[1]))
    if kind == "constant":
        kernel = np.repeat(kernel[:, :1], kernel.shape[1], axis=1)
    elif kind == "some zero filters":
        kernel[:, rng.random(kernel.shape[1]) < 0.5] = 0.0
    return (draw(SCALES) * kernel).astype("float32"), grid


@FAST
@given(kernels(), st.booleans(), st.sampled_from(["sum", "mean"]))
def test_regularizer_penalty_and_gradient_are_finite(case, wrap, reduction):
    kernel, grid = case
    reg = TopographicRegularizer(grid=grid, wrap=wrap, reduction=reduction, neighborhood=3)
    value, grad = value_and_grad(reg, kernel)
    assert np.isfinite(value) and value >= -1e-4
    assert np.all(np.isfinite(grad))


@FAST
@given(kernels(), st.booleans())
def test_topography_metrics_are_never_nan(case, wrap):
    kernel, grid = case
    assert np.isfinite(metrics.topography_score(kernel, grid=grid, wrap=wrap))
    result = metrics.topography_test(kernel, grid=grid, wrap=wrap, n_permutations=4, seed=0)
    assert not np.isnan(result.z) and np.isfinite(result.score)
    if np.all(kernel == kernel[:, :1]):  # every order scores the same, up to rounding: z is 0
        assert result.z == 0.0, result


MAP_KINDS = st.sampled_from(["normal", "constant", "spike", "near constant"])


def _morans_i_test(grid_map):
    test = metrics.morans_i_test(grid_map, n_permutations=9, seed=0)
    return [test.morans_i, test.z, test.p_value]


@FAST
@given(GRIDS, st.integers(0, 2**16), SCALES, MAP_KINDS)
def test_map_metrics_are_never_nan(grid, seed, scale, kind):
    rng = np.random.default_rng(seed)
    grid_map = {
        "normal": rng.normal(size=grid),
        "constant": np.full(grid, 0.1),
        "spike": np.eye(*grid),
        "near constant": 1.0 + 1e-9 * rng.normal(size=grid),
    }[kind] * scale
    for metric in (metrics.morans_i, metrics.blur_error_auc, metrics.localization,
                   _morans_i_test):
        try:
            value = metric(grid_map)
        except ValueError as e:  # a clear refusal (Moran's I of a constant map) is fine
            assert "constant" in str(e), e
            continue
        assert not np.any(np.isnan(value)), (kind, value)


@st.composite
def activities(draw):
    """Layer activity ``(samples, F)`` with some channels dead (all 0) or constant."""
    grid = draw(GRIDS)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n = grid[0] * grid[1]
    x = rng.normal(size=(draw(st.integers(3, 40)), n)) * draw(SCALES)
    kind = draw(st.sampled_from(["normal", "relu", "some dead", "some constant"]))
    if kind == "relu":
        x = np.maximum(x, 0.0)
    elif kind == "some dead":
        x[:, rng.random(n) < 0.4] = 0.0
    elif kind == "some constant":
        x[:, rng.random(n) < 0.4] = 0.7
    return x.astype("float32"), grid


@FAST
@given(activities(), st.booleans())
def test_activity_metrics_are_never_nan(case, wrap):
    x, grid = case
    assert np.isfinite(metrics.dead_unit_share(x))
    try:
        curve = metrics.correlation_by_distance(x, grid=grid, wrap=wrap, n_permutations=4)
    except ValueError as e:  # too few varying channels, or none of them neighbours: said so
        assert "vary" in str(e), e
        return
    for field in ("mean", "sem", "null_mean", "null_std", "distance"):
        assert not np.any(np.isnan(getattr(curve, field))), (field, curve)
    assert np.isfinite(curve.falloff) and not np.isnan(curve.falloff_z), curve


@FAST
@given(activities(), st.booleans(), st.sampled_from([0.0, 0.5]))
def test_activity_regularizer_penalty_and_gradient_are_finite(case, wrap, global_strength):
    x, grid = case
    reg = TopographicActivityRegularizer(grid=grid, wrap=wrap, global_strength=global_strength)
    value, grad = value_and_grad(reg, x[None])  # (1, samples, F): samples as frames
    assert np.isfinite(value) and np.all(np.isfinite(grad))


_PROFILER = []


def _profiler():
    """One GradNAP on a tiny model for every example: fit() starts afresh but keeps its compiled
    step, and every example pads to the same (3, 8) shape, so it compiles once."""
    if not _PROFILER:
        x = keras.Input((None, 2))
        h = keras.layers.Dense(4, name="h")(x)
        out = keras.layers.Dense(3, name="out")(keras.layers.Activation("tanh")(h))
        model = keras.Model(x, out)
        _PROFILER.append(
            GradNAP(model, ["h"], n_groups=3, grids={"h": (2, 2)}, batch_size=3, time_bucket=8,
                    verbose=0)
        )
    return _PROFILER[0]


@settings(max_examples=6, deadline=None, derandomize=True)
@given(st.integers(0, 2**16), st.integers(1, 3), st.integers(1, 8), SCALES)
def test_gradnap_profiles_are_finite(seed, batch, frames, scale):
    rng = np.random.default_rng(seed)
    x = (scale * rng.normal(size=(batch, frames, 2))).astype("float32")
    labels = rng.integers(-1, 3, size=(batch, frames))
    labels[0, 0] = 0  # at least one labelled frame
    gn = _profiler()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # groups without frames
        gn.fit([(x, labels)])
    assert np.all(np.isfinite(gn.profiles_["h"])) and np.all(np.isfinite(gn.group_means_["h"]))
