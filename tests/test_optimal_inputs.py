"""Tests for optimal inputs (activation maximisation) on a small trained recognizer.

The model is the ``tiny`` Wav2Letter, trained for a few seconds on synthetic "speech": noise in
which each class lights up its own band of features, so its filters have learned something
specific to drive. "Real data" below means that synthetic data.
"""

import numpy as np
import pytest

from keras_topomap import grid as grid_lib
from keras_topomap.models import wav2letter
from keras_topomap.optimal_inputs import OptimalInputs, optimal_inputs
from keras_topomap.receptive_field import receptive_fields

N_FEATURES = 20
N_CLASSES = 5
LAYER = "conv_big_1"  # 32 filters on an 8 x 4 grid in the tiny config
GRID = (8, 4)
FAST = dict(steps=80)  # enough for the tiny model; the defaults are for real ones


def synthetic_speech(n, frames, rng):
    """Noise plus class-specific feature bands in segments; per-frame labels."""
    x = 0.5 * rng.standard_normal((n, frames, N_FEATURES))
    labels = np.zeros((n, frames), np.int64)
    for i in range(n):  # data generation only (not the code under test)
        t = 0
        while t < frames:
            length = int(rng.integers(6, 16))
            cls = int(rng.integers(1, N_CLASSES))
            band = slice(4 * (cls - 1), 4 * (cls - 1) + 5)
            end = min(t + length, frames)
            x[i, t:end, band] += 2.0 * np.hanning(length + 2)[1:end - t + 1, None]
            labels[i, t:end] = cls
            t += length
    x = (x - x.mean(axis=(0, 1))) / x.std(axis=(0, 1))
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def trained():
    """(model, mean activation of each conv_big_1 filter over real data)."""
    import keras

    keras.utils.set_random_seed(7)
    x, labels = synthetic_speech(96, 96, np.random.default_rng(7))
    model = wav2letter("tiny", n_features=N_FEATURES, n_classes=N_CLASSES, strength=0.001)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, labels[:, ::2], epochs=10, batch_size=32, verbose=0)
    taps = keras.Model(model.input, model.get_layer(LAYER).output)
    acts = keras.ops.convert_to_numpy(taps(x[:48], training=False))
    return model, acts.reshape(-1, acts.shape[-1]).mean(axis=0)


def live_filters(mean_activation, k):
    """``k`` distinct filters with a clearly non-zero mean activation, spread over the layer."""
    alive = np.flatnonzero(mean_activation > 0.05 * mean_activation.max())
    assert len(alive) >= k, "the trained fixture model has too few live filters"
    return alive[np.unique(np.linspace(0, len(alive) - 1, k).round().astype(int))]


def frame_fits(model, length, layer=LAYER):
    """Whether some frame of ``layer`` has its receptive field inside ``length`` input frames."""
    timing = receptive_fields(model, n_frames=length)[layer]
    starts = timing.centers(timing.length) - (timing.size - 1) / 2
    return bool(np.any((starts >= 0) & (starts + timing.size <= length)))


# ----------------------------------------------------------------------------------------------
# What the inputs achieve


@pytest.mark.backend
def test_each_input_drives_its_filter_far_above_data_and_other_inputs(trained):
    model, mean = trained
    filters = live_filters(mean, 6)
    opt = OptimalInputs(model, LAYER, filters=filters, **FAST).fit()
    assert opt.cone_
    assert opt.inputs_.shape == (len(filters), opt.inputs_.shape[1], N_FEATURES)
    response = opt.layer_response(opt.inputs_)[:, filters]  # row: input, column: filter
    own = np.diag(response)
    np.testing.assert_allclose(opt.activations_, own, rtol=1e-5, atol=1e-6)
    assert np.all(own >= 5 * mean[filters]), own / mean[filters]
    others = np.where(np.eye(len(filters), dtype=bool), -np.inf, response)
    # Every filter is driven harder by its own input than by most inputs made for other filters,
    # and by its own input than by any other in at least 80% of the pairs (similar filters may
    # share a good input).
    beats = own[None, :] > others
    assert np.all(beats.sum(axis=0) >= (len(filters) - 1) / 2), response
    assert beats.sum() >= 0.8 * len(filters) * (len(filters) - 1), response


