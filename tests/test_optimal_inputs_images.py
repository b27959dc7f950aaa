"""Optimal inputs of image models: planted Conv2D filters and Dense units with known optima.

The filters are set by hand, so what drives each one is known: a red horizontal bar, a green
vertical bar, a blue centre spot and a grey diagonal (3 x 3 kernels on RGB images); the Dense
units are templates on the flattened image. "Data" are noise images with random bars and spots.
"""

import keras
import numpy as np
import pytest

from keras_topomap.optimal_inputs import OptimalInputs, optimal_inputs

SIZE = 8
FAST = dict(steps=60, jitter=1)


def planted_kernel():
    """``(3, 3, 3, 4)``: each filter a zero-mean pattern in some of the RGB channels."""
    k = np.full((3, 3, 3, 4), 0.0, np.float32)
    bar = np.array([[-1, -1, -1], [2, 2, 2], [-1, -1, -1]], np.float32) / 6
    k[:, :, 0, 0] = bar  # red horizontal bar
    k[:, :, 1, 1] = bar.T  # green vertical bar
    spot = -np.ones((3, 3), np.float32) / 8
    spot[1, 1] = 1.0
    k[:, :, 2, 2] = spot  # blue centre spot
    diagonal = np.eye(3, dtype=np.float32)[::-1] - 1 / 3
    k[:, :, :, 3] = diagonal[:, :, None] / 3  # the same diagonal in every channel: grey
    return k


