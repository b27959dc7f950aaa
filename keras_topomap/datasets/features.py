"""Acoustic features, frame-level phone labels, and character targets for CTC.

* :class:`FeatureConfig` says what to compute: log-mel (default, 40 bands) or MFCC (13), 25 ms
  window, 10 ms hop, at 16 kHz, normalised per utterance (zero mean, unit variance per feature).
* :func:`extract_features` turns an :class:`~keras_topomap.datasets.Utterance` into a
  ``(T, n_features)`` float32 array with librosa.
* :func:`frame_labels` gives each of those frames the 39-class id of the phone covering the
  frame's centre (``-1`` where no phone does, or where the phone has no class).
* :data:`CHARACTERS`, :func:`text_to_labels` and :func:`labels_to_text` map transcripts to CTC
  targets: index 0 is the CTC blank, then ``a``-``z``, space and apostrophe (29 classes).
* :func:`load_corpus_features` extracts features for the bundled corpus once and caches them on
  disk, keyed by the feature parameters (``$KERAS_TOPOMAP_CACHE``, default
  ``~/.cache/keras_topomap``).

Framing: frames are centred (librosa ``center=True``, zero padding), so frame ``t`` is centred at
``t * hop_length / sample_rate`` seconds and an utterance of ``n`` samples has
``1 + n // hop_length`` frames (:func:`num_frames`).

Example:

>>> from keras_topomap.datasets import FeatureConfig, extract_features, frame_labels
>>> from keras_topomap.datasets import load_tts_corpus
>>> utt = load_tts_corpus("test")[0]
>>> x = extract_features(utt, FeatureConfig())
>>> y = frame_labels(utt, len(x), FeatureConfig())
>>> x.shape[1], x.dtype, y.dtype, len(x) == len(y)
(40, dtype('float32'), dtype('int32'), True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np

from keras_topomap import checks
from keras_topomap.datasets import phones as phones_lib

__all__ = [
    "FeatureConfig",
    "FeatureSet",
    "BLANK",
    "CHARACTERS",
    "num_frames",
    "extract_features",
    "frame_labels",
    "normalize_text",
    "text_to_labels",
    "labels_to_text",
    "cache_dir",
    "load_corpus_features",
]

#: Feature-code version: bump when extraction changes so stale caches are not reused.
_FEATURE_VERSION = 1

#: The CTC blank symbol (index 0 of :data:`CHARACTERS`).
BLANK = "<blank>"

#: CTC output classes: index 0 is the blank, then ``a``-``z``, space, apostrophe (29 in all).
CHARACTERS = (BLANK, *"abcdefghijklmnopqrstuvwxyz", " ", "'")

_CHAR_INDEX = {c: i for i, c in enumerate(CHARACTERS) if i > 0}
_DROP_PUNCTUATION = re.compile(r"[.,;:!?\"()\[\]{}]")
_TO_SPACE = re.compile(r"[-_/\s]+")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """What features to compute. Hashable, so it can key caches.

    Args:
        kind: ``"logmel"`` (log mel-band energies, ``n_mels`` features) or ``"mfcc"``
            (``n_mfcc`` cepstral coefficients computed from the ``n_mels`` log-mel bands).
        n_mels: number of mel bands.
        n_mfcc: number of MFCCs (only for ``kind="mfcc"``).
        win_ms: analysis window length in milliseconds (Hann window).
        hop_ms: hop between frames in milliseconds.
        sample_rate: audio is resampled to this rate first if needed.
        normalize: standardise every feature over the utterance's frames (zero mean, unit
            variance), which removes loudness and channel differences between utterances.

    Example:

    >>> cfg = FeatureConfig(kind="mfcc")
    >>> cfg.n_features, cfg.win_length, cfg.hop_length, cfg.n_fft
    (13, 400, 160, 512)
    >>> FeatureConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    kind: str = "logmel"
    n_mels: int = 40
    n_mfcc: int = 13
    win_ms: float = 25.0
    hop_ms: float = 10.0
    sample_rate: int = 16000
    normalize: bool = True

    def __post_init__(self):
        checks.choice(self.kind, "kind", ("logmel", "mfcc"), owner="FeatureConfig")
        for name in ("n_mels", "n_mfcc", "sample_rate"):
            checks.positive_int(getattr(self, name), name, owner="FeatureConfig")
        if self.kind == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(
                f"FeatureConfig: n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})."
            )
        for name in ("win_ms", "hop_ms"):
            checks.positive_number(getattr(self, name), name, owner="FeatureConfig")
        if self.hop_length < 1 or self.win_length < 2:
            raise ValueError(
                f"FeatureConfig: win_ms={self.win_ms} / hop_ms={self.hop_ms} are too short for "
                f"sample_rate={self.sample_rate}."
            )

    @property
    def win_length(self):
        """Window length in samples."""
        return int(round(self.win_ms * self.sample_rate / 1000))

    @property
    def hop_length(self):
        """Hop length in samples."""
        return int(round(self.hop_ms * self.sample_rate / 1000))

    @property
    def n_fft(self):
        """FFT size: the next power of two at or above the window length."""
        return 1 << (self.win_length - 1).bit_length()

    @property
    def n_features(self):
        return self.n_mels if self.kind == "logmel" else self.n_mfcc

    def stft_params(self):
        """The STFT framing as librosa keyword arguments (``stft``, ``griffinlim``, ...).

        One definition for extraction and for inversion back to audio
        (:mod:`keras_topomap.sonify`), so the two always frame the signal the same way.
        """
        return {
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "win_length": self.win_length,
            "window": "hann",
            "center": True,
            "pad_mode": "constant",
        }

    @property
    def frame_rate(self):
        """Frames per second. Deprecated (nothing uses it): ``sample_rate / hop_length``."""
        from keras_topomap import _deprecation

        _deprecation.warn("FeatureConfig.frame_rate", "sample_rate / hop_length")
        return self.sample_rate / self.hop_length

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config):
        return cls(**config)

    def cache_key(self):
        """A short stable digest of the parameters (and the extraction code version)."""
        payload = json.dumps({**self.to_dict(), "version": _FEATURE_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def num_frames(n_samples, config):
    """Number of feature frames for ``n_samples`` samples at ``config.sample_rate``."""
    return 1 + int(n_samples) // config.hop_length


def _check_config(config):
    if config is None:
        return FeatureConfig()
    if not isinstance(config, FeatureConfig):
        raise TypeError(f"Expected a FeatureConfig. Received: {type(config).__name__}")
    return config


def _resampled(utterance, config):
    audio = utterance.audio
    if utterance.sample_rate != config.sample_rate:
        import librosa

        audio = librosa.resample(
            audio, orig_sr=utterance.sample_rate, target_sr=config.sample_rate
        ).astype(np.float32)
    return audio


@functools.lru_cache(maxsize=16)
def _mel_basis(sample_rate, n_fft, n_mels):
    import librosa

    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    basis.flags.writeable = False
    return basis


def extract_features(utterance, config=None):
    """Log-mel or MFCC features of one utterance.

    Args:
        utterance: an :class:`~keras_topomap.datasets.Utterance`.
        config: a :class:`FeatureConfig` (default: 40 log-mel bands, 25 ms / 10 ms).

    Returns:
        float32 array ``(T, config.n_features)`` with ``T = num_frames(n_samples, config)``
        (after resampling to ``config.sample_rate``).

    Log energies are in dB, floored 80 dB below the utterance's loudest bin so digital silence
    (exact zeros, common in synthetic speech) gives finite values.
    """
    config = _check_config(config)
    audio = _resampled(utterance, config)
    if audio.shape[0] == 0:
        raise ValueError(f"Utterance {utterance.id!r} has no audio samples.")
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"Utterance {utterance.id!r}: audio contains NaN or infinite samples.")
    with _single_threaded_blas():
        return _extract(audio, config)


def _extract(audio, config):
    import librosa

    spectrum = librosa.stft(audio, **config.stft_params())
    power = spectrum.real**2 + spectrum.imag**2
    # librosa.feature.melspectrogram rebuilds the filterbank on every call and projects with
    # einsum; a cached filterbank and one matmul is several times faster over a corpus.
    mel = _mel_basis(config.sample_rate, config.n_fft, config.n_mels) @ power
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0)
    if config.kind == "mfcc":
        feats = librosa.feature.mfcc(S=log_mel, n_mfcc=config.n_mfcc)
    else:
        feats = log_mel
    feats = feats.T.astype(np.float32)  # (T, F)
    if config.normalize:
        mean = feats.mean(axis=0, keepdims=True)
        std = feats.std(axis=0, keepdims=True)
        feats = (feats - mean) / np.maximum(std, 1e-5)
    return np.ascontiguousarray(feats, dtype=np.float32)


