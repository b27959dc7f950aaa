"""Frame timing of time-axis models: checked against the influence of input frames, measured."""

import keras
import numpy as np
import pytest

from keras_topomap.receptive_field import (
    LayerTiming,
    input_frames_to_layer,
    layer_frame_centers,
    receptive_fields,
)

L = keras.layers


def _positive_linear(model):
    """Positive kernels, zero biases, no activations: frame t of a layer is non-zero exactly
    where an impulse lies inside its receptive field."""
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.uniform(0.5, 1.0, size=w.shape) if len(w.shape) > 1 else np.zeros(w.shape))


def _measured_support(model, layer_name, n_frames, n_features):
    """For every layer frame, the (first, last) input frame whose impulse reaches it."""
    probe = keras.Model(model.inputs, model.get_layer(layer_name).output)
    impulses = np.zeros((n_frames, n_frames, n_features), "float32")
    impulses[np.arange(n_frames), np.arange(n_frames)] = 1.0
    # (impulse j, layer frame t, filter)
    out = keras.ops.convert_to_numpy(probe(keras.ops.convert_to_tensor(impulses)))
    reached = np.abs(out).sum(-1) > 0  # (j, t)
    first = np.argmax(reached, axis=0)
    last = n_frames - 1 - np.argmax(reached[::-1], axis=0)
    return first, last, reached.any(axis=0)


def _stack():
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            L.Conv1D(2, 5, strides=2, padding="same", use_bias=False, name="c_s2"),
            L.Conv1D(2, 3, dilation_rate=2, padding="causal", use_bias=False, name="c_causal"),
            L.AveragePooling1D(2, name="pool"),
            L.Conv1D(2, 4, padding="same", use_bias=False, name="c_even"),
            L.Dropout(0.1, name="drop"),
            L.Conv1D(2, 3, strides=2, padding="same", use_bias=False, name="c_odd_s2"),
            L.Dense(2, use_bias=False, name="dense"),
            L.Conv1D(2, 3, padding="valid", use_bias=False, name="c_valid"),
        ]
    )


@pytest.mark.backend
@pytest.mark.parametrize("n_frames", [80, 81, 83])
def test_timing_matches_measured_receptive_fields(n_frames):
    model = _stack()
    _positive_linear(model)
    timing = receptive_fields(model, n_frames=n_frames)
    assert list(timing) == [layer.name for layer in model.layers]
    for name, t in timing.items():
        first, last, any_reached = _measured_support(model, name, n_frames, 3)
        assert len(first) == t.length, name
        lo = t.centers(t.length) - (t.size - 1) / 2
        hi = t.centers(t.length) + (t.size - 1) / 2
        inside = (lo >= 0) & (hi <= n_frames - 1)
        assert inside.sum() >= 2, name
        assert np.array_equal(first[inside], lo[inside]), name
        assert np.array_equal(last[inside], hi[inside]), name
        # Near the borders the field runs into the padding (and dilation leaves holes): what is
        # reached must still lie inside it.
        assert np.all(first[any_reached] >= lo[any_reached]), name
        assert np.all(last[any_reached] <= hi[any_reached]), name
        assert not np.any(any_reached & ((hi < 0) | (lo > n_frames - 1))), name


def test_closed_form_values():
    model = keras.Sequential(
        [
            keras.Input((None, 40)),
            L.Conv1D(8, 48, strides=2, padding="same", name="conv_0"),
            L.Conv1D(8, 7, padding="same", name="conv_1"),
            L.ReLU(name="relu"),
            L.MaxPooling1D(3, strides=2, padding="valid", name="pool"),
        ]
    )
    timing = receptive_fields(model)
    # total padding 46 -> pad_left 23: frames 2t-23 .. 2t+24, centre 2t + 0.5
    assert timing["conv_0"] == LayerTiming(2, 48, 0.5)
    assert timing["conv_1"] == LayerTiming(2, 48 + 6 * 2, 0.5)
    assert timing["relu"] == timing["conv_1"]
    assert timing["pool"] == LayerTiming(4, 60 + 2 * 2, 2.5)
    np.testing.assert_array_equal(layer_frame_centers(model, "conv_0", n_frames=6), [0.5, 2.5, 4.5])
    assert receptive_fields(model, n_frames=10)["pool"].length == 2
    # odd kernel, stride 2: pad_left depends on the input length's parity
    odd = keras.Sequential([keras.Input((None, 1)), L.Conv1D(1, 7, strides=2, padding="same")])
    name = odd.layers[0].name
    assert receptive_fields(odd, n_frames=10)[name].offset == 1.0  # total 5, pad_left 2
    assert receptive_fields(odd, n_frames=11)[name].offset == 0.0  # total 6, pad_left 3
    assert receptive_fields(odd)[name].offset == 1.0  # assumes a multiple of the stride


def test_functional_residual_and_nested_models():
    inner = keras.Sequential(
        [keras.Input((None, 4)), L.Conv1D(4, 3, padding="same", name="inner_conv")], name="inner"
    )
    x = keras.Input((None, 2))
    h = L.Conv1D(4, 5, strides=2, padding="same", name="stem")(x)  # pad_left (5 - 2) // 2
    r = L.Conv1D(4, 3, padding="same", name="branch")(h)
    h = L.Add(name="add")([h, r])
    h = inner(h)
    pooled = L.GlobalAveragePooling1D(name="gap")(h)
    out = L.Dense(3, name="head")(pooled)
    timing = receptive_fields(keras.Model(x, out))
    assert timing["stem"] == LayerTiming(2, 5, 1.0)
    assert timing["branch"] == LayerTiming(2, 9, 1.0)
    assert timing["add"] == LayerTiming(2, 9, 1.0)
    assert timing["inner_conv"] == LayerTiming(2, 13, 1.0)
    assert timing["inner"] == timing["inner_conv"]
    assert "gap" not in timing and "head" not in timing


