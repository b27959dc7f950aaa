"""CharNGramLM and CTC prefix beam search with it (keras_topomap.language_model)."""

import itertools
import math

import numpy as np
import pytest

from keras_topomap import language_model as lm_lib
from keras_topomap.datasets import CHARACTERS
from keras_topomap.language_model import END, CharNGramLM, prefix_beam_search

TEXTS = ["i like him very well", "he is here of course", "the cat sat", "he will tell"]


def _index(c):
    return CHARACTERS.index(c)


def test_probabilities_sum_to_one_after_any_history():
    lm = CharNGramLM(order=4).fit(TEXTS)
    for history in ("", "he", "the ca", "zzz", "well "):
        total = sum(math.exp(lm.log_prob(history, c)) for c in lm.symbols)
        assert total == pytest.approx(1.0, abs=1e-9)
    assert lm.symbols[-1] == END and len(lm.symbols) == len(CHARACTERS)


def test_seen_text_is_likelier_than_unseen_and_nothing_is_impossible():
    lm = CharNGramLM(order=5).fit(TEXTS)
    assert lm.score("he will tell") > lm.score("eh lliw llet")
    assert lm.log_prob("the c", "a") > lm.log_prob("the c", "q") > -math.inf
    assert lm.perplexity(TEXTS) < lm.perplexity(["qzx jjj"])
    assert (lm.n_sentences_, lm.n_characters_) == (4, sum(len(t) + 1 for t in TEXTS))


def test_a_plain_count_reference_for_order_two():
    # order 2, discount d: P(c | h) = max(n(h c) - d, 0) / n(h) + d * types(h) / n(h) * P1(c),
    # P1(c) = max(n(c) - d, 0) / N + d * types / N / |V|
    texts, d = ["ab", "aa"], 0.5
    lm = CharNGramLM(order=2, discount=d).fit(texts)
    unigram = {"a": 3, "b": 1, END: 2}
    n_total, v = 6, len(lm.symbols)

    def p1(c):
        return max(unigram.get(c, 0) - d, 0) / n_total + d * len(unigram) / n_total / v

    after_a = {"b": 1, "a": 1, END: 1}  # "ab$", "aa$": a->b, a->a, a->$
    for c in ("a", "b", END, "z"):
        expected = max(after_a.get(c, 0) - d, 0) / 3 + d * 3 / 3 * p1(c)
        assert math.exp(lm.log_prob("a", c)) == pytest.approx(expected, rel=1e-12)


def test_save_and_load_round_trip(tmp_path):
    lm = CharNGramLM(order=3, discount=0.6).fit(TEXTS)
    lm.save(tmp_path / "lm.json")
    loaded = CharNGramLM.load(tmp_path / "lm.json")
    assert repr(loaded) == repr(lm) == "CharNGramLM(order=3, discount=0.6)"
    for history, c in (("he ", "w"), ("", "t"), ("xx", END)):
        assert loaded.log_prob(history, c) == lm.log_prob(history, c)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        CharNGramLM.load(tmp_path / "bad.json")


@pytest.mark.parametrize("kwargs, texts, message", [
    ({"order": 0}, TEXTS, "order"),
    ({"discount": 1.0}, TEXTS, "discount"),
    ({}, [], "at least one text"),
    ({}, ["fine", "caf\u00e9"], "text 1"),
])
def test_bad_arguments_and_texts_are_refused(kwargs, texts, message):
    with pytest.raises(ValueError, match=message):
        CharNGramLM(**kwargs).fit(texts)


def test_an_unfitted_model_says_so():
    with pytest.raises(ValueError, match="not fitted"):
        CharNGramLM().log_prob("", "a")


def _log_probs(frames, floor=1e-6):
    """``(T, 29)`` log-probabilities from per-frame ``{char or "_" (blank): p}``."""
    out = np.full((len(frames), len(CHARACTERS)), floor)
    for t, frame in enumerate(frames):
        for c, p in frame.items():
            out[t, 0 if c == "_" else _index(c)] = p
    out /= out.sum(axis=1, keepdims=True)
    return np.log(out)


def test_repeats_need_a_blank_between_them():
    assert prefix_beam_search(_log_probs([{"l": 1}, {"l": 1}])) == "l"
    assert prefix_beam_search(_log_probs([{"l": 1}, {"_": 1}, {"l": 1}])) == "ll"
    assert prefix_beam_search(_log_probs([{"h": 1}, {"_": 1}, {"i": 1}, {"i": 1}])) == "hi"