def frame_labels(utterance, n_frames=None, config=None):
    """39-class phone id of the phone covering each frame's centre, ``-1`` where none does.

    Args:
        utterance: an :class:`~keras_topomap.datasets.Utterance` with aligned phones.
        n_frames: number of frames (normally ``len(extract_features(utterance, config))``);
            default :func:`num_frames` of the utterance.
        config: the :class:`FeatureConfig` the frames come from (hop length and rate).

    Returns:
        int32 array ``(n_frames,)`` of class ids into
        :data:`~keras_topomap.datasets.phones.PHONES_39`. Frames outside every phone, and frames
        of symbols without a class (``q``, ``spn``), are ``-1``.
    """
    config = _check_config(config)
    if n_frames is None:
        n_frames = num_frames(round(utterance.duration * config.sample_rate), config)
    n_frames = int(n_frames)
    labels = np.full(n_frames, -1, dtype=np.int32)
    if not utterance.phones or n_frames == 0:
        return labels
    starts = np.array([s.start for s in utterance.phones], dtype=np.float64)
    ends = np.array([s.end for s in utterance.phones], dtype=np.float64)
    ids = np.array(
        [
            phones_lib.phone_to_index(s.phone, source=f"utterance {utterance.id!r}")
            for s in utterance.phones
        ],
        dtype=np.int32,
    )
    centers = np.arange(n_frames) * (config.hop_length / config.sample_rate)
    # The segment covering a centre is the first one that ends after it (segments are in order).
    seg = np.searchsorted(ends, centers, side="right")
    inside = seg < len(ends)
    seg = np.minimum(seg, len(ends) - 1)
    inside &= starts[seg] <= centers
    labels[inside] = ids[seg[inside]]
    return labels