def test_inputs_for_dissimilar_filters_are_specific(trained):
    import keras

    model, mean = trained
    alive = live_filters(mean, 12)
    kernel = keras.ops.convert_to_numpy(model.get_layer(LAYER).kernel)
    flat = kernel.reshape(-1, kernel.shape[-1])[:, alive]
    flat = flat / np.linalg.norm(flat, axis=0)
    cosine = flat.T @ flat
    i, j = np.unravel_index(np.argmin(cosine), cosine.shape)
    pair = [int(alive[i]), int(alive[j])]
    opt = OptimalInputs(model, LAYER, filters=pair, **FAST).fit()
    response = opt.layer_response(opt.inputs_)[:, pair]
    assert response[0, 0] > response[1, 0] and response[1, 1] > response[0, 1], response


def test_joint_input_drives_the_region_sum_above_every_single_filter_input(trained):
    model, mean = trained
    region = grid_lib.most_responsive_region(mean.reshape(GRID), size=3)
    single = OptimalInputs(model, LAYER, region=region, **FAST).fit()
    joint = OptimalInputs(model, LAYER, region=region, joint=True, **FAST).fit()
    np.testing.assert_array_equal(single.filters_, region.filters)
    assert joint.inputs_.shape == (1, *single.inputs_.shape[1:])
    single_sums = single.layer_response(single.inputs_)[:, region.filters].sum(axis=1)
    joint_sum = joint.layer_response(joint.inputs_)[:, region.filters].sum(axis=1)
    np.testing.assert_allclose(joint.activations_, joint_sum, rtol=1e-5)
    # The joint input is at least as good as the best single-filter input on the region sum
    # (up to 1%: when one filter's maximiser, a corner of the bounded input box, also maximises
    # the sum, both runs end at the same input) and clearly better than the typical one.
    assert joint_sum[0] >= 0.99 * single_sums.max(), (joint_sum, single_sums)
    assert joint_sum[0] > 1.1 * np.median(single_sums), (joint_sum, single_sums)


@pytest.mark.backend
def test_same_seed_same_result_other_seed_other_result(trained):
    model, mean = trained
    filters = live_filters(mean, 3)
    kwargs = dict(filters=filters, steps=10)
    a = OptimalInputs(model, LAYER, seed=3, **kwargs).fit()
    b = OptimalInputs(model, LAYER, seed=3, **kwargs).fit()
    c = OptimalInputs(model, LAYER, seed=4, **kwargs).fit()
    np.testing.assert_allclose(a.inputs_, b.inputs_, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.activations_, b.activations_, rtol=1e-5)
    assert np.abs(a.inputs_ - c.inputs_).max() > 0.1


@pytest.mark.backend
def test_cone_model_equals_the_model_at_the_target_frame(trained):
    model, _ = trained
    field = receptive_fields(model)[LAYER].size
    lengths = [n for n in range(field, field + 14) if frame_fits(model, n)]
    for length in lengths[:2] + lengths[-2:]:  # odd and even: the strided frames' alignment
        opt = OptimalInputs(model, LAYER, filters=[0], length=length, steps=1)
        opt.fit()
        assert opt.cone_, length  # fit checks the cone against the model on a random input
        timing = receptive_fields(model, n_frames=length)[LAYER]
        start = timing.centers(timing.length)[opt.center_frame_] - (timing.size - 1) / 2
        assert 0 <= start and start + timing.size <= length


def test_full_model_path_without_a_chain(trained):
    import keras

    model, mean = trained
    # A branch (residual add) around conv_big_2 makes the path to it no plain chain.
    inputs = keras.Input((None, N_FEATURES))
    hidden = keras.Model(model.input, model.get_layer(LAYER).output)(inputs)
    branch = model.get_layer("conv_big_2")(hidden)
    merged = keras.layers.Add(name="residual")([hidden, branch])
    wrapped = keras.Model(inputs, merged)
    filters = live_filters(mean, 2)
    opt = OptimalInputs(wrapped, "residual", filters=filters, **FAST).fit()
    assert not opt.cone_
    assert np.all(opt.activations_ > 0)
    cone = OptimalInputs(model, LAYER, filters=filters, cone=False, **FAST).fit()
    assert not cone.cone_ and np.all(cone.activations_ >= 5 * mean[filters])


