"""Readers on tiny fixtures in the real formats: LibriSpeech, TIMIT (NIST SPHERE), MFA TextGrid."""

import numpy as np
import pytest
import soundfile as sf

from keras_topomap.datasets import (
    CorpusError,
    FeatureConfig,
    extract_features,
    frame_labels,
    phones,
    read_librispeech,
    read_textgrid_corpus,
    read_timit,
)

SR = 16000


def _tone(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)).astype(
        "float32"
    )


# ------------------------------------------------------------------------------------------
# LibriSpeech


def _librispeech(root, lines, write_audio=True):
    chapter = root / "LibriSpeech" / "dev-clean" / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    if write_audio:
        for k, line in enumerate(lines):
            uid = line.split(" ")[0]
            sf.write(chapter / f"{uid}.flac", _tone(1.0 + 0.5 * k, seed=k), SR, format="FLAC")
    return root / "LibriSpeech" / "dev-clean", chapter


def test_read_librispeech(tmp_path):
    root, _ = _librispeech(
        tmp_path, ["19-198-0000 NORTHANGER ABBEY", "19-198-0001 IT WAS THE LADY'S CHOICE"]
    )
    utts = read_librispeech(root)
    assert [u.id for u in utts] == ["19-198-0000", "19-198-0001"]
    u = utts[1]
    assert u.transcript == "it was the lady's choice" and u.text == "IT WAS THE LADY'S CHOICE"
    assert u.speaker == "19" and u.sample_rate == SR and u.phones == ()
    assert u.audio.dtype == np.float32 and abs(u.duration - 1.5) < 1e-3
    assert extract_features(u, FeatureConfig()).shape == (151, 40)
    assert len(read_librispeech(tmp_path, limit=1)) == 1  # searched recursively


def test_read_librispeech_errors_and_skip(tmp_path):
    root, chapter = _librispeech(
        tmp_path, ["19-198-0000 ONE TWO", "19-198-0001", "19-198-0002 THREE", "19-198-0003 FOUR"]
    )
    (chapter / "19-198-0002.flac").unlink()
    (chapter / "19-198-0003.flac").write_bytes(b"fLaC but not really audio" * 10)
    with pytest.raises(CorpusError, match=r"Empty transcript in .*19-198\.trans\.txt, line 2"):
        read_librispeech(root)
    with pytest.warns(UserWarning, match=r"skipped 3 of 4 .*1 empty transcript.*1 missing audio"):
        utts = read_librispeech(root, on_error="skip")
    assert [u.id for u in utts] == ["19-198-0000"]
    (chapter / "19-198.trans.txt").write_text("19-198-0002 THREE\n")
    with pytest.raises(
        CorpusError, match=r"Missing audio for .*line 1: expected .*19-198-0002\.flac"
    ):
        read_librispeech(root)
    (chapter / "19-198.trans.txt").write_text("19-198-0003 FOUR\n")
    with pytest.raises(CorpusError, match=r"19-198-0003\.flac.*corrupt"):
        read_librispeech(root)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_librispeech(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="on_error"):
        read_librispeech(root, on_error="ignore")


# ------------------------------------------------------------------------------------------
# TIMIT

_PHN = [(0, 2400, "h#"), (2400, 3200, "sh"), (3200, 4800, "iy"), (4800, 5600, "hv"),
        (5600, 6400, "ae"), (6400, 7000, "dcl"), (7000, 7600, "d"), (7600, 8000, "q"),
        (8000, 9600, "ix"), (9600, 12000, "h#")]  # fmt: skip
_WRD = [(2400, 4800, "she"), (4800, 7600, "had"), (7600, 9600, "it")]


def _timit(root, phn=_PHN, wrd=_WRD, samples=12000, name="SA1"):
    spk = root / "TEST" / "DR1" / "FAKS0"
    spk.mkdir(parents=True, exist_ok=True)
    # TIMIT as distributed: NIST SPHERE headers, 16-bit PCM, sample offsets in .PHN/.WRD
    sf.write(spk / f"{name}.WAV", _tone(samples / SR), SR, format="NIST", subtype="PCM_16")
    (spk / f"{name}.PHN").write_text("".join(f"{a} {b} {p}\n" for a, b, p in phn))
    (spk / f"{name}.WRD").write_text("".join(f"{a} {b} {w}\n" for a, b, w in wrd))
    (spk / f"{name}.TXT").write_text(f"0 {samples} She had it.\n")
    return spk


