"""TrainingCheckpoint under interruption: killed between any two writes of a save, a run resumes
from one consistent epoch (never a checkpoint of one epoch with the state of another), and damaged
run files are refused naming the file."""

import json
import shutil

import keras
import numpy as np
import pytest

from keras_topomap import train
from tests.faults import Crash, crash_before_write

X = np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3)
Y = np.zeros((4, 2), "float32")


def _run_folder(path, config):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"train": config.to_dict()}))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.1), loss="mse")
    return model, {"epochs_done": 0, "seconds": 0.0, "history": [], "best": None, "best_epoch": 0}


def _epoch(model, out, state, epoch, cer):
    """One "epoch": a training step, then the checkpoint save."""
    checkpoint = train.TrainingCheckpoint(out, state)
    checkpoint.set_model(model)
    checkpoint.on_epoch_begin(epoch)
    model.train_on_batch(X, Y)
    checkpoint.on_epoch_end(epoch, {"val_cer": cer, "val_ctc_loss": 1.0})


def _resume(out, config):
    state = train._check_resume(out, config)
    return state, train._load_checkpoint(out, state)


def _weights(path):
    return keras.saving.load_model(path).get_weights()


def test_killed_at_every_point_of_the_save_resumes_one_consistent_epoch(tmp_path):
    config = train.TrainConfig(config="tiny")
    base = tmp_path / "base"
    model, state = _run_folder(base, config)
    _epoch(model, base, state, 0, cer=0.9)
    after_one = model.get_weights()

    def second_epoch(folder, n=None):
        shutil.copytree(base, folder)
        state, model = _resume(folder, config)
        with crash_before_write(n) as writes:
            _epoch(model, folder, state, 1, cer=0.5)  # a better CER: best.keras changes too
        return writes, model.get_weights()

    writes, after_two = second_epoch(tmp_path / "probe")
    assert len(writes) >= 4, writes  # best, checkpoint, state (temp + rename), renames
    outcomes = []
    for n in range(1, len(writes) + 1):
        folder = tmp_path / f"killed{n}"
        with pytest.raises(Crash):
            second_epoch(folder, n)
        state, model = _resume(folder, config)  # refuses a mixed pair, completes a commit
        expected = after_two if state["epochs_done"] == 2 else after_one
        assert state["epochs_done"] in (1, 2) and len(state["history"]) == state["epochs_done"]
        for got, want in zip(model.get_weights(), expected):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(_weights(folder / "best.keras"), expected):
            np.testing.assert_array_equal(got, want)
        assert state["best_epoch"] == state["epochs_done"]
        assert not list(folder.glob(".*.epoch*.keras"))  # nothing pending after a resume
        outcomes.append(state["epochs_done"])
    assert outcomes[0] == 1 and outcomes[-1] == 2, outcomes  # both sides of the commit reached

    # The issue's case written by hand (or by an older version): epoch 2's checkpoint beside
    # epoch 1's state. Refused, naming both files.
    mixed = tmp_path / "mixed"
    shutil.copytree(base, mixed)
    shutil.copy(tmp_path / "probe" / "checkpoint.keras", mixed / "checkpoint.keras")
    with pytest.raises(ValueError, match=r"checkpoint\.keras holds a model after 2 optimizer "
                       r"steps but .*state\.json records 1 after epoch 1"):
        _resume(mixed, config)


@pytest.mark.parametrize("name", ["state.json", "config.json", "checkpoint.keras"])
def test_truncated_run_files_name_the_file(tmp_path, name):
    config = train.TrainConfig(config="tiny")
    out = tmp_path / "run"
    model, state = _run_folder(out, config)
    _epoch(model, out, state, 0, cer=0.9)
    whole = (out / name).read_bytes()
    (out / name).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=rf"{name}.* (truncated|unreadable)"):
        _resume(out, config)
    if name == "config.json":
        with pytest.raises(ValueError, match=r"config\.json of the training run: it is truncated"):
            train.load_feature_config(out)


def test_run_json_files_are_standard_json(tmp_path):
    from keras_topomap._files import write_json_atomically

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    payload = {"z": float("inf"), "loss": np.float32("nan"), "steps": np.int64(3),
               "history": [{"loss": 1.5, "val_cer": -np.inf}], "grid": (4, 4),
               "curve": np.array([0.5, np.nan])}
    train._write_json(tmp_path / "metrics.json", payload)
    assert json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse) == {
        "z": None, "loss": None, "steps": 3, "history": [{"loss": 1.5, "val_cer": None}],
        "grid": [4, 4], "curve": [0.5, None],
    }
    # Anything else that would write NaN or Infinity is refused, naming the file; the old
    # file stays.
    with pytest.raises(ValueError, match=r"Cannot write .*metrics\.json: Out of range float"):
        write_json_atomically(tmp_path / "metrics.json", {"z": float("nan")})
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 3
