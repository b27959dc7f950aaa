"""Training: overfitting real utterances, one step per backend, save/load, resume, the CLI."""

import dataclasses
import json
import shutil

import keras
import numpy as np
import pytest

from keras_topomap import ctc, models, train
from keras_topomap.datasets import (
    FeatureConfig,
    FeatureSet,
    SpeechBatches,
    labels_to_text,
    load_tts_corpus,
    text_to_labels,
    unpack_ctc_targets,
)
from keras_topomap.language_model import CharNGramLM
from tests.faults import Crash, crash_before_write

WORDS = "the cat sat on a mat dog ran far away in park".split()


def fake_features(n, seed, prefix, frames_per_char=6, n_features=40):
    """A FeatureSet whose features spell the transcript (one noisy prototype per character)."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(99).normal(size=(29, n_features))
    ids, transcripts, features, frame_labels = [], [], [], []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=rng.integers(2, 4)))
        labels = text_to_labels(text)
        x = np.repeat(prototypes[labels], frames_per_char, axis=0)
        x = x + 0.3 * rng.normal(size=x.shape)
        ids.append(f"{prefix}{i}")
        transcripts.append(text)
        features.append(x.astype("float32"))
        frame_labels.append(np.full(len(x), -1, np.int32))
    return FeatureSet(
        ids, ["fake"] * n, transcripts, features, frame_labels, FeatureConfig(n_mels=n_features)
    )


def fake_data():
    return fake_features(16, 0, "tr"), fake_features(4, 1, "va"), fake_features(4, 2, "te")


FAST = dict(
    config="tiny", batch_size=8, learning_rate=3e-3, verbose=0, n_permutations=5,
    tensorboard=False, pad_to_multiple=128,  # one batch shape: one trace per model
)


@pytest.fixture(scope="module")
def overfit():
    """A tiny model trained on the 4 shortest bundled training utterances until CER < 20 %."""
    keras.utils.set_random_seed(0)
    utterances = sorted(load_tts_corpus("train"), key=lambda u: u.duration)[:4]
    x, packed = SpeechBatches(utterances, batch_size=4, shuffle=False)[0]
    frames, label_lengths, labels = unpack_ctc_targets(packed)
    references = [labels_to_text(row[:n]) for row, n in zip(labels, label_lengths)]
    model = models.wav2letter("tiny", n_features=x.shape[-1])
    model.compile(keras.optimizers.Adam(1e-2), loss=ctc.CTCLoss(stride=2))
    lengths = ctc.output_lengths(frames, 2)
    history = []
    for _ in range(12):  # at most 300 steps; usually done well before
        model.fit(x, packed, epochs=25, batch_size=4, verbose=0, shuffle=False)
        texts = ctc.decode_texts(model.predict_on_batch(x), lengths)
        history.append(ctc.character_error_rate(references, texts))
        if history[-1] < 0.2:
            break
    return model, utterances, x, packed, references, history


def test_tiny_model_overfits_bundled_utterances(overfit):
    _, _, _, _, _, history = overfit
    assert history[0] > 0.4  # it really had to learn
    assert history[-1] < 0.2


def test_save_load_gives_same_transcriptions(overfit, tmp_path):
    model, utterances, x, packed, references, _ = overfit
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: everything is registered
    assert isinstance(loaded.loss, ctc.CTCLoss)
    lengths = ctc.output_lengths(unpack_ctc_targets(packed)[0], 2)
    before = ctc.decode_texts(model.predict_on_batch(x), lengths)
    after = ctc.decode_texts(loaded.predict_on_batch(x), lengths)
    assert after == before
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)
    # transcribe() runs the feature pipeline itself: utterance objects, files and waveforms.
    assert ctc.transcribe(loaded, list(utterances)) == before  # padded like the batch
    first = utterances[0]
    alone = ctc.transcribe(loaded, first)
    assert ctc.transcribe(loaded, first.path) == alone
    assert ctc.transcribe(loaded, first.audio, sample_rate=first.sample_rate) == alone
    assert ctc.character_error_rate(references[0], alone) < 0.35


def test_transcribe_errors(overfit):
    model = overfit[0]
    with pytest.raises(ValueError, match="sample_rate"):
        ctc.transcribe(model, np.zeros(1600, "float32"))
    with pytest.raises(ValueError, match="mono"):
        ctc.transcribe(model, np.zeros((2, 1600), "float32"), sample_rate=16000)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        ctc.transcribe(model, "missing.wav")


@pytest.mark.backend
def test_one_train_step(backend):
    data = fake_features(4, 0, "u", n_features=13)
    batches = SpeechBatches(data, batch_size=4, mode="ctc", pad_to_multiple=8)
    model = models.wav2letter("tiny", n_features=13, dropout=0.1, seed=0)
    model.compile(keras.optimizers.Adam(1e-3), loss=ctc.CTCLoss(stride=2))
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(batches, epochs=1, verbose=0, shuffle=False)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and loss > 0
    assert all(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.backend
def test_saved_model_and_rng_states_replay_dropout(tmp_path):
    # What resuming relies on, per backend: weights, optimizer state and dropout seed states.
    data = fake_features(4, 0, "u", n_features=13)
    x, y = SpeechBatches(data, batch_size=4, shuffle=False)[0]
    model = models.wav2letter("tiny", n_features=13, dropout=0.3, seed=3)
    model.compile(keras.optimizers.Adam(1e-3), loss=ctc.CTCLoss(stride=2))
    model.train_on_batch(x, y)
    model.save(tmp_path / "m.keras")
    states = train.rng_states(model)
    assert sorted(states) == [f"{n}_dropout" for n in sorted(models.layer_grids("tiny"))]
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    train.set_rng_states(loaded, states)
    for _ in range(2):
        assert float(loaded.train_on_batch(x, y)) == pytest.approx(
            float(model.train_on_batch(x, y)), rel=1e-5
        )
    with pytest.raises(ValueError, match="random-seed states"):
        train.set_rng_states(loaded, {"conv_1_dropout": [[1, 0]]})


def test_resume_equals_uninterrupted_run(tmp_path):
    data = fake_data()
    config = train.TrainConfig(**FAST, dropout=0.1, patience=0, epochs=2)
    whole = train.train(config, data=data, out=str(tmp_path / "whole"))
    # Killed during epoch 2's save, after its checkpoint is written and before its state.json
    # is (writes 1 and 2 to state.json are epoch 1's temp file and rename).
    with crash_before_write(3, match="state.json"), pytest.raises(Crash):
        train.train(config, data=data, out=str(tmp_path / "split"))
    shutil.move(tmp_path / "split", tmp_path / "moved")  # a moved run folder resumes too
    keras.utils.set_random_seed(123)  # a fresh process would not share the RNG state
    resumed = train.train(config, data=data, out=str(tmp_path / "moved"), resume=True)
    assert resumed["epochs_done"] == whole["epochs_done"] == 2
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]  # epoch 2 once, from epoch 1
    for a, b in zip(whole["history"], resumed["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["val_cer"] == pytest.approx(b["val_cer"], abs=1e-6)
    first = keras.saving.load_model(tmp_path / "whole" / "checkpoint.keras")
    second = keras.saving.load_model(tmp_path / "moved" / "checkpoint.keras")
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_train_outputs_early_stopping_and_budget(tmp_path):
    data = fake_data()
    results = train.train(
        train.TrainConfig(**FAST, epochs=40, patience=1), data=data, out=str(tmp_path / "a")
    )
    assert results["stopped_by"] == "early stopping" and results["epochs_done"] < 40
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["test"]["cer"] == results["test"]["cer"]
    assert set(saved["topography"]) == set(models.layer_grids("tiny"))
    assert {"score", "z", "null_mean", "null_std", "grid"} <= set(saved["topography"]["conv_1"])
    assert set(saved["penalty"]) == set(models.layer_grids("tiny"))
    assert saved["history"][-1]["epoch"] == results["epochs_done"]
    assert {"loss", "val_cer", "val_wer"} <= set(saved["history"][0])
    best = min(h["val_cer"] for h in saved["history"])
    assert saved["validation"]["cer"] == pytest.approx(best)  # best weights restored
    budget = train.train(
        train.TrainConfig(**FAST, epochs=40, max_minutes=1e-4, topographic=False),
        data=data, out=str(tmp_path / "b"),
    )
    assert budget["stopped_by"] == "time budget" and budget["epochs_done"] == 1
    assert budget["penalty"] == {}


def test_bad_runs_raise_clearly(tmp_path):
    data = fake_data()
    config = train.TrainConfig(**FAST, epochs=1)
    with pytest.raises(ValueError, match="holds no checkpoint"):
        train.train(config, data=data, out=str(tmp_path / "none"), resume=True)
    train.train(config, data=data, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="already holds a training run"):
        train.train(config, data=data, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="strength: saved 0.01, now 0.5"):
        train.train(config, data=data, out=str(tmp_path / "run"), resume=True, strength=0.5)
    # Labels that cannot fit the output: 4 frames per character at stride 2.
    short = fake_features(3, 5, "short", frames_per_char=1)
    with pytest.raises(ValueError, match=r"training set: .*short0: \d+ frames"):
        train.train(config, data=(short, data[1], data[2]), out=str(tmp_path / "short"))
    with pytest.raises(ValueError, match="feature config"):
        other = fake_features(4, 0, "x", n_features=13)
        train.train(config, data=(other, other, other), out=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="Unknown data kind"):
        train.load_data(train.TrainConfig(data="kaldi:/somewhere"))
    with pytest.raises(ValueError, match="epochs"):
        train.TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="Unknown Wav2Letter config"):
        train.TrainConfig(config="huge")


def test_hold_out_sentences_keeps_sentences_together():
    base = fake_features(30, 3, "s")
    rest, held = train.hold_out_sentences(base, 0.3, seed=0)
    assert len(rest) + len(held) == 30 and len(held) > 0
    assert not set(rest.transcripts) & set(held.transcripts)


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    code = train.main([
        "--config", "tiny", "--epochs", "2", "--max-train", "6", "--max-eval", "3",
        "--batch-size", "3", "--n-permutations", "5", "--verbose", "0", "--out", str(out),
        "--seed", "1",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test CER" in printed and "conv_big_1" in printed
    for name in ("model.keras", "best.keras", "checkpoint.keras", "state.json", "config.json"):
        assert (out / name).is_file(), name
    assert any((out / "logs").rglob("*")), "TensorBoard logs"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_done"] == 2 and metrics["test"]["n_utterances"] == 3
    assert 0 <= metrics["test"]["cer"] and metrics["training_seconds"] > 0
    activity = metrics["activity"]["conv_1"]
    assert 0 <= activity["dead_share"] <= 1 and activity["curve"]["distance"][0] == 1
    # the test split decoded again with a character LM of the training transcripts
    lm = metrics["test"]["language_model"]
    assert lm["order"] == 6 and 0 <= lm["cer"] and lm["n_sentences"] == 6
    assert [lm["lm_weight"], lm["length_bonus"], lm["validation_cer"]] in lm["tuning_grid"]
    assert "character LM" in printed
    assert CharNGramLM.load(out / "lm.json").n_sentences_ == 6
    assert train.load_feature_config(out) == FeatureConfig()
    model = keras.saving.load_model(out / "model.keras")
    assert isinstance(ctc.transcribe(model, load_tts_corpus("test")[0]), str)
    # Finished: resuming with more epochs continues from epoch 2.
    assert train.main(["--out", str(out), "--resume", "--epochs", "3", "--config", "tiny",
                       "--max-train", "6", "--max-eval", "3", "--batch-size", "3",
                       "--n-permutations", "5", "--verbose", "0", "--seed", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs_done"] == 3
    # Errors go to stderr with exit code 2, not a traceback.
    assert train.main(["--out", str(out), "--config", "tiny", "--verbose", "0"]) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_best_model_ties_on_cer_go_to_lower_ctc_loss(tmp_path):
    from keras_topomap.train import TrainingCheckpoint

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    state = {"epochs_done": 0, "seconds": 0.0, "history": [], "best": None, "best_epoch": 0}
    checkpoint = TrainingCheckpoint(tmp_path, state)
    checkpoint.set_model(model)
    # a short run that still outputs only blanks: CER 1.0 every epoch, the loss falling
    for epoch, (cer, loss) in enumerate([(1.0, 90.0), (1.0, 80.0), (1.0, 85.0), (0.9, 95.0)]):
        checkpoint.on_epoch_begin(epoch)
        checkpoint.on_epoch_end(epoch, {"val_cer": cer, "val_ctc_loss": loss})
        if epoch == 2:
            assert state["best_epoch"] == 2 and state["best_tiebreak"] == 80.0
    assert state["best_epoch"] == 4 and state["best"] == 0.9  # a lower CER always wins
    assert (tmp_path / "best.keras").is_file()


def test_time_budget_ignores_the_compile_heavy_first_epoch(monkeypatch):
    import time

    from keras_topomap.train import TimeBudget

    clock = {"now": 0.0}
    monkeypatch.setattr(time, "perf_counter", lambda: clock["now"])
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    budget = TimeBudget(seconds=95.0)
    budget.set_model(model)
    # epoch 1 compiles (60 s), later epochs take 10 s: 60 + 10 + 10 + 10 = 90, the next would
    # exceed 95 -> stop after epoch 4 (predicting from epoch 1 would stop after epoch 1)
    for epoch, took in enumerate([60.0, 10.0, 10.0, 10.0]):
        model.stop_training = False
        budget.on_epoch_begin(epoch)
        clock["now"] += took
        budget.on_epoch_end(epoch)
        assert model.stop_training == (epoch == 3), epoch
    assert budget.stopped and budget.used == 90.0


def test_topography_option_picks_the_constraints():
    from keras_topomap import topographic_layers

    assert train.TrainConfig().constraint == "weight"
    assert train.TrainConfig(topographic=False).constraint == "none"
    config = train.TrainConfig(config="tiny", topography="both", activity_strength=0.2)
    assert dataclasses.replace(config, epochs=3).constraint == "both"
    kinds = {i["kind"] for i in topographic_layers(train._build(config, 8, 10)).values()}
    assert kinds == {"both"}
    activity = train._build(train.TrainConfig(config="tiny", topography="activity"), 8, 10)
    assert {i["kind"] for i in topographic_layers(activity).values()} == {"activity"}
    assert train.build_parser().parse_args(["--topography", "activity"]).topography == "activity"
    with pytest.raises(ValueError, match=r"topography must be one of .*Received: topography='x'"):
        train.TrainConfig(topography="x")
    with pytest.raises(ValueError, match=r"topographic=False .*Received: topography='both'"):
        train.TrainConfig(topographic=False, topography="both")
    assert "topography" in train.build_parser().format_help()


def test_norm_augment_and_the_activity_regularizer_train_together(tmp_path):
    """The shipped recipe's options (batch norm, SpecAugment, dropout) with ``--topography
    both``: the padding mask runs through all of them (it was refused before)."""
    config = train.TrainConfig(**FAST, epochs=1, norm="batch", augment=True, dropout=0.1,
                               topography="both", activity_strength=0.2)
    results = train.train(config, data=fake_data(), out=str(tmp_path / "run"))
    assert results["epochs_done"] == 1 and np.isfinite(results["history"][0]["loss"])
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert isinstance(model.get_layer("padding_mask"), keras.layers.Masking)
    assert isinstance(model.get_layer("conv_2"), models.NormConv1D)
    assert model.get_layer("spec_augment").time_masks == config.time_masks
    assert model.get_layer("conv_2").activity_regularizer.strength == 0.2
    args = train.build_parser().parse_args(["--norm", "batch", "--augment", "--topography",
                                            "both"])
    assert (args.norm, args.augment, args.topography) == ("batch", True, "both")