def test_read_timit_from_nist_sphere(tmp_path):
    _timit(tmp_path)
    [u] = read_timit(tmp_path)
    assert u.id == "TEST/DR1/FAKS0/SA1" and u.speaker == "FAKS0"
    assert u.transcript == "she had it" and u.text == "She had it."
    assert u.sample_rate == SR and u.audio.shape == (12000,)
    assert [s.phone for s in u.phones] == [p for _, _, p in _PHN]
    assert u.phones[1].start == 2400 / SR and u.phones[1].end == 3200 / SR
    assert [s.word for s in u.phones] == [None, "she", "she", "had", "had", "had", "had",
                                          "it", "it", None]  # fmt: skip
    assert [s.folded for s in u.phones] == ["sil", "sh", "iy", "hh", "ae", "sil", "d", None,
                                            "ih", "sil"]  # fmt: skip
    labels = frame_labels(u, len(extract_features(u)), FeatureConfig())
    assert labels[0] == phones.phone_to_index("sil") and labels[20] == phones.phone_to_index("iy")
    assert np.all(labels[48:50] == -1)  # frames of the glottal stop q have no class


def test_read_timit_errors_name_file_and_line(tmp_path):
    _timit(tmp_path / "a", phn=[*_PHN[:-1], (9600, 12800, "h#")])
    with pytest.raises(
        CorpusError, match=r"past the end .*SA1\.PHN, line 10.*12800.*12000 samples"
    ):
        read_timit(tmp_path / "a")
    _timit(tmp_path / "b", phn=[*_PHN[:3], (4800, 5600, "xx"), *_PHN[4:]])
    with pytest.raises(ValueError, match=r"Unknown phone symbol in .*SA1\.PHN, line 4.*'xx'"):
        read_timit(tmp_path / "b")
    spk = _timit(tmp_path / "c")
    (spk / "SA1.WRD").write_text("2400 4800\n")
    with pytest.raises(CorpusError, match=r"Malformed line in .*SA1\.WRD, line 1"):
        read_timit(tmp_path / "c")
    spk = _timit(tmp_path / "d")
    (spk / "SA1.WRD").write_text("")
    with pytest.raises(CorpusError, match=r"Empty transcript in .*SA1\.WRD"):
        read_timit(tmp_path / "d")
    spk = _timit(tmp_path / "e")
    _timit(tmp_path / "e", name="SA2")
    (spk / "SA1.WAV").unlink()
    with pytest.raises(CorpusError, match=r"Missing audio for .*SA1\.PHN"):
        read_timit(tmp_path / "e")
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 utterances \(1 missing audio\)"):
        assert [u.id for u in read_timit(tmp_path / "e", on_error="skip")] == ["TEST/DR1/FAKS0/SA2"]


# ------------------------------------------------------------------------------------------
# Montreal Forced Aligner TextGrids (long text format, as MFA writes them)


def _tier(name, intervals, xmax):
    body = [
        '        class = "IntervalTier"',
        f'        name = "{name}"',
        "        xmin = 0",
        f"        xmax = {xmax}",
        f"        intervals: size = {len(intervals)}",
    ]
    for k, (a, b, label) in enumerate(intervals, start=1):
        body += [f"        intervals [{k}]:", f"            xmin = {a}", f"            xmax = {b}",
                 f'            text = "{label}"']  # fmt: skip
    return body


