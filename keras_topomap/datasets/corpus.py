"""The utterance type shared by every corpus, and the bundled phone-aligned TTS corpus.

Every reader in :mod:`keras_topomap.datasets` returns a list of :class:`Utterance`: mono float32
audio, its sample rate, the spoken words, and (where the corpus has them) time-aligned phones.
Everything downstream (features, frame labels, batches) only sees this type, so it does not care
which corpus the speech came from.

A small corpus synthesised with Festival's free English voices ships in the separate
``keras-topomap-corpus`` distribution (``pip install "keras-topomap[corpus]"``; its
``tts_corpus/README.md`` gives provenance and licences, and
:mod:`keras_topomap.datasets.build_tts_corpus` is the script that made it). Load it with
:func:`load_tts_corpus`; it needs no network and no Festival.

Example:

>>> from keras_topomap.datasets import load_tts_corpus
>>> train = load_tts_corpus("train")
>>> utt = train[0]
>>> utt.sample_rate, utt.audio.dtype, utt.phones[1].phone, utt.phones[1].folded
(16000, dtype('float32'), 'ay', 'ay')
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from keras_topomap import checks
from keras_topomap.bundled_data import bundled_data_dir
from keras_topomap.datasets import phones as phones_lib
from keras_topomap.datasets.features import text_to_labels

__all__ = [
    "CorpusError",
    "PhoneSegment",
    "Utterance",
    "SPLITS",
    "HELD_OUT_VOICE",
    "load_tts_corpus",
    "clear_tts_corpus_cache",
    "split_ids",
    "tts_corpus_dir",
    "tts_corpus_info",
    "read_audio",
    "check_alignment",
    "check_transcript",
    "confined_path",
    "SkipLog",
]

#: Split names of the bundled corpus (see :func:`load_tts_corpus`).
SPLITS = ("train", "test", "train_voices", "test_voice", "all")

#: The voice the ``"train_voices"`` / ``"test_voice"`` split holds out.
HELD_OUT_VOICE = "ked_diphone"


class CorpusError(ValueError):
    """A problem with one utterance of a corpus; ``reason`` is a short category for counts."""

    def __init__(self, message, reason="bad input"):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class PhoneSegment:
    """One aligned phone: ``[start, end)`` in seconds, its symbol, and the word it belongs to.

    Attributes:
        start: start time in seconds.
        end: end time in seconds (``end >= start``).
        phone: the symbol as the source wrote it, lower-cased (``"ax"``, ``"pau"``, ``"aa1"``).
        word: the word (lower case) this phone is part of, or ``None`` for pauses/silence.
    """

    start: float
    end: float
    phone: str
    word: str | None = None

    @property
    def folded(self):
        """The phone folded to the 39-class set (``None`` for an ignored symbol)."""
        return phones_lib.fold_phone(self.phone)

    @property
    def index(self):
        """Class id of :attr:`folded` in ``0..38``, or ``-1`` for an ignored symbol."""
        return phones_lib.phone_to_index(self.phone)

    @property
    def duration(self):
        return self.end - self.start


@dataclasses.dataclass(frozen=True, eq=False)
class Utterance:
    """One spoken utterance with its words and (optionally) time-aligned phones.

    Attributes:
        id: identifier, unique within its corpus.
        audio: mono waveform, float32 in ``[-1, 1]``, shape ``(n_samples,)``.
        sample_rate: samples per second.
        transcript: the spoken words, lower case, separated by single spaces.
        phones: tuple of :class:`PhoneSegment` in time order (empty when the corpus has no
            alignments, e.g. plain LibriSpeech).
        speaker: speaker (or synthetic voice) name.
        text: the original sentence (may equal ``transcript``).
        path: the audio file it was read from, or ``None``.

    Example:

    >>> import numpy as np
    >>> utt = Utterance("u1", np.zeros(1600, "float32"), 16000, "hi",
    ...                 (PhoneSegment(0.0, 0.05, "hh", "hi"), PhoneSegment(0.05, 0.1, "ay", "hi")),
    ...                 speaker="me")
    >>> utt.duration, [s.folded for s in utt.phones]
    (0.1, ['hh', 'ay'])
    """

    id: str
    audio: np.ndarray
    sample_rate: int
    transcript: str
    phones: tuple = ()
    speaker: str = ""
    text: str = ""
    path: str | None = None

    def __post_init__(self):
        audio = np.asarray(self.audio)
        if audio.ndim != 1:
            raise ValueError(
                f"Utterance {self.id!r}: audio must be mono with shape (n_samples,). "
                f"Received shape: {audio.shape}"
            )
        if audio.dtype != np.float32:
            audio = audio.astype(np.float32)
        object.__setattr__(self, "audio", audio)
        if int(self.sample_rate) <= 0:
            raise ValueError(
                f"Utterance {self.id!r}: sample_rate must be positive. Received: {self.sample_rate}"
            )
        object.__setattr__(self, "sample_rate", int(self.sample_rate))
        object.__setattr__(self, "phones", tuple(self.phones))
        bad = [s for s in self.phones if not isinstance(s, PhoneSegment)]
        if bad:
            raise ValueError(
                f"Utterance {self.id!r}: phones must be PhoneSegment objects. "
                f"Received: {bad[0]!r}"
            )
        # Readers check with file and line first; this catches utterances built by hand (and
        # anything a reader missed), since frame_labels relies on phones in time order.
        check_alignment(self.phones, None, f"utterance {self.id!r}")
        if not self.text:
            object.__setattr__(self, "text", self.transcript)

    @property
    def duration(self):
        """Length of the audio in seconds."""
        return self.audio.shape[0] / self.sample_rate

    @property
    def folded_phones(self):
        """The phone symbols folded to the 39-class set, in order (``None`` for ignored ones).
        Deprecated (nothing uses it): ``[p.folded for p in utterance.phones]``."""
        from keras_topomap import _deprecation

        _deprecation.warn("Utterance.folded_phones", "[p.folded for p in utterance.phones]")
        return [s.folded for s in self.phones]

    def __repr__(self):
        return (
            f"Utterance(id={self.id!r}, speaker={self.speaker!r}, duration={self.duration:.2f}s, "
            f"sample_rate={self.sample_rate}, n_phones={len(self.phones)}, "
            f"transcript={self.transcript!r})"
        )


class SkipLog:
    """Collects what a reader skipped with ``on_error="skip"`` and warns once with the counts."""

    def __init__(self, what, on_error):
        checks.choice(on_error, "on_error", ("raise", "skip"))
        self.what = what
        self.on_error = on_error
        self.reasons = Counter()
        self.first = None

    def fail(self, reason, error):
        """Raise ``error`` (``on_error="raise"``) or record it under ``reason``."""
        if self.on_error == "raise":
            raise error
        self.reasons[reason] += 1
        if self.first is None:
            self.first = str(error)

    def warn(self, n_read):
        if not self.reasons:
            return
        total = sum(self.reasons.values())
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.reasons.items()))
        warnings.warn(
            f"{self.what}: skipped {total} of {total + n_read} utterances ({counts}). "
            f"First problem: {self.first}",
            stacklevel=3,
        )


def read_audio(path, mono=True):
    """Read an audio file as float32 with soundfile; errors name the file.

    Returns:
        ``(audio, sample_rate)`` with ``audio`` of shape ``(n_samples,)``; multi-channel audio is
        averaged to mono.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable, corrupt, or empty.
    """
    import soundfile as sf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Audio file not found: {path}")
    try:
        audio, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise ValueError(
            f"Cannot read audio file {path}: it is unreadable or corrupt. Received error: {exc}"
        ) from exc
    if audio.shape[0] == 0:
        raise ValueError(f"Audio file {path} contains no samples.")
    audio = audio.mean(axis=1) if mono else audio
    return np.ascontiguousarray(audio, dtype=np.float32), int(sample_rate)


def check_transcript(transcript, source):
    """Raise a :class:`CorpusError` naming ``source`` if the transcript is empty."""
    if not transcript or not transcript.strip():
        raise CorpusError(f"Empty transcript in {source}.", reason="empty transcript")


def check_alignment(segments, duration, source, tolerance=0.01, lines=None):
    """Check aligned phones against the audio; raise a :class:`CorpusError` naming ``source``.

    The one alignment check: every reader and :class:`Utterance` itself call it.
    Checks: every symbol is a known phone (:func:`~keras_topomap.datasets.phones.fold_phone`),
    finite times with ``0 <= start <= end``, segments in time order without overlaps, and
    (unless ``duration`` is ``None``) no segment ending more than ``tolerance`` seconds after
    the end of the audio (``duration`` seconds).

    Args:
        segments: :class:`PhoneSegment` objects in the order the source lists them.
        duration: length of the audio in seconds, or ``None`` to skip the end check.
        source: the file (or utterance) the segments came from, for the message.
        tolerance: seconds a segment may end after the audio (rounding of aligners).
        lines: optional line number of each segment in ``source``; without them the message
            names the segment's position.
    """
    previous_end = 0.0
    for i, seg in enumerate(segments):
        where = f"{source}, line {lines[i]}" if lines is not None else f"{source}, segment {i + 1}"
        try:
            phones_lib.fold_phone(seg.phone, source=where)
        except ValueError as e:
            raise CorpusError(str(e), reason="unknown phone") from None
        if not (math.isfinite(seg.start) and math.isfinite(seg.end)
                and 0.0 <= seg.start <= seg.end):
            raise CorpusError(
                f"Bad phone times in {where}: need finite 0 <= start <= end. "
                f"Received: start={seg.start}, end={seg.end}",
                reason="bad times",
            )
        if seg.start < previous_end - 1e-6:
            raise CorpusError(
                f"Phones out of time order or overlapping in {where}: {seg.phone!r} starts at "
                f"{seg.start} s, before the previous phone ends ({previous_end} s).",
                reason="phones out of order",
            )
        previous_end = seg.end
        if duration is not None and seg.end > duration + tolerance:
            raise CorpusError(
                f"Alignment past the end of the audio in {where}: phone {seg.phone!r} ends at "
                f"{seg.end:.3f} s but the audio lasts {duration:.3f} s.",
                reason="alignment past end",
            )


def confined_path(root, relative, source):
    """``root / relative``, refusing a path that leaves ``root`` (absolute, or ``..`` above it).

    The check is on the path as written (symbolic links inside the corpus are the user's
    choice and are followed as usual).

    Raises:
        CorpusError: naming ``source`` (the file and line the path came from).
    """
    text = os.fspath(relative)
    parts = Path(os.path.normpath(text)).parts
    if not text or os.path.isabs(text) or Path(text).drive or (parts and parts[0] == ".."):
        raise CorpusError(
            f"Path outside the corpus in {source}: {text!r} must be relative to and stay "
            f"inside {root}.",
            reason="path outside corpus",
        )
    return Path(root) / os.path.normpath(text)


def tts_corpus_dir():
    """Directory of the bundled corpus (in the installed ``keras-topomap-corpus`` distribution).

    Raises:
        CorpusNotInstalledError: when that distribution is not installed; the message gives
            the install command (``pip install "keras-topomap[corpus]"``).
    """
    return bundled_data_dir("tts_corpus")


def corpus_root(root):
    """The folder of a TTS corpus (``None``: the bundled one), checked to hold one."""
    root = tts_corpus_dir() if root is None else Path(root)
    if not (root / "utterances.jsonl").is_file():
        raise FileNotFoundError(
            f"No corpus found in {root}: expected utterances.jsonl, splits.json and audio/. "
            "Build one with 'keras-topomap build-corpus --out DIR' or omit root= to use the "
            "bundled corpus."
        )
    return root


def _read_json(path):
    """A JSON file of a corpus; a missing or malformed one raises a :class:`CorpusError`."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CorpusError(f"Missing corpus file {path}.", reason="missing file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"Cannot read {path}: {e}", reason="malformed file") from None