# ----------------------------------------------------------------------------------------------
# Parameters and regularisers


def test_default_length_covers_the_receptive_field_plus_jitter(trained):
    model, _ = trained
    field = receptive_fields(model)[LAYER].size
    opt = OptimalInputs(model, LAYER, filters=[1], jitter=3, steps=2).fit()
    assert opt.receptive_field_ == field
    assert field + 6 <= opt.inputs_.shape[1] <= field + 6 + 2
    assert frame_fits(model, opt.inputs_.shape[1])
    assert opt.history_.shape == (2, 1)
    x, acts = optimal_inputs(model, LAYER, filters=[1, 2], length=60, steps=2,
                             return_activations=True)
    assert x.shape == (2, 60, N_FEATURES) and x.dtype == np.float32 and acts.shape == (2,)
    assert optimal_inputs(model, LAYER, filters=[1], steps=2).shape[0] == 1


def test_regularisers(trained):
    model, mean = trained
    filters = live_filters(mean, 3)
    sharp = OptimalInputs(model, LAYER, filters=filters, blur=0, value_range=None, **FAST).fit()
    smooth = OptimalInputs(model, LAYER, filters=filters, blur=1.5, blur_every=1, **FAST).fit()
    assert np.abs(sharp.inputs_).max() > 3.0  # unbounded without value_range

    def roughness(x):
        return np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean()

    assert roughness(smooth.inputs_) < 0.5 * roughness(sharp.inputs_)
    assert smooth.inputs_.min() >= -3.0 and smooth.inputs_.max() <= 3.0
    clipped = OptimalInputs(model, LAYER, filters=filters, clip=0.5, blur=0, **FAST).fit()
    zeros = (clipped.inputs_ == 0).mean(axis=(1, 2))
    assert np.all(zeros >= 0.45)
    decayed = OptimalInputs(model, LAYER, filters=filters, l2=0.5, blur=0, **FAST).fit()
    assert np.abs(decayed.inputs_).mean() < np.abs(sharp.inputs_).mean()


def test_all_filters_by_default(trained):
    model, _ = trained
    opt = OptimalInputs(model, LAYER, steps=3).fit()
    assert opt.inputs_.shape[0] == 32
    np.testing.assert_array_equal(opt.filters_, np.arange(32))


# ----------------------------------------------------------------------------------------------
# Errors


def test_bad_filters(trained):
    model, _ = trained
    with pytest.raises(ValueError, match=r"32 filters.*Received out-of-range filters: \[32\]"):
        optimal_inputs(model, LAYER, filters=[0, 32], steps=1)
    with pytest.raises(ValueError, match=r"out-of-range filters: \[-1\]"):
        optimal_inputs(model, LAYER, filters=[-1], steps=1)
    with pytest.raises(ValueError, match="integer indices"):
        optimal_inputs(model, LAYER, filters=[0.5], steps=1)
    with pytest.raises(ValueError, match="integer indices"):
        optimal_inputs(model, LAYER, filters=[], steps=1)
    with pytest.raises(ValueError, match="must not repeat"):
        optimal_inputs(model, LAYER, filters=[2, 2], steps=1)
    with pytest.raises(ValueError, match="not both"):
        optimal_inputs(model, LAYER, filters=[1], region=((1, 1), 3), steps=1)
    with pytest.raises(ValueError, match="Layer 'nope' is not in model"):
        optimal_inputs(model, "nope", steps=1)