def _textgrid(path, words, phones_, xmax):
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0",
             f"xmax = {xmax}", "tiers? <exists>", "size = 2", "item []:"]  # fmt: skip
    for k, (name, intervals) in enumerate((("words", words), ("phones", phones_)), start=1):
        lines += [f"    item [{k}]:", *_tier(name, intervals, xmax)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


_WORDS = [(0, 0.2, ""), (0.2, 0.5, "hello"), (0.5, 0.62, ""), (0.62, 0.9, "world"), (0.9, 1.0, "")]
_PHONES = [(0, 0.2, ""), (0.2, 0.28, "HH"), (0.28, 0.35, "AH0"), (0.35, 0.42, "L"),
           (0.42, 0.5, "OW1"), (0.5, 0.62, "sp"), (0.62, 0.7, "W"), (0.7, 0.8, "ER1"),
           (0.8, 0.85, "L"), (0.85, 0.9, "D"), (0.9, 1.0, "")]  # fmt: skip


def _mfa_corpus(root, n=2):
    (root / "audio" / "spk1").mkdir(parents=True)
    for k in range(n):
        sf.write(root / "audio" / "spk1" / f"utt{k}.wav", _tone(1.0, k), SR)
        _textgrid(root / "aligned" / "spk1" / f"utt{k}.TextGrid", _WORDS, _PHONES, 1.0)
    return root / "audio", root / "aligned"


def test_read_textgrid_corpus(tmp_path):
    audio_root, tg_root = _mfa_corpus(tmp_path)
    utts = read_textgrid_corpus(audio_root, tg_root)
    assert [u.id for u in utts] == ["spk1/utt0", "spk1/utt1"]
    u = utts[0]
    assert u.transcript == "hello world" and u.speaker == "spk1" and u.duration == 1.0
    assert [s.phone for s in u.phones][:3] == ["sil", "hh", "ah0"]
    assert [s.folded for s in u.phones] == ["sil", "hh", "ah", "l", "ow", "sil", "w", "er", "l",
                                            "d", "sil"]  # fmt: skip
    assert [s.word for s in u.phones] == [None, "hello", "hello", "hello", "hello", None,
                                          "world", "world", "world", "world", None]  # fmt: skip
    labels = frame_labels(u, 101, FeatureConfig())
    assert labels[25] == phones.phone_to_index("hh") and labels[75] == phones.phone_to_index("er")
    assert np.all(labels[:100] >= 0)
    # audio found by name when the TextGrid tree does not mirror the audio tree
    flat = tmp_path / "flat"
    _textgrid(flat / "utt1.TextGrid", _WORDS, _PHONES, 1.0)
    assert read_textgrid_corpus(audio_root, flat)[0].path.endswith("utt1.wav")


def test_read_textgrid_corpus_errors(tmp_path):
    audio_root, tg_root = _mfa_corpus(tmp_path, n=3)
    bad = tg_root / "spk1"
    _textgrid(bad / "utt0.TextGrid", _WORDS, [*_PHONES[:-1], (0.9, 1.2, "")], 1.2)
    with pytest.raises(ValueError, match=r"past the end .*utt0\.TextGrid.*1\.200 s.*1\.000 s"):
        read_textgrid_corpus(audio_root, tg_root)
    _textgrid(bad / "utt0.TextGrid", _WORDS, [*_PHONES[:2], (0.28, 0.35, "AX9"), *_PHONES[3:]], 1.0)
    with pytest.raises(ValueError, match=r"Unknown phone symbol in .*utt0\.TextGrid.*'ax9'"):
        read_textgrid_corpus(audio_root, tg_root)
    _textgrid(bad / "utt0.TextGrid", [(0, 1.0, "")], _PHONES, 1.0)
    with pytest.raises(ValueError, match=r"Empty transcript in .*utt0\.TextGrid \(words tier\)"):
        read_textgrid_corpus(audio_root, tg_root)
    (bad / "utt0.TextGrid").write_text("this is not a TextGrid\n")
    with pytest.raises(CorpusError, match=r"Cannot parse TextGrid .*utt0\.TextGrid"):
        read_textgrid_corpus(audio_root, tg_root)
    (audio_root / "spk1" / "utt2.wav").unlink()
    with pytest.warns(UserWarning, match=r"skipped 2 of 3 .*1 bad TextGrid, 1 missing audio"):
        utts = read_textgrid_corpus(audio_root, tg_root, on_error="skip")
    assert [u.id for u in utts] == ["spk1/utt1"]
    _textgrid(bad / "utt0.TextGrid", _WORDS, _PHONES, 1.0)
    with pytest.raises(CorpusError, match=r"no tier 'segs'.*Received tiers: \['words', 'phones'\]"):
        read_textgrid_corpus(audio_root, tg_root, phone_tier="segs")
    assert len(read_textgrid_corpus(audio_root, tg_root, phone_tier="phones", limit=2)) == 2
