"""Readers for corpora users bring: LibriSpeech, TIMIT, and Montreal Forced Aligner TextGrids.

All readers return a list of :class:`~keras_topomap.datasets.Utterance`, the same type
:func:`~keras_topomap.datasets.load_tts_corpus` returns, so features, labels and batches work the
same on every corpus.

* :func:`read_librispeech`: the LibriSpeech layout (``<speaker>/<chapter>/*.flac`` with
  ``<speaker>-<chapter>.trans.txt``). Words only (no phone times): pair it with MFA alignments
  through :func:`read_textgrid_corpus` for frame labels.
* :func:`read_timit`: the TIMIT layout (``<split>/<dialect>/<speaker>/<sentence>.WAV`` with
  ``.PHN`` and ``.WRD`` files giving sample offsets). The ``.WAV`` files may be NIST SPHERE (as
  distributed) or RIFF; ``<name>.WAV.wav`` conversions are found too.
* :func:`read_textgrid_corpus`: TextGrids from the Montreal Forced Aligner (a ``phones`` and a
  ``words`` tier, e.g. published LibriSpeech alignments) next to any audio, parsed with
  `praatio <https://pypi.org/project/praatio/>`_.

Bad input: missing, unreadable or corrupt audio, a malformed alignment line, an unknown phone
symbol, phones out of order or overlapping, an alignment running past the end of the audio, an
empty transcript, or an utterance id leading outside ``root`` raise a
:class:`CorpusError` naming the file (and line). With ``on_error="skip"`` such utterances are
left out and one warning counts them by reason. Nothing is silently relabelled.

Example:

>>> from keras_topomap.datasets import read_timit, SpeechBatches
>>> utterances = read_timit("TIMIT/TEST", on_error="skip")     # doctest: +SKIP
>>> batches = SpeechBatches(utterances, mode="frames")         # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from keras_topomap.datasets import phones as phones_lib
from keras_topomap.datasets.corpus import (
    CorpusError,
    PhoneSegment,
    SkipLog,
    Utterance,
    check_alignment,
    check_transcript,
    confined_path,
    read_audio,
)

__all__ = [
    "CorpusError",
    "read_librispeech",
    "read_timit",
    "read_textgrid_corpus",
    "read_textgrid",
]

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".opus", ".sph", ".mp3")
_SILENCE_WORDS = frozenset({"", "<eps>", "sil", "sp"})


def _classify(exc):
    if isinstance(exc, CorpusError):
        return exc.reason
    if isinstance(exc, FileNotFoundError):
        return "missing audio"
    text = str(exc)
    if "Unknown phone" in text:
        return "unknown phone"
    if "past the end" in text:
        return "alignment past end"
    if "Empty transcript" in text:
        return "empty transcript"
    if "unreadable or corrupt" in text or "no samples" in text:
        return "unreadable audio"
    return "bad input"


def _load_audio(path, source):
    try:
        return read_audio(path)
    except FileNotFoundError:
        raise CorpusError(
            f"Missing audio for {source}: expected {path}", reason="missing audio"
        ) from None
    except ValueError as exc:
        raise CorpusError(str(exc), reason="unreadable audio") from exc


def _run(items, read_one, what, on_error):
    log = SkipLog(what, on_error)
    out = []
    for item in items:
        try:
            out.append(read_one(item))
        except (CorpusError, ValueError, FileNotFoundError) as exc:
            log.fail(_classify(exc), exc)
    log.warn(len(out))
    return out


def _check_root(root, what):
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: corpus directory not found: {root}")
    return root


# --------------------------------------------------------------------------------------------
# LibriSpeech


def read_librispeech(root, on_error="raise", limit=None):
    """Read a LibriSpeech directory (any split, or several below ``root``).

    Every ``*.trans.txt`` below ``root`` lists ``<utterance-id> <TRANSCRIPT>`` lines; the audio
    is ``<utterance-id>.flac`` in the same directory.

    Args:
        root: e.g. ``LibriSpeech/dev-clean`` (searched recursively).
        on_error: ``"raise"`` (default) or ``"skip"`` (warn with counts).
        limit: read at most this many utterances (in sorted order).

    Returns:
        list of :class:`Utterance` with ``phones=()``, ``speaker`` the LibriSpeech speaker id,
        ``text`` the transcript as written (upper case) and ``transcript`` lower case.
    """
    root = _check_root(root, "read_librispeech")
    items = []
    for trans in sorted(root.rglob("*.trans.txt")):
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            items.append((trans, 0, CorpusError(f"Cannot read {trans}: {exc}", "unreadable text")))
            continue
        for line_no, line in enumerate(lines, start=1):
            if line.strip():
                items.append((trans, line_no, line))
    if limit is not None:
        items = items[: int(limit)]

    def read_one(item):
        trans, line_no, line = item
        if isinstance(line, CorpusError):
            raise line
        source = f"{trans}, line {line_no}"
        utt_id, _, text = line.strip().partition(" ")
        if not text.strip():
            raise CorpusError(
                f"Empty transcript in {source}. Received: {line!r}", reason="empty transcript"
            )
        # The id names the audio file: keep it inside the corpus.
        folder = trans.parent.relative_to(root)
        audio_path = confined_path(root, os.path.join(folder, f"{utt_id}.flac"), source)
        audio, sample_rate = _load_audio(audio_path, source)
        return Utterance(
            id=utt_id,
            audio=audio,
            sample_rate=sample_rate,
            transcript=" ".join(text.lower().split()),
            phones=(),
            speaker=utt_id.split("-")[0],
            text=text.strip(),
            path=str(audio_path),
        )

    return _run(items, read_one, "read_librispeech", on_error)


# --------------------------------------------------------------------------------------------
# TIMIT


def _read_offsets_file(path, what):
    """Lines ``<start sample> <end sample> <label>`` of a TIMIT .PHN/.WRD file."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="strict").splitlines()
    except FileNotFoundError:
        raise CorpusError(f"Missing {what} file: {path}", reason=f"missing {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"Cannot read {path}: {exc}", reason=f"unreadable {what}") from exc
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            raise CorpusError(
                f"Malformed line in {path}, line {line_no}: expected '<start> <end> <label>' "
                f"with sample offsets. Received: {line!r}",
                reason=f"malformed {what}",
            )
        rows.append((int(fields[0]), int(fields[1]), fields[2], line_no))
    return rows


def _timit_audio(base):
    for suffix in (".WAV", ".wav", ".WAV.wav", ".wav.wav", ".flac", ".FLAC"):
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return base.with_name(base.name + ".WAV")


def _sibling(phn, ext):
    for candidate in (phn.with_suffix(ext.upper()), phn.with_suffix(ext.lower())):
        if candidate.is_file():
            return candidate
    return phn.with_suffix(ext.upper() if phn.suffix.isupper() else ext.lower())


def read_timit(root, on_error="raise", limit=None):
    """Read a TIMIT-layout directory: audio with ``.PHN`` (phones) and ``.WRD`` (words) files.

    Offsets in ``.PHN``/``.WRD`` are sample indices; they are converted with the audio's sample
    rate. Each phone gets the word whose interval contains the phone's midpoint (``None`` for
    pauses and closures outside words). TIMIT's 61 symbols are kept as written (lower case);
    :func:`~keras_topomap.datasets.phones.fold_phone` maps them to the 39 classes (closures and
    ``h#`` to ``sil``, the glottal stop ``q`` to no class).

    Args:
        root: e.g. ``TIMIT/TEST`` or ``TIMIT`` (searched recursively for ``*.PHN``).
        on_error: ``"raise"`` (default) or ``"skip"``.
        limit: read at most this many utterances (in sorted order).

    Returns:
        list of :class:`Utterance`; ``id`` is the path below ``root`` without extension (e.g.
        ``"DR1/FCJF0/SA1"``), ``speaker`` the speaker directory, ``text`` from ``.TXT`` if
        present.
    """
    root = _check_root(root, "read_timit")
    items = sorted({*root.rglob("*.PHN"), *root.rglob("*.phn")})
    if limit is not None:
        items = items[: int(limit)]

    def read_one(phn):
        base = phn.with_suffix("")
        audio_path = _timit_audio(base)
        audio, sample_rate = _load_audio(audio_path, str(phn))
        n = audio.shape[0]
        phone_rows = _read_offsets_file(phn, "PHN")
        wrd = _sibling(phn, ".WRD")
        word_rows = _read_offsets_file(wrd, "WRD")
        if not word_rows:
            raise CorpusError(f"Empty transcript in {wrd}: no words.", reason="empty transcript")
        for path, rows in ((phn, phone_rows), (wrd, word_rows)):
            for start, end, label, line_no in rows:
                if start > end:
                    raise CorpusError(
                        f"Bad offsets in {path}, line {line_no}: start {start} > end {end}.",
                        reason="bad times",
                    )
                if end > n:
                    raise CorpusError(
                        f"Alignment past the end of the audio in {path}, line {line_no}: "
                        f"{label!r} ends at sample {end} but {audio_path} has {n} samples.",
                        reason="alignment past end",
                    )
        # word covering each phone's midpoint (vectorised over phones)
        w_start = np.array([r[0] for r in word_rows])
        w_end = np.array([r[1] for r in word_rows])
        mid = np.array([(r[0] + r[1]) / 2 for r in phone_rows])
        k = np.clip(np.searchsorted(w_end, mid, side="right"), 0, len(word_rows) - 1)
        inside = (w_start[k] <= mid) & (mid < w_end[k])
        words = [r[2].lower() for r in word_rows]
        segments = tuple(
            PhoneSegment(
                start / sample_rate,
                end / sample_rate,
                label.lower(),
                words[k[i]] if inside[i] else None,
            )
            for i, (start, end, label, _) in enumerate(phone_rows)
        )
        check_alignment(segments, n / sample_rate, str(phn), 0.0, [r[3] for r in phone_rows])
        txt = _sibling(phn, ".TXT")
        text = " ".join(words)
        if txt.is_file():
            fields = txt.read_text(encoding="utf-8", errors="replace").split(maxsplit=2)
            if len(fields) == 3:
                text = fields[2].strip()
        rel = base.relative_to(root)
        return Utterance(
            id=rel.as_posix(),
            audio=audio,
            sample_rate=sample_rate,
            transcript=" ".join(words),
            phones=segments,
            speaker=base.parent.name,
            text=text,
            path=str(audio_path),
        )

    return _run(items, read_one, "read_timit", on_error)


# --------------------------------------------------------------------------------------------
# Montreal Forced Aligner TextGrids


def _pick_tier(names, wanted, given, path):
    if given is not None:
        if given not in names:
            raise CorpusError(
                f"TextGrid {path} has no tier {given!r}. Received tiers: {names}",
                reason="missing tier",
            )
        return given
    for name in names:
        if name.lower() == wanted or name.lower().endswith(f"- {wanted}"):
            return name
    raise CorpusError(
        f"TextGrid {path} has no {wanted!r} tier (MFA names it '{wanted}' or "
        f"'<speaker> - {wanted}'); pass {wanted[:-1]}_tier=. Received tiers: {names}",
        reason="missing tier",
    )


def read_textgrid(path, phone_tier=None, word_tier=None):
    """Phones and words of one MFA TextGrid.

    Returns:
        ``(segments, words, duration)``: a tuple of :class:`PhoneSegment` (empty intervals and
        ``sil``/``sp`` become ``"sil"``; labels lower case, e.g. ``"ah0"``), the spoken words in
        order (silence markers left out), and the TextGrid's end time.
    """
    from praatio import textgrid

    try:
        tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=True)
    except Exception as exc:  # praatio raises several exception types for malformed files
        raise CorpusError(
            f"Cannot parse TextGrid {path}: {type(exc).__name__}: {exc}", reason="bad TextGrid"
        ) from exc
    names = list(tg.tierNames)
    phone_name = _pick_tier(names, "phones", phone_tier, path)
    word_name = _pick_tier(names, "words", word_tier, path)
    word_entries = [
        (float(e.start), float(e.end), e.label.strip().lower())
        for e in tg.getTier(word_name).entries
        if e.label.strip().lower() not in _SILENCE_WORDS
    ]
    w_start = np.array([e[0] for e in word_entries])
    w_end = np.array([e[1] for e in word_entries])
    segments = []
    for entry in tg.getTier(phone_name).entries:
        label = entry.label.strip().lower() or phones_lib.SILENCE
        start, end = float(entry.start), float(entry.end)
        word = None
        if word_entries and phones_lib.fold_phone(label, source=str(path)) != phones_lib.SILENCE:
            mid = (start + end) / 2
            k = min(int(np.searchsorted(w_end, mid, side="right")), len(word_entries) - 1)
            if w_start[k] <= mid < w_end[k]:
                word = word_entries[k][2]
        segments.append(PhoneSegment(start, end, label, word))
    return tuple(segments), [e[2] for e in word_entries], float(tg.maxTimestamp)


