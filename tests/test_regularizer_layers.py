"""TopographicRegularizer on layers whose kernel's last axis is not (only) their output channels.

A transposed convolution's kernel is ``(..., filters, in)`` and a depthwise one's
``(..., in, multiplier)`` with ``in x multiplier`` outputs; the regularizer, called with the
kernel alone, used to put that last axis on its grid without a word. It is now refused where
the layer is known: in ``topographic_layers`` and at the first loss evaluation of ``fit``.
"""

import re

import keras
import numpy as np
import pytest

from keras_topomap import (
    TopographicActivityRegularizer,
    TopographicRegularizer,
    TopoMapCallback,
    topographic_layers,
)
from keras_topomap import _keras_internals as internals
from keras_topomap import regularizers as regularizers_lib
from tests.test_regularizers import reference_penalty

# (make(regularizer), input shape, kernel shape, output channels): every layer below has a
# kernel whose last axis holds 16, so a 4x4 grid "fits" it, but the 16 are not its outputs.
REFUSED = {
    "Conv1DTranspose": (
        lambda reg: keras.layers.Conv1DTranspose(16, 3, kernel_regularizer=reg, name="up"),
        (8, 16), (3, 16, 16), 16,
    ),
    "Conv2DTranspose": (
        lambda reg: keras.layers.Conv2DTranspose(16, 3, kernel_regularizer=reg, name="up"),
        (5, 5, 16), (3, 3, 16, 16), 16,
    ),
    "DepthwiseConv1D": (
        lambda reg: keras.layers.DepthwiseConv1D(3, depth_multiplier=16,
                                                 depthwise_regularizer=reg, name="dw"),
        (8, 4), (3, 4, 16), 64,
    ),
    "DepthwiseConv2D": (
        lambda reg: keras.layers.DepthwiseConv2D(3, depth_multiplier=16,
                                                 depthwise_regularizer=reg, name="dw"),
        (5, 5, 2), (3, 3, 2, 16), 32,
    ),
    "SeparableConv1D": (
        lambda reg: keras.layers.SeparableConv1D(8, 3, depth_multiplier=16,
                                                 depthwise_regularizer=reg, name="sep"),
        (8, 2), (3, 2, 16), 8,
    ),
}


def _data(input_shape, model, n=4):
    x = np.random.default_rng(0).normal(size=(n, *input_shape)).astype("float32")
    return x, np.zeros((n, *model.output_shape[1:]), "float32")


def _sequential(layer, input_shape):
    return keras.Sequential([keras.Input(input_shape), layer])


@pytest.mark.backend
@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_fit_refuses_a_kernel_whose_last_axis_is_not_the_outputs(kind):
    make, input_shape, kernel_shape, outputs = REFUSED[kind]
    layer = make(TopographicRegularizer())
    model = _sequential(layer, input_shape)
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data(input_shape, model)
    # Before: fit trained the wrong axis on a 4x4 grid without a word.
    message = re.escape(f"Layer '{layer.name}' ({kind}) has a ") + r"\w+" + re.escape(
        f" of shape {tuple(kernel_shape)} whose last axis is not its {outputs} output channels"
    )
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, epochs=1, verbose=0)
    # topographic_layers (TopoMapCallback, GradNAP, models) refuses it the same way.
    with pytest.raises(ValueError, match=rf"Layer '{layer.name}' \({kind}\)"):
        topographic_layers(model)


@pytest.mark.backend
def test_fit_grid_error_names_the_layer():
    layer = keras.layers.Dense(10, kernel_regularizer=TopographicRegularizer(grid=(4, 4)),
                               name="wide")
    model = _sequential(layer, (3,))
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data((3,), model)
    with pytest.raises(ValueError, match=r"\(3, 10\) of layer 'wide' \(Dense\).*grid=\(5, 2\)"):
        model.fit(x, y, epochs=1, verbose=0)


@pytest.mark.backend
@pytest.mark.parametrize(
    "make, input_shape, weight",
    [
        (lambda reg: keras.layers.Conv1D(16, 3, kernel_regularizer=reg), (8, 3), "kernel"),
        (lambda reg: keras.layers.Conv2D(16, 2, kernel_regularizer=reg), (4, 4, 2), "kernel"),
        (lambda reg: keras.layers.Dense(16, kernel_regularizer=reg), (5,), "kernel"),
        (lambda reg: keras.layers.SeparableConv1D(16, 3, depth_multiplier=2,
                                                  pointwise_regularizer=reg),
         (8, 3), "pointwise_kernel"),
    ],
)
def test_filters_last_kernels_train_with_the_closed_form_penalty(make, input_shape, weight):
    layer = make(TopographicRegularizer(grid=(4, 4), strength=0.5))
    model = _sequential(layer, input_shape)
    kernel = getattr(layer, weight)
    (loss,) = model.losses
    expected = 0.5 * reference_penalty(keras.ops.convert_to_numpy(kernel), (4, 4))
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(expected, rel=1e-5)
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data(input_shape, model)
    model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    info = topographic_layers(model)[layer.name]
    assert info["grid"] == (4, 4) and info["kernel"] is kernel