def normalize_text(text):
    """The documented rule that makes free text fit :data:`CHARACTERS`.

    Lower-cases, turns hyphens, underscores, slashes and runs of whitespace into single spaces,
    drops the punctuation ``. , ; : ! ? " ( ) [ ] { }``, and strips the ends. Other characters
    (digits, accented letters, ...) are left in place, so :func:`text_to_labels` still rejects
    them: spell numbers out, transliterate letters first.

    Example:

    >>> normalize_text('"Well-known," she said.')
    'well known she said'
    """
    text = _DROP_PUNCTUATION.sub("", text.lower())
    return _TO_SPACE.sub(" ", text).strip()


def text_to_labels(text, source=None):
    """Character ids (1..28) of a transcript for CTC; the blank (0) never appears.

    The text is lower-cased; every other character must be one of :data:`CHARACTERS`
    (``a``-``z``, space, apostrophe). Use :func:`normalize_text` first for free text.

    Raises:
        ValueError: for an empty text or any other character, naming ``source``, the character
            and its position.

    Example:

    >>> text_to_labels("it's a")
    array([ 9, 20, 28, 19, 27,  1], dtype=int32)
    """
    lowered = text.lower()
    where = f" in {source}" if source else ""
    if not lowered.strip():
        raise ValueError(f"Empty transcript{where}. Received: {text!r}")
    try:
        return np.array([_CHAR_INDEX[c] for c in lowered], dtype=np.int32)
    except KeyError:
        pos = next(i for i, c in enumerate(lowered) if c not in _CHAR_INDEX)
        raise ValueError(
            f"Transcript{where} has a character outside a-z, space and apostrophe: "
            f"{text[pos]!r} at position {pos}. Normalise it first (normalize_text) or spell it "
            f"out. Received: {text!r}"
        ) from None


