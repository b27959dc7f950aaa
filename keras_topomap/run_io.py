"""What ``keras-topomap train``, ``demo`` and ``gradnap`` share: data specs and run folders.

- ``--data`` specs (:func:`parse_data_spec`): ``bundled`` (the bundled corpus, sentence
  hold-out), ``bundled-voice`` (its voice hold-out: the ``train`` and ``test`` splits read
  ``train_voices`` and ``test_voice``), ``tts:DIR`` (a corpus built with
  ``keras-topomap build-corpus``) -- corpora read by split (:func:`is_corpus_spec`,
  :func:`corpus_split`) -- and the reader-based ``librispeech:DIR``, ``timit:DIR``,
  ``textgrid:AUDIO_DIR,TEXTGRID_DIR``, read whole (:func:`read_utterances`);
- a training run folder's JSON files: :func:`read_run_json` (a truncated or malformed file
  raises naming it), :func:`write_run_json` (standard JSON, written atomically) and
  :func:`load_feature_config` (the feature settings in its ``config.json``).

Example:

>>> parse_data_spec("timit:/data/TIMIT")
('timit', '/data/TIMIT')
>>> corpus_split("bundled-voice", "test")
('test_voice', None)
>>> features = load_feature_config("runs/small")     # the run's FeatureConfig
"""

from __future__ import annotations

import json
from pathlib import Path

from keras_topomap._files import json_ready, write_json_atomically

__all__ = [
    "corpus_split",
    "is_corpus_spec",
    "load_feature_config",
    "parse_data_spec",
    "read_run_json",
    "read_utterances",
    "write_run_json",
]

_READERS = {
    "librispeech": "read_librispeech",
    "timit": "read_timit",
    "textgrid": "read_textgrid_corpus",
}
#: The bundled corpus's splits that ``bundled-voice`` reads for ``train`` and ``test``.
_VOICE_SPLITS = {"train": "train_voices", "test": "test_voice"}


def parse_data_spec(spec):
    """``"KIND:PATH"`` -> ``(kind, path)`` for a reader-based ``--data`` value.

    Raises:
        ValueError: not of the form ``KIND:PATH`` or an unknown kind.
    """
    kind, sep, path = str(spec).partition(":")
    if not sep or not path:
        raise ValueError(
            "data must be 'bundled', 'bundled-voice' or KIND:PATH with KIND in "
            f"{['tts', *_READERS]}. Received: {spec!r}"
        )
    if kind not in ("tts", *_READERS):
        raise ValueError(
            f"Unknown data kind {kind!r}; expected one of {['tts', *_READERS]}. Received: {spec!r}"
        )
    return kind, path


def is_corpus_spec(spec):
    """Whether ``--data`` ``spec`` names a phone-aligned corpus read by split (``bundled``,
    ``bundled-voice``, ``tts:DIR``) rather than a reader's folder."""
    return spec in ("bundled", "bundled-voice") or str(spec).startswith("tts:")


def corpus_split(spec, split):
    """``(split, root)`` that ``split`` of a corpus ``spec`` reads with
    :func:`~keras_topomap.datasets.load_tts_corpus`: ``bundled-voice`` maps ``train`` and
    ``test`` to ``train_voices`` and ``test_voice``; ``root`` is None for the bundled corpus,
    ``DIR`` for ``tts:DIR``."""
    root = None if spec in ("bundled", "bundled-voice") else parse_data_spec(spec)[1]
    if spec == "bundled-voice":
        split = _VOICE_SPLITS.get(split, split)
    return split, root


def read_utterances(spec):
    """The utterances of a reader-based ``--data`` value (``librispeech:DIR``, ``timit:DIR``,
    ``textgrid:AUDIO_DIR,TEXTGRID_DIR``, ``tts:DIR``).

    Raises:
        ValueError: a malformed spec, or no utterances found.
    """
    from keras_topomap import datasets

    kind, path = parse_data_spec(spec)
    reader = getattr(datasets, _READERS[kind])
    if kind == "textgrid":
        audio_root, sep, textgrid_root = path.partition(",")
        if not sep:
            raise ValueError(
                "textgrid data needs the audio and the TextGrid folders: "
                f"'textgrid:AUDIO_DIR,TEXTGRID_DIR'. Received: {spec!r}"
            )
        utterances = reader(audio_root, textgrid_root)
    else:
        utterances = reader(path)
    if not utterances:
        raise ValueError(f"No utterances found in {path!r} (data {spec!r}).")
    return utterances


def read_run_json(path, what="training run"):
    """A JSON file of a run folder; a truncated or malformed one raises naming the file."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"Cannot read {path} of the {what}: it is truncated or malformed ({e}). Restore it "
            "or start a new run."
        ) from None
    if not isinstance(payload, dict):
        raise ValueError(f"Cannot read {path} of the {what}: expected a JSON object.")
    return payload


def write_run_json(path, payload):
    """Standard JSON, atomically; a value that is not a finite number is written as null."""
    write_json_atomically(path, json_ready(payload), indent=2)


def load_feature_config(out):
    """The :class:`~keras_topomap.datasets.FeatureConfig` a run in ``out`` was trained with."""
    from keras_topomap.datasets import FeatureConfig

    path = Path(out) / "config.json"
    if not path.is_file():
        raise ValueError(f"No config.json in {out}: not a training run folder.")
    features = read_run_json(path).get("features")
    if not isinstance(features, dict):
        raise ValueError(f"{path} has no 'features' settings: not a training run's config.json.")
    return FeatureConfig.from_dict(features)
