"""Where the bundled data (speech corpus, pretrained models) is found.

The data is not part of the ``keras-topomap`` wheel: it ships in the ``keras-topomap-corpus``
distribution (import package ``keras_topomap_corpus``, built from the ``keras-topomap-corpus/``
folder of the repository), pulled in by the ``corpus`` extra. Everything that reads a bundled
file locates it through :func:`bundled_data_dir`, so that a missing install fails in one place,
with the line that fixes it.

Example:

>>> from keras_topomap.bundled_data import bundled_data_dir
>>> (bundled_data_dir("tts_corpus") / "utterances.jsonl").is_file()
True
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["CORPUS_INSTALL", "CorpusNotInstalledError", "bundled_data_dir"]

#: The command that installs the bundled data.
CORPUS_INSTALL = 'pip install "keras-topomap[corpus]"'


class CorpusNotInstalledError(ImportError):
    """The ``keras-topomap-corpus`` distribution (bundled corpus and models) is not installed."""


def bundled_data_dir(*parts):
    """Path of a folder (or file) of the bundled data, e.g. ``bundled_data_dir("tts_corpus")``.

    Args:
        *parts: path components below the data package's root (``"tts_corpus"``,
            ``"pretrained"``, ``"pretrained", "small.keras"``).

    Raises:
        CorpusNotInstalledError: when ``keras-topomap-corpus`` is not installed; the message
            gives the install command.
    """
    try:
        package = importlib.import_module("keras_topomap_corpus")
    except ImportError as exc:
        what = "/".join(str(p) for p in parts) or "data"
        raise CorpusNotInstalledError(
            f"The bundled {what} is not installed: it ships apart from keras-topomap, in the "
            f"keras-topomap-corpus distribution. Install it with\n\n    {CORPUS_INSTALL}\n\n"
            "(from a checkout of the repository: pip install -e ./keras-topomap-corpus)."
        ) from exc
    return Path(package.data_dir()).joinpath(*(str(p) for p in parts))
