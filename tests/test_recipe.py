"""The recognizer recipe's pieces: normalization, SpecAugment, the learning-rate schedule,
bounded batch shapes and the decodings reported by evaluation."""

import keras
import numpy as np
import pytest

from keras_topomap import ctc, models
from keras_topomap.augment import SpecAugment
from keras_topomap.datasets import FeatureConfig, FeatureSet, SpeechBatches
from keras_topomap.datasets.batches import bucket_edges, unpack_ctc_targets
from keras_topomap.schedules import WarmupCosineDecay
from keras_topomap.train import TrainConfig, build_parser, evaluate, learning_rate_of


def _ctc_batch(n=4, frames=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, frames, 40)).astype("float32")
    labels = [rng.integers(1, 29, int(k)) for k in rng.integers(3, 8, n)]
    lengths = rng.integers(frames // 2, frames + 1, n)
    from keras_topomap.datasets import pack_ctc_targets

    return x, pack_ctc_targets(lengths, labels)


# ------------------------------------------------------------------------------ normalization


@pytest.mark.backend
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_norm_option_builds_trains_a_step_and_round_trips(norm, tmp_path):
    model = models.wav2letter("tiny", norm=norm, seed=0)
    conv = model.get_layer("conv_2")
    assert isinstance(conv, models.NormConv1D) and conv.norm == norm
    assert conv.bias is None and conv.kernel_regularizer is not None  # the constraint stays
    assert isinstance(model.get_layer("logits"), keras.layers.Conv1D)
    assert type(model.get_layer("logits")) is keras.layers.Conv1D  # logits never normalized
    x, y = _ctc_batch()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ctc.CTCLoss(stride=2))
    before = [np.array(w) for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(float(np.asarray(loss).reshape(-1)[0]))
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    # The named layer outputs the activation (after the ReLU): no negative values.
    probe = keras.Model(model.input, conv.output)
    assert float(np.min(probe.predict_on_batch(x))) >= 0.0
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-5
    )
    assert loaded.get_layer("conv_2").norm == norm
    assert models.layer_grids(loaded) == models.layer_grids("tiny")


def test_norm_none_is_the_paper_architecture_unchanged():
    plain = models.wav2letter("tiny", seed=0)
    assert all(type(layer) is not models.NormConv1D for layer in plain.layers)
    assert plain.get_layer("conv_1").use_bias and plain.count_params() == 15917
    normed = models.wav2letter("tiny", norm="layer", seed=0)
    assert [layer.name for layer in normed.layers] == [layer.name for layer in plain.layers]
    assert models.receptive_fields(normed)["logits"] == models.receptive_fields(plain)["logits"]
    with pytest.raises(ValueError, match="norm must be one of"):
        models.wav2letter("tiny", norm="group")
    with pytest.raises(ValueError, match="norm must be one of"):
        models.NormConv1D(4, 3, norm=None)


def test_layer_grids_of_an_unconstrained_model_with_dropout():
    model = models.wav2letter("tiny", topographic=False, dropout=0.1, seed=0)
    assert models.layer_grids(model) == models.layer_grids("tiny")


# ------------------------------------------------------------------------------- SpecAugment


@pytest.mark.backend
def test_spec_augment_only_in_training_and_reproducible_under_a_seed():
    x = np.random.default_rng(0).standard_normal((3, 120, 40)).astype("float32") + 5.0

    def masked(seed):
        layer = SpecAugment(freq_masks=2, freq_width=6, time_masks=2, time_width=15, seed=seed)
        return [np.asarray(keras.ops.convert_to_numpy(layer(x, training=True)))
                for _ in range(2)], layer

    (first, second), layer = masked(7)
    np.testing.assert_array_equal(
        np.asarray(keras.ops.convert_to_numpy(layer(x, training=False))), x
    )
    np.testing.assert_array_equal(np.asarray(keras.ops.convert_to_numpy(layer(x))), x)
    again, _ = masked(7)
    np.testing.assert_array_equal(first, again[0])  # same seed, same masks
    np.testing.assert_array_equal(second, again[1])
    assert not np.array_equal(first, second)  # a new draw on every call
    for out in (first, second):
        zero = out == 0.0
        np.testing.assert_array_equal(out[~zero], x[~zero])  # untouched cells unchanged
        assert zero.any()
        for row in zero:
            bands = row.all(axis=0)  # masked features: zero in every frame
            frames = row.all(axis=1)
            assert bands.sum() <= 2 * 6 and frames.sum() <= 2 * 15
            # Every masked cell lies in a masked band or a masked frame span.
            np.testing.assert_array_equal(row, bands[None, :] | frames[:, None])