def test_padding_cropping_and_unbuilt_sequential():
    model = keras.Sequential(
        [
            L.ZeroPadding1D((2, 1), name="zp"),
            L.Conv1D(1, 3, name="cv"),
            L.Cropping1D((1, 0), name="cr"),
        ]
    )
    timing = receptive_fields(model, n_frames=8)
    assert timing["zp"] == LayerTiming(1, 1, -2.0, 11)
    assert timing["cv"] == LayerTiming(1, 3, -1.0, 9)
    assert timing["cr"] == LayerTiming(1, 3, 0.0, 8)


def test_input_frames_to_layer_maps_centres_and_padding():
    labels = np.array([[0, 0, 1, 1, 2, 2, -1]])
    picked = input_frames_to_layer(labels, LayerTiming(2, 48, 0.5), 4)
    np.testing.assert_array_equal(picked, [[0, 1, 2, -1]])
    # centre before the first frame -> fill
    picked = input_frames_to_layer(labels, LayerTiming(1, 3, -1.0), 3, fill=-7)
    np.testing.assert_array_equal(picked, [[-7, 0, 0]])
    # trailing feature axes are carried along
    values = np.arange(12).reshape(1, 6, 2)
    assert input_frames_to_layer(values, LayerTiming(3, 3, 1.0), 2).tolist() == [[[2, 3], [8, 9]]]
    with pytest.raises(ValueError, match="Received: shape"):
        input_frames_to_layer(np.arange(3), LayerTiming(1, 1, 0.0), 3)


def test_errors():
    up = keras.Sequential([keras.Input((None, 2)), L.UpSampling1D(2, name="up")])
    with pytest.raises(ValueError, match="'up'.*UpSampling1D.*pointwise"):
        receptive_fields(up)
    assert receptive_fields(up, pointwise=["up"])["up"] == LayerTiming(1, 1, 0.0)

    x = keras.Input((None, 2))
    a = L.Conv1D(2, 3, strides=2, padding="same", name="a")(x)
    b = L.Conv1D(2, 5, strides=2, padding="valid", name="b")(x)
    with pytest.raises(ValueError, match="'merge'.*not aligned"):
        receptive_fields(keras.Model(x, L.Add(name="merge")([a, b])))

    x1, x2 = keras.Input((None, 2)), keras.Input((None, 2))
    two = keras.Model([x1, x2], L.Add()([x1, x2]))
    with pytest.raises(ValueError, match="2 inputs"):
        receptive_fields(two)

    short = keras.Sequential([keras.Input((None, 1)), L.Conv1D(1, 5, name="v")])
    with pytest.raises(ValueError, match="'v'.*at least 5 input frames"):
        receptive_fields(short, n_frames=3)
    with pytest.raises(ValueError, match="n_frames must be an integer >= 1"):
        receptive_fields(short, n_frames=0)
    with pytest.raises(ValueError, match="Layers with a time axis: \\['v'\\]"):
        layer_frame_centers(short, "nope", n_frames=8)


def test_check_frame_labels():
    from keras_topomap.receptive_field import check_frame_labels

    ok = check_frame_labels([[0, -1, 2]], (1, 3), "Batch 0")
    assert ok.dtype.kind == "i"
    with pytest.raises(ValueError, match=r"Batch 2: frame labels must have shape .* = \(1, 4\)"):
        check_frame_labels(np.zeros((1, 3), int), (1, 4), "Batch 2")
    with pytest.raises(ValueError, match="must be integers"):
        check_frame_labels(np.zeros((1, 3)), (1, 3), "Batch 0")
    with pytest.raises(ValueError, match=r">= -1.*min=-2"):
        check_frame_labels(np.array([[0, -2, 1]]), (1, 3), "Batch 0")


def test_layer_timing_frame_arithmetic_matches_loops():
    """The frame arithmetic on LayerTiming against plain loops over the definition
    (frame t is centred on input frame t * stride + offset)."""
    lt = LayerTiming(stride=2, size=5, offset=0.5, length=6)
    centre = [t * 2 + 0.5 for t in range(6)]
    np.testing.assert_allclose(lt.centers(), centre)
    np.testing.assert_allclose(lt.field_starts(), [c - 2 for c in centre])
    np.testing.assert_array_equal(lt.input_frame_of(np.array([[-1, 0], [5, 6]])),
                                  [[-2, 0], [10, 12]])
    lengths = np.array([12, 7, 0])
    labels = np.arange(36).reshape(3, 12) % 5 - 1
    valid = lt.valid_frames(lengths)
    before_end = lt.frames_before_end(lengths)
    picked = lt.labels_at_frames(labels, lengths)
    for b in range(3):
        for t in range(6):
            inside = int(np.floor(centre[t])) < lengths[b]
            assert valid[b, t] == inside and before_end[b, t] == inside
            assert picked[b, t] == (labels[b, int(np.floor(centre[t]))] if inside else -1)
    # Frames of other rows and outside 0 .. length - 1 are never valid.
    assert lt.valid_frames([12], frames=np.array([-1, 0, 5, 6])).tolist() == [
        [False, True, True, False]
    ]
    assert lt.nearest_frame(np.array([0.0, 1.5, 2.4, 11.0])).tolist() == [0, 1, 1, 5]
    first, last = lt.frames_within(np.array([0, 3, 4, 10]), np.array([2, 3, 5, 11]))
    # frames with floor(centre) in [start, end]: [0, 1], none, [2], [5]
    assert first.tolist() == [0, 2, 2, 5] and last.tolist() == [1, 1, 2, 5]
    with pytest.raises(ValueError, match="no length"):
        LayerTiming(1, 1, 0.0).centers()