def labels_to_text(ids):
    """Inverse of :func:`text_to_labels`; blanks (0) and negative padding are skipped.

    It does not merge repeated labels: collapse a CTC path before calling it.

    Example:

    >>> labels_to_text([9, 20, 0, 28, 19])
    "it's"
    """
    ids = np.asarray(ids).reshape(-1)
    if np.any(ids >= len(CHARACTERS)):
        raise ValueError(
            f"Character ids must be < {len(CHARACTERS)}. Received: {ids[ids >= len(CHARACTERS)]}"
        )
    return "".join(CHARACTERS[i] for i in ids.tolist() if i > 0)


def cache_dir():
    """Directory for cached features: ``$KERAS_TOPOMAP_CACHE`` or ``~/.cache/keras_topomap``."""
    return Path(os.environ.get("KERAS_TOPOMAP_CACHE") or Path.home() / ".cache" / "keras_topomap")


@functools.lru_cache(maxsize=1)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: scikit-learn (a librosa dependency) brings it
        return None
    return ThreadpoolController()  # inspecting the loaded libraries is slow: do it once


def _single_threaded_blas():
    """Limit BLAS to one thread while extracting features.

    The per-utterance matrices are small; multi-threaded OpenBLAS spends its time synchronising
    (several times slower per utterance on busy cores; ``docs/benchmarks.md``).
    """
    controller = _blas_controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


