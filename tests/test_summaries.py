"""TensorBoard summaries without TensorFlow: event files TensorBoard reads, and no TensorFlow
log lines under JAX."""

import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_topomap.summaries import SummaryWriter

pytest.importorskip("tensorboard")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(log_dir):
    """{tag: (plugin name, [(step, value array)])} as TensorBoard's own reader sees them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    accumulator = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    found = {}
    for tag in accumulator.Tags()["tensors"]:
        plugin = accumulator.SummaryMetadata(tag).plugin_data.plugin_name
        found[tag] = (plugin, [(e.step, make_ndarray(e.tensor_proto))
                               for e in accumulator.Tensors(tag)])
    return found


def png_size(value):
    from PIL import Image

    with Image.open(io.BytesIO(value[2])) as image:
        image.load()
        return image.size


def test_written_summaries_read_back(tmp_path):
    rgb = np.zeros((5, 7, 3), "uint8")
    rgb[..., 0] = 200
    with SummaryWriter(tmp_path) as writer:
        writer.scalar("loss", 0.25, step=0)
        writer.scalar("loss", 0.125, step=3)
        writer.image("map", rgb, step=3)
    found = load(tmp_path)
    plugin, loss = found["loss"]
    assert plugin == "scalars"
    assert [(step, float(v)) for step, v in loss] == [(0, 0.25), (3, 0.125)]
    plugin, images = found["map"]
    assert plugin == "images" and [step for step, _ in images] == [3]
    value = images[0][1]
    assert (int(value[0]), int(value[1])) == (7, 5) == png_size(value)
    from PIL import Image

    with Image.open(io.BytesIO(value[2])) as image:
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), rgb)
    with pytest.raises(ValueError, match="is closed"):
        writer.scalar("loss", 1.0, step=4)


SCRIPT = textwrap.dedent("""
    import json, sys
    import keras
    import numpy as np
    from keras_topomap import TopographicRegularizer, TopoMapCallback
    from keras_topomap.summaries import EpochSummaries

    out = sys.argv[1]
    # the smallest model with a map: every compiled function costs seconds on JAX
    inputs = keras.Input((None, 3))
    outputs = keras.layers.Conv1D(9, 1, name="c2",
                                  kernel_regularizer=TopographicRegularizer((3, 3)))(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(4, 6, 3)).astype("float32")
    y = np.zeros((4, 6, 9), "float32")
    groups = np.tile([0, 0, 0, 1, 1, 1], (4, 1))
    callbacks = [
        TopoMapCallback(x, log_dir=out, groups=groups, group_names=["sil", "ah"]),
        EpochSummaries(out),
    ]
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, validation_data=(x, y),
              callbacks=callbacks)
    print(json.dumps({"tensorflow_imported": "tensorflow" in sys.modules}))
""")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs jax")
def test_no_tensorflow_log_lines_under_jax(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):
        env.pop(name, None)  # a quiet run must not depend on the caller's settings
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"tensorflow_imported": False}
    noise = [line for line in done.stderr.splitlines()
             if any(word in line.lower() for word in
                    ("tensorflow", "cuinit", "cuda", "onednn", "absl", "cpu_feature_guard"))]
    assert noise == [], done.stderr

    found = load(tmp_path)
    plugin, images = found["topomap/c2"]
    assert plugin == "images" and [step for step, _ in images] == [0]
    width, height = png_size(images[-1][1])
    assert (int(images[-1][1][0]), int(images[-1][1][1])) == (width, height)
    assert min(width, height) >= 48
    assert found["nap/c2/ah"][0] == "images"
    assert found["topo_score/c2"][0] == found["penalty/c2"][0] == "scalars"
    # The epoch logs in keras.callbacks.TensorBoard's layout.
    train, validation = load(tmp_path / "train"), load(tmp_path / "validation")
    assert {"epoch_loss", "epoch_learning_rate"} <= set(train)
    assert [step for step, _ in train["epoch_loss"][1]] == [0]
    assert set(validation) == {"epoch_loss"} and validation["epoch_loss"][0] == "scalars"
