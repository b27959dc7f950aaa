"""Tests for the bundled corpus, phone folding, features, frame labels and SpeechBatches."""

import json
import shutil

import keras
import numpy as np
import pytest

from keras_topomap import datasets
from keras_topomap.datasets import (
    CHARACTERS,
    PHONES_39,
    FeatureConfig,
    FeatureSet,
    PhoneSegment,
    SpeechBatches,
    Utterance,
    extract_features,
    frame_labels,
    labels_to_text,
    load_corpus_features,
    load_tts_corpus,
    normalize_text,
    num_frames,
    pack_ctc_targets,
    phones,
    text_to_labels,
    unpack_ctc_targets,
)

SR = 16000


def _utterance(uid="u", seconds=1.0, segments=None, transcript="hi there", sr=SR, seed=0):
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(int(seconds * sr))).astype("float32")
    if segments is None:
        segments = [(0.0, 0.2, "pau", None), (0.2, 0.5, "hh", "hi"), (0.5, 0.8, "ay", "hi")]
    return Utterance(uid, audio, sr, transcript, tuple(PhoneSegment(*s) for s in segments), "spk")


@pytest.fixture(scope="module")
def corpus_all():
    return load_tts_corpus("all")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A 12-utterance copy of the bundled corpus in the same on-disk format."""
    src = datasets.tts_corpus_dir()
    dst = tmp_path_factory.mktemp("corpus")
    (dst / "audio").mkdir()
    records = [json.loads(line) for line in (src / "utterances.jsonl").read_text().splitlines()]
    splits = json.loads((src / "splits.json").read_text())
    keep = splits["train"][:4] + splits["test"][:4] + splits["test_voice"][-4:]
    keep_set = set(keep)
    with open(dst / "utterances.jsonl", "w") as f:
        for rec in records:
            if rec["id"] in keep_set:
                f.write(json.dumps(rec) + "\n")
                shutil.copy(src / rec["audio"], dst / rec["audio"])
    small_splits = {name: [i for i in ids if i in keep_set] for name, ids in splits.items()}
    (dst / "splits.json").write_text(json.dumps(small_splits))
    shutil.copy(src / "manifest.json", dst / "manifest.json")
    return dst


# ------------------------------------------------------------------------------------------
# phones


def test_phone_set_and_folding_table():
    assert len(PHONES_39) == 39 and len(set(PHONES_39)) == 39
    assert PHONES_39[-1] == phones.SILENCE == "sil"
    notes_table = {"ao": "aa", "ax": "ah", "axr": "er", "zh": "sh", "el": "l", "em": "m",
                   "en": "n", "nx": "n", "hv": "hh", "pau": "sil"}  # fmt: skip
    for source, target in notes_table.items():
        assert phones.fold_phone(source) == target
    for source, target in phones.FOLDING.items():
        assert target in PHONES_39, source
    for p in PHONES_39:
        assert phones.fold_phone(p) == p
        assert phones.index_to_phone(phones.phone_to_index(p)) == p
    assert phones.fold_phone("AO1") == "aa" and phones.fold_phone("EH0") == "eh"
    assert phones.fold_phone("bcl") == "sil" and phones.fold_phone("h#") == "sil"
    assert phones.fold_phone("q") is None and phones.phone_to_index("spn") == -1
    assert phones.phone_to_index("ao") == phones.phone_to_index("aa") == 7
    assert sum(len(v) for v in phones.BROAD_CLASSES.values()) == 39
    assert phones.broad_class("AE1") == "vowel"


def test_unknown_phone_errors_name_the_source():
    with pytest.raises(ValueError, match=r"in s1\.PHN, line 3.*Received: 'xx'"):
        phones.fold_phone("xx", source="s1.PHN, line 3")
    with pytest.raises(ValueError, match="Received: 39"):
        phones.index_to_phone(39)
    assert not phones.is_known_phone("xx") and phones.is_known_phone("AH0")


# ------------------------------------------------------------------------------------------
# bundled corpus


def test_corpus_size_splits_and_provenance(corpus_all):
    info = datasets.tts_corpus_info()
    root = datasets.tts_corpus_dir()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size <= 25e6
    assert len(corpus_all) == info["n_utterances"] >= 900
    assert sum(u.duration for u in corpus_all) >= 45 * 60
    assert (root / "README.md").read_text().count("licence") >= 1
    splits = {s: {u.id for u in load_tts_corpus(s)} for s in ("train", "test")}
    assert not splits["train"] & splits["test"]
    assert splits["train"] | splits["test"] == {u.id for u in corpus_all}
    train_text = {u.text.lower() for u in load_tts_corpus("train")}
    assert not train_text & {u.text.lower() for u in load_tts_corpus("test")}
    test_voice = load_tts_corpus("test_voice")
    assert {u.speaker for u in test_voice} == {datasets.HELD_OUT_VOICE}
    train_voices = load_tts_corpus("train_voices")
    assert datasets.HELD_OUT_VOICE not in {u.speaker for u in train_voices}
    assert len(train_voices) + len(test_voice) == len(corpus_all)
    assert len({u.speaker for u in load_tts_corpus("test")}) == 3
    with pytest.raises(ValueError, match="Received: split='dev'"):
        load_tts_corpus("dev")


def test_corpus_utterances_are_well_formed(corpus_all):
    allowed = set(CHARACTERS[1:])
    for utt in corpus_all:
        assert utt.sample_rate == SR and utt.audio.dtype == np.float32 and utt.audio.ndim == 1
        assert utt.transcript and set(utt.transcript) <= allowed
        assert utt.transcript == utt.transcript.lower().strip()
        starts = np.array([s.start for s in utt.phones])
        ends = np.array([s.end for s in utt.phones])
        assert np.all(ends > starts) and np.all(starts[1:] >= ends[:-1] - 1e-6)
        assert abs(ends[-1] - utt.duration) <= 0.1
        assert utt.phones[0].phone == "pau" and utt.phones[0].word is None
    words = [s.word for s in corpus_all[0].phones if s.word]
    assert set(words) == set(corpus_all[0].transcript.split())
    assert not corpus_all[0].audio.flags.writeable
    assert load_tts_corpus("all")[0] is corpus_all[0]  # decoded once per process
    datasets.clear_tts_corpus_cache()
    assert load_tts_corpus("all")[0] is not corpus_all[0]


def test_alignment_sanity_silence_quieter_and_labels_cover(corpus_all):
    config = FeatureConfig()
    gaps = []
    for utt in corpus_all[::25]:
        feats = extract_features(utt, config)
        labels = frame_labels(utt, len(feats), config)
        assert len(feats) == len(labels) == num_frames(len(utt.audio), config)
        assert (labels >= 0).mean() > 0.95
        # frame energy (dB) straight from the audio, one frame per feature frame
        hop, win = config.hop_length, config.win_length
        padded = np.pad(utt.audio, (win // 2, win // 2 + hop))
        frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][: len(labels)]
        energy = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
        sil = labels == phones.phone_to_index("sil")
        speech = (labels >= 0) & ~sil
        gaps.append(np.median(energy[speech]) - np.median(energy[sil]))
    assert min(gaps) > 15 and np.median(gaps) > 30


def test_labels_carry_phonetic_information_across_voices(corpus_all):
    """A per-frame Gaussian classifier of broad phone classes, fitted on two voices, recognises
    the held-out voice well above chance; with labels shifted by 250 ms it falls to chance."""
    cfg = FeatureConfig(kind="mfcc")
    groups = list(phones.BROAD_CLASSES)
    group_of = np.array([groups.index(phones.broad_class(p)) for p in PHONES_39])
    held_out = datasets.HELD_OUT_VOICE

    def frames(utts, shift):
        xs, ys = [], []
        for utt in utts:
            x = extract_features(utt, cfg)
            y = np.roll(frame_labels(utt, len(x), cfg), shift)
            xs.append(x[y >= 0])
            ys.append(group_of[y[y >= 0]])
        return np.concatenate(xs), np.concatenate(ys)

    def accuracy(shift):
        x_tr, y_tr = frames([u for u in corpus_all[::10] if u.speaker != held_out], shift)
        x_te, y_te = frames([u for u in corpus_all[1::10] if u.speaker == held_out], shift)
        k = np.arange(len(groups))[:, None]
        mu = np.stack([x_tr[y_tr == g].mean(0) for g in k[:, 0]])
        var = np.stack([x_tr[y_tr == g].var(0) + 1e-3 for g in k[:, 0]])
        prior = np.log(np.bincount(y_tr, minlength=len(groups)) / len(y_tr))
        loglik = -0.5 * (((x_te[:, None] - mu) ** 2 / var).sum(-1) + np.log(var).sum(-1)) + prior
        chance = np.bincount(y_te).max() / len(y_te)
        return (loglik.argmax(1) == y_te).mean(), chance

    aligned, chance = accuracy(0)
    shifted, _ = accuracy(25)
    assert aligned > chance + 0.2 and aligned > shifted + 0.2, (aligned, shifted, chance)


# ------------------------------------------------------------------------------------------
# features, labels, characters


def test_feature_config():
    cfg = FeatureConfig()
    assert (cfg.n_features, cfg.win_length, cfg.hop_length, cfg.n_fft) == (40, 400, 160, 512)
    assert hash(cfg) == hash(FeatureConfig()) and {cfg: 1}[FeatureConfig()] == 1
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    assert FeatureConfig(kind="mfcc").n_features == 13
    variants = ({}, {"n_mels": 64}, {"normalize": False}, {"kind": "mfcc"}, {"hop_ms": 20})
    keys = {FeatureConfig(**kw).cache_key() for kw in variants}
    assert len(keys) == 5
    with pytest.raises(ValueError, match="Received: kind='stft'"):
        FeatureConfig(kind="stft")
    with pytest.raises(ValueError, match="n_mfcc"):
        FeatureConfig(kind="mfcc", n_mfcc=50, n_mels=40)
    with pytest.raises(ValueError, match="hop_ms"):
        FeatureConfig(hop_ms=0)


def test_extract_features_shapes_normalisation_and_resampling():
    utt = _utterance(seconds=1.0)
    for cfg in (FeatureConfig(), FeatureConfig(kind="mfcc"), FeatureConfig(n_mels=64)):
        x = extract_features(utt, cfg)
        assert x.shape == (num_frames(SR, cfg), cfg.n_features) == (101, cfg.n_features)
        assert x.dtype == np.float32 and np.all(np.isfinite(x))
        np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-4)
        np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-3)
    raw = extract_features(utt, FeatureConfig(normalize=False))
    assert raw.std() > 0 and abs(raw.mean()) > 1
    silent = Utterance("z", np.zeros(SR, "float32"), SR, "a")
    assert np.all(np.isfinite(extract_features(silent)))  # digital silence stays finite
    low = Utterance("r", utt.audio[::2].copy(), 8000, "hi", utt.phones)
    assert extract_features(low).shape == (101, 40)
    bad = Utterance("nan", np.full(100, np.nan, "float32"), SR, "a")
    with pytest.raises(ValueError, match="'nan'.*NaN"):
        extract_features(bad)


def test_frame_labels_use_frame_centres():
    segments = [(0.0, 0.1, "pau", None), (0.1, 0.25, "hh", "hi"), (0.25, 0.3, "q", None),
                (0.3, 0.5, "AY1", "hi")]  # fmt: skip
    utt = _utterance(seconds=0.6, segments=segments)
    labels = frame_labels(utt, 61, FeatureConfig())  # centres at 0.00, 0.01, ..., 0.60 s
    sil, hh, ay = (phones.phone_to_index(p) for p in ("sil", "hh", "ay"))
    expected = np.full(61, -1)
    expected[0:10], expected[10:25], expected[30:50] = sil, hh, ay  # q (25..29) has no class
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int32
    assert frame_labels(_utterance(segments=[]), 5).tolist() == [-1] * 5
    with pytest.raises(ValueError, match="utterance 'odd'.*'xx'"):  # refused when built
        _utterance(uid="odd", segments=[(0.0, 0.5, "xx", None)])


def test_characters_round_trip_and_errors():
    assert len(CHARACTERS) == 29 and CHARACTERS[0] == datasets.BLANK
    assert CHARACTERS[1] == "a" and CHARACTERS[27] == " " and CHARACTERS[28] == "'"
    ids = text_to_labels("Isn't it")
    assert ids.dtype == np.int32 and ids.min() >= 1
    assert labels_to_text(ids) == "isn't it"
    assert labels_to_text(np.concatenate([[0, 0], ids, [0]])) == "isn't it"
    with pytest.raises(ValueError, match=r"utt7.*'3' at position 5"):
        text_to_labels("room 3", source="utt7")
    with pytest.raises(ValueError, match="Empty transcript"):
        text_to_labels("  ")
    with pytest.raises(ValueError, match="< 29"):
        labels_to_text([30])
    assert normalize_text('"Well-known," she said;  OK.') == "well known she said ok"


def test_feature_cache_second_load_reuses_file(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_TOPOMAP_CACHE", str(tmp_path))
    cfg = FeatureConfig(kind="mfcc")
    first = load_corpus_features("test", cfg, root=small_corpus, progress=False)
    files = list((tmp_path / "features").glob("*.npz"))
    assert len(files) == 1
    utts = load_tts_corpus("test", root=small_corpus)
    assert first.ids == [u.id for u in utts]
    # equal up to float rounding (BLAS thread count changes the summation order)
    np.testing.assert_allclose(first.features[1], extract_features(utts[1], cfg), atol=1e-4)
    np.testing.assert_array_equal(first.frame_labels[1], frame_labels(utts[1], None, cfg))

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again instead of loaded from the cache")

    monkeypatch.setattr(datasets.features, "extract_features", no_extraction)
    second = load_corpus_features("train", cfg, root=small_corpus, progress=False)
    assert second.ids == [u.id for u in load_tts_corpus("train", root=small_corpus)]
    again = load_corpus_features("test", cfg, root=small_corpus, progress=False)
    np.testing.assert_array_equal(again.features[0], first.features[0])
    monkeypatch.undo()
    monkeypatch.setenv("KERAS_TOPOMAP_CACHE", str(tmp_path))
    load_corpus_features("test", FeatureConfig(n_mels=20), root=small_corpus, progress=False)
    assert len(list((tmp_path / "features").glob("*.npz"))) == 2


# ------------------------------------------------------------------------------------------
# SpeechBatches


def _toy_set(n=37, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 60, n)
    words = ["a", "bb", "ccc dd", "it's e"]
    return FeatureSet(
        ids=[f"u{i}" for i in range(n)],
        speakers=["s"] * n,
        transcripts=[words[i % 4] for i in range(n)],
        features=[rng.standard_normal((t, 3)).astype("float32") + 1 for t in lengths],
        frame_labels=[rng.integers(0, 39, t).astype("int32") for t in lengths],
        config=FeatureConfig(n_mels=3),
    )


def test_batches_all_mode_shapes_and_padding():
    fs = _toy_set()
    ds = SpeechBatches(fs, batch_size=8, mode="all", shuffle=True, seed=3)
    assert len(ds) == 5 and isinstance(ds, keras.utils.PyDataset)
    seen = []
    for b in range(len(ds)):
        batch = ds[b]
        idx = ds.batch_indices(b)
        seen.extend(idx.tolist())
        x, lens = batch["features"], batch["feature_lengths"]
        assert x.dtype == np.float32 and x.shape[0] == len(idx) and x.shape[2] == 3
        assert x.shape[1] == lens.max() and batch["frame_labels"].shape == x.shape[:2]
        for k, i in enumerate(idx):
            t = len(fs.features[i])
            assert lens[k] == t
            np.testing.assert_array_equal(x[k, :t], fs.features[i])
            assert np.all(x[k, t:] == 0) and np.all(batch["frame_labels"][k, t:] == -1)
            np.testing.assert_array_equal(batch["frame_labels"][k, :t], fs.frame_labels[i])
            lab = text_to_labels(fs.transcripts[i])
            n = batch["label_lengths"][k]
            assert n == len(lab) and np.all(batch["labels"][k, n:] == 0)
            np.testing.assert_array_equal(batch["labels"][k, :n], lab)
        for key in ("labels", "label_lengths", "frame_labels", "feature_lengths"):
            assert batch[key].dtype == np.int32
    assert sorted(seen) == list(range(len(fs)))  # every utterance exactly once per epoch


def test_batches_ctc_and_frames_modes():
    fs = _toy_set()
    x, packed = SpeechBatches(fs, batch_size=6, mode="ctc", shuffle=False)[2]
    ref = SpeechBatches(fs, batch_size=6, mode="all", shuffle=False)[2]
    assert packed.dtype == np.int32 and packed.shape == (6, 2 + ref["labels"].shape[1])
    np.testing.assert_array_equal(packed[:, 0], ref["feature_lengths"])
    np.testing.assert_array_equal(packed[:, 1], ref["label_lengths"])
    np.testing.assert_array_equal(packed[:, 2:], ref["labels"])
    np.testing.assert_array_equal(x, ref["features"])
    xf, yf = SpeechBatches(fs, batch_size=6, mode="frames", shuffle=False)[2]
    np.testing.assert_array_equal(yf, ref["frame_labels"])
    assert yf.shape == xf.shape[:2]
    x8, _ = SpeechBatches(fs, batch_size=6, mode="frames", pad_to_multiple=16)[0]
    assert x8.shape[1] % 16 == 0
    np.testing.assert_array_equal(
        pack_ctc_targets([9, 4], [np.array([1, 2, 3]), np.array([5])]),
        [[9, 3, 1, 2, 3], [4, 1, 5, 0, 0]],
    )
    with pytest.raises(ValueError, match="label_lengths is required"):
        pack_ctc_targets([1], np.zeros((1, 2), "int32"))


def test_batches_shuffle_is_deterministic_and_bucketed():
    fs = _toy_set(n=200)

    def epochs(ds, n=3):
        out = []
        for _ in range(n):
            out.append([ds.batch_indices(b).tolist() for b in range(len(ds))])
            ds.on_epoch_end()
        return out

    a = epochs(SpeechBatches(fs, batch_size=8, seed=5))
    b = epochs(SpeechBatches(fs, batch_size=8, seed=5))
    assert a == b and a[0] != a[1] and a[1] != a[2]
    assert epochs(SpeechBatches(fs, batch_size=8, seed=6))[0] != a[0]
    jumped = SpeechBatches(fs, batch_size=8, seed=5)
    jumped.set_epoch(2)
    assert [jumped.batch_indices(k).tolist() for k in range(len(jumped))] == a[2]
    fixed = epochs(SpeechBatches(fs, batch_size=8, shuffle=False), n=2)
    assert fixed[0] == fixed[1]
    bucketed = SpeechBatches(fs, batch_size=8, seed=5).padding_fraction
    plain = SpeechBatches(fs, batch_size=8, seed=5, bucket=False).padding_fraction
    assert bucketed < 0.5 * plain


def test_batches_from_utterances_and_errors():
    utts = [_utterance(uid=f"u{i}", seconds=0.5 + 0.1 * i, seed=i) for i in range(5)]
    ds = SpeechBatches(utts, FeatureConfig(kind="mfcc"), batch_size=2, mode="all", shuffle=False)
    assert ds[0]["features"].shape[2] == 13 and len(ds) == 3
    with pytest.raises(ValueError, match="mode.*Received: mode='seq'"):
        SpeechBatches(utts, mode="seq")
    with pytest.raises(ValueError, match="batch_size.*Received: batch_size=0"):
        SpeechBatches(utts, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        SpeechBatches([])
    with pytest.raises(IndexError):
        ds[3]
    bad = [_utterance(uid="odd", transcript="room 101")]
    with pytest.raises(ValueError, match="'odd'.*'1'"):
        SpeechBatches(bad, mode="ctc")
    assert len(SpeechBatches(bad, mode="frames")) == 1  # frame mode needs no characters


def test_batches_from_bundled_corpus(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_TOPOMAP_CACHE", str(tmp_path))
    ds = SpeechBatches.from_corpus("test", root=small_corpus, batch_size=2, mode="all")
    batch = ds[0]
    assert batch["features"].shape[2] == 40
    assert (batch["frame_labels"] >= 0).sum() > 0.9 * batch["feature_lengths"].sum()


@pytest.mark.backend
def test_unpack_ctc_targets_and_fit_on_every_backend():
    packed = pack_ctc_targets([7, 3], [np.array([4, 5]), np.array([6])])
    f, n, lab = unpack_ctc_targets(keras.ops.convert_to_tensor(packed))
    assert keras.ops.convert_to_numpy(f).tolist() == [7, 3]
    assert keras.ops.convert_to_numpy(n).tolist() == [2, 1]
    assert keras.ops.convert_to_numpy(lab).tolist() == [[4, 5], [6, 0]]
    f, n, lab = unpack_ctc_targets(packed)  # numpy in, numpy out
    assert isinstance(lab, np.ndarray) and lab.dtype == np.int32 and f.tolist() == [7, 3]
    ds = SpeechBatches(_toy_set(n=12), batch_size=4, mode="frames", seed=1)
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.Dense(len(PHONES_39))])
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1),
    )
    history = model.fit(ds, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert ds.epoch >= 2  # Keras calls on_epoch_end after every epoch (and on reset)
