"""Training with a moving average of the weights (``TrainConfig.ema_momentum``): the run is
validated, kept and tested with the averages while training goes on from the raw weights."""

import inspect

import keras
import numpy as np
import pytest

from keras_topomap import _keras_internals as internals
from keras_topomap import train
from keras_topomap.training_callbacks import averaged_weights, keep_averaged_weights
from tests.test_train import FAST, fake_data


def _fitted_dense(use_ema):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1, use_ema=use_ema, ema_momentum=0.5), loss="mse")
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    model.fit(x, x[:, :2] * 3.0, batch_size=4, epochs=1, verbose=0)
    # fit ends with the averages in the model; on JAX sharing their buffers, which the next
    # step would donate twice: keep_averaged_weights puts copies there
    assert keep_averaged_weights(model) == use_ema
    return model, x


@pytest.mark.backend
def test_averaged_weights_swaps_the_averages_in_and_the_raw_weights_back():
    model, x = _fitted_dense(use_ema=True)
    # one more step, so that the raw weights and their averages differ
    model.train_on_batch(x[:4], x[:4, :2] * 3.0)
    raw = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    averages = [keras.ops.convert_to_numpy(a)
                for a in internals.moving_averages(model.optimizer)]
    assert not np.allclose(raw[0], averages[0])
    with averaged_weights(model):
        inside = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        predicted = model.predict(x, verbose=0)
    for a, b in zip(inside, averages):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for v, b in zip(model.trainable_variables, raw):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), b, rtol=1e-6)
    expected = x @ averages[0] + averages[1]
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-5)
    # the averages survive the swap (JAX's predict donates the buffers it is given)
    after = [keras.ops.convert_to_numpy(a) for a in internals.moving_averages(model.optimizer)]
    for a, b in zip(after, averages):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(RuntimeError, match="inside"), averaged_weights(model):
        raise RuntimeError("inside")
    for v, b in zip(model.trainable_variables, raw):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), b, rtol=1e-6)


def test_averaged_weights_without_ema_changes_nothing():
    model, _ = _fitted_dense(use_ema=False)
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    assert internals.moving_averages(model.optimizer) is None
    with averaged_weights(model):
        for v, b in zip(model.trainable_variables, before):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), b)


def test_a_run_is_validated_kept_and_resumed_with_the_averages(tmp_path):
    data = fake_data()
    config = train.TrainConfig(**FAST, patience=0, epochs=3, ema_momentum=0.9)
    whole = train.train(config, data=data, out=str(tmp_path / "whole"))
    history = whole["history"]
    best = history[whole["best_epoch"] - 1]
    # the restored best weights are the averaged ones ValidationCER measured
    assert whole["validation"]["cer"] == pytest.approx(best["val_cer"], abs=1e-6)
    # After one epoch, that epoch is the best: best.keras holds the averages that
    # checkpoint.keras keeps in its optimizer state beside the raw weights
    first = train.train(config, data=data, out=str(tmp_path / "split"), epochs=1)
    assert first["best_epoch"] == first["epochs_done"] == 1
    kept = keras.saving.load_model(tmp_path / "split" / "best.keras")
    checkpoint = keras.saving.load_model(tmp_path / "split" / "checkpoint.keras")
    averages = [keras.ops.convert_to_numpy(a)
                for a in internals.moving_averages(checkpoint.optimizer)]
    for v, a in zip(kept.trainable_variables, averages):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), a, rtol=1e-5, atol=1e-7)
    # checkpoint.keras holds the raw weights, from which training goes on
    assert any(not np.allclose(keras.ops.convert_to_numpy(v), a)
               for v, a in zip(checkpoint.trainable_variables, averages))
    resumed = train.train(config, data=data, out=str(tmp_path / "split"), resume=True)
    for a, b in zip(history, resumed["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["val_cer"] == pytest.approx(b["val_cer"], abs=1e-6)


def test_ema_momentum_is_checked_and_reaches_the_optimizer():
    for bad in (0.0, 1.0, 1.5, float("nan"), "0.9"):
        with pytest.raises(ValueError, match="ema_momentum"):
            train.TrainConfig(ema_momentum=bad)
    args = vars(train.build_parser().parse_args(["--ema-momentum", "0.998"]))
    assert args["ema_momentum"] == 0.998
    assert vars(train.build_parser().parse_args([]))["ema_momentum"] is None
    model = train._build(train.TrainConfig(config="tiny", ema_momentum=0.95), 40, 10)
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.95
    assert not train._build(train.TrainConfig(config="tiny"), 40, 10).optimizer.use_ema


def test_the_demo_trains_with_the_average_unless_told_not_to(monkeypatch):
    from keras_topomap import demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: seen.append(kwargs))
    assert demo.main(["--out", "unused"]) == 0
    assert demo.main(["--out", "unused", "--ema-momentum", "0"]) == 0
    assert [s["ema_momentum"] for s in seen] == [0.995, None]
    monkeypatch.undo()
    assert inspect.signature(demo.run_demo).parameters["ema_momentum"].default == 0.995


def test_the_overhead_benchmark_runs(capsys):
    from benchmarks import ema_overhead

    ema_overhead.main(["--config", "tiny", "--rounds", "1", "--steps", "1", "--frames", "64"])
    out = capsys.readouterr().out
    assert "ratio EMA / raw" in out and "swap in and out" in out
