"""Tests for TopoMapCallback: maps, files, TensorBoard events, groups, errors."""

import glob
import os
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_topomap import TopographicRegularizer, TopoMapCallback, map_writers, summaries
from keras_topomap import grid as grid_lib
from keras_topomap.metrics import topography_score
from tests.tiny_models import (
    N_FEATURES,
    T_IN,
    reference_maps,
    regression_data,
    two_conv_model,
)


def read_events(log_dir):
    import tensorflow as tf

    found = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                kind = value.metadata.plugin_data.plugin_name
                found.setdefault((kind, value.tag), []).append(
                    (event.step, tf.make_ndarray(value.tensor))
                )
    return found


@pytest.mark.backend
def test_fit_logs_maps_files_and_events(tmp_path):
    model = two_conv_model()
    x, y = regression_data()
    probe = x[:4]
    callback = TopoMapCallback(
        probe, log_dir=tmp_path / "logs", out_dir=tmp_path / "maps", smooth=True
    )
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])

    assert callback.layers_ == ["c1", "c2"]
    assert callback.grids_ == {"c1": (4, 4), "c2": (4, 3)}
    np.testing.assert_array_equal(callback.epochs_, [0, 1])
    assert len(callback.log_seconds_) == len(callback.background_seconds_) == 2
    assert callback.history_["c1"].shape == (2, 4, 4)
    assert callback.history_["c2"].shape == (2, 4, 3)
    assert callback.group_history_ == {}
    # The last map is the probe's map under the trained weights (the state is synced on JAX).
    for name, grid in (("c1", (4, 4)), ("c2", (4, 3))):
        expected, _ = reference_maps(model, name, probe, grid)
        np.testing.assert_allclose(callback.history_[name][-1], expected, rtol=1e-4, atol=1e-6)
        raw = callback.raw_history_[name][-1]
        np.testing.assert_allclose(grid_lib.smooth(raw, 3), callback.history_[name][-1])
    # The maps changed with training (epoch 1 differs from epoch 2).
    assert not np.allclose(callback.history_["c1"][0], callback.history_["c1"][1])

    # Scores and penalties match the kernels at the end, and are in the epoch logs.
    for name in ("c1", "c2"):
        layer = model.get_layer(name)
        kernel = layer.kernel.numpy()
        score = topography_score(kernel, callback.grids_[name])
        assert callback.scores_[name].shape == (2,)
        assert callback.scores_[name][-1] == pytest.approx(score, abs=1e-9)
        assert history.history[f"topo_score/{name}"] == pytest.approx(list(callback.scores_[name]))
        penalty = layer.kernel_regularizer(layer.kernel.value)
        penalty = float(keras.ops.convert_to_numpy(penalty))
        assert callback.penalties_[name][-1] == pytest.approx(penalty, rel=1e-5)

    # Files: one PNG per layer per epoch, the npz history, one GIF per layer.
    import matplotlib.image
    from PIL import Image

    for name in ("c1", "c2"):
        pngs = sorted(os.listdir(tmp_path / "maps" / name))
        assert pngs == ["epoch_001.png", "epoch_002.png"]
        image = matplotlib.image.imread(tmp_path / "maps" / name / "epoch_002.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        with Image.open(tmp_path / "maps" / f"{name}.gif") as gif:
            assert gif.n_frames == 2
    with np.load(tmp_path / "maps" / "topomaps.npz") as saved:
        np.testing.assert_array_equal(saved["epochs"], [0, 1])
        np.testing.assert_allclose(saved["map/c1"], callback.history_["c1"], rtol=1e-6)
        assert saved["map/c1"].dtype == np.float32
        assert saved["raw/c2"].shape == (2, 4, 3)
        np.testing.assert_array_equal(saved["grid/c2"], [4, 3])
        assert saved["topo_score/c2"].shape == (2,)
        assert saved["penalty/c1"].shape == (2,)
        assert list(saved["layers"]) == ["c1", "c2"]

    # TensorBoard: an image per layer per epoch and the two scalars, at steps 0 and 1.
    events = read_events(str(tmp_path / "logs"))
    for name in ("c1", "c2"):
        images = events[("images", f"topomap/{name}")]
        assert [step for step, _ in images] == [0, 1]
        width, height = (int(v) for v in images[0][1][:2])
        assert min(width, height) >= 48  # enlarged from the 4x3 / 4x4 grid
        for tag in (f"topo_score/{name}", f"penalty/{name}"):
            scalars = events[("scalars", tag)]
            assert [step for step, _ in scalars] == [0, 1]
        score_values = [float(v) for _, v in events[("scalars", f"topo_score/{name}")]]
        np.testing.assert_allclose(score_values, callback.scores_[name], rtol=1e-6)


@pytest.mark.backend
def test_group_maps_follow_labels_strides_and_lengths(tmp_path):
    model = two_conv_model()
    x, y = regression_data()
    probe = x[:4]
    rng = np.random.default_rng(3)
    labels = rng.integers(-1, 3, size=(4, T_IN))
    labels[:, :4] = 4  # label 3 never occurs; label 4 does
    lengths = np.array([20, 13, 8, 17])
    names = ["aa", "bb", "cc", "unused", "ee"]
    callback = TopoMapCallback(
        probe, out_dir=tmp_path, groups=labels, group_names=names, probe_lengths=lengths
    )
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])

    np.testing.assert_array_equal(callback.group_labels_, [0, 1, 2, 4])
    assert callback.group_names_ == ["aa", "bb", "cc", "ee"]
    assert callback.group_history_["c1"].shape == (2, 4, 4, 4)
    assert callback.group_history_["c2"].shape == (2, 4, 4, 3)
    # NAPs are differences from the mean over groups: they sum to zero over groups.
    np.testing.assert_allclose(callback.raw_group_history_["c2"].sum(axis=1), 0, atol=1e-5)
    masked_labels = np.where(np.arange(T_IN) < lengths[:, None], labels, -1)
    for name, grid in (("c1", (4, 4)), ("c2", (4, 3))):
        overall, naps = reference_maps(
            model, name, probe, grid, labels=masked_labels, lengths=lengths
        )
        np.testing.assert_allclose(callback.history_[name][-1], overall, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(callback.group_history_[name][-1], naps, rtol=1e-4, atol=1e-6)
    # Group maps are drawn at train end only (the last epoch), unless group_pngs=True.
    assert sorted(os.listdir(tmp_path / "c1")) == [
        "epoch_001.png", "epoch_002.png", "groups_epoch_002.png"
    ]
    assert os.path.exists(tmp_path / "c2.gif") and not os.path.exists(tmp_path / "c2_groups.gif")
    with np.load(tmp_path / "topomaps.npz") as saved:
        assert saved["group_map/c1"].shape == (2, 4, 4, 4)
        assert list(saved["group_names"]) == ["aa", "bb", "cc", "ee"]
        np.testing.assert_array_equal(saved["group_labels"], [0, 1, 2, 4])


def test_group_summaries_in_tensorboard_and_group_pngs_every_epoch(tmp_path):
    model = two_conv_model()
    layer_names = [layer.name for layer in model.layers]
    x, y = regression_data()
    labels = np.tile(np.repeat([0, 1], T_IN // 2), (4, 1))
    callback = TopoMapCallback(
        x[:4], log_dir=tmp_path, out_dir=tmp_path / "maps", groups=labels,
        group_names=["sil", "ah"], layers=["c2"], group_pngs=True, background=False,
    )
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    assert sorted(os.listdir(tmp_path / "maps" / "c2")) == [
        "epoch_001.png", "epoch_002.png", "groups_epoch_001.png", "groups_epoch_002.png"
    ]
    from PIL import Image

    with Image.open(tmp_path / "maps" / "c2_groups.gif") as gif:
        assert gif.n_frames == 2
    events = read_events(str(tmp_path))
    assert [step for step, _ in events[("images", "nap/c2/ah")]] == [0, 1]
    assert [step for step, _ in events[("scalars", "penalty/c2")]] == [0, 1]
    # The probe model (with its penalty read-out) leaves the trained model as it was.
    assert [layer.name for layer in model.layers] == layer_names
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        restored.predict_on_batch(x[:2]), model.predict_on_batch(x[:2]), rtol=1e-6
    )
    assert ("images", "nap/c2/sil") in events and ("images", "nap/c2/ah") in events
    assert ("images", "topomap/c2") in events and ("images", "topomap/c1") not in events


@pytest.mark.backend
def test_dataset_probe_equals_one_batch():
    x, y = regression_data()

    class Probe(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4]

    labels = np.random.default_rng(0).integers(0, 2, size=(8, T_IN))
    model = two_conv_model()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # build and move the weights
    results = []
    for probe, groups in ((Probe(), [labels[:4], labels[4:]]), (x[:8], labels)):
        callback = TopoMapCallback(probe, groups=groups, smooth=False)
        callback.set_model(model)
        callback.set_params({"epochs": 1})
        callback.on_train_begin()
        logs = {}
        callback.on_epoch_end(0, logs)
        assert set(logs) == {"topo_score/c1", "topo_score/c2"}
        results.append(callback)
    a, b = results
    for name in ("c1", "c2"):
        np.testing.assert_allclose(a.history_[name], b.history_[name], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            a.group_history_[name], b.group_history_[name], rtol=1e-5, atol=1e-6
        )


@pytest.mark.backend
def test_sequential_model_without_input_layer():
    # Built by fit from the data (or not at all before on_train_begin, depending on the
    # backend), with the batch size of the training data fixed in its input shape.
    model = keras.Sequential([
        keras.layers.Conv1D(
            16, 3, padding="same", name="seq_conv",
            kernel_regularizer=TopographicRegularizer((4, 4)),
        ),
        keras.layers.Conv1D(2, 1),
    ])
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 12, 5)).astype("float32")
    callback = TopoMapCallback(x[:2], groups=np.tile(np.arange(12) % 3, (2, 1)))
    model.fit(x, np.zeros((8, 12, 2), "float32"), epochs=1, verbose=0, callbacks=[callback])
    assert callback.history_["seq_conv"].shape == (1, 4, 4)
    assert callback.group_history_["seq_conv"].shape == (1, 3, 4, 4)
    assert callback.penalties_["seq_conv"].shape == (1,)


