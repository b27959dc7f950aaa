"""Padding masks through the recognizer recipe: normalized convolutions and SpecAugment.

``models.wav2letter(norm=..., augment=..., activity_strength>0)`` carries the frame mask of its
``Masking`` layer through :class:`~keras_topomap.augment.SpecAugment` and every
:class:`~keras_topomap.models.NormConv1D`: extra padding must change neither the activity
penalty, nor the batch normalization's moments, nor any real frame's output, and padded frames
are exactly 0 in every hidden layer.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_topomap import ctc, models
from keras_topomap.augment import SpecAugment
from keras_topomap.datasets import pack_ctc_targets
from keras_topomap.masking import attach_mask, attached_mask

AUGMENT = {"freq_masks": 1, "freq_width": 2, "time_masks": 2, "time_width": 4, "mask_value": 0.5}
EXTRA = 24  # padding frames appended to the batch


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _recipe(norm="batch", augment=AUGMENT, dropout=0.0):
    return models.wav2letter("tiny", n_features=8, seed=0, norm=norm, augment=augment,
                             dropout=dropout, activity_strength=1.0,
                             activity_global_strength=1.0)


def _batch(seed=0):
    """Two utterances of 40 and 30 frames, and the same batch with EXTRA more padding frames."""
    x = np.random.default_rng(seed).normal(size=(2, 40, 8)).astype("float32")
    x[1, 30:] = 0.0
    return x, np.concatenate([x, np.zeros((2, EXTRA, 8), "float32")], axis=1)


def _hidden(model):
    return [layer.name for layer in model.layers
            if layer.name.startswith("conv_") and not layer.name.endswith("_dropout")]


def _moving_statistics(model):
    return {name: (_np(model.get_layer(name).normalization.moving_mean),
                   _np(model.get_layer(name).normalization.moving_variance))
            for name in _hidden(model)}


def _training_pass(weights, x, norm):
    """A fresh, identically seeded model with ``weights``, called once in training."""
    model = _recipe(norm)
    model.set_weights(weights)
    names = ["spec_augment", *_hidden(model)]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    outputs = probe(x, training=True)
    losses = [float(_np(v)) for v in probe.losses]
    return model, dict(zip(names, (_np(o) for o in outputs))), losses


@pytest.mark.backend
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_extra_padding_changes_no_statistic_and_padded_frames_are_zero(norm):
    x, padded = _batch()
    weights = _recipe(norm).get_weights()
    short, short_out, short_losses = _training_pass(weights, x, norm)
    long, long_out, long_losses = _training_pass(weights, padded, norm)
    # the activity (and weight) penalties: unchanged by the padding
    assert len(short_losses) == 2 * len(_hidden(short))
    np.testing.assert_allclose(long_losses, short_losses, rtol=1e-5)
    lengths = np.array([40, 30])
    for name, out in long_out.items():
        stride = 1 if name == "spec_augment" else 2
        real = -(-lengths // stride)
        for row, n in enumerate(real):
            # padded frames are exactly 0; real frames do not see the padding
            assert np.all(out[row, n:] == 0.0), (name, row)
            np.testing.assert_allclose(out[row, :n], short_out[name][row, :n], rtol=1e-5,
                                       atol=1e-5, err_msg=name)
            assert np.all(short_out[name][row, n:] == 0.0), (name, row)
    # the augmentation did something, on real frames only
    augmented = long_out["spec_augment"]
    assert np.any(augmented[:, :40] == 0.5)
    if norm == "batch":  # the batch moments, through the moving statistics they update
        for name, (mean, var) in _moving_statistics(long).items():
            ref_mean, ref_var = _moving_statistics(short)[name]
            np.testing.assert_allclose(mean, ref_mean, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(var, ref_var, atol=1e-5, err_msg=name)
            assert np.any(np.abs(mean) > 1e-6), name  # they were updated


@pytest.mark.backend
def test_a_fit_step_on_a_padded_batch_gives_the_unpadded_moving_statistics():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 40, 8)).astype("float32")  # no padding at all
    padded = np.concatenate([x, np.zeros((2, EXTRA, 8), "float32")], axis=1)
    y = pack_ctc_targets([40, 40], [rng.integers(1, 29, 5), rng.integers(1, 29, 4)])
    weights = _recipe().get_weights()
    found = []
    for v in (x, padded):
        model = _recipe()
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ctc.CTCLoss(stride=2))
        history = model.fit(v, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        found.append(_moving_statistics(model))
    for name, (mean, var) in found[1].items():
        np.testing.assert_allclose(mean, found[0][name][0], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(var, found[0][name][1], atol=1e-5, err_msg=name)


@pytest.mark.backend
def test_the_recipe_with_the_activity_regularizer_trains_and_round_trips(tmp_path):
    model = _recipe(dropout=0.1)  # the shipped recipe's options plus the activity term
    assert isinstance(model.get_layer("padding_mask"), keras.layers.Masking)
    assert isinstance(model.get_layer("conv_2"), models.NormConv1D)
    assert model.get_layer("conv_2").activity_regularizer is not None
    x, _ = _batch(2)
    y = pack_ctc_targets([40, 30], [np.array([3, 4, 5]), np.array([6, 7])])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ctc.CTCLoss(stride=2))
    before = [np.array(w) for w in model.get_weights()]
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x),
                               rtol=1e-5, atol=1e-5)
    assert loaded.get_layer("conv_2").norm == "batch"
    assert models.receptive_fields(loaded)["logits"].stride == 2


@pytest.mark.backend
def test_masked_spec_augment_keeps_padding_and_masks_real_frames_only():
    x = np.random.default_rng(3).normal(size=(3, 50, 6)).astype("float32") + 5.0
    lengths = np.array([50, 12, 3])
    for row, n in enumerate(lengths):
        x[row, n:] = 0.0
    mask = ops.convert_to_tensor(np.arange(50)[None, :] < lengths[:, None])
    options = {"freq_masks": 0, "freq_width": 0, "time_masks": 3, "time_width": 10,
               "mask_value": -1.0, "seed": 4}
    layer, plain = SpecAugment(**options), SpecAugment(**options)
    for _ in range(5):
        inputs = ops.convert_to_tensor(x)
        attach_mask(inputs, mask)
        out = _np(layer(inputs, training=True))
        unmasked = _np(plain(x, training=True))
        assert layer.compute_mask(inputs, mask) is mask
        for row, n in enumerate(lengths):
            assert np.all(out[row, n:] == 0.0)  # padding stays 0 although mask_value is -1
            masked_frames = np.all(out[row, :n] == -1.0, axis=-1)
            np.testing.assert_array_equal(out[row, :n][~masked_frames], x[row, :n][~masked_frames])
        np.testing.assert_array_equal(out[0], unmasked[0])  # a full row: the same draws
    with_mask = keras.layers.Masking(0.0)(ops.convert_to_tensor(x))
    assert attached_mask(layer(with_mask, training=True)) is not None


def test_norm_conv_with_a_mask_needs_same_padding():
    layer = models.NormConv1D(4, 3, norm="layer", name="n")
    x = ops.ones((1, 5, 2))
    layer(x)  # unmasked: any padding, as before
    attach_mask(x, ops.ones((1, 5), dtype="bool"))
    with pytest.raises(ValueError, match=r"NormConv1D 'n' needs padding='same'.*'valid'"):
        layer(x)