def tts_corpus_info(root=None):
    """The corpus manifest (voices, counts, seed, sentence source) as a dict."""
    return _read_json(corpus_root(root) / "manifest.json")


# Fields of one utterances.jsonl record and their JSON types.
_RECORD_FIELDS = {
    "id": str, "voice": str, "text": str, "transcript": str, "audio": str,
    "sample_rate": int, "n_samples": int, "phones": list,
}


def _read_records(root):
    """The records of ``utterances.jsonl``, each with its line number under ``"_line"``."""
    path = root / "utterances.jsonl"
    records = []
    first_line = {}  # id -> the line that first listed it
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"Cannot read {path}: {e}", reason="malformed file") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {line_no}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"Malformed JSON in {where}: {e}", reason="malformed file") from None
        if not isinstance(rec, dict):
            raise CorpusError(
                f"Malformed record in {where}: expected a JSON object. Received: {line[:80]!r}",
                reason="malformed file",
            )
        for key, kind in _RECORD_FIELDS.items():
            if key not in rec:
                raise CorpusError(
                    f"Malformed record in {where}: no {key!r} field.", reason="malformed file"
                )
            if not isinstance(rec[key], kind) or isinstance(rec[key], bool):
                raise CorpusError(
                    f"Malformed record in {where}: {key!r} must be a JSON {kind.__name__}. "
                    f"Received: {rec[key]!r}",
                    reason="malformed file",
                )
        for i, phone in enumerate(rec["phones"]):
            if not (isinstance(phone, list) and len(phone) == 4
                    and all(isinstance(t, (int, float)) and not isinstance(t, bool)
                            for t in phone[:2])
                    and isinstance(phone[2], str) and isinstance(phone[3], (str, type(None)))):
                raise CorpusError(
                    f"Malformed record in {where}: phone {i + 1} must be "
                    f"[start, end, symbol, word or null]. Received: {phone!r}",
                    reason="malformed file",
                )
        if rec["id"] in first_line:
            raise CorpusError(
                f"Repeated utterance id {rec['id']!r} in {where}: line {first_line[rec['id']]} "
                "already lists it. Utterance ids must be unique.",
                reason="malformed file",
            )
        first_line[rec["id"]] = line_no
        rec["_line"] = line_no
        records.append(rec)
    return records


