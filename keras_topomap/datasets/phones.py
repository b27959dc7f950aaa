"""Phone symbols: ARPAbet as the corpora write it, folded to the 39 classes of Lee & Hon (1989).

Corpora label phones with slightly different ARPAbet inventories: Festival's ``radio`` set
(lower case, ``pau`` for pauses), TIMIT's 61 symbols (with stop closures such as ``bcl`` and the
utterance-edge marker ``h#``), and Montreal Forced Aligner's ARPAbet (upper case with stress digits,
``AA1``; ``sil``/``sp`` for silence, ``spn`` for spoken noise). For analysis they are all folded to
the 39-class set of K.-F. Lee and H.-W. Hon, "Speaker-independent phone recognition using hidden
Markov models" (IEEE TASSP, 1989), :data:`PHONES_39`.

Folding rules (:data:`FOLDING`):

* vowels and consonants: ``ao->aa``, ``ax->ah``, ``ax-h->ah``, ``axr->er``, ``ix->ih``, ``ux->uw``,
  ``el->l``, ``em->m``, ``en->n``, ``nx->n``, ``eng->ng``, ``hv->hh``, ``zh->sh``;
* silence: ``pau``, ``h#``, ``epi``, ``sp``, ``sil``, ``brth`` (Festival's breath) and TIMIT's stop
  closures ``bcl dcl gcl pcl tcl kcl`` all become ``sil``, the last of the 39 classes;
* no class: TIMIT's glottal stop ``q`` and MFA's spoken-noise ``spn`` fold to ``None``: their
  frames get label ``-1`` (ignored), never a guessed phone;
* MFA stress digits are stripped (``AA1 -> aa``), and case is ignored.

Anything else is an unknown symbol and raises a :class:`ValueError` that names where it came
from (pass ``source=`` with the file and line).

Example:

>>> from keras_topomap.datasets import phones
>>> phones.fold_phone("ax"), phones.fold_phone("AO1"), phones.fold_phone("pau")
('ah', 'aa', 'sil')
>>> phones.phone_to_index("sil"), phones.index_to_phone(0), len(phones.PHONES_39)
(38, 'iy', 39)
"""

from __future__ import annotations

import re

__all__ = [
    "PHONES_39",
    "SILENCE",
    "FOLDING",
    "IGNORED",
    "BROAD_CLASSES",
    "fold_phone",
    "is_known_phone",
    "phone_to_index",
    "index_to_phone",
    "broad_class",
]

#: The silence class; always the last entry of :data:`PHONES_39`.
SILENCE = "sil"

#: The 39 folded phone classes, grouped vowels, semivowels, nasals, affricates, stops,
#: fricatives, then silence. A phone's class id (:func:`phone_to_index`) is its position here.
PHONES_39 = (
    # vowels (incl. diphthongs and r-coloured er)
    "iy", "ih", "eh", "ae", "ah", "uw", "uh", "aa", "ey", "ay", "oy", "aw", "ow", "er",
    # semivowels / glides
    "l", "r", "y", "w",
    # nasals
    "m", "n", "ng",
    # affricates
    "ch", "jh",
    # stops (incl. flap)
    "b", "d", "dx", "g", "p", "t", "k",
    # fricatives (incl. aspirate)
    "dh", "z", "v", "f", "th", "s", "sh", "hh",
    # silence and pauses
    SILENCE,
)  # fmt: skip

#: Source symbol -> folded class, for every symbol that is not already one of :data:`PHONES_39`.
FOLDING = {
    "ao": "aa",
    "ax": "ah",
    "ax-h": "ah",
    "axr": "er",
    "ix": "ih",
    "ux": "uw",
    "el": "l",
    "em": "m",
    "en": "n",
    "nx": "n",
    "eng": "ng",
    "hv": "hh",
    "zh": "sh",
    # pauses, utterance edges, breath, and stop closures (silent part of a stop) -> silence
    "pau": SILENCE,
    "h#": SILENCE,
    "epi": SILENCE,
    "sp": SILENCE,
    "brth": SILENCE,
    "bcl": SILENCE,
    "dcl": SILENCE,
    "gcl": SILENCE,
    "pcl": SILENCE,
    "tcl": SILENCE,
    "kcl": SILENCE,
    "": SILENCE,  # MFA writes silence as an empty interval
}

