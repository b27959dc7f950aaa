"""Build the phone-aligned speech corpus with Festival's free English voices.

The corpus bundled with keras-topomap was made by this script. It synthesises natural sentences
from Jane Austen's novels with three Festival voices, varies speaking rate and pitch per
utterance, and writes 16 kHz mono OGG Vorbis audio with the exact phone timings Festival used
(start, end, ARPAbet phone, word), plus train/test splits that hold out whole sentences and one
whole voice.

Usage::

    python -m keras_topomap.datasets.build_tts_corpus --out corpus --utterances 1000 --seed 0
    keras-topomap build-corpus --out corpus --utterances 1000 --seed 0

Requirements (build time only; loading a built corpus needs none of them):

* Festival and its voices, all in Debian/Ubuntu main::

      apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \\
          festlex-cmu festlex-poslex

* the sentences: the Debian package ``r-cran-janeaustenr`` (MIT-licensed R package with the
  public-domain texts of Austen's six novels). R is not needed; the R data files are parsed with
  the PyPI package ``rdata``::

      apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb janeaustenr
      pip install rdata
      python -m keras_topomap.datasets.build_tts_corpus --out corpus \\
          --janeaustenr janeaustenr/usr/lib/R/site-library/janeaustenr

  or give any text file with one sentence per line: ``--sentences my_sentences.txt``.

Determinism: the same seed, sentence source and Festival version give the same utterances,
phone timings and (decoded) audio. The OGG container bytes may differ between runs because
libsndfile picks a random stream serial number.

Output directory layout (what :func:`keras_topomap.datasets.load_tts_corpus` reads)::

    audio/<id>.ogg        16 kHz mono OGG Vorbis
    utterances.jsonl      one JSON object per utterance: id, voice, text, transcript, audio,
                          sample_rate, n_samples, params (rate/pitch), phones
                          [[start, end, phone, word|null], ...]
    splits.json           {"train": [...], "test": [...], "train_voices": [...],
                           "test_voice": [...]}
    manifest.json         how it was built: seed, voices, counts, hours, sentence source
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from keras_topomap.datasets import phones as phones_lib
from keras_topomap.datasets.features import CHARACTERS

__all__ = [
    "VOICES",
    "INSTALL_HINT",
    "find_festival",
    "load_austen_paragraphs",
    "split_sentences",
    "select_sentences",
    "speech_text",
    "plan_corpus",
    "festival_script",
    "merge_clitics",
    "parse_festival_output",
    "check_synthesis",
    "assign_splits",
    "build_corpus",
    "main",
]

#: Voice name -> how it is selected and varied. ``kind`` decides which knobs exist:
#: diphone voices take a duration stretch and an F0 mean; the HTS voice takes the engine's
#: speed (``-r``) and pitch shift in half-tones (``-fm``).
VOICES = {
    "kal_diphone": {"kind": "diphone", "f0_mean": 105.0, "f0_std": 14.0, "sex": "male"},
    "ked_diphone": {"kind": "diphone", "f0_mean": 105.0, "f0_std": 15.0, "sex": "male"},
    "cmu_us_slt_arctic_hts": {"kind": "hts", "sex": "female"},
}

#: Ranges the per-utterance variation is drawn from (uniform).
STRETCH_RANGE = (0.9, 1.25)  # diphone Duration_Stretch (> 1 is slower)
F0_SCALE_RANGE = (0.85, 1.2)  # diphone target F0 mean, relative to the voice's own
HTS_SPEED_RANGE = (0.85, 1.15)  # HTS "-r" (> 1 is faster)
HTS_HALFTONE_RANGE = (-2.0, 2.0)  # HTS "-fm" pitch shift in half-tones

INSTALL_HINT = (
    "Festival was not found. Install it and its free voices (Debian/Ubuntu main):\n"
    "    sudo apt-get install festival festvox-kallpc16k festvox-kdlpc16k "
    "festvox-us-slt-hts festlex-cmu festlex-poslex\n"
    "or pass --festival /path/to/festival."
)

#: Default places the janeaustenr R package is installed by Debian.
JANEAUSTENR_DIRS = (
    "/usr/lib/R/site-library/janeaustenr",
    "/usr/local/lib/R/site-library/janeaustenr",
)

SAMPLE_RATE = 16000
MAX_END_MISMATCH = (
    0.1  # seconds: drop an utterance whose last phone end is further off the audio end
)

_ABBREVIATIONS = {"mr": "mister", "mrs": "missis", "dr": "doctor", "st": "saint"}
_ALLOWED_SENTENCE = re.compile(r"^[A-Za-z][A-Za-z ,;:'\"!?.\-]*[.!?]$")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+(?=[\"']?[A-Z])")
_ABBREV_END = re.compile(r"\b(Mr|Mrs|Dr|St)\.$")


def find_festival(path=None):
    """Path of the ``festival`` executable, or ``None``."""
    if path:
        return path if shutil.which(path) or os.path.isfile(path) else None
    return shutil.which("festival")


# --------------------------------------------------------------------------------------------
# Sentences


def _read_rdb_object(rdb, offset, length):
    import rdata

    chunk = rdb[offset : offset + length]
    raw = zlib.decompress(chunk[4:])  # 4-byte big-endian uncompressed length, then zlib data
    return rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds"))


def load_austen_paragraphs(package_dir=None):
    """Paragraphs of Austen's six novels from an installed or unpacked ``janeaustenr`` package.

    Returns:
        list of ``(book, paragraph)`` in book order; a paragraph is its lines joined by spaces.
    """
    try:
        import rdata  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "Reading janeaustenr's R data files needs the PyPI package 'rdata' (build time only): "
            "pip install rdata"
        ) from exc
    candidates = [package_dir] if package_dir else list(JANEAUSTENR_DIRS)
    for candidate in candidates:
        base = Path(candidate) / "data" / "Rdata"
        if base.with_suffix(".rdx").is_file():
            break
    else:
        raise FileNotFoundError(
            f"janeaustenr data not found in {candidates}. Get it with:\n"
            "    apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb jane\n"
            "and pass --janeaustenr jane/usr/lib/R/site-library/janeaustenr "
            "(or give --sentences FILE)."
        )
    import rdata

    index = rdata.conversion.convert(
        rdata.parser.parse_data(
            gzip.decompress(base.with_suffix(".rdx").read_bytes()), extension=".rds"
        )
    )
    rdb = base.with_suffix(".rdb").read_bytes()
    paragraphs = []
    for book, (offset, length) in sorted(index["variables"].items()):
        lines = _read_rdb_object(rdb, int(offset), int(length))
        current = []
        for line in [*map(str, lines), ""]:
            if line.strip():
                current.append(line.strip())
            elif current:
                paragraphs.append((str(book), " ".join(current)))
                current = []
    return paragraphs


def split_sentences(paragraph):
    """Split a paragraph into sentences at ``.!?`` followed by a capital, not after Mr./Mrs./Dr./St.

    Example:

    >>> split_sentences('Mr. Knightley came. "Is it so?" said she. It was.')
    ['Mr. Knightley came.', '"Is it so?" said she.', 'It was.']
    """
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(paragraph):
        head = paragraph[start : match.start()]
        if _ABBREV_END.search(head.rstrip("\"'")):
            continue
        pieces.append(paragraph[start : match.end()].strip())
        start = match.end()
    pieces.append(paragraph[start:].strip())
    return [p for p in pieces if p]


def _words(sentence):
    return re.findall(r"[A-Za-z']+", sentence)


def select_sentences(sentences, min_words=5, max_words=12):
    """Keep plain, speakable sentences; unique (case-insensitive), sorted.

    Kept: ``min_words``..``max_words`` words; only letters, spaces and ``, ; : ' " ! ? . -``; ends
    in ``. ! ?``; no all-capital words except ``I`` (Festival would spell them out). Double
    quotes and ``_`` italics marks are removed (they are not spoken).
    """
    kept = {}
    for sentence in sentences:
        # Quotes and italics marks (_word_) are not spoken: drop them from the stored text too.
        s = " ".join(sentence.replace("_", "").replace('"', "").split()).strip("' ")
        if not _ALLOWED_SENTENCE.match(s):
            continue
        words = _words(s)
        if not (min_words <= len(words) <= max_words):
            continue
        if any(len(w) > 1 and w.isupper() for w in words):
            continue
        kept.setdefault(s.lower(), s)
    return [kept[k] for k in sorted(kept)]


def speech_text(sentence):
    """The text given to Festival: abbreviations expanded, dashes made commas, quotes dropped.

    Expanding ``Mr.`` etc. here makes Festival's word list (the transcript) match what is spoken.

    Example:

    >>> speech_text('"Mr. Weston is here," said Mrs. Elton.')
    'Mister Weston is here, said Missis Elton.'
    >>> speech_text("So odd!--and yet--true.")
    'So odd! and yet, true.'
    """

    def expand(match):
        word = _ABBREVIATIONS[match.group(1).lower()]
        return word.capitalize() if match.group(1)[0].isupper() else word

    text = re.sub(r"\b(Mr|Mrs|Dr|St)\.", expand, sentence, flags=re.IGNORECASE)
    # A dash joining two clauses ("so!--and") makes Festival read the punctuation as a word.
    text = re.sub(r"([,;:!?.])?\s*-{2,}\s*", lambda m: (m.group(1) or ",") + " ", text)
    return " ".join(text.replace('"', " ").split())


# --------------------------------------------------------------------------------------------
# Planning, synthesis and checking


def _voice_prefix(voice):
    return voice.split("_")[0] if voice != "cmu_us_slt_arctic_hts" else "slt"


def plan_corpus(sentences, n_utterances, seed=0, voices=tuple(VOICES), spare=0.06):
    """Decide which sentence each voice speaks and with which rate/pitch.

    Every utterance gets its own sentence (so holding out sentences is holding out utterances).
    Voices take turns, so each speaks ``n_utterances / len(voices)`` (plus ``spare`` extra
    candidates that replace utterances the checks drop).

    Returns:
        list of dicts ``{id, voice, text, speech_text, params}``; ids are ``<voice>_<nnnn>``.
    """
    voices = list(voices)
    unknown = [v for v in voices if v not in VOICES]
    if unknown:
        raise ValueError(f"Unknown voices {unknown}; known: {list(VOICES)}")
    per_voice = -(-n_utterances // len(voices))
    n_candidates = len(voices) * (per_voice + max(2, int(np.ceil(per_voice * spare))))
    if n_candidates > len(sentences):
        raise ValueError(
            f"Need {n_candidates} sentences for {n_utterances} utterances (with spares). "
            f"Received: {len(sentences)} sentences"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))[:n_candidates]
    plan, counters = [], dict.fromkeys(voices, 0)
    for k, sentence_index in enumerate(order):
        voice = voices[k % len(voices)]
        spec = VOICES[voice]
        if spec["kind"] == "diphone":
            params = {
                "duration_stretch": round(float(rng.uniform(*STRETCH_RANGE)), 3),
                "f0_mean": round(spec["f0_mean"] * float(rng.uniform(*F0_SCALE_RANGE)), 1),
            }
        else:
            params = {
                "speed": round(float(rng.uniform(*HTS_SPEED_RANGE)), 3),
                "halftones": round(float(rng.uniform(*HTS_HALFTONE_RANGE)), 2),
            }
        counters[voice] += 1
        text = sentences[int(sentence_index)]
        plan.append(
            {
                "id": f"{_voice_prefix(voice)}_{counters[voice]:04d}",
                "voice": voice,
                "text": text,
                "speech_text": speech_text(text),
                "params": params,
            }
        )
    return plan


def _scheme_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def festival_script(items, voice, wav_dir):
    """A Festival Scheme program that synthesises ``items`` (one voice) and prints their timings.

    For every item it writes ``<wav_dir>/<id>.wav`` (16 kHz RIFF) and prints::

        UTT <id>
        WORD <n> <word>         (per word of Festival's Word relation, n = 1, 2, ...)
        SEG <phone> <start> <end> <n of its word, 0 for pauses>
        END <id>

    with tab-separated fields (:func:`parse_festival_output` reads them back). Words are numbered
    so that a repeated word ("had had") and clitics ("'s") map back unambiguously.
    """
    spec = VOICES[voice]
    lines = [
        f"(voice_{voice})",
        "(define (ktm_emit utt id)",
        "  (let ((n 0))",
        "    (mapcar (lambda (w) (set! n (+ n 1)) (item.set_feat w 'ktm_n n))"
        " (utt.relation.items utt 'Word)))",
        "  (utt.wave.resample utt 16000)",
        f'  (utt.save.wave utt (string-append {_scheme_string(str(wav_dir) + os.sep)} id ".wav") '
        "'riff)",
        '  (format t "UTT\\t%s\\n" id)',
        '  (mapcar (lambda (w) (format t "WORD\\t%s\\t%s\\n" (item.feat w \'ktm_n) (item.name w)))'
        " (utt.relation.items utt 'Word))",
        '  (mapcar (lambda (s) (format t "SEG\\t%s\\t%f\\t%f\\t%s\\n" (item.name s)'
        " (item.feat s 'segment_start) (item.feat s 'end)"
        " (item.feat s 'R:SylStructure.parent.parent.ktm_n)))"
        " (utt.relation.items utt 'Segment))",
        '  (format t "END\\t%s\\n" id))',
    ]
    if spec["kind"] == "hts":
        lines.append("(define ktm_base_params hts_engine_params)")
    for item in items:
        p = item["params"]
        if spec["kind"] == "diphone":
            lines.append(f"(Parameter.set 'Duration_Stretch {p['duration_stretch']})")
            lines.append(
                f"(set! int_lr_params '((target_f0_mean {p['f0_mean']}) "
                f"(target_f0_std {spec['f0_std']}) (model_f0_mean 170) (model_f0_std 34)))"
            )
        else:
            lines.append(
                "(set! hts_engine_params (append ktm_base_params "
                f'(list \'("-r" {p["speed"]}) \'("-fm" {p["halftones"]}))))'
            )
        lines.append(f'(ktm_emit (SynthText {_scheme_string(item["speech_text"])}) "{item["id"]}")')
    return "\n".join(lines) + "\n"


def merge_clitics(words):
    """Join clitic words (``'s``, ``'ll``, ...) to the word before them.

    Festival's Word relation splits ``isabella's`` into ``isabella`` + ``'s``; the ``'s`` has no
    phones of its own (its /z/ is folded into the previous word), so the transcript must say
    ``isabella's``.

    Returns:
        ``(merged_words, index)`` where ``index[k]`` is the position in ``merged_words`` of
        word ``k`` of the input.

    Example:

    >>> merge_clitics(["isabella", "'s", "name"])
    (["isabella's", 'name'], [0, 0, 1])
    """
    merged, index = [], []
    for word in words:
        if word.startswith("'") and len(word) > 1 and merged:
            merged[-1] += word
        else:
            merged.append(word)
        index.append(len(merged) - 1)
    return merged, index


def parse_festival_output(text):
    """Parse what :func:`festival_script` prints.

    Returns:
        dict ``id -> {"words": [...], "segments": [(phone, start, end, word|None), ...]}``
        for every complete ``UTT ... END`` block (words lower case, clitics merged with
        :func:`merge_clitics`); other lines (Festival's warnings) are ignored.

    Raises:
        ValueError: for a malformed ``WORD``/``SEG`` line, a segment naming a word number that
            was not listed, or an unterminated block, naming the output line.

    Example:

    >>> out = ("UTT\\ta\\nWORD\\t1\\tHi\\nSEG\\tpau\\t0.0\\t0.2\\t0\\n"
    ...        "SEG\\thh\\t0.2\\t0.3\\t1\\nEND\\ta\\n")
    >>> parse_festival_output(out)["a"]["segments"][1]
    ('hh', 0.2, 0.3, 'hi')
    """
    result, current, current_id = {}, None, None
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.rstrip("\n").split("\t")
        tag = fields[0]
        where = f"Festival output line {line_no}"
        if tag == "UTT" and len(fields) == 2:
            if current is not None:
                raise ValueError(f"{where}: UTT {fields[1]!r} before END of {current_id!r}")
            current_id, current = fields[1], {"words": {}, "segments": []}
        elif current is None:
            continue
        elif tag == "WORD":
            if len(fields) != 3 or not fields[1].isdigit():
                raise ValueError(f"{where}: malformed WORD line. Received: {line!r}")
            current["words"][fields[1]] = fields[2].lower()
        elif tag == "SEG":
            if len(fields) != 5:
                raise ValueError(f"{where}: malformed SEG line. Received: {line!r}")
            try:
                start, end = float(fields[2]), float(fields[3])
            except ValueError:
                raise ValueError(f"{where}: bad times in SEG line. Received: {line!r}") from None
            if fields[4] not in ("0", "") and fields[4] not in current["words"]:
                raise ValueError(f"{where}: segment of unknown word number. Received: {line!r}")
            current["segments"].append((fields[1].lower(), start, end, fields[4]))
        elif tag == "END":
            numbers = list(current["words"])
            merged, index = merge_clitics([current["words"][n] for n in numbers])
            word_of = {n: merged[index[k]] for k, n in enumerate(numbers)}
            result[current_id] = {
                "words": merged,
                "segments": [(p, s, e, word_of.get(w)) for p, s, e, w in current["segments"]],
            }
            current, current_id = None, None
    if current is not None:
        raise ValueError(f"Festival output ended inside utterance {current_id!r} (no END line).")
    return result


_ALLOWED_CHARS = set(CHARACTERS[1:])


def check_synthesis(parsed, n_samples, sample_rate=SAMPLE_RATE, max_mismatch=MAX_END_MISMATCH):
    """Why a synthesised utterance must be dropped, or ``None`` if it is good.

    Drop rules: no phones or no words; a phone symbol outside the known ARPAbet set; phone
    times not increasing; a transcript character outside ``a-z``, space, apostrophe; the last
    phone's end more than ``max_mismatch`` seconds from the audio's length (a synthesis failure).

    Example:

    >>> seg = [("pau", 0.0, 0.2, None), ("hh", 0.2, 0.5, "hi"), ("pau", 0.5, 1.0, None)]
    >>> check_synthesis({"words": ["hi"], "segments": seg}, 16000) is None
    True
    >>> check_synthesis({"words": ["hi"], "segments": seg}, 20000)
    'end mismatch'
    """
    segments, words = parsed["segments"], parsed["words"]
    if not segments or not words:
        return "empty"
    if any(not phones_lib.is_known_phone(p) for p, _, _, _ in segments):
        return "unknown phone"
    starts = np.array([s for _, s, _, _ in segments])
    ends = np.array([e for _, _, e, _ in segments])
    if np.any(ends < starts) or np.any(starts[1:] < ends[:-1] - 1e-6) or starts[0] < 0:
        return "bad times"
    if not set(" ".join(words)) <= _ALLOWED_CHARS:
        return "bad characters"
    if abs(ends[-1] - n_samples / sample_rate) > max_mismatch:
        return "end mismatch"
    return None


def assign_splits(records, seed=0, test_fraction=0.1, held_out_voice="ked_diphone"):
    """Sentence-level and voice-level splits.

    ``test``: for every voice, ``round(test_fraction * n_voice)`` utterances chosen with the seed
    (their sentences are spoken nowhere else, as each sentence is used once); ``train``: the
    rest. ``test_voice``: every utterance of ``held_out_voice``; ``train_voices``: all others.
    Lists keep the records' order.
    """
    rng = np.random.default_rng([seed, 1])
    by_voice = {}
    for rec in records:
        by_voice.setdefault(rec["voice"], []).append(rec["id"])
    test = set()
    for voice in sorted(by_voice):
        ids = by_voice[voice]
        n_test = int(round(test_fraction * len(ids)))
        test.update(ids[k] for k in rng.permutation(len(ids))[:n_test])
    ids = [rec["id"] for rec in records]
    if held_out_voice not in by_voice:
        raise ValueError(
            f"held-out voice {held_out_voice!r} is not in the corpus voices {sorted(by_voice)}"
        )
    voice_of = {rec["id"]: rec["voice"] for rec in records}
    splits = {
        "train": [i for i in ids if i not in test],
        "test": [i for i in ids if i in test],
        "train_voices": [i for i in ids if voice_of[i] != held_out_voice],
        "test_voice": [i for i in ids if voice_of[i] == held_out_voice],
    }
    text_of = {rec["id"]: rec["text"].lower() for rec in records}
    overlap = {text_of[i] for i in splits["train"]} & {text_of[i] for i in splits["test"]}
    if overlap:
        raise AssertionError(f"test sentences also occur in train: {sorted(overlap)[:3]}")
    return splits


def _run_festival(festival, script_path):
    return subprocess.Popen(
        [festival, "--batch", str(script_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def build_corpus(
    out,
    n_utterances=1000,
    seed=0,
    sentences=None,
    janeaustenr=None,
    voices=tuple(VOICES),
    held_out_voice="ked_diphone",
    test_fraction=0.1,
    festival=None,
    ogg_quality=0.3,
    verbose=True,
):
    """Synthesise, check and write a corpus; returns its manifest (see the module docstring)."""
    import soundfile as sf

    log = print if verbose else (lambda *a, **k: None)
    festival = find_festival(festival)
    if festival is None:
        raise RuntimeError(INSTALL_HINT)
    if n_utterances < len(voices):
        raise ValueError(
            f"--utterances must be at least the number of voices. Received: {n_utterances}"
        )
    out = Path(out)
    t0 = time.time()
    if sentences is not None:
        raw = Path(sentences).read_text(encoding="utf-8").splitlines()
        source = {"name": Path(sentences).name, "licence": "given by the user"}
    else:
        raw = [s for _, para in load_austen_paragraphs(janeaustenr) for s in split_sentences(para)]
        source = {
            "name": "Jane Austen's six novels, from the R package janeaustenr 1.0.0 "
            "(Debian r-cran-janeaustenr)",
            "licence": "texts public domain; janeaustenr package MIT (Julia Silge)",
        }
    pool = select_sentences(raw)
    log(f"sentences: {len(raw)} read, {len(pool)} kept (5-12 plain words, unique)")
    plan = plan_corpus(pool, n_utterances, seed=seed, voices=voices)
    per_voice = {
        v: n_utterances // len(voices) + (i < n_utterances % len(voices))
        for i, v in enumerate(voices)
    }

    with tempfile.TemporaryDirectory(prefix="ktm_festival_") as tmp:
        tmp = Path(tmp)
        procs = {}
        for voice in voices:
            items = [p for p in plan if p["voice"] == voice]
            wav_dir = tmp / voice
            wav_dir.mkdir()
            script = tmp / f"{voice}.scm"
            script.write_text(festival_script(items, voice, wav_dir), encoding="utf-8")
            procs[voice] = _run_festival(festival, script)
        log(f"synthesising {len(plan)} candidates with {len(voices)} Festival processes ...")
        outputs = {}
        for voice, proc in procs.items():
            stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(
                    f"festival failed for voice {voice} (exit {proc.returncode}):\n{stderr[-2000:]}"
                )
            outputs.update(parse_festival_output(stdout))
        log(f"synthesis done in {time.time() - t0:.0f} s")

        audio_dir = out / "audio"
        if out.exists() and any(out.iterdir()):
            for stale in audio_dir.glob("*.ogg") if audio_dir.exists() else []:
                stale.unlink()
        audio_dir.mkdir(parents=True, exist_ok=True)
        records, dropped, kept_count = [], {}, dict.fromkeys(voices, 0)
        dropped_items = []
        for item in plan:
            voice = item["voice"]
            if kept_count[voice] >= per_voice[voice]:
                continue
            parsed = outputs.get(item["id"])
            wav_path = tmp / voice / f"{item['id']}.wav"
            if parsed is None or not wav_path.is_file():
                dropped["no output"] = dropped.get("no output", 0) + 1
                continue
            audio, sr = sf.read(wav_path, dtype="float32")
            if sr != SAMPLE_RATE or audio.ndim != 1:
                raise RuntimeError(
                    f"Festival wrote {wav_path} at {sr} Hz with shape {audio.shape}; "
                    "expected 16 kHz mono"
                )
            reason = check_synthesis(parsed, len(audio))
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
                dropped_items.append({"id": item["id"], "reason": reason, "words": parsed["words"]})
                continue
            kept_count[voice] += 1
            audio_rel = f"audio/{item['id']}.ogg"
            sf.write(
                out / audio_rel,
                audio,
                SAMPLE_RATE,
                format="OGG",
                subtype="VORBIS",
                compression_level=1.0 - ogg_quality,
            )
            records.append(
                {
                    "id": item["id"],
                    "voice": voice,
                    "text": item["text"],
                    "transcript": " ".join(parsed["words"]),
                    "audio": audio_rel,
                    "sample_rate": SAMPLE_RATE,
                    "n_samples": int(len(audio)),
                    "params": item["params"],
                    "phones": [
                        [round(s, 5), round(e, 5), p, w] for p, s, e, w in parsed["segments"]
                    ],
                }
            )
    short = {v: per_voice[v] - kept_count[v] for v in voices if kept_count[v] < per_voice[v]}
    if short:
        raise RuntimeError(
            f"Too many utterances dropped ({dropped}); voices short of their quota: {short}"
        )
    records.sort(key=lambda r: r["id"])
    splits = assign_splits(
        records, seed=seed, test_fraction=test_fraction, held_out_voice=held_out_voice
    )
    with open(out / "utterances.jsonl", "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=True) + "\n")
    with open(out / "splits.json", "w", encoding="utf-8") as f:
        json.dump(splits, f, indent=0)
        f.write("\n")
    seconds = sum(r["n_samples"] for r in records) / SAMPLE_RATE
    version = subprocess.run([festival, "--version"], capture_output=True, text=True).stdout.strip()
    version = version.split(": ", 1)[-1]  # drop the executable path festival prefixes
    manifest = {
        "name": "keras-topomap TTS phone-aligned corpus",
        "format_version": 1,
        "seed": seed,
        "n_utterances": len(records),
        "hours": round(seconds / 3600, 4),
        "sample_rate": SAMPLE_RATE,
        "audio_format": f"OGG Vorbis (libsndfile, quality {ogg_quality})",
        "voices": {v: {**VOICES[v], "utterances": kept_count[v]} for v in voices},
        "held_out_voice": held_out_voice,
        "test_fraction": test_fraction,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "dropped": dropped,
        "dropped_utterances": dropped_items,
        "variation": {
            "diphone_duration_stretch": STRETCH_RANGE,
            "diphone_f0_mean_scale": F0_SCALE_RANGE,
            "hts_speed": HTS_SPEED_RANGE,
            "hts_halftones": HTS_HALFTONE_RANGE,
        },
        "sentence_source": source,
        "sentence_pool": len(pool),
        "sentences_sha256": hashlib.sha256("\n".join(pool).encode()).hexdigest(),
        "synthesiser": version,
        "phone_set": "Festival radio (lower-case ARPAbet, pau); "
        "fold with keras_topomap.datasets.phones",
    }
    with open(out / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(
        f"wrote {len(records)} utterances ({seconds / 60:.1f} min, {size / 1e6:.1f} MB) to {out} "
        f"in {time.time() - t0:.0f} s"
    )
    for voice in voices:
        log(f"  {voice}: {kept_count[voice]} utterances")
    log(f"  splits: {manifest['split_sizes']}")
    log(f"  dropped by the checks: {dropped or 'none'}")
    return manifest


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-topomap build-corpus",
        description="Synthesise a phone-aligned speech corpus with Festival (see module docs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--utterances", type=int, default=1000, help="utterances to keep")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--sentences", help="text file with one sentence per line (None: Jane Austen's novels)"
    )
    parser.add_argument("--janeaustenr",
                        help="directory of the janeaustenr R package (None: search the system)")
    parser.add_argument("--voices", nargs="+", default=list(VOICES), choices=list(VOICES),
                        help="Festival voices, taking turns")
    parser.add_argument("--held-out-voice", default="ked_diphone",
                        help="voice of the test_voice split")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="share of each voice's sentences in the test split")
    parser.add_argument("--festival", help="path of the festival executable (None: on PATH)")
    parser.add_argument("--ogg-quality", type=float, default=0.3, help="Vorbis quality 0..1")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if find_festival(args.festival) is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    build_corpus(
        args.out,
        n_utterances=args.utterances,
        seed=args.seed,
        sentences=args.sentences,
        janeaustenr=args.janeaustenr,
        voices=tuple(args.voices),
        held_out_voice=args.held_out_voice,
        test_fraction=args.test_fraction,
        festival=args.festival,
        ogg_quality=args.ogg_quality,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
