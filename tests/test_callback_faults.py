"""TopoMapCallback's files under collisions, reuse and interruption: layers whose names differ
only in characters a file name cannot hold get their own folders and GIFs, an earlier run's
files left in ``out_dir`` are named in a warning, and a crash between any two writes leaves
each PNG, GIF and ``topomaps.npz`` whole: the old file or the new one, never a partial one."""

import os
import shutil
import warnings
import zlib

import keras
import numpy as np
import pytest
from PIL import Image

from keras_topomap import TopographicRegularizer, TopoMapCallback
from keras_topomap.map_writers import (
    EpochMaps,
    MapWriters,
    layer_file_names,
    layer_name_from_file,
)
from tests.faults import Crash, crash_before_write
from tests.tiny_models import regression_data, two_conv_model

LAYERS = ["a b", "a_b"]
GRID = (3, 3)


def _epoch_maps(epoch, seed, layers):
    rng = np.random.default_rng(seed * 100 + epoch)
    raw = {name: rng.normal(size=GRID) for name in layers}
    limits = {name: (float(m.min()), float(m.max())) for name, m in raw.items()}
    return EpochMaps(epoch, list(layers), raw, limits, {}, {}, [], {}, {}, raw, limits, {}, {})


@pytest.fixture
def fast_pngs(monkeypatch):
    """Figures saved as a tiny PNG of their map's values (drawing one costs ~0.5 s): the
    writers' own steps (buffer, atomic write, GIF frame) stay as they are."""
    import matplotlib.figure

    def savefig(figure, target, **kwargs):
        values = np.asarray(figure.axes[0].images[0].get_array(), dtype=np.float64)
        level = zlib.crc32(values.tobytes() + figure._suptitle.get_text().encode()) % 256
        Image.new("RGB", (4, 4), (level, 255 - level, 0)).save(target, format="PNG")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)


def _write_run(out, n_epochs, seed, layers=LAYERS):
    """What the callback hands its writers over one fit of ``n_epochs`` logged epochs."""
    writers = MapWriters(None, str(out), cmap="viridis", interpolation="nearest", image_size=32,
                         fps=2, group_pngs=False, background=False, n_permutations=9)
    writers.open(layers)
    for epoch in range(n_epochs):
        maps = _epoch_maps(epoch, seed, layers)
        history = {"epochs": np.arange(epoch + 1), "seed": np.array(seed)}
        writers.write(maps, history, lambda seconds: None)
    writers.finish(maps)  # train end (a killed process never gets there)


def _files(folder):
    return {
        os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name),
                                                                "rb").read()
        for root, _, names in os.walk(folder) for name in names
    }


def test_file_names_are_unique_and_reversible():
    names = ["a b", "a_b", "A_B", "conv_1", "x", "x_groups", ".", "..", "é/", "50%"]
    stems = layer_file_names(names)
    assert stems["a b"] == "a%20b" and stems["a_b"] == "a_b" and stems["conv_1"] == "conv_1"
    claims = [c.lower() for s in stems.values() for c in (s, f"{s}.gif", f"{s}_groups.gif")]
    assert len(set(claims)) == len(claims)  # no folder or GIF shared, even ignoring case
    assert all(not s.startswith(".") and "/" not in s for s in stems.values())
    assert [layer_name_from_file(s) for s in stems.values()] == names


def test_colliding_layer_names_get_their_own_folders_and_gifs(tmp_path):
    _write_run(tmp_path, 2, seed=0)
    assert sorted(os.listdir(tmp_path)) == ["a%20b", "a%20b.gif", "a_b", "a_b.gif",
                                            "topomaps.npz"]
    pngs = {name: (tmp_path / layer_file_names(LAYERS)[name] / "epoch_002.png").read_bytes()
            for name in LAYERS}
    assert pngs["a b"] != pngs["a_b"]  # each layer's own map, not one overwriting the other