@functools.lru_cache(maxsize=4)
def _load_all(root_str):
    """Decode every utterance of a corpus once per process (audio arrays are read-only)."""
    root = Path(root_str)
    records = _read_records(root)
    listing = root / "utterances.jsonl"
    paths = [
        confined_path(root, rec["audio"], f"{listing}, line {rec['_line']}") for rec in records
    ]

    def decode(index):
        source = f"{listing}, line {records[index]['_line']}"
        try:
            return read_audio(paths[index])
        except FileNotFoundError:
            raise CorpusError(
                f"Missing audio for {source}: expected {paths[index]}", reason="missing audio"
            ) from None
        except ValueError as e:
            raise CorpusError(f"{e} (listed in {source})", reason="unreadable audio") from None

    # libsndfile releases the GIL while decoding, so threads overlap the OGG decoding
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(decode, range(len(records))))
    utterances = {}
    for rec, path, (audio, sample_rate) in zip(records, paths, decoded):
        source = f"{listing}, line {rec['_line']} ({rec['id']})"
        if sample_rate != rec["sample_rate"] or audio.shape[0] != rec["n_samples"]:
            raise CorpusError(
                f"Audio of {source} does not match its record: expected {rec['n_samples']} "
                f"samples at {rec['sample_rate']} Hz. Received: {audio.shape[0]} samples at "
                f"{sample_rate} Hz"
            )
        audio.flags.writeable = False
        segments = tuple(PhoneSegment(float(s), float(e), p, w) for s, e, p, w in rec["phones"])
        check_alignment(segments, audio.shape[0] / sample_rate, source, tolerance=0.1)
        check_transcript(rec["transcript"], source)
        try:  # the corpus format holds transcripts ready for training (a-z, space, ')
            text_to_labels(rec["transcript"], source)
        except ValueError as e:
            raise CorpusError(str(e), reason="bad transcript") from None
        utterances[rec["id"]] = Utterance(
            id=rec["id"],
            audio=audio,
            sample_rate=sample_rate,
            transcript=rec["transcript"],
            phones=segments,
            speaker=rec["voice"],
            text=rec["text"],
            path=str(path),
        )
    splits = _read_splits(root)
    for name, ids in splits.items():
        unknown = [i for i in ids if i not in utterances]
        if unknown:
            raise CorpusError(
                f"Split {name!r} of {root / 'splits.json'} lists {len(unknown)} ids that "
                f"utterances.jsonl does not have, e.g. {unknown[0]!r}.",
                reason="malformed file",
            )
    splits["all"] = list(utterances)
    return utterances, splits


