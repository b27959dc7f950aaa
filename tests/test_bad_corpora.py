"""Corpora under bad input: alignments, paths that leave the corpus, malformed ``tts:DIR`` files.

Every case must end in a :class:`CorpusError` naming the file (and line where there is one), or,
from the command line, in one ``error:`` line naming it; none may be silently accepted.
"""

import json
import re
import shutil
import zipfile

import numpy as np
import pytest
import soundfile as sf

from keras_topomap import datasets, train
from keras_topomap.datasets import (
    CorpusError,
    PhoneSegment,
    Utterance,
    read_librispeech,
    read_timit,
)
from tests.test_datasets_readers import _PHN, _WRD, _librispeech, _timit

SR = 16000


# ------------------------------------------------------------------------------- alignments


def test_timit_phones_out_of_order_or_overlapping_are_refused(tmp_path):
    swapped = [*_PHN[:2], _PHN[3], _PHN[2], *_PHN[4:]]  # line 4 starts before line 3 ends
    _timit(tmp_path / "a", phn=swapped)
    with pytest.raises(CorpusError, match=r"order or overlapping in .*SA1\.PHN, line 4"):
        read_timit(tmp_path / "a")
    overlapping = [*_PHN[:2], (3000, 4800, "iy"), *_PHN[3:]]
    _timit(tmp_path / "b", phn=overlapping, wrd=_WRD)
    with pytest.raises(CorpusError, match=r"SA1\.PHN, line 3.*starts at 0\.1875 s"):
        read_timit(tmp_path / "b")
    with pytest.warns(UserWarning, match=r"1 phones out of order"):
        assert read_timit(tmp_path / "b", on_error="skip") == []


def test_utterance_refuses_unsorted_or_bad_phones():
    audio = np.zeros(SR, "float32")
    phones = (PhoneSegment(0.5, 0.8, "ay", "hi"), PhoneSegment(0.0, 0.5, "hh", "hi"))
    with pytest.raises(CorpusError, match=r"out of time order.* in utterance 'u', segment 2"):
        Utterance("u", audio, SR, "hi", phones)
    with pytest.raises(CorpusError, match=r"'u', segment 1: need finite 0 <= start"):
        Utterance("u", audio, SR, "hi", (PhoneSegment(float("nan"), 0.5, "hh", "hi"),))
    with pytest.raises(ValueError, match="PhoneSegment objects"):
        Utterance("u", audio, SR, "hi", ((0.0, 0.5, "hh", "hi"),))
    ok = Utterance("u", audio, SR, "hi", phones[::-1])
    labels = datasets.frame_labels(ok, 100)
    assert np.all(labels[:80] >= 0)  # every frame inside a phone has its class


# ------------------------------------------------------------------------------------ paths


