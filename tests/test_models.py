"""The Wav2Letter-style model builder: configs, layer names, grids, shapes, stride."""

import keras
import numpy as np
import pytest

from keras_topomap import TopographicRegularizer, models


def _conv_names(model):
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv1D)]


def test_small_layer_names_sizes_and_grids():
    model = models.wav2letter("small", n_features=40, topographic=True, strength=0.02)
    names = [f"conv_{i}" for i in range(1, 9)] + ["conv_big_1", "conv_big_2", "logits"]
    assert _conv_names(model) == names
    assert model.input_shape == (None, None, 40)
    first = model.get_layer("conv_1")
    assert first.strides == (2,) and first.kernel_size == (48,) and first.filters == 64
    assert model.get_layer("conv_5").kernel_size == (7,)
    assert model.get_layer("conv_big_1").kernel.shape == (32, 64, 256)
    assert model.get_layer("conv_big_2").kernel.shape == (1, 256, 256)
    assert model.get_layer("logits").filters == 29
    assert model.get_layer("logits").activation is keras.activations.linear
    for name, grid in models.layer_grids(model).items():
        reg = model.get_layer(name).kernel_regularizer
        assert isinstance(reg, TopographicRegularizer)
        assert reg.strength == 0.02 and tuple(reg.grid) == grid
    assert models.layer_grids(model)["conv_1"] == (8, 8)
    assert models.layer_grids(model)["conv_big_1"] == (16, 16)
    assert model.get_layer("logits").kernel_regularizer is None


def test_paper_config_matches_method_notes():
    cfg = models.CONFIGS["paper"]
    assert (cfg.first_filters, cfg.first_width, cfg.stride) == (256, 48, 2)
    assert (cfg.n_inner, cfg.inner_filters, cfg.inner_width) == (7, 256, 7)
    assert (cfg.big_filters, cfg.big_width) == (2048, 32)
    grids = cfg.layer_grids()
    assert len(grids) == 10 and grids["conv_8"] == (16, 16) and grids["conv_big_2"] == (64, 32)
    model = models.wav2letter("paper", topographic=False)
    assert model.count_params() == 24_739_869  # the paper-size step in stack-measurements.md
    assert not any(
        getattr(layer, "kernel_regularizer", None) is not None for layer in model.layers
    )


def test_unconstrained_model_reports_its_configs_grids():
    plain = models.wav2letter("tiny", topographic=False)
    assert models.layer_grids(plain) == models.CONFIGS["tiny"].layer_grids()


@pytest.mark.backend
@pytest.mark.parametrize("n_frames", [1, 40, 41, 100, 101])
def test_output_frames_are_ceil_half(n_frames):
    model = models.wav2letter("tiny", n_features=13)
    out = model(np.zeros((2, n_frames, 13), "float32"))
    assert tuple(out.shape) == (2, -(-n_frames // 2), 29)


def test_receptive_field_helper_is_reexported():
    from keras_topomap import receptive_field

    assert models.receptive_fields is receptive_field.receptive_fields
    model = models.wav2letter("small")
    fields = models.receptive_fields(model)
    assert models.total_stride(model) == 2
    # 48 + 7 * 6 * 2 + 31 * 2 = 194 input frames (method.md section 3).
    assert fields["logits"].size == 194 and fields["conv_big_1"].size == 194
    assert fields["conv_1"].size == 48 and fields["conv_2"].stride == 2


def test_dropout_layers_are_named_and_seeded():
    model = models.wav2letter("tiny", dropout=0.25, seed=7)
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert [d.name for d in drops] == [f"{n}_dropout" for n in models.layer_grids("tiny")]
    assert all(d.rate == 0.25 for d in drops)
    assert [d.seed for d in drops] == list(range(7, 7 + len(drops)))
    plain = models.wav2letter("tiny")
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in plain.layers)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"config": "huge"}, "Unknown Wav2Letter config"),
        ({"config": "tiny", "dropout": 1.0}, "dropout"),
        ({"config": "tiny", "n_features": 0}, "n_features"),
        ({"config": "tiny", "n_classes": 1}, "n_classes"),
        ({"config": "tiny", "strength": -1.0}, "strength"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.wav2letter(**kwargs)


def test_bad_custom_config_names_the_layer():
    cfg = models.Wav2LetterConfig("odd", 16, 5, 2, 1, 16, 3, 30, 3, (4, 4), (4, 4))
    with pytest.raises(ValueError, match="big layers"):
        models.wav2letter(cfg)


def test_layer_grids_of_unknown_model_raises():
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.Conv1D(5, 3, name="conv_1")])
    with pytest.raises(ValueError, match="matches no Wav2Letter config"):
        models.layer_grids(model)
