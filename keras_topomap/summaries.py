"""TensorBoard event files written without TensorFlow.

:class:`~keras_topomap.TopoMapCallback` (through :class:`~keras_topomap.map_writers.MapWriters`)
and ``keras-topomap train`` write their TensorBoard summaries with :class:`SummaryWriter`: the
event and summary protocol buffers of the ``tensorboard`` package, framed as TFRecords, with
the image and scalar plugins' metadata, so TensorBoard shows them exactly as it shows
``tf.summary.image`` / ``tf.summary.scalar``. Only ``tensorboard`` has to be installed; TensorFlow
is never imported for them, so a JAX or PyTorch run prints none of TensorFlow's start-up log lines,
takes none of its start-up time and leaves the accelerators to the training backend.

Example:

```python
import numpy as np
from keras_topomap.summaries import SummaryWriter

with SummaryWriter("runs/demo") as writer:
    writer.scalar("loss", 0.5, step=0)
    writer.image("map", np.zeros((8, 8, 3), "uint8"), step=0)
```
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import struct
import time
import warnings

import keras
import numpy as np

__all__ = ["SummaryWriter", "EpochSummaries", "tensorboard_available"]

# The "no tensorboard" warning is given once per process, not once per callback or epoch.
_warned_missing = False
# Two writers opened in the same second by one process still get two files.
_file_numbers = itertools.count()


def tensorboard_available(what="TensorBoard summaries"):
    """Whether the ``tensorboard`` package can be imported; warns once per process when not.

    Args:
        what: who needs it, named in the warning (e.g. ``"TopoMapCallback"``).

    Returns:
        bool.
    """
    global _warned_missing
    try:
        import tensorboard  # noqa: F401
        from tensorboard.compat.proto import event_pb2  # noqa: F401
    except ImportError:
        if not _warned_missing:
            warnings.warn(
                f"{what}: the tensorboard package is not installed, so no TensorBoard "
                "summaries are written (training and the other outputs go on). "
                "`pip install tensorboard` to get them.",
                stacklevel=3,
            )
            _warned_missing = True
        return False
    return True


class SummaryWriter:
    """Appends TensorBoard summaries to a new event file in ``log_dir``.

    Records are written as they come (the file is flushed by :meth:`flush` and :meth:`close`),
    from one thread at a time. Image summaries are PNGs in the image plugin's tensor format
    (``[width, height, png]`` strings), scalars float32 tensors with the scalar plugin's
    metadata, both at an integer ``step``.

    Args:
        log_dir: the folder (created when missing); TensorBoard reads every
            ``events.out.tfevents.*`` file in it.
        filename_suffix: appended to the event file's name.

    Example:

    ```python
    writer = SummaryWriter("runs/demo")
    writer.scalar("loss", 0.5, step=0)
    writer.close()
    ```
    """

    def __init__(self, log_dir, filename_suffix=""):
        # tensorboard's protobufs and its pure-Python CRC; neither imports TensorFlow.
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
        from tensorboard.plugins.image import metadata as image_plugin
        from tensorboard.plugins.scalar import metadata as scalar_plugin

        self._event_pb2, self._summary_pb2, self._crc = event_pb2, summary_pb2, masked_crc32c
        self._image_metadata = image_plugin.create_summary_metadata(None, None)
        self._scalar_metadata = scalar_plugin.create_summary_metadata(None, None)
        self.log_dir = os.fspath(log_dir)
        os.makedirs(self.log_dir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_file_numbers)}{filename_suffix}")
        self.path = os.path.join(self.log_dir, name)
        self._file = open(self.path, "wb")
        self._write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def scalar(self, tag, value, step):
        """Writes one scalar summary ``tag`` = ``value`` (float) at ``step``."""
        self.write_values(self.scalar_values({tag: value}), step)

    def image(self, tag, image, step):
        """Writes one image summary: ``image`` an RGB uint8 array ``(H, W, 3)`` or PNG bytes."""
        self.write_values([self.image_value(tag, image)], step)

    def image_value(self, tag, image):
        """The summary value of one image (for :meth:`write_values`)."""
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

        if isinstance(image, bytes):
            png = image
            from PIL import Image

            with Image.open(io.BytesIO(png)) as opened:
                width, height = opened.size
        else:
            image = np.asarray(image)
            height, width = image.shape[:2]
            png = encode_png(image)
        shape = tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]
        )
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, tensor_shape=shape,
            string_val=[str(width).encode(), str(height).encode(), png],
        )
        return self._value(tag, tensor, self._image_metadata)

    def scalar_values(self, scalars):
        """Summary values of ``{tag: float}`` (for :meth:`write_values`)."""
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

        return [
            self._value(tag, tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                float_val=[float(value)],
            ), self._scalar_metadata)
            for tag, value in scalars.items()
        ]

    def write_values(self, values, step):
        """Writes summary values (from :meth:`image_value` / :meth:`scalar_values`) as one
        event at ``step``."""
        summary = self._summary_pb2.Summary(value=list(values))
        self._write_event(
            self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        )

    def flush(self):
        """Makes what was written readable by TensorBoard."""
        if self._file is not None:
            self._file.flush()

    def close(self):
        """Flushes and closes the event file (a second call does nothing)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _value(self, tag, tensor, metadata):
        value = self._summary_pb2.Summary.Value(tag=tag, tensor=tensor)
        value.metadata.CopyFrom(metadata)
        return value

    def _write_event(self, event):
        if self._file is None:
            raise ValueError(f"SummaryWriter: the event file {self.path} is closed.")
        # TFRecord framing: length, its masked CRC-32C, the record, its masked CRC-32C.
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", self._crc(header)) + data
                         + struct.pack("<I", self._crc(data)))


def encode_png(image):
    """An RGB (or grey) uint8 array as PNG bytes (fast compression: the images are small)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class EpochSummaries(keras.callbacks.Callback):
    """The epoch logs as TensorBoard scalars, in ``keras.callbacks.TensorBoard``'s layout.

    Training values go to ``log_dir/train`` as ``epoch_<name>`` (with the optimizer's
    ``epoch_learning_rate``), ``val_<name>`` values to ``log_dir/validation`` as
    ``epoch_<name>``, so TensorBoard draws the two as runs of one chart. Step = the epoch index.
    Without the ``tensorboard`` package it warns once and does nothing.

    Args:
        log_dir: the TensorBoard folder.

    Example:

    ```python
    model.fit(x, y, epochs=5, callbacks=[EpochSummaries("runs/logs")])
    ```
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self._writers = {}

    def on_train_begin(self, logs=None):
        self._writers = {}
        if tensorboard_available("EpochSummaries"):
            self._writers = {
                part: SummaryWriter(os.path.join(self.log_dir, part))
                for part in ("train", "validation")
            }

    def on_epoch_end(self, epoch, logs=None):
        if not self._writers:
            return
        train, validation = {}, {}
        for name, value in (logs or {}).items():
            if np.ndim(value) != 0:
                continue
            if name.startswith("val_"):
                validation[f"epoch_{name[4:]}"] = float(value)
            else:
                train[f"epoch_{name}"] = float(value)
        rate = _learning_rate(self.model)
        if rate is not None and "epoch_learning_rate" not in train:
            train["epoch_learning_rate"] = rate
        for part, scalars in (("train", train), ("validation", validation)):
            if scalars:
                writer = self._writers[part]
                writer.write_values(writer.scalar_values(scalars), epoch)
                writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _learning_rate(model):
    """The optimizer's current learning rate (a schedule evaluated at its step), or None."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return None