def test_every_unregularized_layer_and_layer_objects():
    model = two_conv_model(regularize_second=False)
    x, y = regression_data()
    callback = TopoMapCallback(
        (x[:4], y[:4]), layers=[model.get_layer("c2"), "out"], grids={"c2": (4, 3), "out": (3, 1)},
        every=2, smooth=False,
    )
    extractors = []
    spy = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: extractors.append(callback._extractor)
    )
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callback, spy])
    # every=2 logs epochs 2 and 3 (the last epoch is always logged).
    np.testing.assert_array_equal(callback.epochs_, [1, 2])
    # One feature extractor for the whole fit, its predict function traced once (train begin).
    assert all(extractor is extractors[0] for extractor in extractors)
    if keras.backend.backend() == "tensorflow":
        assert extractors[0].predict_function.experimental_get_tracing_count() == 1
    assert callback.grids_ == {"c2": (4, 3), "out": (3, 1)}
    assert callback.history_["out"].shape == (2, 3, 1)
    assert callback.penalties_ == {}  # nothing regularized
    assert callback.scores_["c2"].shape == (2,)
    assert "out" not in callback.scores_  # a 3x1 grid has no 3x3 neighbourhood to score
    assert len(history.history["topo_score/c2"]) == 2


def test_without_tensorboard_warns_once_and_writes_files(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails: "not installed"
    monkeypatch.setattr(summaries, "_warned_missing", False)
    x, y = regression_data()
    for run in range(2):
        model = two_conv_model()
        callback = TopoMapCallback(
            x[:4], log_dir=tmp_path / f"logs{run}", out_dir=tmp_path / f"maps{run}"
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[callback])
        messages = [str(w.message) for w in caught if "TopoMapCallback" in str(w.message)]
        assert len(messages) == (1 if run == 0 else 0)
        assert not glob.glob(str(tmp_path / f"logs{run}" / "events*"))
        assert os.path.exists(tmp_path / f"maps{run}" / "c1" / "epoch_001.png")
        assert callback.history_["c1"].shape == (1, 4, 4)


# ----------------------------------------------------------------------------------------------
# Errors


def fit_with(callback, model=None):
    model = model or two_conv_model()
    x, y = regression_data(n=4)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_unknown_layer_lists_available():
    with pytest.raises(ValueError, match=r"no layer named \['nope'\].*Available layers: c1, c2"):
        fit_with(TopoMapCallback(regression_data(4)[0], layers=["c1", "nope"]))


def test_layer_without_grid():
    with pytest.raises(ValueError, match="layer 'out' has no grid.*grids="):
        fit_with(TopoMapCallback(regression_data(4)[0], layers=["out"]))


def test_grid_that_does_not_fit_the_layer():
    with pytest.raises(ValueError, match="grid of layer 'out' holds 4 filters.*3 output"):
        fit_with(TopoMapCallback(regression_data(4)[0], layers=["out"], grids={"out": (2, 2)}))


def test_model_without_regularized_layers():
    model = keras.Sequential([keras.Input((None, N_FEATURES)), keras.layers.Conv1D(4, 3)])
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match="no layer with a TopographicRegularizer"):
        model.fit(
            regression_data(4)[0], np.zeros((4, T_IN - 2, 4)), verbose=0,
            callbacks=[TopoMapCallback(regression_data(4)[0])],
        )


