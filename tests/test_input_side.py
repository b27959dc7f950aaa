"""TopographicRegularizer's input side: the layer above reads neighbouring channels alike."""

import keras
import numpy as np
import pytest

from keras_topomap import TopographicRegularizer, models, topographic_layers
from keras_topomap.train import TrainConfig
from tests.gradient_utils import value_and_grad
from tests.test_regularizers import penalty_value, reference_penalty


def input_reference(kernel, input_grid, size=3, wrap=False):
    """The output-side reference on the kernel with its input-channel axis moved last."""
    return reference_penalty(np.moveaxis(kernel, -2, -1), input_grid, size, wrap)


@pytest.mark.backend
@pytest.mark.parametrize("shape,grid,input_grid", [
    ((5, 12, 16), (4, 4), (4, 3)),  # Conv1D: 12 inputs on 4x3, 16 filters on 4x4
    ((12, 9), (3, 3), (3, 4)),  # Dense
])
@pytest.mark.parametrize("wrap", [False, True])
def test_matches_plain_reference(shape, grid, input_grid, wrap):
    kernel = np.random.default_rng(4).normal(size=shape).astype("float32")
    reg = TopographicRegularizer(grid=grid, strength=0.3, wrap=wrap, input_strength=0.7,
                                 input_grid=input_grid)
    expected = (0.3 * reference_penalty(kernel, grid, wrap=wrap)
                + 0.7 * input_reference(kernel, input_grid, wrap=wrap))
    np.testing.assert_allclose(penalty_value(reg, kernel), expected, rtol=1e-5)


@pytest.mark.backend
def test_input_side_alone_and_mean_reduction():
    kernel = np.random.default_rng(5).normal(size=(1, 16, 29)).astype("float32")
    # 29 outputs have no grid: with only the input side on, none is needed.
    reg = TopographicRegularizer(strength=0.0, input_strength=2.0, reduction="mean")
    assert not reg.orders_outputs
    np.testing.assert_allclose(penalty_value(reg, kernel),
                               2.0 * input_reference(kernel, (4, 4)) / 16, rtol=1e-5)
    assert TopographicRegularizer(strength=0.0).orders_outputs  # the paper's form, unchanged


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(6)
    kernel = rng.normal(size=(2, 9, 3)).astype("float64")
    reg = TopographicRegularizer(strength=0.0, input_strength=1.0,
                                 input_grid=(3, 3))
    _, grad = value_and_grad(reg, kernel.astype("float32"))
    numeric = np.zeros_like(kernel)
    flat = kernel.reshape(-1)
    h = 1e-6
    for i in range(flat.size):  # 54 entries
        plus, minus = flat.copy(), flat.copy()
        plus[i] += h
        minus[i] -= h
        numeric.reshape(-1)[i] = (input_reference(plus.reshape(kernel.shape), (3, 3))
                                  - input_reference(minus.reshape(kernel.shape), (3, 3))) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-5)


def test_errors_name_the_kernel():
    with pytest.raises(ValueError, match="input_strength"):
        TopographicRegularizer(input_strength=-1.0)
    with pytest.raises(ValueError, match=r"input grid .* kernel of shape \(3, 7, 16\)"):
        TopographicRegularizer(strength=0.0, input_strength=1.0)(np.ones((3, 7, 16), "float32"))
    with pytest.raises(ValueError, match=r"input grid .* kernel of shape \(3, 12, 16\)"):
        TopographicRegularizer(grid=(4, 4), input_strength=1.0, input_grid=(4, 4))(
            np.ones((3, 12, 16), "float32"))
    with pytest.raises(ValueError, match=r"input-channel axis.*Received: kernel of shape \(16,\)"):
        TopographicRegularizer(grid=(4, 4), input_strength=1.0)(np.ones((16,), "float32"))


def test_config_round_trip():
    reg = TopographicRegularizer(grid=(4, 4), input_strength=0.5, input_grid=(3, 4))
    again = TopographicRegularizer.from_config(reg.get_config())
    assert (again.input_strength, again.input_grid) == (0.5, (3, 4))
    assert "input_grid=(3, 4)" in repr(again)


@pytest.mark.backend
def test_wav2letter_reads_each_grid_from_above(tmp_path):
    model = models.wav2letter("tiny", n_features=8, input_strength=0.1, seed=0)
    grids = models.layer_grids("tiny")
    names = list(grids)
    for below, above in zip(names, names[1:] + ["logits"]):
        reg = model.get_layer(above).kernel_regularizer
        assert reg.input_strength == 0.1 and reg.input_grid == grids[below]
    assert model.get_layer(names[0]).kernel_regularizer.input_strength == 0.0
    # logits orders no grid of its own, so it is no topographic layer.
    assert list(topographic_layers(model)) == names
    losses = [float(keras.ops.convert_to_numpy(x)) for x in model.losses]
    assert len(losses) == len(names) + 1 and all(np.isfinite(losses))
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert again.get_layer("logits").kernel_regularizer.input_grid == grids[names[-1]]
    x = np.random.default_rng(0).normal(size=(1, 40, 8)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(x)),
                               keras.ops.convert_to_numpy(model(x)), atol=1e-5)

    # Only the input side (no weight constraint), with the activity regularizer.
    plain = models.wav2letter("tiny", n_features=8, topographic=False, input_strength=0.1,
                              activity_strength=0.05, seed=0)
    kinds = {k: v["kind"] for k, v in topographic_layers(plain).items()}
    assert set(kinds.values()) == {"activity"}
    assert plain.get_layer(names[1]).kernel_regularizer.strength == 0.0


def test_train_config_refuses_input_side_without_constraint():
    assert TrainConfig(topography="both", input_strength=0.1).input_strength == 0.1
    with pytest.raises(ValueError, match="input_strength.*topography='none'"):
        TrainConfig(topographic=False, input_strength=0.1)