def test_spec_augment_in_a_model_saves_and_is_pointwise_in_time(tmp_path):
    model = models.wav2letter("tiny", augment={"time_masks": 1, "time_width": 4}, seed=3)
    layer = model.get_layer("spec_augment")
    assert layer.seed == 3 + 64 and layer.time_width == 4
    x = np.ones((1, 40, 40), "float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("spec_augment").get_config() == layer.get_config()
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)
    plain = models.wav2letter("tiny", seed=3)
    assert models.receptive_fields(model)["logits"] == models.receptive_fields(plain)["logits"]
    with pytest.raises(ValueError, match="freq_width"):
        SpecAugment(freq_width=50)(np.zeros((1, 5, 40), "float32"))
    with pytest.raises(ValueError, match="time_masks"):
        SpecAugment(time_masks=-1)


# ---------------------------------------------------------------------------------- schedule


def test_warmup_cosine_values_at_chosen_steps_and_serialization():
    schedule = WarmupCosineDecay(peak=2e-3, warmup_steps=10, decay_steps=100,
                                 final_fraction=0.1)
    values = {s: float(keras.ops.convert_to_numpy(schedule(s))) for s in (0, 5, 10, 60, 110, 500)}
    assert values[0] == 0.0
    np.testing.assert_allclose(values[5], 1e-3, rtol=1e-6)
    np.testing.assert_allclose(values[10], 2e-3, rtol=1e-6)
    np.testing.assert_allclose(values[60], 2e-4 + 0.5 * 1.8e-3, rtol=1e-5)  # half way
    np.testing.assert_allclose(values[110], 2e-4, rtol=1e-5)
    np.testing.assert_allclose(values[500], 2e-4, rtol=1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupCosineDecay)
    assert restored.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="decay_steps"):
        WarmupCosineDecay(1e-3, 0, 0)
    config = TrainConfig(lr_schedule="warmup-cosine", learning_rate=3e-3, epochs=10,
                         warmup_epochs=1.5)
    made = learning_rate_of(config, steps_per_epoch=20)
    assert (made.warmup_steps, made.decay_steps, made.peak) == (30, 170, 3e-3)
    assert learning_rate_of(TrainConfig(), 20) == 1e-3


def test_train_config_and_cli_take_the_recipe_options():
    args = build_parser().parse_args(
        ["--norm", "layer", "--augment", "--lr-schedule", "warmup-cosine", "--time-width", "9",
         "--length-buckets", "4", "--beam-width", "0", "--no-normalize-features"]
    )
    assert (args.norm, args.augment, args.lr_schedule, args.time_width) == (
        "layer", True, "warmup-cosine", 9)
    assert not TrainConfig(normalize_features=False).feature_config().normalize
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="norm"):
        TrainConfig(norm="group")
    with pytest.raises(ValueError, match="length_buckets"):
        TrainConfig(length_buckets=-1)


# ------------------------------------------------------------------------------ batch shapes


