"""A character n-gram language model and CTC prefix beam search that listens to it.

A Wav2Letter-style recognizer spells what it hears, letter by letter; with a few hundred
training sentences it misspells common words ("wel" for "well"). Decoding with a language
model of the training transcripts (shallow fusion) fixes many of these without changing the
acoustic model:

- :class:`CharNGramLM`: characters ``a``-``z``, space and apostrophe plus an end-of-sentence
  symbol, interpolated absolute discounting (each order's counts lowered by ``discount`` and
  the freed mass given to the next lower order, down to a uniform distribution), so every
  character has a probability > 0 after any history. Fitted on transcripts, saved as JSON.
- :func:`prefix_beam_search`: CTC prefix beam search over one utterance's log-probabilities,
  scoring each prefix by ``log P_ctc + lm_weight * log P_lm + length_bonus * characters``
  (the end of sentence counted at the end).
- :func:`tune_weights`: the ``lm_weight`` / ``length_bonus`` pair with the lowest CER on held-out
  utterances (the validation split, never the test split).

The model and the decoder are plain numpy and Python: decoding is a CPU step after
``predict``, pruned to the classes with log-probability above ``prune`` at each frame (a CTC
model puts almost all its mass on one or two classes per frame).

Example:

>>> lm = CharNGramLM(order=3).fit(["the cat", "the hat", "a cat"])
>>> lm.log_prob("the c", "a") > lm.log_prob("the c", "q")
True
>>> round(float(np.exp([lm.log_prob("th", c) for c in lm.symbols]).sum()), 6)
1.0
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import numpy as np

from keras_topomap import checks

__all__ = ["END", "LENGTH_BONUSES", "LM_WEIGHTS", "CharNGramLM", "decode_with_lm",
           "prefix_beam_search", "tune_weights"]

#: The end-of-sentence symbol of :class:`CharNGramLM` (scored once a hypothesis is complete).
END = "$"
_START = "^"  # pads the history of a sentence's first characters


def _alphabet():
    from keras_topomap.datasets import CHARACTERS

    return tuple(CHARACTERS[1:])  # without the CTC blank


class CharNGramLM:
    """Character n-gram model with interpolated absolute discounting.

    Args:
        order: characters of context plus one (``order=6``: five characters of history).
        discount: subtracted from every seen count, in ``(0, 1)``; the mass freed goes to the
            next lower order.

    Attributes:
        symbols: the characters it scores (``a``-``z``, space, apostrophe) and :data:`END`.

    Attributes (after :meth:`fit`):
        n_sentences_: sentences it was fitted on.
        n_characters_: characters counted (end symbols included).

    Example:

    >>> lm = CharNGramLM(order=4).fit(["i like him very well", "he is here"])
    >>> lm.score("he is here") > lm.score("eh si ereh")
    True
    """

    def __init__(self, order=6, discount=0.75):
        self.order = order
        self.discount = discount

    def _validate(self):
        owner = type(self).__name__
        order = checks.positive_int(self.order, "order", owner=owner)
        discount = checks.number(self.discount, "discount", above=0, below=1, owner=owner)
        return order, float(discount)

    @property
    def symbols(self):
        return (*_alphabet(), END)

    def fit(self, texts):
        """Counts the n-grams of ``texts`` (transcripts in the package's alphabet). Returns self.

        Raises:
            ValueError: for no texts, or a text with a character outside the alphabet (named).
        """
        from keras_topomap.datasets import text_to_labels

        order, _ = self._validate()
        texts = list(texts)
        if not texts:
            raise ValueError(f"{type(self).__name__}.fit needs at least one text. Received: []")
        counts = [collections.defaultdict(collections.Counter) for _ in range(order)]
        n_characters = 0
        for k, text in enumerate(texts):
            text_to_labels(text, source=f"text {k}")  # the alphabet's check and message
            history = _START * (order - 1)
            for c in (*text.lower(), END):
                for n in range(order):
                    counts[n][history[len(history) - n:] if n else ""][c] += 1
                history = (history + c)[1:] if order > 1 else ""
                n_characters += 1
        self.counts_ = [{h: dict(c) for h, c in level.items()} for level in counts]
        self.n_sentences_ = len(texts)
        self.n_characters_ = n_characters
        self._totals = [{h: (sum(c.values()), len(c)) for h, c in level.items()}
                        for level in self.counts_]
        self._cache = {}
        return self

    def _check_fitted(self):
        if not hasattr(self, "counts_"):
            raise ValueError(f"This {type(self).__name__} is not fitted yet: call fit first.")

    def _history(self, history):
        n = self.order - 1
        return ((_START * n) + history)[-n:] if n else ""

    def log_prob(self, history, symbol):
        """Natural log of P(``symbol`` | the text so far ``history``)."""
        self._check_fitted()
        h = self._history(history)
        key = (h, symbol)
        value = self._cache.get(key)
        if value is None:
            p = 1.0 / len(self.symbols)
            for n in range(self.order):
                context = h[len(h) - n:] if n else ""
                seen = self.counts_[n].get(context)
                if not seen:
                    continue
                total, types = self._totals[n][context]
                p = (max(seen.get(symbol, 0) - self.discount, 0.0) / total
                     + self.discount * types / total * p)
            value = self._cache[key] = math.log(p)
        return value

    def score(self, text):
        """Log-probability of a whole sentence (its end included)."""
        return sum(self.log_prob(text[:i], c) for i, c in enumerate((*text, END)))

    def perplexity(self, texts):
        """Per-character perplexity over ``texts`` (end symbols counted)."""
        texts = list(texts)
        total = sum(self.score(t) for t in texts)
        return math.exp(-total / sum(len(t) + 1 for t in texts))

    def get_config(self):
        return {"order": self.order, "discount": self.discount}

    def to_dict(self):
        """JSON-able dict of the fitted model (see :meth:`from_dict`)."""
        self._check_fitted()
        return {**self.get_config(), "n_sentences": self.n_sentences_,
                "n_characters": self.n_characters_, "counts": self.counts_}

    @classmethod
    def from_dict(cls, data):
        lm = cls(order=data["order"], discount=data["discount"])
        lm.counts_ = [{h: dict(c) for h, c in level.items()} for level in data["counts"]]
        lm.n_sentences_ = int(data["n_sentences"])
        lm.n_characters_ = int(data["n_characters"])
        lm._totals = [{h: (sum(c.values()), len(c)) for h, c in level.items()}
                      for level in lm.counts_]
        lm._cache = {}
        return lm

    def save(self, path):
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path):
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a saved {cls.__name__} ({e}).") from None

    def __repr__(self):
        return f"CharNGramLM(order={self.order!r}, discount={self.discount!r})"


def _log_add(a, b):
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(log_probs, lm=None, lm_weight=0.5, length_bonus=1.0, beam_width=16,
                       prune=-8.0, blank_index=0):
    """The best transcript of one utterance by CTC prefix beam search with a language model.

    Args:
        log_probs: ``(T, classes)`` log-softmax of the logits over the utterance's valid frames
            (class ``k > 0`` is character ``CHARACTERS[k]``).
        lm: a fitted :class:`CharNGramLM`, or None (plain prefix beam search).
        lm_weight: the language model's weight (``alpha``).
        length_bonus: added per character (``beta``): balances the LM's preference for short
            hypotheses.
        beam_width: prefixes kept after each frame.
        prune: classes whose log-probability at a frame is below this are not extended.
        blank_index: the CTC blank class.

    Returns:
        the transcript (``str``).

    Example:

    >>> lp = np.log(np.eye(29)[[8, 0, 9, 9]] * 0.97 + 0.001)
    >>> prefix_beam_search(lp)
    'hi'
    """
    from keras_topomap.datasets import CHARACTERS

    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[1] != len(CHARACTERS):
        raise ValueError(f"prefix_beam_search expects log-probabilities of shape (T, "
                         f"{len(CHARACTERS)}). Received: shape={lp.shape}")
    if not np.isfinite(lp).all():
        raise ValueError("prefix_beam_search: log_probs hold NaN or inf values.")
    owner = "prefix_beam_search"
    beam_width = checks.positive_int(beam_width, "beam_width", owner=owner)
    weight = checks.number(lm_weight, "lm_weight", minimum=0, owner=owner)
    length_bonus = checks.number(length_bonus, "length_bonus", owner=owner)
    prune = checks.number(prune, "prune", owner=owner)
    if lm is not None and not isinstance(lm, CharNGramLM):
        raise ValueError(f"{owner}: lm must be a fitted CharNGramLM or None. Received: "
                         f"{type(lm).__name__}")
    weight = float(weight) if lm is not None else 0.0
    # prefix -> [log P(prefix, path ends in blank), log P(prefix, ends in its last char), LM+bonus]
    beams = {"": [0.0, -math.inf, 0.0]}
    for row in lp:
        candidates = np.nonzero(row >= min(prune, row.max()))[0].tolist()
        grown = collections.defaultdict(lambda: [-math.inf, -math.inf, None])
        for prefix, (p_blank, p_char, extra) in beams.items():
            total = _log_add(p_blank, p_char)
            for k in candidates:
                p = row[k]
                if k == blank_index:
                    entry = grown[prefix]
                    entry[0] = _log_add(entry[0], total + p)
                    entry[2] = extra
                    continue
                c = CHARACTERS[k]
                longer = prefix + c
                entry = grown[longer]
                if entry[2] is None:
                    entry[2] = extra + length_bonus + (
                        weight * lm.log_prob(prefix, c) if weight else 0.0)
                if prefix and prefix[-1] == c:
                    # a repeat needs a blank in between; without one the path stays on prefix
                    entry[1] = _log_add(entry[1], p_blank + p)
                    same = grown[prefix]
                    same[1] = _log_add(same[1], p_char + p)
                    same[2] = extra
                else:
                    entry[1] = _log_add(entry[1], total + p)
        ranked = sorted(grown.items(), key=lambda kv: _log_add(kv[1][0], kv[1][1]) + kv[1][2],
                        reverse=True)
        beams = dict(ranked[:beam_width])

    def final(item):
        prefix, (p_blank, p_char, extra) = item
        end = weight * lm.log_prob(prefix, END) if weight else 0.0
        return _log_add(p_blank, p_char) + extra + end

    return max(beams.items(), key=final)[0]


def _log_softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def decode_with_lm(logits, lengths, lm, lm_weight=0.5, length_bonus=1.0, beam_width=16,
                   prune=-8.0):
    """:func:`prefix_beam_search` of every sample of ``(batch, T, classes)`` logits (or a list
    of ``(T_i, classes)`` arrays, then ``lengths`` may be None). Returns a list of strings."""
    if lengths is None:
        items = [np.asarray(x, dtype=np.float64) for x in logits]
    else:
        logits = np.asarray(logits, dtype=np.float64)
        lengths = np.asarray(lengths).reshape(-1)
        if logits.ndim != 3 or len(lengths) != logits.shape[0]:
            raise ValueError(
                f"decode_with_lm needs (batch, T, classes) logits and one length per sample. "
                f"Received: logits of shape {logits.shape}, {len(lengths)} lengths")
        items = [logits[i, : int(n)] for i, n in enumerate(lengths)]
    return [prefix_beam_search(_log_softmax(x), lm, lm_weight, length_bonus, beam_width, prune)
            for x in items]


#: The weights :func:`tune_weights` tries by default.
LM_WEIGHTS = (0.3, 0.5, 0.8)
LENGTH_BONUSES = (0.0, 1.0, 2.0)


def tune_weights(logits_list, references, lm, lm_weights=LM_WEIGHTS,
                 length_bonuses=LENGTH_BONUSES, beam_width=16, prune=-8.0):
    """The ``(lm_weight, length_bonus, cer)`` with the lowest CER on held-out utterances.

    Args:
        logits_list: one ``(T_i, classes)`` logits array per utterance (valid frames only).
        references: their transcripts.
        lm: a fitted :class:`CharNGramLM` (fitted on *other* utterances).
        lm_weights: the grid's LM weights.
        length_bonuses: the grid's length bonuses.

    Returns:
        ``{"lm_weight", "length_bonus", "cer", "grid": [[weight, bonus, cer], ...]}``.
    """
    from keras_topomap.ctc import character_error_rate

    log_probs = [_log_softmax(np.asarray(x, dtype=np.float64)) for x in logits_list]
    grid, best = [], None
    for weight in lm_weights:
        for bonus in length_bonuses:
            hypotheses = [prefix_beam_search(x, lm, weight, bonus, beam_width, prune)
                          for x in log_probs]
            cer = float(character_error_rate(list(references), hypotheses))
            grid.append([float(weight), float(bonus), cer])
            if best is None or cer < best[2]:
                best = grid[-1]
    return {"lm_weight": best[0], "length_bonus": best[1], "cer": best[2], "grid": grid}