@pytest.mark.parametrize(
    "shape", [(4, T_IN, N_FEATURES + 1), (4, N_FEATURES), (4, T_IN, N_FEATURES, 1)]
)
def test_probe_shape_mismatch_at_train_begin(shape):
    callback = TopoMapCallback(np.zeros(shape, "float32"))
    model = two_conv_model()
    epochs_run = []
    model_callback = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch)
    )
    x, y = regression_data(n=4)
    with pytest.raises(ValueError, match=r"probe does not fit.*Received: probe batch 0 of shape"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback, model_callback])
    assert epochs_run == []  # raised at train begin, before the first epoch


def test_unwritable_out_dir_at_construction(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="cannot write to out_dir.*a_file"):
        TopoMapCallback(regression_data(4)[0], out_dir=blocker / "maps")
    with pytest.raises(ValueError, match="cannot write to log_dir"):
        TopoMapCallback(regression_data(4)[0], log_dir=blocker)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"smooth": "yes"}, "smooth must be True or False"),
        ({"size": 2}, "size must be an odd integer >= 1"),
        ({"every": 0}, "every must be an integer >= 1"),
        ({"fps": float("nan")}, "fps must be a finite number > 0"),
        ({"groups": np.zeros((4, T_IN - 1), int)}, r"probe batch 0: frame labels must have shape"),
        ({"groups": np.zeros((4, T_IN))}, "probe batch 0: frame labels must be integers"),
        ({"groups": -np.ones((4, T_IN), int)}, "no label >= 0"),
        ({"groups": np.full((4, T_IN), 2), "group_names": ["a", "b"]}, "name every label up to 2"),
        ({"group_names": ["a"]}, "group_names was given without groups"),
        ({"probe_lengths": np.array([20, 30, 1, 1])}, r"must lie in \[1, 20\]"),
        ({"layers": []}, "layers is empty"),
        ({"layers": ["c1", "c1"]}, "names a layer twice"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TopoMapCallback(regression_data(4)[0], **kwargs)


def test_groups_lost_by_the_stride_warn_and_too_few_groups_raise():
    probe = regression_data(4)[0]
    labels = np.zeros((4, T_IN), int)
    labels[:, 0::2] = 1  # even frames: the stride-2 layers' frames sit on odd ones only
    with pytest.raises(ValueError, match="at least two groups"):
        with pytest.warns(UserWarning, match="no frame in some watched layers"):
            fit_with(TopoMapCallback(probe, groups=labels))
    labels[:, 1] = 2
    callback = TopoMapCallback(probe, groups=labels, group_names=["x", "even", "first"])
    with pytest.warns(UserWarning, match=r"'even': \['c1', 'c2'\]"):
        fit_with(callback)
    assert callback.group_names_ == ["x", "first"]


def test_group_without_frames_in_one_layer_gets_zero_there():
    """The GroupSums rule: a group with frames in layer 'a' but none in the strided layer 'b'
    keeps its map in 'a', gets 0 in 'b', and is left out of b's baseline."""
    inputs = keras.Input((None, 3))
    a = keras.layers.Conv1D(4, 1, name="a")(inputs)
    b = keras.layers.Conv1D(4, 2, strides=2, name="b")(a)  # frame t sits on input frame 2t
    model = keras.Model(inputs, b)
    x = np.random.default_rng(0).normal(size=(2, 8, 3)).astype("float32")
    labels = np.tile([0, 2, 1, 2, 0, 2, 1, 2], (2, 1))  # group 2 on odd frames only
    callback = TopoMapCallback(x, layers=["a", "b"], grids={"a": (2, 2), "b": (2, 2)},
                               groups=labels, smooth=False)
    callback.set_model(model)
    callback.set_params({"epochs": 1})
    with pytest.warns(UserWarning, match=r"'group_2': \['b'\]"):
        callback.on_train_begin()
    callback.on_epoch_end(0, {})
    assert callback.group_names_ == ["group_0", "group_1", "group_2"]
    for name, step in (("a", 1), ("b", 2)):
        acts = keras.Model(inputs, model.get_layer(name).output).predict_on_batch(x)
        means = {}
        for g in (0, 1, 2):  # plain loops over the frames each layer frame sits on
            frames = [acts[i, t] for i in range(2) for t in range(acts.shape[1])
                      if labels[i, t * step] == g]
            if frames:
                means[g] = np.mean(frames, axis=0)
        base = np.mean(list(means.values()), axis=0)
        expected = [means[g] - base if g in means else np.zeros(4) for g in (0, 1, 2)]
        np.testing.assert_allclose(callback.raw_group_history_[name][0].reshape(3, 4),
                                   expected, rtol=1e-5, atol=1e-6)
    assert not np.any(callback.raw_group_history_["b"][0][2])


def _planted_epoch(epoch, noise_seed):
    """EpochMaps of two layers: "smooth" (a ramp plus a Gaussian bump) and "noise"."""
    rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    smooth = rows / 8 + np.exp(-((rows - 5.0) ** 2 + (cols - 2.0) ** 2) / 5.0) + 0.1 * epoch
    noise = np.random.default_rng(noise_seed).normal(size=(8, 8))
    groups = np.stack([smooth - smooth.mean(), noise])
    raw = {"smooth": smooth, "noise": noise}
    raw_groups = {"smooth": groups, "noise": groups[::-1]}

    def limits(maps):
        return {k: (float(v.min()), float(v.max())) for k, v in maps.items()}

    smoothed = {k: grid_lib.smooth(v) for k, v in raw.items()}
    smoothed_groups = {k: grid_lib.smooth(v) for k, v in raw_groups.items()}
    return map_writers.EpochMaps(
        epoch, ["smooth", "noise"], smoothed, limits(smoothed), smoothed_groups,
        {k: float(np.abs(v).max()) for k, v in smoothed_groups.items()}, ["bump", "hiss"], {},
        {}, raw, limits(raw), raw_groups,
        {k: float(np.abs(v).max()) for k, v in raw_groups.items()},
    )


def test_written_maps_carry_their_verdict_and_the_change_since_the_last_epoch(tmp_path):
    import io

    from PIL import Image

    writers = map_writers.MapWriters(
        str(tmp_path / "logs"), str(tmp_path / "maps"), cmap="viridis",
        interpolation="nearest", image_size=64, fps=2, group_pngs=True, background=False,
        show_smoothed=True,
    )
    writers.open()
    for epoch in range(2):
        writers.write(_planted_epoch(epoch, noise_seed=3), {"epochs": np.arange(epoch + 1)},
                      lambda seconds: None)

    def marks(fig):
        return [t.get_text() for ax in fig.axes for t in ax.texts
                if t.get_gid() == "topography-mark"]

    figures = writers._figures
    smooth, noise = figures[("map", "smooth")]["figure"], figures[("map", "noise")]["figure"]
    assert not any("not topographic" in t for t in marks(smooth))
    assert any("not topographic" in t for t in marks(noise))
    assert all(any(t.startswith("I ") for t in marks(f)) for f in (smooth, noise))
    # the epoch figure shows the raw map (nearest) beside the smoothed one, and the change
    images = figures[("map", "smooth")]["images"]
    assert len(images) == 2 and images[0].get_interpolation() == "nearest"
    np.testing.assert_allclose(images[0].get_array(), _planted_epoch(1, 3).raw_maps["smooth"])
    assert "change since epoch 1: " in smooth.get_suptitle()
    assert "(r = 1.000)" in smooth.get_suptitle()  # the planted map only shifted by 0.1
    groups = marks(figures[("groups", "smooth")]["figure"])
    assert sum("not topographic" in t for t in groups) == 1
    writers.finish(_planted_epoch(1, 3))
    assert sorted(os.listdir(tmp_path / "maps" / "smooth"))[:2] == ["epoch_001.png",
                                                                   "epoch_002.png"]

    # TensorBoard images: the raw map with its verdict in a strip under it; red means
    # "not topographic" (the maps' own colormaps hold no saturated red)
    def red_pixels(summary):
        with Image.open(io.BytesIO(summary[2])) as image:
            rgb = np.asarray(image.convert("RGB")).astype(int)
        return int(((rgb[..., 0] > 150) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())

    events = read_events(str(tmp_path / "logs"))
    for _, summary in events[("images", "topomap/smooth")]:
        assert red_pixels(summary) == 0 and int(summary[1]) == 64 + 24
    for _, summary in events[("images", "topomap/noise")]:
        assert red_pixels(summary) > 100
    assert red_pixels(events[("images", "nap/noise/bump")][0][1]) > 100  # groups swapped
    assert red_pixels(events[("images", "nap/noise/hiss")][0][1]) == 0