def test_librispeech_ids_cannot_leave_the_corpus(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    sf.write(outside / "x.flac", np.zeros(SR, "float32"), SR, format="FLAC")
    root, _ = _librispeech(tmp_path / "c", ["19-198-0000 ONE"])
    chapter = root / "19" / "198"
    for bad in ("../../../../outside/x", str(outside / "x")):
        (chapter / "19-198.trans.txt").write_text(f"{bad} STOLEN WORDS\n")
        with pytest.raises(CorpusError, match=r"outside the corpus in .*198\.trans\.txt, line 1"):
            read_librispeech(root)


def _small_tts_corpus(root):
    """A 2-utterance copy of the bundled corpus (same on-disk format)."""
    src = datasets.tts_corpus_dir()
    (root / "audio").mkdir(parents=True)
    lines = (src / "utterances.jsonl").read_text().splitlines()[:2]
    records = [json.loads(line) for line in lines]
    for rec in records:
        shutil.copy(src / rec["audio"], root / rec["audio"])
    (root / "utterances.jsonl").write_text("\n".join(lines) + "\n")
    ids = [rec["id"] for rec in records]
    splits = {"train": ids[:1], "test": ids[1:], "train_voices": ids, "test_voice": []}
    (root / "splits.json").write_text(json.dumps(splits))
    shutil.copy(src / "manifest.json", root / "manifest.json")
    return records


def _rewrite(root, records, line_text=None):
    lines = [json.dumps(rec) for rec in records]
    if line_text is not None:
        lines[1] = line_text
    (root / "utterances.jsonl").write_text("\n".join(lines) + "\n")
    datasets.clear_tts_corpus_cache()


@pytest.fixture
def tts_root(tmp_path):
    root = tmp_path / "corpus"
    records = _small_tts_corpus(root)
    yield root, records
    datasets.clear_tts_corpus_cache()


def test_tts_corpus_audio_paths_stay_inside(tts_root, tmp_path):
    root, records = tts_root
    shutil.copy(root / records[1]["audio"], tmp_path / "elsewhere.ogg")
    for bad in ("../elsewhere.ogg", str(tmp_path / "elsewhere.ogg")):
        _rewrite(root, [records[0], {**records[1], "audio": bad}])
        with pytest.raises(CorpusError, match=r"outside the corpus in .*utterances\.jsonl, line 2"):
            datasets.load_tts_corpus("train", root=root)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "x", ', r"Malformed JSON in .*utterances\.jsonl, line 2"),
        ("[1, 2]", r"utterances\.jsonl, line 2: expected a JSON object"),
        ("drop:audio", r"utterances\.jsonl, line 2: no 'audio' field"),
        ("set:n_samples=abc", r"line 2: 'n_samples' must be a JSON int"),
        ("set:phones=[[0.0, 0.1]]", r"line 2: phone 1 must be \[start, end, symbol"),
        ("set:phones=[[0.5, 0.6, \"ay\", null], [0.0, 0.5, \"hh\", null]]",
         r"out of time order or overlapping in .*utterances\.jsonl, line 2"),
        ("set:audio=\"audio/none.ogg\"", r"Missing audio for .*utterances\.jsonl, line 2"),
    ],
)
def test_malformed_tts_corpus_names_file_and_line(tts_root, line, message):
    root, records = tts_root
    rec = dict(records[1])
    if line.startswith("drop:"):
        del rec[line[5:]]
        line = json.dumps(rec)
    elif line.startswith("set:"):
        key, _, value = line[4:].partition("=")
        rec[key] = json.loads(value) if value != "abc" else value
        line = json.dumps(rec)
    _rewrite(root, records, line)
    with pytest.raises(CorpusError, match=message):
        datasets.load_tts_corpus("train", root=root)


def test_repeated_ids_and_untrainable_transcripts_name_file_and_line(tts_root):
    root, records = tts_root
    _rewrite(root, [records[0], {**records[1], "id": records[0]["id"]}])
    with pytest.raises(CorpusError, match=r"Repeated utterance id 'kal_0001' in "
                       r".*utterances\.jsonl, line 2: line 1 already lists it"):
        datasets.split_ids("all", root=root)
    _rewrite(root, [records[0], {**records[1], "transcript": "caf\u00e9 time"}])
    with pytest.raises(CorpusError, match=r"utterances\.jsonl, line 2 \(kal_0002\) has a "
                       r"character outside a-z.*'\u00e9' at position 3"):
        datasets.load_tts_corpus("train", root=root)