@dataclasses.dataclass
class FeatureSet:
    """Features, frame labels and character targets of a list of utterances.

    Attributes:
        ids, speakers, transcripts: per utterance.
        features: list of float32 ``(T_i, F)`` arrays.
        frame_labels: list of int32 ``(T_i,)`` arrays (:func:`frame_labels`).
        config: the :class:`FeatureConfig` used.
    """

    ids: list
    speakers: list
    transcripts: list
    features: list
    frame_labels: list
    config: FeatureConfig

    def __len__(self):
        return len(self.ids)

    @property
    def labels(self):
        """Character targets of each transcript (:func:`text_to_labels`)."""
        return [
            text_to_labels(t, source=f"utterance {i!r}") for i, t in zip(self.ids, self.transcripts)
        ]

    @property
    def lengths(self):
        return np.array([len(f) for f in self.features], dtype=np.int64)

    @classmethod
    def from_utterances(cls, utterances, config=None, progress=False):
        """Extract features and frame labels for every utterance (no cache)."""
        config = _check_config(config)
        utterances = list(utterances)
        bar = None
        if progress and utterances:
            import keras

            bar = keras.utils.Progbar(len(utterances), unit_name="utterance")
        feats, labels = [], []
        for i, utt in enumerate(utterances):
            x = extract_features(utt, config)
            feats.append(x)
            labels.append(frame_labels(utt, len(x), config))
            if bar is not None and ((i + 1) % 50 == 0 or i + 1 == len(utterances)):
                bar.update(i + 1)
        return cls(
            ids=[u.id for u in utterances],
            speakers=[u.speaker for u in utterances],
            transcripts=[u.transcript for u in utterances],
            features=feats,
            frame_labels=labels,
            config=config,
        )

    def subset(self, ids):
        """The entries for ``ids`` (in that order)."""
        where = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in where]
        if missing:
            raise KeyError(f"FeatureSet has no utterances {missing[:5]} ({len(missing)} missing).")
        pick = [where[i] for i in ids]
        return FeatureSet(
            ids=[self.ids[k] for k in pick],
            speakers=[self.speakers[k] for k in pick],
            transcripts=[self.transcripts[k] for k in pick],
            features=[self.features[k] for k in pick],
            frame_labels=[self.frame_labels[k] for k in pick],
            config=self.config,
        )

    def save(self, path):
        """Write to one uncompressed ``.npz`` (fast to load)."""
        lengths = self.lengths
        n_features = self.config.n_features
        np.savez(
            path,
            ids=np.array(self.ids),
            speakers=np.array(self.speakers),
            transcripts=np.array(self.transcripts),
            lengths=lengths,
            features=np.concatenate(self.features)
            if self.features
            else np.zeros((0, n_features), np.float32),
            frame_labels=np.concatenate(self.frame_labels)
            if self.frame_labels
            else np.zeros(0, np.int32),
            config=np.array(json.dumps(self.config.to_dict())),
        )

    @classmethod
    def load(cls, path):
        """Read a file :meth:`save` wrote.

        Raises:
            ValueError: naming the file, when it is truncated, not an ``.npz``, lacks an array
                or holds arrays that disagree in length.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                config = FeatureConfig.from_dict(json.loads(str(data["config"])))
                lengths = data["lengths"]
                ids = data["ids"].tolist()
                features = data["features"]
                labels = data["frame_labels"].astype(np.int32)
                speakers = data["speakers"].tolist()
                transcripts = data["transcripts"].tolist()
        except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
            raise ValueError(
                f"Cannot read the feature file {path}: {type(e).__name__}: {e}"
            ) from None
        total = int(lengths.sum()) if lengths.size else 0
        if not (len(ids) == len(speakers) == len(transcripts) == len(lengths)) or not (
            total == len(features) == len(labels)
        ):
            raise ValueError(
                f"Inconsistent feature file {path}: {len(ids)} ids, {len(lengths)} lengths "
                f"summing to {total}, {len(features)} feature rows, {len(labels)} labels."
            )
        splits = np.cumsum(lengths)[:-1]
        return cls(
            ids=ids,
            speakers=speakers,
            transcripts=transcripts,
            features=np.split(features, splits),
            frame_labels=np.split(labels, splits),
            config=config,
        )


def _corpus_fingerprint(root):
    digest = hashlib.sha256()
    for name in ("utterances.jsonl", "splits.json"):
        digest.update((Path(root) / name).read_bytes())
    return digest.hexdigest()[:12]


def load_corpus_features(split="train", config=None, root=None, cache=True, progress=True):
    """Features of the bundled corpus (or a built one), cached on disk per feature config.

    The first call extracts features for every utterance of the corpus and writes
    ``<cache_dir()>/features/<corpus digest>-<config digest>.npz``; later calls (any split) load
    that file. The key covers the corpus contents, the :class:`FeatureConfig` and the extraction
    code version, so a changed parameter never reuses stale features.

    Args:
        split: a split of :func:`~keras_topomap.datasets.load_tts_corpus`.
        config: a :class:`FeatureConfig`.
        root: corpus directory (``None``: the bundled corpus).
        cache: set False to extract without reading or writing the cache.
        progress: show a progress bar while extracting.

    Returns:
        a :class:`FeatureSet` in the order of ``load_tts_corpus(split)``.
    """
    from keras_topomap.datasets.corpus import corpus_root as checked_root
    from keras_topomap.datasets.corpus import load_tts_corpus, split_ids

    config = _check_config(config)
    corpus_root = checked_root(root)
    wanted = split_ids(split, root=corpus_root)  # no audio decoding on a cache hit
    if not cache:
        return FeatureSet.from_utterances(
            load_tts_corpus(split, root=corpus_root), config, progress
        )
    path = cache_dir() / "features" / f"{_corpus_fingerprint(corpus_root)}-{config.cache_key()}.npz"
    if path.is_file():
        try:
            return FeatureSet.load(path).subset(wanted)
        except (ValueError, KeyError) as e:  # a damaged or partial cache file is rebuilt below
            warnings.warn(f"Rebuilding the feature cache: {e}", stacklevel=2)
    everything = FeatureSet.from_utterances(
        load_tts_corpus("all", root=corpus_root), config, progress
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    everything.save(tmp)
    os.replace(tmp, path)  # atomic: concurrent readers never see a half-written file
    return everything.subset(wanted)