def test_bad_regions(trained):
    model, _ = trained
    with pytest.raises(ValueError, match=r"conv_big_1.*off the 8x4 grid"):
        optimal_inputs(model, LAYER, region=((8, 0), 3), steps=1)
    with pytest.raises(ValueError, match="odd"):
        optimal_inputs(model, LAYER, region=((2, 2), 2), steps=1)
    with pytest.raises(ValueError, match="Region grid 4x4 holds 16 filters"):
        region = grid_lib.most_responsive_region(np.ones((4, 4)), size=3)
        optimal_inputs(model, LAYER, region=region, steps=1)
    with pytest.raises(ValueError, match="region must be"):
        optimal_inputs(model, LAYER, region=5, steps=1)
    plain = wav2letter("tiny", n_features=N_FEATURES, topographic=False)
    with pytest.raises(ValueError, match="no TopographicRegularizer.*grid=\\(H, W\\)"):
        optimal_inputs(plain, LAYER, region=((1, 1), 3), steps=1)
    x = optimal_inputs(plain, LAYER, region=((0, 0), 3), grid=GRID, steps=1)
    assert x.shape[0] == 4  # a corner region holds 2 x 2 filters


def test_bad_lengths_and_parameters(trained):
    model, _ = trained
    field = receptive_fields(model)[LAYER].size
    with pytest.raises(ValueError, match=f"receptive field of layer 'conv_big_1', {field} input"):
        optimal_inputs(model, LAYER, filters=[0], length=field - 1, steps=1)
    with pytest.raises(ValueError, match="length"):
        optimal_inputs(model, LAYER, filters=[0], length=float(field + 2), steps=1)
    # A window can hold the field but no frame's field: with an odd width at stride 2 and
    # "same" padding, frames' fields start at odd input frames for even lengths.
    import keras

    odd = keras.Sequential([
        keras.Input((None, 3)),
        keras.layers.Conv1D(4, 11, strides=2, padding="same", name="strided"),
        keras.layers.Conv1D(4, 5, padding="same", name="top"),
    ])
    size = receptive_fields(odd)["top"].size
    misaligned = [n for n in range(size, size + 4) if not frame_fits(odd, n, "top")]
    assert misaligned
    for length in misaligned:
        with pytest.raises(ValueError, match="lies entirely inside the input; use length="):
            optimal_inputs(odd, "top", filters=[0], length=length, steps=1)
    fine = [n for n in range(size, size + 4) if frame_fits(odd, n, "top")][0]
    x = optimal_inputs(odd, "top", filters=[0, 3], length=fine, steps=3)
    assert x.shape == (2, fine, 3)
    for bad in (dict(steps=0), dict(learning_rate=0.0), dict(l2=1.0), dict(clip=-0.1),
                dict(jitter=-1), dict(blur_every=0), dict(value_range=(1.0, -1.0)),
                dict(blur=float("nan")), dict(polish=1.5), dict(restarts=0)):
        with pytest.raises(ValueError, match="Received"):
            optimal_inputs(model, LAYER, filters=[0], **bad)
    with pytest.raises(ValueError, match="not fitted"):
        OptimalInputs(model, LAYER).layer_response(np.zeros((1, 40, N_FEATURES)))


# ----------------------------------------------------------------------------------------------
# Plots and sound


