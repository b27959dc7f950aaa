"""Deprecations, written once: an old name keeps working and says what replaces it.

Every deprecated spelling of the public API goes through :func:`warn` (one message style, a
``DeprecationWarning`` pointing at the caller) and, for a renamed argument,
:func:`renamed_argument`.
"""

from __future__ import annotations

import warnings

__all__ = ["renamed_argument", "warn"]


def warn(what, instead, stacklevel=3):
    """Warns that ``what`` is deprecated and ``instead`` replaces it (``DeprecationWarning``,
    attributed to the caller ``stacklevel - 1`` frames up)."""
    warnings.warn(f"{what} is deprecated; use {instead} instead.", DeprecationWarning,
                  stacklevel=stacklevel)


def renamed_argument(owner, old, new, old_value, new_value):
    """The value of an argument renamed from ``old`` to ``new``.

    Args:
        owner: the function or class, for the message (e.g. ``"grid.neighbor_weights"``).
        old: the deprecated argument name; ``old_value`` is ``None`` when it was not passed.
        new: the argument's name now.
        old_value: what was passed under the old name (``None``: nothing).
        new_value: what ``new`` holds (its default when only the old name was used).

    Returns:
        ``new_value``, or ``old_value`` (with a ``DeprecationWarning``) when the old name was
        used.
    """
    if old_value is None:
        return new_value
    warn(f"{owner}({old}=...)", f"{new}=...", stacklevel=4)
    return old_value