def test_an_earlier_runs_files_are_named_in_a_warning(tmp_path, fast_pngs):
    _write_run(tmp_path, 3, seed=1)
    with pytest.warns(UserWarning, match=r"holds 2 map files of an earlier run that this run "
                      r"did not write: a%20b/epoch_003\.png, a_b/epoch_003\.png"):
        _write_run(tmp_path, 2, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _write_run(tmp_path / "fresh", 2, seed=2)  # a fresh folder: no warning


def test_a_crash_between_any_two_writes_leaves_whole_files(tmp_path, fast_pngs):
    _write_run(tmp_path / "old", 3, seed=1, layers=["a b"])
    old = _files(tmp_path / "old")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # old epoch_003.png: tested above
        _write_run(tmp_path / "complete", 2, seed=2, layers=["a b"])
        with crash_before_write() as writes:
            shutil.copytree(tmp_path / "old", tmp_path / "probe")
            _write_run(tmp_path / "probe", 2, seed=2, layers=["a b"])
    new = _files(tmp_path / "complete")
    new_writes = [w for w in writes if "probe" in w[1] or w[1] == "?"]
    assert len(new_writes) >= 10, new_writes  # PNGs, npz, GIF: temp file, then rename each
    for n in range(1, len(writes) + 1):
        folder = tmp_path / f"killed{n}"
        shutil.copytree(tmp_path / "old", folder)
        with warnings.catch_warnings(), crash_before_write(n, partial=True), pytest.raises(Crash):
            warnings.simplefilter("ignore", UserWarning)
            _write_run(folder, 2, seed=2, layers=["a b"])
        found = _files(folder)
        assert not [p for p in found if os.path.basename(p).startswith(".")], found
        assert set(found) == set(old) | (set(new) & set(found))
        for path, payload in found.items():
            if path.endswith((".png", ".gif")):
                assert payload in (old.get(path), new.get(path)), (n, path)
                with Image.open(folder / path) as image:
                    image.load()
            else:  # topomaps.npz, rewritten every epoch: the old one or one of the new ones
                with np.load(folder / path) as history:
                    assert (int(history["seed"]), len(history["epochs"])) in ((1, 3), (2, 1),
                                                                              (2, 2))


@pytest.mark.backend
def test_callback_writes_layers_a_b_and_a_underscore_b_apart(tmp_path, backend):
    if backend == "tensorflow":
        pytest.skip("TensorFlow refuses layer names with spaces")
    x = keras.Input((6, 2))
    h = keras.layers.Conv1D(9, 3, padding="same", name="a b",
                            kernel_regularizer=TopographicRegularizer(grid=GRID))(x)
    y = keras.layers.Conv1D(9, 3, padding="same", name="a_b",
                            kernel_regularizer=TopographicRegularizer(grid=GRID))(h)
    model = keras.Model(x, y)
    model.compile("sgd", "mse")
    data = np.random.default_rng(0).normal(size=(4, 6, 2)).astype("float32")
    callback = TopoMapCallback(data, out_dir=tmp_path, background=False)
    model.fit(data, np.zeros((4, 6, 9), "float32"), epochs=2, verbose=0, callbacks=[callback])
    assert sorted(os.listdir(tmp_path / "a%20b")) == ["epoch_001.png", "epoch_002.png"]
    assert sorted(os.listdir(tmp_path / "a_b")) == ["epoch_001.png", "epoch_002.png"]
    for gif in ("a%20b.gif", "a_b.gif"):
        with Image.open(tmp_path / gif) as image:
            assert image.n_frames == 2


class _Diverge(keras.callbacks.Callback):
    """Sets a layer's kernel to NaN at the end of one epoch (a diverged training step)."""

    def __init__(self, layer, epoch):
        super().__init__()
        self.layer, self.epoch = layer, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.get_layer(self.layer).kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


@pytest.mark.backend
def test_non_finite_maps_stop_training_naming_layer_epoch_and_probe(tmp_path):
    model = two_conv_model()
    x, y = regression_data(n=8)
    callback = TopoMapCallback(iter([x[:3], x[3:6]]), out_dir=tmp_path, background=False)
    with pytest.warns(RuntimeWarning, match=r"layer 'c2' is not finite at epoch 2: 12 of 12 "
                      r"filters give NaN or infinite activations on probe batch 0 \(of 2, "
                      r"leading shape \(3, 20.*\); its kernel holds NaN"):
        history = model.fit(x, y, epochs=4, batch_size=8, verbose=0,
                            callbacks=[_Diverge("c2", epoch=1), callback])
    assert len(history.history["loss"]) == 2  # stopped after epoch 2 of 4
    assert "epoch 2" in callback.stop_reason_
    np.testing.assert_array_equal(callback.epochs_, [0])  # nothing of epoch 2 kept
    assert all(np.all(np.isfinite(m)) for m in callback.raw_history_.values())
    assert sorted(os.listdir(tmp_path / "c2")) == ["epoch_001.png"]
    with Image.open(tmp_path / "c2.gif") as gif:  # the GIF of the finite epochs is written
        assert gif.n_frames == 1
    with np.load(tmp_path / "topomaps.npz") as saved:
        np.testing.assert_array_equal(saved["epochs"], [0])
        assert np.all(np.isfinite(saved["raw/c2"]))