def test_malformed_splits_and_cli_one_line(tts_root, tmp_path, capsys):
    root, records = tts_root
    (root / "splits.json").write_text('{"train": ["kal_0001"')
    with pytest.raises(CorpusError, match=r"Cannot read .*splits\.json"):
        datasets.split_ids("train", root=root)
    (root / "splits.json").write_text(json.dumps({"train": ["nobody"], "test": []}))
    with pytest.raises(CorpusError, match=r"splits\.json lists 1 ids .*'nobody'"):
        datasets.load_tts_corpus("train", root=root)
    with pytest.raises(CorpusError, match=r"splits\.json has no split 'test_voice'"):
        datasets.split_ids("test_voice", root=root)
    # From the command line: one line naming file and line, exit status 2, no traceback.
    (root / "splits.json").write_text(json.dumps({"train": [records[0]["id"]], "test": []}))
    _rewrite(root, records, '{"id": ')
    argv = ["--data", f"tts:{root}", "--config", "tiny", "--epochs", "1", "--max-train", "2",
            "--out", str(tmp_path / "run"), "--verbose", "0", "--no-tensorboard"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "utterances.jsonl, line 2" in err[0], err


# ----------------------------------------------------------------------------- feature cache


def test_truncated_or_foreign_feature_cache_is_rebuilt(tts_root, tmp_path, monkeypatch):
    root, _ = tts_root
    monkeypatch.setenv("KERAS_TOPOMAP_CACHE", str(tmp_path / "cache"))
    config = datasets.FeatureConfig(n_mels=20)
    first = datasets.load_corpus_features("all", config, root=root, progress=False)
    [path] = (tmp_path / "cache" / "features").glob("*.npz")
    whole = path.read_bytes()
    np.save(tmp_path / "array.npy", np.zeros(3))
    damaged = {
        "truncated": whole[: len(whole) // 2],
        "npy renamed npz": (tmp_path / "array.npy").read_bytes(),
        "empty": b"",
    }
    for what, payload in damaged.items():
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=f"Cannot read the feature file {path}"):
            datasets.FeatureSet.load(path)
        with pytest.warns(UserWarning, match="Rebuilding the feature cache"):
            again = datasets.load_corpus_features("all", config, root=root, progress=False)
        assert again.ids == first.ids, what
        np.testing.assert_allclose(again.features[1], first.features[1], atol=1e-4)
        assert path.read_bytes()[:4] == whole[:4]  # a whole .npz again
    first.subset(first.ids[:1]).save(tmp_path / "one.npz")
    with np.load(tmp_path / "one.npz") as data:
        arrays = dict(data)
    arrays["lengths"] = arrays["lengths"] + 1
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"Inconsistent feature file .*bad\.npz"):
        datasets.FeatureSet.load(tmp_path / "bad.npz")


# ----------------------------------------------------------------------- every command line


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    from keras_topomap import models

    path = tmp_path_factory.mktemp("model") / "model.keras"
    models.wav2letter("tiny", n_features=40).save(path)
    return path


_DAMAGES = {
    "truncated line": ("utterances.jsonl", lambda rec: '{"id": ', r"utterances\.jsonl, line 2"),
    "missing field": ("utterances.jsonl", lambda rec: json.dumps({**rec, "phones": None}),
                      r"utterances\.jsonl, line 2: 'phones' must be a JSON list"),
    "repeated id": ("utterances.jsonl", lambda rec: json.dumps({**rec, "id": "kal_0001"}),
                    r"Repeated utterance id 'kal_0001' in .*utterances\.jsonl, line 2"),
    "broken splits": ("splits.json", None, r"Cannot read .*splits\.json: Expecting"),
}


@pytest.mark.parametrize("command", ["train", "demo", "gradnap"])
@pytest.mark.parametrize("damage", list(_DAMAGES))
def test_every_command_reports_a_malformed_corpus_in_one_line(
    tts_root, tmp_path, tiny_model_file, capsys, command, damage
):
    from keras_topomap import cli

    root, records = tts_root
    name, make_line, message = _DAMAGES[damage]
    if name == "splits.json":
        (root / "splits.json").write_text('{"train": ["kal_0001"')
    else:
        _rewrite(root, records, make_line(records[1]))
    spec, out = f"tts:{root}", str(tmp_path / "out")
    argv = {
        "train": ["train", "--data", spec, "--config", "tiny", "--epochs", "1", "--out", out,
                  "--max-train", "2", "--verbose", "0", "--no-tensorboard"],
        "demo": ["demo", "--data", spec, "--model", str(tiny_model_file), "--out", out,
                 "--verbose", "0"],
        "gradnap": ["gradnap", "--data", spec, "--model", str(tiny_model_file), "--out", out,
                    "--verbose", "0"],
    }[command]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"keras-topomap {command}: error: "), err
    assert re.search(message, err[0]), err[0]
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", r"not a \.keras model file: it is not a zip archive"),
        ("half", r"not a \.keras model file: it is not a zip archive"),
        ("foreign zip", r"is not a loadable \.keras model \(KeyError: .*config\.json"),
    ],
)
def test_gradnap_and_demo_name_a_bad_model_file(tmp_path, tiny_model_file, capsys, payload,
                                                message):
    from keras_topomap import cli

    path = tmp_path / "model.keras"
    if payload == "half":
        whole = tiny_model_file.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif payload == "foreign zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "not a model")
    else:
        path.write_bytes(payload)
    for command in ("gradnap", "demo"):
        assert cli.main([command, "--model", str(path), "--out", str(tmp_path / command),
                         "--verbose", "0"]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"keras-topomap {command}: error: --model: '{path}'"), line
        assert re.search(message, line), line
