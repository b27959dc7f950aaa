"""The Festival corpus builder: pure-Python parts always, a real build where Festival is."""

import json

import numpy as np
import pytest

from keras_topomap.datasets import build_tts_corpus as build
from keras_topomap.datasets import load_tts_corpus, normalize_text

_FESTIVAL_OUT = """\
UTT\tkal_0001
WORD\t1\tIsabella
WORD\t2\t's
WORD\t3\tvery
WORD\t4\tvery
WORD\t5\tkind
SEG\tpau\t0.000000\t0.200000\t0
SEG\tih\t0.200000\t0.300000\t1
SEG\tz\t0.300000\t0.400000\t1
SEG\tv\t0.400000\t0.500000\t3
SEG\teh\t0.500000\t0.600000\t3
SEG\tv\t0.600000\t0.700000\t4
SEG\tiy\t0.700000\t0.800000\t4
SEG\tk\t0.800000\t0.900000\t5
SEG\tpau\t0.900000\t1.200000\t0
END\tkal_0001
Warning: something Festival printed
UTT\tkal_0002
WORD\t1\tOh
SEG\tow\t0.000000\t0.300000\t1
END\tkal_0002
"""


def test_parse_festival_output_merges_clitics_and_numbers_words():
    parsed = build.parse_festival_output(_FESTIVAL_OUT)
    assert sorted(parsed) == ["kal_0001", "kal_0002"]
    first = parsed["kal_0001"]
    assert first["words"] == ["isabella's", "very", "very", "kind"]
    assert first["segments"][0] == ("pau", 0.0, 0.2, None)
    assert [w for *_, w in first["segments"]] == [None, "isabella's", "isabella's", "very",
                                                  "very", "very", "very", "kind", None]  # fmt: skip
    assert build.merge_clitics(["'s", "a", "'ll"]) == (["'s", "a'll"], [0, 1, 1])


def test_parse_festival_output_errors_name_the_line():
    with pytest.raises(ValueError, match="line 2: malformed SEG"):
        build.parse_festival_output("UTT\ta\nSEG\tpau\t0.0\nEND\ta\n")
    with pytest.raises(ValueError, match="line 3: bad times"):
        build.parse_festival_output("UTT\ta\nWORD\t1\tx\nSEG\tpau\tzero\t1.0\t0\nEND\ta\n")
    with pytest.raises(ValueError, match="line 2: segment of unknown word number"):
        build.parse_festival_output("UTT\ta\nSEG\tpau\t0.0\t1.0\t7\nEND\ta\n")
    with pytest.raises(ValueError, match="inside utterance 'a'"):
        build.parse_festival_output("UTT\ta\nWORD\t1\thi\n")
    with pytest.raises(ValueError, match="line 2: UTT 'b' before END of 'a'"):
        build.parse_festival_output("UTT\ta\nUTT\tb\n")


def test_check_synthesis_drop_rules():
    good = build.parse_festival_output(_FESTIVAL_OUT)["kal_0001"]
    sr = build.SAMPLE_RATE
    assert build.check_synthesis(good, int(1.2 * sr)) is None
    assert build.check_synthesis(good, int(1.29 * sr)) is None  # within 0.1 s
    assert build.check_synthesis(good, int(1.31 * sr)) == "end mismatch"
    assert build.check_synthesis(good, int(1.09 * sr)) == "end mismatch"
    assert build.check_synthesis({**good, "words": []}, sr) == "empty"
    odd_phone = {**good, "segments": [("xx", 0.0, 1.2, None)]}
    assert build.check_synthesis(odd_phone, int(1.2 * sr)) == "unknown phone"
    backwards = {**good, "segments": [("pau", 0.0, 0.5, None), ("ow", 0.4, 1.2, "oh")]}
    assert build.check_synthesis(backwards, int(1.2 * sr)) == "bad times"
    punct = {**good, "words": ["so", "!", "then"]}
    assert build.check_synthesis(punct, int(1.2 * sr)) == "bad characters"


def test_sentence_selection_and_speech_text():
    assert build.split_sentences('Mr. Knightley came. "Is it so?" said she. It was.') == [
        "Mr. Knightley came.", '"Is it so?" said she.', "It was."
    ]  # fmt: skip
    assert build.split_sentences("Yes! I knew it. Did you?") == ["Yes!", "I knew it.", "Did you?"]
    raw = [
        "She knew it must be so, but it was terrible to her.",
        "she knew it must be so, but it was terrible to her.",  # duplicate (case)
        "Too short here.",
        "It was in the year 1811 that they came to the house.",  # digits
        "CHAPTER TWO began with a very long silence indeed.",  # all capitals
        '"I hope," said _she_, "it is well."',
        "One two three four five six seven eight nine ten eleven twelve thirteen.",
    ]
    kept = build.select_sentences(raw)
    assert kept == ["I hope, said she, it is well.",
                    "She knew it must be so, but it was terrible to her."]  # fmt: skip
    assert build.speech_text("Mrs. Elton and Mr. Weston--and Dr. Perry!") == (
        "Missis Elton and Mister Weston, and Doctor Perry!"
    )