def _collapse(path):
    out, last = [], None
    for k in path:
        if k != last and k != 0:
            out.append(k)
        last = k
    return "".join(CHARACTERS[k] for k in out)


def _brute_force(log_probs, classes, lm, weight, bonus):
    """Best transcript over every CTC path through ``classes``: the exact prefix probability
    (a sum over paths) plus the LM and length terms."""
    totals = {}
    for path in itertools.product(classes, repeat=len(log_probs)):
        text = _collapse(path)
        p = sum(log_probs[t, k] for t, k in enumerate(path))
        totals[text] = np.logaddexp(totals.get(text, -np.inf), p)

    def score(text):
        extra = bonus * len(text)
        if lm is not None:
            extra += weight * lm.score(text)
        return totals[text] + extra

    return max(totals, key=score)


@pytest.mark.parametrize("weight, bonus", [(0.0, 0.0), (0.5, 1.0), (1.5, 0.0), (0.8, 3.0)])
def test_the_search_agrees_with_all_paths_enumerated(weight, bonus):
    rng = np.random.default_rng(int(weight * 10 + bonus))
    classes = [0, _index("e"), _index("a"), _index("l")]
    lm = CharNGramLM(order=3).fit(["el", "ale", "lea", "eel"])
    for _ in range(4):
        probs = np.full((5, len(CHARACTERS)), 1e-9)
        probs[:, classes] = rng.dirichlet(np.ones(4) * 0.7, size=5)
        lp = np.log(probs / probs.sum(axis=1, keepdims=True))
        best = prefix_beam_search(lp, lm, weight, bonus, beam_width=64, prune=-15.0)
        assert best == _brute_force(lp, classes, lm, weight, bonus)


def test_the_language_model_fixes_an_ambiguous_letter():
    lm = CharNGramLM(order=4).fit(["the"] * 5 + ["tha"])
    frames = [{"t": 1}, {"_": 1}, {"h": 1}, {"_": 1}, {"a": 0.55, "e": 0.45}]
    lp = _log_probs(frames)
    assert prefix_beam_search(lp) == "tha"
    assert prefix_beam_search(lp, lm, lm_weight=1.0, length_bonus=0.0) == "the"


def test_bad_log_probs_and_arguments_are_refused():
    with pytest.raises(ValueError, match="shape"):
        prefix_beam_search(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        prefix_beam_search(np.full((3, len(CHARACTERS)), np.nan))
    lp = _log_probs([{"a": 1}])
    lm = CharNGramLM(order=2).fit(["a"])
    with pytest.raises(ValueError, match="lm_weight"):
        prefix_beam_search(lp, lm, lm_weight=float("nan"))
    with pytest.raises(ValueError, match="lm_weight"):
        prefix_beam_search(lp, lm, lm_weight=-1.0)
    with pytest.raises(ValueError, match="length_bonus"):
        prefix_beam_search(lp, lm, length_bonus=float("inf"))
    with pytest.raises(ValueError, match="CharNGramLM"):
        prefix_beam_search(lp, lm={"order": 2})
    with pytest.raises(ValueError, match="not fitted"):
        prefix_beam_search(lp, CharNGramLM())
    with pytest.raises(ValueError, match="one length per sample"):
        lm_lib.decode_with_lm(lp[None], [1, 1], lm)


def test_decode_and_tune_on_a_batch():
    lm = CharNGramLM(order=4).fit(["the"] * 5 + ["tha"])
    lp = _log_probs([{"t": 1}, {"_": 1}, {"h": 1}, {"_": 1}, {"a": 0.55, "e": 0.45}])
    logits = np.stack([lp, lp])  # log-probabilities are logits of themselves
    texts = lm_lib.decode_with_lm(logits, [5, 3], lm, lm_weight=1.0, length_bonus=0.0)
    assert texts == ["the", "th"]
    tuned = lm_lib.tune_weights([lp], ["the"], lm, lm_weights=(0.0, 1.0), length_bonuses=(0.0,))
    assert (tuned["lm_weight"], tuned["cer"]) == (1.0, 0.0)
    assert [row[:2] for row in tuned["grid"]] == [[0.0, 0.0], [1.0, 0.0]]
