"""Atomic file writes, written once for every module of the package.

A reader (or a later run) must never find a half-written file where a complete one was: each
write goes to a hidden temporary file in the same folder, which is then renamed over the target
with ``os.replace`` (atomic on POSIX and Windows within one file system). A crash leaves either
the old file or the new one, plus at worst a hidden ``.NAME.*.tmp*`` file.
"""

from __future__ import annotations

import contextlib
import json
import os

__all__ = ["replace_atomically", "write_text_atomically", "write_json_atomically",
           "savez_atomically"]


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


def write_text_atomically(path, text):
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    from pathlib import Path

    with replace_atomically(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json_atomically(path, payload, **kwargs):
    """Writes ``payload`` as JSON (``json.dumps`` keyword arguments pass through) atomically."""
    write_text_atomically(path, json.dumps(payload, **kwargs))


def savez_atomically(path, arrays):
    """``numpy.savez(path, **arrays)`` atomically (``path`` is used as given, ``.npz`` or not)."""
    import numpy as np

    with replace_atomically(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
