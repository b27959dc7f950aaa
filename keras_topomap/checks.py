"""Argument checks shared by every module: one rule per kind of value, one message style.

Each check returns the value in its plain Python type (``int``, ``float`` or the chosen item)
or raises a ``ValueError`` in Keras' style, naming the argument and what was received::

    steps must be an integer >= 1. Received: steps=0

The rules are the same everywhere:

- integers: Python ``int`` and NumPy integers are accepted; ``bool`` is refused (``True`` is
  not a count), so are floats, even integral ones (``3.0``);
- numbers: ints, floats and NumPy numbers are accepted; ``bool`` is refused, so are NaN and
  infinities;
- ``owner`` (a class or command name) prefixes the message, e.g. ``"OptimalInputs: "``.

Example:

>>> positive_int(np.int64(4), "batch_size")
4
>>> positive_int(True, "batch_size")
Traceback (most recent call last):
...
ValueError: batch_size must be an integer >= 1. Received: batch_size=True
>>> number(0.5, "dropout", minimum=0, below=1)
0.5
"""

import math
import numbers

import numpy as np

__all__ = [
    "choice",
    "fraction",
    "integer",
    "is_integer",
    "non_negative_int",
    "number",
    "odd_int",
    "positive_int",
    "positive_number",
]


def _fail(name, expected, value, owner):
    prefix = f"{owner}: " if owner else ""
    raise ValueError(f"{prefix}{name} must be {expected}. Received: {name}={value!r}")


def _expected(kind, bounds, allow_none):
    """What a check expected: ``kind``, then its ``(sign, bound)`` pairs that are set, joined
    with "and", then "or None" (e.g. ``"a finite number >= 0 and < 1 or None"``)."""
    limits = " and ".join(f"{sign} {bound}" for sign, bound in bounds if bound is not None)
    return " ".join(part for part in (kind, limits, "or None" if allow_none else "") if part)


def is_integer(value):
    """Whether ``value`` counts as an integer here: ``int`` or a NumPy integer, not ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(value, name, *, minimum=None, maximum=None, odd=False, allow_none=False, owner=None):
    """Checks an integer argument, optionally bounded (inclusive) and odd.

    Args:
        value: the value received.
        name: the argument's name, as the caller spells it.
        minimum: inclusive lower bound (``None``: unbounded).
        maximum: inclusive upper bound (``None``: unbounded).
        odd: require an odd integer.
        allow_none: return ``None`` for ``None`` instead of refusing it.
        owner: prefix of the message (class or command name).

    Returns:
        ``int(value)`` (or ``None``).
    """
    if value is None and allow_none:
        return None
    ok = (
        is_integer(value)
        and (minimum is None or value >= minimum)
        and (maximum is None or value <= maximum)
        and (not odd or value % 2 == 1)
    )
    if not ok:
        kind = "an odd integer" if odd else "an integer"
        if minimum is not None and maximum is not None:
            kind, bounds = f"{kind} in [{minimum}, {maximum}]", ()
        else:
            bounds = ((">=", minimum), ("<=", maximum))
        _fail(name, _expected(kind, bounds, allow_none), value, owner)
    return int(value)


def positive_int(value, name, *, allow_none=False, owner=None):
    """An integer >= 1 (see :func:`integer`)."""
    return integer(value, name, minimum=1, allow_none=allow_none, owner=owner)


def non_negative_int(value, name, *, allow_none=False, owner=None):
    """An integer >= 0 (see :func:`integer`)."""
    return integer(value, name, minimum=0, allow_none=allow_none, owner=owner)


def odd_int(value, name, *, minimum=1, owner=None):
    """An odd integer >= ``minimum`` (a window or block side; see :func:`integer`)."""
    return integer(value, name, minimum=minimum, odd=True, owner=owner)


def number(value, name, *, minimum=None, maximum=None, above=None, below=None, allow_none=False,
           owner=None):
    """Checks a finite real number, optionally bounded.

    Args:
        value: the value received.
        name: the argument's name.
        minimum: inclusive lower bound.
        maximum: inclusive upper bound.
        above: exclusive lower bound (``above=0``: strictly positive).
        below: exclusive upper bound.
        allow_none: return ``None`` for ``None`` instead of refusing it.
        owner: prefix of the message.

    Returns:
        ``float(value)`` (or ``None``).
    """
    if value is None and allow_none:
        return None
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
        and (minimum is None or value >= minimum)
        and (maximum is None or value <= maximum)
        and (above is None or value > above)
        and (below is None or value < below)
    )
    if not ok:
        bounds = ((">=", minimum), (">", above), ("<=", maximum), ("<", below))
        _fail(name, _expected("a finite number", bounds, allow_none), value, owner)
    return float(value)


def positive_number(value, name, *, allow_none=False, owner=None):
    """A finite number > 0 (see :func:`number`)."""
    return number(value, name, above=0, allow_none=allow_none, owner=owner)


def fraction(value, name, *, owner=None):
    """A finite number in ``[0, 1)`` (a rate or a held-out share; see :func:`number`)."""
    return number(value, name, minimum=0, below=1, owner=owner)


def choice(value, name, choices, *, owner=None):
    """Checks that ``value`` is one of ``choices`` and returns it.

    ``True`` does not pass for ``1`` (nor ``False`` for ``0``) unless the choices hold bools.
    """
    choices = tuple(choices)
    for option in choices:
        same_kind = isinstance(option, bool) == isinstance(value, bool)
        try:
            equal = bool(option == value)
        except (TypeError, ValueError):  # arrays and other values without a plain ==
            equal = False
        if same_kind and equal:
            return option
    _fail(name, f"one of {list(choices)}", value, owner)