def test_plot_optimal_inputs_lays_out_the_region(trained, tmp_path):
    from keras_topomap.datasets import FeatureConfig
    from keras_topomap.visualization import plot_optimal_inputs

    model, mean = trained
    region = grid_lib.Region((0, 1), grid_lib.region_filters((0, 1), 3, GRID), 1.0, 3, GRID)
    single = OptimalInputs(model, LAYER, region=region, steps=2).fit()
    joint = optimal_inputs(model, LAYER, region=region, joint=True, steps=2)
    fig = plot_optimal_inputs(single.inputs_, region, joint, feature_config=FeatureConfig(
        n_mels=N_FEATURES), suptitle="region")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == len(region.filters) + 1  # 2 rows x 3 columns + joint
    positions = {ax.get_title(): ax.get_subplotspec().get_geometry() for ax in panels}
    assert positions["filter 0 (0, 0)"][2] == 0  # top-left panel
    assert positions["filter 6 (1, 2)"][2] == 1 * 4 + 2  # row 1, column 2 of a 2 x 4 layout
    # labelled axes (seconds, mel frequency) on the outer panels, square cells everywhere
    frames, features = single.inputs_.shape[1:]
    assert all(ax.get_box_aspect() == pytest.approx(features / frames) for ax in panels)
    assert {ax.get_xlabel() for ax in panels} == {"time (s)", ""}
    assert "mel frequency (Hz)" in {ax.get_ylabel() for ax in panels}
    fig.savefig(tmp_path / "inputs.png")
    assert (tmp_path / "inputs.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="6 inputs but 2 filters"):
        plot_optimal_inputs(single.inputs_, filters=[0, 1])
    with pytest.raises(ValueError, match="joint input"):
        plot_optimal_inputs(single.inputs_, region, joint[:, :10])


def _tone_utterance(sample_rate=16000, seconds=1.0):
    from keras_topomap.datasets import Utterance

    t = np.arange(int(sample_rate * seconds)) / sample_rate
    freq = 300 + 1500 * t  # a rising tone, so the spectrogram has structure
    audio = 0.3 * np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * np.hanning(t.size)
    return Utterance("tone", audio.astype(np.float32), sample_rate, "tone")


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_sonify_round_trip(kind, tmp_path):
    import dataclasses

    import soundfile

    from keras_topomap.datasets import FeatureConfig, Utterance, extract_features
    from keras_topomap.sonify import feature_statistics, features_to_audio, write_wav

    config = FeatureConfig(kind=kind)  # normalised, as the models are trained
    raw_config = dataclasses.replace(config, normalize=False)
    utterance = _tone_utterance()
    features = extract_features(utterance, config)
    stats = feature_statistics([utterance], config)  # this utterance's own: exact denormalising
    np.testing.assert_allclose(stats[0], extract_features(utterance, raw_config).mean(axis=0),
                               rtol=1e-5, atol=1e-4)
    audio = features_to_audio(features, config, stats=stats, n_iter=16)
    assert audio.dtype == np.float32 and abs(len(audio) - len(utterance.audio)) <= 160
    np.testing.assert_array_equal(audio, features_to_audio(features, config, stats=stats,
                                                           n_iter=16))  # seeded
    # Re-extracted without normalisation (which blows up the floor-level bands), the sound has
    # the original's spectrogram: correlated, and the loudest band (the tone) in place.
    before = extract_features(utterance, raw_config)
    after = extract_features(Utterance("again", audio, 16000, "tone"), raw_config)
    n = min(len(before), len(after))
    corr = np.corrcoef(before[:n].ravel(), after[:n].ravel())[0, 1]
    assert corr > 0.7, corr
    if kind == "logmel":
        same_peak = np.argmax(before[:n], axis=1) == np.argmax(after[:n], axis=1)
        assert same_peak.mean() > 0.85
    written = write_wav(tmp_path / "x.wav", features, config, stats=stats, n_iter=8)
    data, rate = soundfile.read(tmp_path / "x.wav")
    assert rate == 16000 and len(data) == len(written)
    assert 0.85 < np.abs(data).max() <= 0.91
    with pytest.raises(ValueError, match=f"features must be \\(T, {config.n_features}\\)"):
        features_to_audio(features[:, :5], config, stats=stats)
    with pytest.raises(ValueError, match="stats must be two arrays"):
        features_to_audio(features, config, stats=(np.zeros(3), np.ones(3)))


def test_sonify_default_statistics_from_the_bundled_corpus():
    from keras_topomap.datasets import FeatureConfig
    from keras_topomap.sonify import features_to_audio

    pytest.importorskip("soundfile")
    config = FeatureConfig()
    x = np.zeros((50, config.n_features), np.float32)
    x[:, 10:14] = 2.0  # a few loud bands, like an optimal input
    audio = features_to_audio(x, config, n_iter=4)
    assert audio.shape == (49 * config.hop_length,) and np.all(np.isfinite(audio))
    assert np.abs(audio).max() > 0
