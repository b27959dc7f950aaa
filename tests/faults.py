"""Fault injection for the tests: stop a save between any two of its writes.

:func:`crash_before_write` counts every file write made through the functions the package
writes with (``os.replace``, ``Path.write_text`` / ``write_bytes``, ``Model.save``,
``numpy.savez``, matplotlib's ``savefig``, PIL's ``Image.save``) and raises :class:`Crash`
instead of performing the ``n``-th one. Running a save once per ``n`` (until no crash happens)
reaches every point between its writes, which is what a ``kill -9`` at a random moment can do,
but deterministically.

Example::

    for n in itertools.count(1):
        with crash_before_write(n) as writes:
            try:
                save_everything()
            except Crash:
                check_what_a_reader_sees_now()
                continue
        break  # the save completed with n - 1 writes
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import keras
import numpy as np


class Crash(BaseException):
    """A simulated kill. Not an ``Exception``, so no ``except Exception`` in the package stops it
    (``finally`` blocks still run, which a real kill would skip; nothing here relies on them)."""


def _target(name, args):
    # The file a write goes to: the destination of os.replace, the Path itself, or the first
    # path argument.
    if name == "replace":
        return os.fspath(args[1])
    for arg in args:
        if isinstance(arg, (str, os.PathLike)):
            return os.fspath(arg)
    return "?"


_WRITERS = [
    (os, "replace"),
    (Path, "write_text"),
    (Path, "write_bytes"),
    (keras.Model, "save"),
    (np, "savez"),
    (np, "savez_compressed"),
]


@contextlib.contextmanager
def crash_before_write(n=None, match=None, partial=False):
    """Raise :class:`Crash` instead of the ``n``-th write whose target contains ``match``.

    Args:
        n: 1-based count of the write to stop at; ``None`` only records the writes.
        match: count only writes whose target path contains this string (``None``: all).
        partial: a stopped ``write_bytes`` / ``write_text`` first writes the first half of its
            data to its target (a kill in the middle of the write), then raises.

    Yields:
        the list of ``(function name, target)`` of the writes made (and the one stopped).
    """
    import matplotlib.figure
    import PIL.Image

    writers = [*_WRITERS, (matplotlib.figure.Figure, "savefig"), (PIL.Image.Image, "save")]
    writes = []
    originals = [(owner, name, getattr(owner, name)) for owner, name in writers]

    def wrap(name, original):
        def write(*args, **kwargs):
            target = _target(name, args)
            if match is None or match in target:
                writes.append((name, target))
                if n is not None and len(writes) == n:
                    if partial and name in ("write_bytes", "write_text"):
                        data = args[1] if len(args) > 1 else kwargs["data"]
                        original(args[0], data[: len(data) // 2], *args[2:], **kwargs)
                    raise Crash(f"simulated kill before write {n}: {name} -> {target}")
            return original(*args, **kwargs)

        return write

    try:
        for owner, name, original in originals:
            setattr(owner, name, wrap(name, original))
        yield writes
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
