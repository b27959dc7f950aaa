"""Atomic file writes and checked file reads, written once for every module of the package.

A reader (or a later run) must never find a half-written file where a complete one was: each
write goes to a hidden temporary file in the same folder, which is then renamed over the target
with ``os.replace`` (atomic on POSIX and Windows within one file system). A crash leaves either
the old file or the new one, plus at worst a hidden ``.NAME.*.tmp*`` file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os

__all__ = ["replace_atomically", "write_text_atomically", "write_json_atomically",
           "savez_atomically", "json_ready", "load_keras_model", "file_stem"]


@contextlib.contextmanager
def replace_atomically(path):
    """Yields a temporary path beside ``path`` (same suffix, so writers that infer the format
    from it still do); once the block ends without an error, it replaces ``path``.

    Example:

    >>> with replace_atomically("maps/epoch_3.png") as tmp:
    ...     figure.savefig(tmp)
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    suffix = os.path.splitext(name)[1]
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def file_stem(path, extensions=(".npz", ".json")):
    """``path`` without its ``.npz`` or ``.json`` ending: the stem of a saved pair of files
    (``"out/gn.json"`` -> ``"out/gn"``)."""
    path = os.fspath(path)
    for ext in extensions:
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def write_text_atomically(path, text):
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    from pathlib import Path

    with replace_atomically(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json_atomically(path, payload, **kwargs):
    """Writes ``payload`` as JSON (``json.dumps`` keyword arguments pass through) atomically.

    Standard JSON only: a NaN or infinite float raises a ``ValueError`` naming the file
    (``allow_nan=False``) instead of writing ``NaN`` / ``Infinity``, which most JSON readers
    refuse. Pass the payload through :func:`json_ready` to write them as ``null``.
    """
    kwargs.setdefault("allow_nan", False)
    try:
        text = json.dumps(payload, **kwargs)
    except ValueError as e:
        raise ValueError(
            f"Cannot write {os.fspath(path)}: {e} (JSON has no NaN or Infinity)."
        ) from None
    write_text_atomically(path, text)


def json_ready(value):
    """``value`` with NumPy scalars and arrays as Python numbers and lists, tuples as lists,
    and every NaN or infinite float as ``None`` (JSON ``null``).

    Example:

    >>> json_ready({"z": float("inf"), "scores": np.array([0.5, np.nan])})
    {'z': None, 'scores': [0.5, None]}
    """
    import numpy as np

    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def savez_atomically(path, arrays):
    """``numpy.savez(path, **arrays)`` atomically (``path`` is used as given, ``.npz`` or not)."""
    import numpy as np

    with replace_atomically(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_keras_model(path, what="--model", compile=False):
    """``keras.saving.load_model(path)``; a missing, truncated or foreign file raises a
    ``ValueError`` naming ``what`` and the file (Keras raises many kinds, some misleading, such
    as "File not found" for a file that is there but is not a zip archive).

    Args:
        path: the ``.keras`` file.
        what: what the file is, for messages (an option name such as ``"--model"``).
        compile: passed to ``load_model``.
    """
    import zipfile

    import keras

    import keras_topomap  # noqa: F401  (registers the package's serializable objects)

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{what}: no such file. Received: {path!r}")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{what}: {path!r} is not a .keras model file: it is not a zip archive (truncated, "
            "empty or another format)."
        )
    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as e:  # Keras raises many kinds for a truncated or foreign archive
        raise ValueError(
            f"{what}: {path!r} is not a loadable .keras model ({type(e).__name__}: {e})."
        ) from None