def test_plan_corpus_is_deterministic_and_balanced():
    pool = [f"This is sentence {chr(97 + a)}{chr(97 + b)} for the plan." for a in range(26)
            for b in range(26)]  # fmt: skip
    plan = build.plan_corpus(pool, 30, seed=4)
    assert plan == build.plan_corpus(pool, 30, seed=4)
    assert plan != build.plan_corpus(pool, 30, seed=5)
    voices = [p["voice"] for p in plan]
    assert {v: voices.count(v) for v in build.VOICES} == {v: len(plan) // 3 for v in build.VOICES}
    assert len({p["text"] for p in plan}) == len(plan) > 30  # unique sentences, with spares
    assert len({p["id"] for p in plan}) == len(plan)
    for p in plan:
        if build.VOICES[p["voice"]]["kind"] == "diphone":
            low, high = build.STRETCH_RANGE
            assert low <= p["params"]["duration_stretch"] <= high
        else:
            low, high = build.HTS_SPEED_RANGE
            assert low <= p["params"]["speed"] <= high
    with pytest.raises(ValueError, match="Received: 5 sentences"):
        build.plan_corpus(pool[:5], 30)
    with pytest.raises(ValueError, match="Unknown voices"):
        build.plan_corpus(pool, 3, voices=("nobody",))


def test_assign_splits_hold_out_sentences_and_a_voice():
    records = [{"id": f"{v[:3]}_{k:04d}", "voice": v, "text": f"{v} {k}"}
               for v in build.VOICES for k in range(40)]  # fmt: skip
    splits = build.assign_splits(records, seed=1, test_fraction=0.1)
    assert splits == build.assign_splits(records, seed=1, test_fraction=0.1)
    assert splits["test"] != build.assign_splits(records, seed=2, test_fraction=0.1)["test"]
    assert len(splits["test"]) == 12 and len(splits["train"]) == 108
    assert not set(splits["train"]) & set(splits["test"])
    assert {r["voice"] for r in records if r["id"] in splits["test_voice"]} == {"ked_diphone"}
    assert len(splits["train_voices"]) == 80
    dup = [*records, {"id": "kal_9999", "voice": "kal_diphone", "text": records[0]["text"]}]
    with pytest.raises((AssertionError, ValueError)):
        # a sentence spoken twice may land on both sides: the builder refuses such a split
        for seed in range(50):
            build.assign_splits(dup, seed=seed, test_fraction=0.5)
    with pytest.raises(ValueError, match="held-out voice"):
        build.assign_splits(records, held_out_voice="nobody")


def test_festival_script_sets_voice_and_variation(tmp_path):
    plan = [
        {"id": "kal_0001", "voice": "kal_diphone", "speech_text": 'Say "hi".',
         "params": {"duration_stretch": 1.1, "f0_mean": 99.0}},
    ]  # fmt: skip
    script = build.festival_script(plan, "kal_diphone", tmp_path)
    assert script.startswith("(voice_kal_diphone)")
    assert "(Parameter.set 'Duration_Stretch 1.1)" in script and "target_f0_mean 99.0" in script
    assert '(SynthText "Say \\"hi\\".")' in script
    hts = [{"id": "slt_0001", "voice": "cmu_us_slt_arctic_hts", "speech_text": "Hi.",
            "params": {"speed": 0.9, "halftones": -1.5}}]  # fmt: skip
    assert '\'("-r" 0.9) \'("-fm" -1.5)' in build.festival_script(hts, hts[0]["voice"], tmp_path)


def test_main_tells_what_to_install_without_festival(capsys, tmp_path):
    code = build.main(["--out", str(tmp_path / "c"), "--festival", str(tmp_path / "no-festival")])
    assert code == 1
    err = capsys.readouterr().err
    assert "apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts" in err


@pytest.mark.skipif(build.find_festival() is None, reason="Festival is not installed")
def test_real_build_is_checked_loadable_and_deterministic(tmp_path):
    sentences = tmp_path / "sentences.txt"
    sentences.write_text(
        "\n".join(
            [
                "Mr. Woodhouse had so completely finished his story.",
                "It was Isabella's turn to speak at last.",
                "She had never been so happy in her life.",
                "They walked together along the quiet lane.",
                "The letter arrived early on the following morning.",
                "Nobody could have guessed what would happen next.",
                "Her sister smiled and said nothing at all.",
                "The weather was fine and the roads were dry.",
                "He promised to return before the end of summer.",
                "A carriage stopped at the gate of the park.",
                "Everyone agreed that the dinner had been excellent.",
                "The children ran down to the edge of the water.",
            ]
        )
    )
    args = ["--utterances", "6", "--seed", "3", "--sentences", str(sentences)]
    assert build.main(["--out", str(tmp_path / "a"), *args]) == 0
    assert build.main(["--out", str(tmp_path / "b"), *args]) == 0
    a = (tmp_path / "a" / "utterances.jsonl").read_text()
    assert a == (tmp_path / "b" / "utterances.jsonl").read_text()
    utts = load_tts_corpus("all", root=tmp_path / "a")
    again = load_tts_corpus("all", root=tmp_path / "b")
    assert len(utts) == 6 and {u.speaker for u in utts} == set(build.VOICES)
    for u, v in zip(utts, again):
        np.testing.assert_array_equal(u.audio, v.audio)  # decoded audio is identical
        assert abs(u.phones[-1].end - u.duration) <= build.MAX_END_MISMATCH
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["n_utterances"] == 6 and manifest["seed"] == 3
    for u in utts:  # Festival's spoken words are the sentence's words, abbreviations expanded
        assert u.transcript == normalize_text(build.speech_text(u.text))