def _speech_set(n=300, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(40, 400, n)
    letters = np.array(list("abcdefgh "))
    transcripts = [
        "".join(rng.choice(letters, int(max(3, t // 8 + rng.integers(-3, 4))))).strip() or "a"
        for t in lengths
    ]
    return FeatureSet(
        ids=[f"u{i}" for i in range(n)], speakers=["s"] * n, transcripts=transcripts,
        features=[np.ones((t, 3), "float32") for t in lengths],
        frame_labels=[np.zeros(t, "int32") for t in lengths],
        config=FeatureConfig(n_mels=3),
    )


def _shapes(ds, epochs):
    seen = set()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for index in range(len(ds)):
            x, y = ds[index]
            seen.add((x.shape, y.shape))
    return seen


def test_length_buckets_bound_the_number_of_batch_shapes():
    fs = _speech_set()
    # Rounding time alone: the label axis keeps taking new lengths epoch after epoch.
    free = SpeechBatches(fs, batch_size=16, mode="ctc", pad_to_multiple=32)
    assert len(_shapes(free, 12)) > len(_shapes(free, 2)) > 12
    bucketed = SpeechBatches(fs, batch_size=16, mode="ctc", pad_to_multiple=32,
                             length_buckets=6)
    edges = bucketed.length_buckets
    assert 1 < len(edges) <= 6 and np.all(edges % 32 == 0) and edges[-1] >= fs.lengths.max()
    shapes = _shapes(bucketed, 12)
    batch_sizes = {len(bucketed.batch_indices(i)) for i in range(len(bucketed))}
    assert len(shapes) <= len(edges) * len(batch_sizes)
    assert {s[0][1] for s in shapes} <= set(edges.tolist())
    # Labels are padded, never cut, and the lengths columns are unchanged.
    for index in range(len(bucketed)):
        x, packed = bucketed[index]
        for row, i in zip(packed, bucketed.batch_indices(index)):
            label = fs.labels[i]
            assert row[0] == fs.lengths[i] and row[1] == len(label)
            np.testing.assert_array_equal(row[2 : 2 + len(label)], label)
            assert np.all(row[2 + len(label):] == 0)
    assert bucketed.padding_fraction < 0.35
    explicit = SpeechBatches(fs, batch_size=16, mode="ctc", length_buckets=[100, 500])
    assert {s[0][1] for s in _shapes(explicit, 2)} <= {100, 500}
    assert bucket_edges(np.arange(1, 101), 4, multiple=8).tolist() == [32, 56, 80, 104]
    with pytest.raises(ValueError, match="length_buckets"):
        SpeechBatches(fs, batch_size=16, length_buckets=[0, 10])


# ---------------------------------------------------------------------------------- decoding


def test_evaluate_reports_greedy_and_beam_search():
    model = models.wav2letter("tiny", seed=0)
    batches = [_ctc_batch(seed=s) for s in range(2)]
    result = evaluate(model, batches, strategies=("greedy", "beam_search"), beam_width=4)
    assert result["decoding"] == "greedy" and result["n_utterances"] == 8
    beam = result["beam_search"]
    assert beam["beam_width"] == 4 and 0 <= beam["cer"] and len(beam["examples"]) == 5
    alone = evaluate(model, batches, strategy="beam_search", beam_width=4)
    assert alone["cer"] == beam["cer"] and alone["decoding"] == "beam_search"


def test_evaluate_returns_each_utterances_logits_cut_to_its_frames():
    model = models.wav2letter("tiny", seed=0)
    batches = [_ctc_batch(seed=s) for s in range(2)]
    plain = evaluate(model, batches)
    result, (logits, references) = evaluate(model, batches, return_logits=True)
    assert result == plain and len(logits) == len(references) == 8
    frames, _, _ = unpack_ctc_targets(np.asarray(batches[0][1]))
    full = np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(batches[0][0])))
    for k, n in enumerate(ctc.output_lengths(frames, 2)):
        assert logits[k].shape == (n, full.shape[-1])
        np.testing.assert_allclose(logits[k], full[k, :n], rtol=1e-5, atol=1e-5)
    greedy = [ctc.decode_texts(x[None])[0] for x in logits]
    assert [tuple(pair) for pair in result["examples"]] == list(zip(references, greedy))[:5]


@pytest.mark.backend
def test_spec_augment_trains_through_fit():
    model = models.wav2letter("tiny", augment={"time_width": 6, "freq_width": 5}, norm="layer",
                              seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ctc.CTCLoss(stride=2))
    x, y = _ctc_batch()
    state = model.get_layer("spec_augment").seed_generator.state
    before = np.asarray(keras.ops.convert_to_numpy(state.value)).copy()
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(before, np.asarray(keras.ops.convert_to_numpy(state.value)))