def _audio_index(audio_root, extensions):
    index = {}
    for path in sorted(audio_root.rglob("*")):
        if path.suffix.lower() in extensions and path.is_file():
            index.setdefault(path.stem, path)
    return index


def read_textgrid_corpus(
    audio_root,
    textgrid_root,
    on_error="raise",
    phone_tier=None,
    word_tier=None,
    tolerance=0.02,
    extensions=AUDIO_EXTENSIONS,
    limit=None,
):
    """Read Montreal Forced Aligner TextGrids with their audio.

    Each ``<textgrid_root>/<rel>/<name>.TextGrid`` is paired with the audio file
    ``<audio_root>/<rel>/<name>.<ext>`` (MFA mirrors the corpus layout), or, failing that, with
    the only audio file called ``<name>.<ext>`` anywhere below ``audio_root``. For LibriSpeech,
    ``audio_root`` is e.g. ``LibriSpeech/dev-clean`` and ``textgrid_root`` the alignments.

    Args:
        audio_root: directory with the audio.
        textgrid_root: directory with the ``.TextGrid`` files (searched recursively).
        on_error: ``"raise"`` (default) or ``"skip"``.
        phone_tier: name of the phone tier; default the tier named ``phones`` (or
            ``"<speaker> - phones"`` as MFA writes for several speakers).
        word_tier: name of the word tier; default the tier named ``words`` (or
            ``"<speaker> - words"``).
        tolerance: seconds an alignment may run past the end of the audio (rounding).
        extensions: audio file extensions to look for.
        limit: read at most this many utterances (in sorted order).

    Returns:
        list of :class:`Utterance`: ``phones`` from the phone tier (MFA symbols lower-cased,
        ``"ah0"``), ``transcript`` the words tier joined, ``speaker`` the TextGrid's parent
        directory name, ``id`` the TextGrid path below ``textgrid_root`` without extension.
    """
    audio_root = _check_root(audio_root, "read_textgrid_corpus")
    textgrid_root = _check_root(textgrid_root, "read_textgrid_corpus")
    extensions = tuple(e.lower() for e in extensions)
    items = sorted(p for p in textgrid_root.rglob("*") if p.suffix.lower() == ".textgrid")
    if limit is not None:
        items = items[: int(limit)]
    index = None

    def find_audio(tg_path):
        nonlocal index
        rel = tg_path.relative_to(textgrid_root).with_suffix("")
        for ext in extensions:
            for candidate in (
                audio_root / rel.with_suffix(ext),
                audio_root / f"{rel}{ext.upper()}",
            ):
                if candidate.is_file():
                    return candidate
        if index is None:
            index = _audio_index(audio_root, extensions)
        if tg_path.stem in index:
            return index[tg_path.stem]
        raise CorpusError(
            f"Missing audio for {tg_path}: no {tg_path.stem}{{{','.join(extensions)}}} in "
            f"{audio_root}",
            reason="missing audio",
        )

    def read_one(tg_path):
        audio_path = find_audio(tg_path)
        audio, sample_rate = _load_audio(audio_path, str(tg_path))
        segments, words, _ = read_textgrid(tg_path, phone_tier, word_tier)
        check_transcript(" ".join(words), f"{tg_path} (words tier)")
        check_alignment(segments, audio.shape[0] / sample_rate, str(tg_path), tolerance)
        rel = tg_path.relative_to(textgrid_root).with_suffix("")
        return Utterance(
            id=rel.as_posix(),
            audio=audio,
            sample_rate=sample_rate,
            transcript=" ".join(words),
            phones=segments,
            speaker=tg_path.parent.name if tg_path.parent != textgrid_root else "",
            text=" ".join(words),
            path=os.fspath(audio_path),
        )

    return _run(items, read_one, "read_textgrid_corpus", on_error)