def _read_splits(root):
    path = root / "splits.json"
    splits = _read_json(path)
    if not isinstance(splits, dict) or not all(
        isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in splits.values()
    ):
        raise CorpusError(
            f"Malformed {path}: expected {{split name: [utterance ids]}}.",
            reason="malformed file",
        )
    return splits


def clear_tts_corpus_cache():
    """Free the decoded audio :func:`load_tts_corpus` keeps for reuse (about 200 MB for the
    bundled corpus) once no returned utterance is referenced any more."""
    _load_all.cache_clear()


def split_ids(split="train", root=None):
    """Utterance ids of a split, in :func:`load_tts_corpus` order, without decoding any audio."""
    checks.choice(split, "split", SPLITS)
    root = corpus_root(root)
    if split == "all":
        return [rec["id"] for rec in _read_records(root)]
    splits = _read_splits(root)
    if split not in splits:
        raise CorpusError(
            f"{root / 'splits.json'} has no split {split!r}.", reason="malformed file"
        )
    return list(splits[split])


def load_tts_corpus(split="train", root=None):
    """Load the bundled phone-aligned corpus (or one built with ``keras-topomap build-corpus``).

    Splits:

    * ``"train"`` / ``"test"``: all voices; the test sentences are never spoken in train
      (a sentence-level hold-out, about 10 % of the utterances of every voice).
    * ``"train_voices"`` / ``"test_voice"``: a speaker-level hold-out; ``"test_voice"`` is every
      utterance of :data:`HELD_OUT_VOICE` (``ked_diphone``), ``"train_voices"`` every utterance of
      the other voices. Use it to test generalisation to an unseen voice.
    * ``"all"``: every utterance.

    Args:
        split: one of :data:`SPLITS`.
        root: a corpus directory written by the builder; ``None`` loads the bundled corpus from
            the installed ``keras-topomap-corpus`` distribution (offline, any OS).

    Returns:
        list of :class:`Utterance`, in a fixed order. Audio arrays are shared between calls in
        one process and read-only (:func:`clear_tts_corpus_cache` frees them).

    Raises:
        CorpusNotInstalledError: ``root=None`` and the bundled corpus is not installed; the
            message gives the command: ``pip install "keras-topomap[corpus]"``.

    Example:

    >>> test = load_tts_corpus("test")
    >>> sorted({u.speaker for u in test})
    ['cmu_us_slt_arctic_hts', 'kal_diphone', 'ked_diphone']
    """
    checks.choice(split, "split", SPLITS)
    root = corpus_root(root)
    utterances, splits = _load_all(str(root.resolve()))
    if split not in splits:
        raise CorpusError(
            f"{root / 'splits.json'} has no split {split!r}.", reason="malformed file"
        )
    return [utterances[i] for i in splits[split]]