def planted_conv_model(image_size=(SIZE, SIZE)):
    inputs = keras.Input((*image_size, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")
    hidden = conv(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(4, name="logits")(pooled)
    model = keras.Model(inputs, outputs)
    conv.set_weights([planted_kernel(), np.zeros(4, np.float32)])
    return model


def noise_images(n, rng, channels=3):
    """Noise images with a random bar or spot in a random colour (the "data")."""
    x = 0.3 * rng.standard_normal((n, SIZE, SIZE, channels))
    rows = rng.integers(1, SIZE - 1, size=n)
    cols = rng.integers(1, SIZE - 1, size=n)
    colours = rng.integers(0, channels, size=n)
    x[np.arange(n), rows, :, colours] += 1.0  # a bar across each image, one channel
    x[np.arange(n), :, cols, colours] += 0.5
    return x.astype(np.float32)


def mean_activation(model, layer, x):
    taps = keras.Model(model.input, model.get_layer(layer).output)
    acts = keras.ops.convert_to_numpy(taps(x, training=False))
    return acts.reshape(-1, acts.shape[-1]).mean(axis=0)


@pytest.mark.backend
def test_planted_conv2d_filters_are_driven_far_above_data_in_their_colour():
    model = planted_conv_model()
    data_mean = mean_activation(model, "conv", noise_images(64, np.random.default_rng(0)))
    opt = OptimalInputs(model, "conv", **FAST).fit()
    assert opt.inputs_.shape == (4, SIZE, SIZE, 3) and opt.inputs_.dtype == np.float32
    assert opt.position_ == (3, 3) and opt.center_frame_ is None and not opt.cone_
    response = opt.layer_response(opt.inputs_)  # (input, filter) at the centre pixel
    own = np.diag(response)
    np.testing.assert_allclose(opt.activations_, own, rtol=1e-5, atol=1e-6)
    assert np.all(own >= 5 * data_mean), own / data_mean
    assert np.all(np.argmax(response, axis=0) == np.arange(4)), response  # own input is best
    # Colour: the energy of each input sits in the channels its filter reads.
    energy = np.square(opt.inputs_[:, 2:5, 2:5, :]).sum(axis=(1, 2))  # (input, channel)
    for f, channel in enumerate((0, 1, 2)):
        others = np.delete(energy[f], channel)
        assert energy[f, channel] > 10 * others.max(), energy[f]
    grey = energy[3] / energy[3].sum()
    assert grey.min() > 0.2, grey
    # The pattern: a red bar through the centre row, a green one through the centre column.
    red = opt.inputs_[0, :, :, 0]
    assert red[3, 2:5].mean() > 0 > red[[2, 4], 2:5].mean()
    green = opt.inputs_[1, :, :, 1]
    assert green[2:5, 3].mean() > 0 > green[2:5, [2, 4]].mean()


def test_region_joint_and_image_size():
    model = planted_conv_model()
    single = OptimalInputs(model, "conv", region=((0, 0), 3), grid=(2, 2), **FAST).fit()
    np.testing.assert_array_equal(single.filters_, [0, 1, 2, 3])
    joint = OptimalInputs(model, "conv", region=((0, 0), 3), grid=(2, 2), joint=True,
                          **FAST).fit()
    assert joint.inputs_.shape == (1, SIZE, SIZE, 3)
    region_sum = joint.layer_response(joint.inputs_).sum()
    best_single = single.layer_response(single.inputs_).sum(axis=1).max()
    assert region_sum >= 0.99 * best_single
    # A model that leaves the image size open needs image_size.
    open_model = planted_conv_model(image_size=(None, None))
    with pytest.raises(ValueError, match=r"fixed input shape.*image_size=\(H, W\)"):
        optimal_inputs(open_model, "conv", filters=[0], steps=1)
    x = optimal_inputs(open_model, "conv", filters=[0], image_size=(6, 10), steps=2)
    assert x.shape == (1, 6, 10, 3)
    with pytest.raises(ValueError, match=r"takes images of \(8, 8\)"):
        optimal_inputs(model, "conv", filters=[0], image_size=(6, 10), steps=1)
    with pytest.raises(ValueError, match="image_size must be"):
        optimal_inputs(open_model, "conv", filters=[0], image_size=(6,), steps=1)
    with pytest.raises(ValueError, match="layer_response expects inputs shaped"):
        single.layer_response(np.zeros((1, 6, 6, 3)))


def test_dense_units_recover_their_templates():
    rng = np.random.default_rng(1)
    templates = np.zeros((3, SIZE, SIZE), np.float32)
    templates[0, 3:5, :] = 1.0  # a horizontal band
    templates[1, :, 3:5] = 1.0  # a vertical band
    templates[2] = np.eye(SIZE)  # the diagonal
    templates -= templates.mean(axis=(1, 2), keepdims=True)
    inputs = keras.Input((SIZE, SIZE, 1))
    hidden = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(3, activation="relu", name="dense")
    outputs = keras.layers.Dense(2, name="logits")(dense(hidden))
    model = keras.Model(inputs, outputs)
    dense.set_weights([templates.reshape(3, -1).T / SIZE, np.zeros(3, np.float32)])
    data_mean = mean_activation(model, "dense", noise_images(64, rng, channels=1))
    opt = OptimalInputs(model, "dense", steps=60, jitter=0, blur=0.5).fit()
    assert opt.position_ == () and opt.inputs_.shape == (3, SIZE, SIZE, 1)
    assert np.all(opt.activations_ >= 5 * data_mean), opt.activations_ / data_mean
    flat = opt.inputs_.reshape(3, -1)
    correlation = np.corrcoef(flat, templates.reshape(3, -1))[:3, 3:]
    assert np.all(np.diag(correlation) > 0.8), correlation
    # A vector model: no blur and no jitter, the same unit targets.
    vector = keras.Sequential([keras.Input((SIZE * SIZE,)), dense])
    x = optimal_inputs(vector, "dense", filters=[2], steps=40)
    assert x.shape == (1, SIZE * SIZE)
    assert np.corrcoef(x[0], templates[2].ravel())[0, 1] > 0.8


def test_colour_filter_tiles_and_image_panels(tmp_path):
    from keras_topomap.visualization import (
        filter_images,
        plot_filter_neighborhoods,
        plot_input_image,
        plot_optimal_inputs,
    )

    kernel = planted_kernel()
    tiles = filter_images(kernel)
    assert tiles.shape == (4, 3, 3, 3)  # RGB kept: the red bar filter is red only
    assert np.abs(tiles[0, :, :, 1:]).max() == 0 and np.abs(tiles[0, :, :, 0]).max() > 0
    assert filter_images(kernel, rgb=False).shape == (4, 3, 3)
    with pytest.raises(ValueError, match="3 input channels"):
        filter_images(np.ones((3, 3, 2, 4)), rgb=True)
    nine = kernel[..., [0, 1, 2, 3, 0, 1, 2, 3, 0]]  # a 3 x 3 grid for a 3 x 3 neighbourhood
    fig = plot_filter_neighborhoods(nine, grid=(3, 3), centers=[(1, 1)], layer="conv")
    drawn = [im.get_array() for ax in fig.axes for im in ax.images]
    assert drawn[0].ndim == 3 and drawn[0].shape[-1] == 3  # the mosaic is an RGB image
    tile = next(a for a in drawn[1:] if a.shape == (3, 3, 3))
    np.testing.assert_allclose(tile[1, :, 0], 1.0)  # red bar (row 1, image orientation)
    np.testing.assert_allclose(tile[..., 1:], 0.5)  # green and blue weights 0: mid-grey
    fig.savefig(tmp_path / "tiles.png")

    images = np.zeros((4, SIZE, SIZE, 3), np.float32)
    images[0, 3, :, 0] = 2.0
    fig = plot_optimal_inputs(images, filters=[0, 1, 2, 3], joint=images[:1])
    rgb = fig.axes[0].images[0].get_array()
    assert rgb.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(rgb[3, :, 0], 1.0)
    np.testing.assert_allclose(rgb[0], 0.5)
    fig.savefig(tmp_path / "inputs.png")
    with pytest.raises(ValueError, match=r"shaped like one single-filter input"):
        plot_optimal_inputs(images, joint=images[0, :4])
    from keras_topomap.visualization import new_figure

    ax = new_figure().add_subplot()
    grey = plot_input_image(ax, images[0, :, :, :1], value_range=(0, 2))
    assert grey.get_array().shape == (SIZE, SIZE) and grey.get_clim() == (0.0, 2.0)