#: Symbols that are known but have no class: their frames are labelled ``-1``.
IGNORED = frozenset({"q", "spn"})

#: Coarse groups of the 39 classes, handy for summaries and sanity checks.
BROAD_CLASSES = {
    "vowel": PHONES_39[:14],
    "semivowel": PHONES_39[14:18],
    "nasal": PHONES_39[18:21],
    "affricate": PHONES_39[21:23],
    "stop": PHONES_39[23:30],
    "fricative": PHONES_39[30:38],
    "silence": (SILENCE,),
}

_INDEX = {p: i for i, p in enumerate(PHONES_39)}
_BROAD = {p: group for group, members in BROAD_CLASSES.items() for p in members}
_STRESS = re.compile(r"(?<=[a-z])[012]$")


def _normalize(phone):
    if not isinstance(phone, str):
        raise TypeError(f"A phone symbol must be a string. Received: {phone!r}")
    return _STRESS.sub("", phone.strip().lower())


def is_known_phone(phone):
    """Whether :func:`fold_phone` accepts ``phone`` (a class, a folded or an ignored symbol)."""
    if not isinstance(phone, str):
        return False
    p = _normalize(phone)
    return p in _INDEX or p in FOLDING or p in IGNORED


def fold_phone(phone, source=None):
    """Fold an ARPAbet symbol to its class in :data:`PHONES_39`.

    Args:
        phone: a symbol as a corpus writes it (``"ax"``, ``"AO1"``, ``"pau"``, ``"bcl"``).
        source: where the symbol came from (e.g. ``"s1/u3.PHN, line 7"``), used in the error.

    Returns:
        The folded class (a member of :data:`PHONES_39`), or ``None`` for the symbols in
        :data:`IGNORED`, which have no class.

    Raises:
        ValueError: for a symbol that is not ARPAbet as any supported corpus writes it.

    Example:

    >>> fold_phone("axr"), fold_phone("EH0"), fold_phone("q") is None
    ('er', 'eh', True)
    """
    p = _normalize(phone)
    if p in _INDEX:
        return p
    if p in FOLDING:
        return FOLDING[p]
    if p in IGNORED:
        return None
    where = f" in {source}" if source else ""
    raise ValueError(
        f"Unknown phone symbol{where}: expected ARPAbet (Festival radio, TIMIT or MFA ARPAbet "
        f"symbols, e.g. 'aa', 'AA1', 'pau', 'h#'). Received: {phone!r}"
    )


def phone_to_index(phone, source=None):
    """Class id (0..38) of a phone symbol after folding; ``-1`` for an ignored symbol.

    Accepts raw symbols as well as folded ones, so ``phone_to_index("ao") == phone_to_index("aa")``.
    These ids are the phone groups used for frame labels and for per-phone analyses.

    Example:

    >>> phone_to_index("aa"), phone_to_index("ao"), phone_to_index("q")
    (7, 7, -1)
    """
    folded = fold_phone(phone, source=source)
    return -1 if folded is None else _INDEX[folded]


def index_to_phone(index):
    """The folded class name for a class id in ``0..38``.

    Example:

    >>> index_to_phone(38)
    'sil'
    """
    i = int(index)
    if not 0 <= i < len(PHONES_39):
        raise ValueError(
            f"A phone class id must be in [0, {len(PHONES_39) - 1}]. Received: {index!r}"
        )
    return PHONES_39[i]


def broad_class(phone):
    """Broad class (``"vowel"``, ``"stop"``, ...) of a symbol, or ``None`` for ignored symbols.

    Example:

    >>> broad_class("AE1"), broad_class("zh")
    ('vowel', 'fricative')
    """
    folded = fold_phone(phone)
    return None if folded is None else _BROAD[folded]
