"""Data files of keras-topomap: the bundled speech corpus and the pretrained models.

This package holds files only; keras-topomap finds them through :func:`data_dir`
(``keras_topomap.datasets.tts_corpus_dir()`` for the corpus, ``keras_topomap.models`` for the
pretrained models). Layout::

    keras_topomap_corpus/
        tts_corpus/     utterances.jsonl, splits.json, manifest.json, audio/<id>.ogg
        pretrained/     <name>/ model.keras, metrics.json, config.json, command.txt, one per model
"""

from pathlib import Path

__version__ = "0.1.0"

#: Sub-folder of :func:`data_dir` holding the phone-aligned TTS corpus.
TTS_CORPUS = "tts_corpus"
#: Sub-folder of :func:`data_dir` holding the pretrained models.
PRETRAINED = "pretrained"


def data_dir():
    """The folder this package's data lives in (inside the installed package)."""
    return Path(__file__).resolve().parent
