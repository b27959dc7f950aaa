"""FilterLayout (fitted filter positions), fit_layouts and reorder_filters."""

import keras
import numpy as np
import pytest

from keras_topomap import GradNAP, grid, models
from keras_topomap.layout import FilterLayout, fit_layouts, reorder_filters
from keras_topomap.metrics import morans_i


def _smooth_profiles(n_groups=12, shape=(8, 8), seed=0):
    """Profiles whose maps are smooth fields in the identity layout."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    maps = []
    for _ in range(n_groups):
        r0, c0 = rng.uniform(0, shape[0], 2)
        maps.append(np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / 8.0)
                    + 0.05 * rng.normal(size=shape))
    return np.stack(maps).reshape(n_groups, -1)


def _mean_morans_i(maps):
    return float(np.mean([morans_i(m) for m in maps]))


def test_a_scrambled_smooth_layout_is_found_again():
    smooth = _smooth_profiles()
    truth = _mean_morans_i(grid.to_grid(smooth, (8, 8)))
    scrambled = smooth[:, np.random.default_rng(1).permutation(64)]
    layout = FilterLayout(grid=(8, 8), n_restarts=10).fit(scrambled)
    assert layout.initial_score_ < 0.1 < 0.7 < truth
    assert layout.score_ >= 0.9 * truth
    assert sorted(layout.order_) == list(range(64))
    np.testing.assert_array_equal(layout.order_[layout.position_], np.arange(64))


def test_score_is_the_mean_morans_i_of_the_fitted_maps():
    profiles = np.random.default_rng(2).normal(size=(7, 48))
    layout = FilterLayout(grid=(6, 8), n_restarts=3).fit(profiles)
    assert layout.grid_ == (6, 8) and layout.n_groups_ == 7
    assert layout.score_ == pytest.approx(_mean_morans_i(layout.maps(profiles)), abs=1e-6)
    assert layout.initial_score_ == pytest.approx(
        _mean_morans_i(grid.to_grid(profiles, (6, 8))), abs=1e-6)
    assert layout.score_ > layout.initial_score_


def test_constant_profiles_are_left_out_and_the_grid_is_inferred():
    profiles = np.random.default_rng(3).normal(size=(4, 64))
    profiles[1] = 2.0
    layout = FilterLayout(n_restarts=0).fit(profiles)
    assert layout.grid_ == grid.infer_grid(64) and layout.n_groups_ == 3


def test_the_layout_is_reproducible_under_its_seed():
    profiles = np.random.default_rng(4).normal(size=(6, 64))
    a = FilterLayout(grid=(8, 8), n_restarts=5, seed=7).fit(profiles)
    b = FilterLayout(grid=(8, 8), n_restarts=5, seed=7).fit(profiles)
    np.testing.assert_array_equal(a.order_, b.order_)


def test_the_identity_start_keeps_a_smooth_trained_order():
    smooth = _smooth_profiles(seed=5)
    kept = FilterLayout(grid=(8, 8), n_restarts=0, init="identity").fit(smooth)
    spectral = FilterLayout(grid=(8, 8), n_restarts=0).fit(smooth)
    # started from the smooth order, the search only improves it, and moves few filters
    assert kept.score_ >= kept.initial_score_ > 0.7
    assert np.mean(kept.order_ == np.arange(64)) > 0.5
    # the spectral start ignores the given order: any of the grid's symmetries may come out
    assert spectral.score_ > 0.7
    scrambled = smooth[:, np.random.default_rng(6).permutation(64)]
    from_scrambled = FilterLayout(grid=(8, 8), n_restarts=0, init="identity").fit(scrambled)
    assert from_scrambled.score_ > from_scrambled.initial_score_


def test_an_unknown_init_is_refused():
    with pytest.raises(ValueError, match="init"):
        FilterLayout(grid=(4, 4), init="random").fit(np.random.default_rng(0).normal(
            size=(3, 16)))


def test_init_arguments_are_stored_as_given_and_fitted_attributes_appear_after_fit():
    layout = FilterLayout(grid=(4, 4), neighborhood=3, n_restarts=2, max_swaps=None, seed=1,
                          init="identity")
    assert (layout.grid, layout.n_restarts, layout.seed, layout.init) == ((4, 4), 2, 1,
                                                                           "identity")
    assert not hasattr(layout, "order_")
    with pytest.raises(ValueError, match="not fitted"):
        layout.transform(np.zeros((2, 16)))
    assert "FilterLayout(grid=(4, 4)" in repr(layout)


@pytest.mark.parametrize("profiles, message", [
    (np.zeros(16), "2-D"),
    (np.full((3, 16), np.nan), "NaN"),
    (np.ones((3, 16)), "at least two profiles must vary"),
    (np.random.default_rng(0).normal(size=(3, 15)), "grid"),
])
def test_bad_profiles_are_refused(profiles, message):
    with pytest.raises(ValueError, match=message):
        FilterLayout(grid=(4, 4)).fit(profiles)


def test_transform_checks_the_filter_count():
    layout = FilterLayout(grid=(4, 4), n_restarts=0).fit(np.random.default_rng(0).normal(
        size=(3, 16)))
    with pytest.raises(ValueError, match="16 filters"):
        layout.transform(np.zeros((2, 9)))
    assert layout.maps(np.zeros((5, 2, 16))).shape == (5, 2, 4, 4)


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable)


def _recognizer(norm, dropout=0.0):
    keras.utils.set_random_seed(0)
    return models.wav2letter("tiny", n_features=8, n_classes=5, norm=norm, dropout=dropout)


@pytest.mark.backend
@pytest.mark.parametrize("norm, dropout", [(None, 0.0), ("batch", 0.1), ("layer", 0.0)])
def test_reordered_recognizer_computes_the_same_outputs(norm, dropout):
    model = _recognizer(norm, dropout)
    x = np.random.default_rng(0).normal(size=(2, 24, 8)).astype("float32")
    if norm == "batch":  # moving statistics that differ per channel
        model(x, training=True)
        for layer in model.layers:
            bn = getattr(layer, "normalization", None)
            if bn is not None and hasattr(bn, "moving_mean"):
                n = bn.moving_mean.shape[0]
                bn.moving_mean.assign(np.linspace(-1, 1, n).astype("float32"))
                bn.moving_variance.assign(np.linspace(0.5, 2, n).astype("float32"))
    rng = np.random.default_rng(1)
    grids = models.layer_grids(model)
    orders = {name: rng.permutation(g[0] * g[1]) for name, g in grids.items()}
    laid_out = reorder_filters(model, orders)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(laid_out(x)),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-5,
                               atol=1e-5)
    # a layer's kernel: its filters in the new order, its inputs in the order of the one below
    first, second = list(orders)[:2]
    np.testing.assert_array_equal(_numpy(laid_out.get_layer(first).kernel),
                                  _numpy(model.get_layer(first).kernel)[..., orders[first]])
    expected = _numpy(model.get_layer(second).kernel)[:, orders[first]][..., orders[second]]
    np.testing.assert_array_equal(_numpy(laid_out.get_layer(second).kernel), expected)
    # the original is untouched
    assert laid_out is not model
    assert not np.array_equal(_numpy(laid_out.get_layer("conv_1").kernel),
                              _numpy(model.get_layer("conv_1").kernel))


def test_reorder_filters_refuses_what_it_cannot_follow():
    model = _recognizer(None)
    n = model.get_layer("conv_1").kernel.shape[-1]
    with pytest.raises(ValueError, match="no layer 'nope'"):
        reorder_filters(model, {"nope": np.arange(n)})
    with pytest.raises(ValueError, match="permutation"):
        reorder_filters(model, {"conv_1": np.zeros(n, int)})
    logits = model.get_layer("logits").kernel.shape[-1]
    with pytest.raises(ValueError, match="reach the model's output"):
        reorder_filters(model, {"logits": np.arange(logits)})
    inputs = keras.Input((None, 3))
    a = keras.layers.Conv1D(4, 1, name="a")(inputs)
    b = keras.layers.Conv1D(4, 1, name="b")(inputs)
    out = keras.layers.Conv1D(2, 1, name="out")(keras.layers.Add(name="sum")([a, b]))
    residual = keras.Model(inputs, out)
    with pytest.raises(ValueError, match="'sum' \\(Add\\)"):
        reorder_filters(residual, {"a": np.arange(4)})
    with pytest.raises(ValueError, match="no filters"):
        reorder_filters(residual, {"sum": np.arange(4)})


def test_fit_layouts_uses_the_gradnap_grids_and_leaves_out_excluded_groups():
    model = _recognizer(None)
    grids = models.layer_grids(model)
    layers = list(grids)[:2]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 32, 8)).astype("float32")
    labels = rng.integers(0, 4, size=(4, 32))
    gn = GradNAP(model, layers, group_names=["a", "b", "c", "d"],
                 verbose=0).fit([(x, labels)])
    layouts = fit_layouts(gn, exclude=("d",), n_restarts=1)
    assert set(layouts) == set(layers)
    for name in layers:
        assert layouts[name].grid_ == tuple(grids[name])
        assert layouts[name].n_groups_ <= 3
    with pytest.raises(ValueError, match="no layer"):
        fit_layouts(gn, layers=["logits"])
    with pytest.raises(ValueError, match="fitted GradNAP"):
        fit_layouts(GradNAP(model, layers, verbose=0))