@pytest.mark.backend
def test_the_layer_check_runs_once_per_weight(monkeypatch):
    calls = []
    owner = regularizers_lib._weight_owner

    def counting(root, variable):
        calls.append(variable.path)
        return owner(root, variable)

    monkeypatch.setattr(regularizers_lib, "_weight_owner", counting)
    frames = []
    find = internals.regularized_weight
    monkeypatch.setattr(internals, "regularized_weight", lambda: frames.append(1) or find())
    reg = TopographicRegularizer(grid=(4, 4))  # one regularizer shared by two layers
    model = keras.Sequential([
        keras.Input((8, 3)),
        keras.layers.Conv1D(16, 3, kernel_regularizer=reg, name="a"),
        keras.layers.Conv1D(16, 3, kernel_regularizer=reg, name="b"),
    ])
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data((8, 3), model, n=8)
    model.fit(x, y, epochs=2, batch_size=2, verbose=0)  # 8 steps
    assert sorted(calls) == sorted(w.path for w in (model.layers[0].kernel,
                                                     model.layers[1].kernel))
    if keras.backend.backend() == "torch":  # eager: later steps are a dict lookup
        assert len(frames) == 2


@pytest.mark.backend
def test_activity_regularizer_on_a_transposed_convolution_is_placed_on_its_outputs():
    # The activity (batch, T, filters) is filters-last whatever the kernel's layout: supported,
    # and its grid is the layer's 16 outputs, not the kernel's last axis (its 4 inputs).
    layer = keras.layers.Conv1DTranspose(
        16, 3, activity_regularizer=TopographicActivityRegularizer(), name="up"
    )
    model = _sequential(layer, (8, 4))
    info = topographic_layers(model)["up"]
    assert info["kind"] == "activity" and info["grid"] == (4, 4) and info["kernel"] is None
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data((8, 4), model)
    model.fit(x, y, epochs=1, verbose=0)


def test_callback_scores_only_kernels_whose_last_axis_is_the_outputs(tmp_path):
    # A watched Conv1DTranspose (explicit grid, no regularizer) was scored on the kernel's last
    # axis, its inputs; it has no filters-last kernel, so no score. The SeparableConv1D's
    # pointwise kernel carries the regularizer: scored and penalised.
    inputs = keras.Input((8, 16))
    up = keras.layers.Conv1DTranspose(16, 3, padding="same", name="up")(inputs)
    sep = keras.layers.SeparableConv1D(
        16, 3, padding="same", name="sep",
        pointwise_regularizer=TopographicRegularizer(grid=(4, 4), strength=0.1),
    )(up)
    model = keras.Model(inputs, sep)
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data((8, 16), model, n=8)
    callback = TopoMapCallback(x[:2], layers=["up", "sep"], grids={"up": (4, 4)},
                               out_dir=tmp_path / "maps", background=False)
    history = model.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[callback])
    assert "topo_score/up" not in history.history and "up" not in callback.scores_
    assert callback.grids_ == {"up": (4, 4), "sep": (4, 4)}
    kernel = model.get_layer("sep").pointwise_kernel
    penalty = 0.1 * reference_penalty(keras.ops.convert_to_numpy(kernel), (4, 4))
    assert callback.penalties_["sep"][-1] == pytest.approx(penalty, rel=1e-5)
    assert "topo_score/sep" in history.history


def test_refused_model_saves_loads_and_is_refused_again(tmp_path):
    make, input_shape, _, _ = REFUSED["Conv1DTranspose"]
    model = _sequential(make(TopographicRegularizer(grid=(4, 4))), input_shape)
    path = tmp_path / "up.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("up").kernel_regularizer, TopographicRegularizer)
    loaded.compile(optimizer="sgd", loss="mse")
    x, y = _data(input_shape, loaded)
    with pytest.raises(ValueError, match=r"Layer 'up' \(Conv1DTranspose\)"):
        loaded.fit(x, y, epochs=1, verbose=0)


def test_the_check_cache_is_not_part_of_the_config(tmp_path):
    reg = TopographicRegularizer(grid=(4, 4))
    model = _sequential(keras.layers.SeparableConv1D(16, 3, pointwise_regularizer=reg,
                                                     name="sep"), (8, 3))
    before = float(keras.ops.convert_to_numpy(model.losses[0]))
    assert reg._checked  # the pointwise kernel was checked
    config = reg.get_config()
    assert set(config) == set(TopographicRegularizer.from_config(config).get_config())
    assert "_checked" not in config
    path = tmp_path / "sep.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert float(keras.ops.convert_to_numpy(loaded.losses[0])) == pytest.approx(before)
    assert topographic_layers(loaded)["sep"]["grid"] == (4, 4)


@pytest.mark.backend
def test_fit_activity_grid_error_names_the_layer():
    # Keras calls an activity regularizer with the output alone; the error named only its shape.
    layer = keras.layers.Conv1D(10, 3, name="c",
                                activity_regularizer=TopographicActivityRegularizer(grid=(4, 4)))
    model = _sequential(layer, (8, 3))
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data((8, 3), model)
    with pytest.raises(ValueError, match=r"grid=\(4, 4\) \(activity of layer 'c' \(Conv1D\)\)"):
        model.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"activity of layer 'c' \(Conv1D\)"):
        topographic_layers(model)


def test_filter_kernel_is_the_weight_whose_last_axis_is_the_outputs():
    layers = {
        "conv": (keras.layers.Conv1D(16, 3), (None, 8, 4), "kernel"),
        "dense": (keras.layers.Dense(16), (None, 4), "kernel"),
        "separable": (keras.layers.SeparableConv1D(16, 3), (None, 8, 4), "pointwise_kernel"),
        "transposed": (keras.layers.Conv1DTranspose(16, 3), (None, 8, 16), None),
        "depthwise": (keras.layers.DepthwiseConv1D(3, depth_multiplier=4), (None, 8, 4), None),
        "pooling": (keras.layers.MaxPooling1D(2), (None, 8, 4), None),
    }
    for layer, shape, weight in layers.values():
        layer.build(shape)
        expected = getattr(layer, weight) if weight else None
        assert regularizers_lib.filter_kernel(layer) is expected, layer.name
