"""Checks of the batches GradNAP profiles, and of what its compiled step gives back.

One bad batch must not spoil a whole analysis without a word, nor crash deep inside a backend.
:class:`~keras_topomap.GradNAP` runs every batch through these checks, the same on every
backend:

- **Non-finite values.** A single NaN or infinity in the input of one utterance would make every
  profile NaN (a NaN activation times a zero one-hot weight is still NaN), and a finite input can
  still overflow inside the model. The inputs are checked on the host before the step
  (:func:`screen`), the adjusted activations per row on the device (:func:`with_finite_flags`)
  and the per-group sums and the target when they come back (:func:`nonfinite_rows`).
  ``on_nonfinite="raise"`` (the default) raises a ``ValueError`` naming the batch, the utterance
  (row) and, for step results, the layer; ``"skip"`` leaves those rows out (a batch whose step
  results are bad is computed again without them) and counts them.
- **Empty batches.** A batch of 0 rows or 0 frames adds nothing; it is skipped and counted.
- **Group labels without a bound.** Without ``group_names`` the number of groups grows with the
  labels seen; labels ``>= MAX_GROWN_GROUPS`` are refused unless ``n_groups`` states a larger
  count (:func:`grow_groups`), and the compiled step is built for a power-of-two bucket of
  groups (:func:`group_bucket`), so that a count growing batch by batch reuses a few steps.
- **CTC transcripts** (``target="ctc_loss"``): label ids below the number of classes, label
  lengths between 0 and the packed labels' width (:func:`check_ctc_targets`).

The skipped counts are kept with the running sums (``GroupSums.skipped``), saved with them and
added by merges; GradNAP shows them as ``skipped_``.

Example:

>>> gn = GradNAP(model, ["conv_1"], on_nonfinite="skip").fit(batches)
>>> gn.skipped_
{'nonfinite_rows': 1, 'empty_batches': 0}
"""

from __future__ import annotations

import numpy as np
from keras import ops

__all__ = [
    "MAX_GROWN_GROUPS",
    "check_ctc_targets",
    "group_bucket",
    "grow_groups",
    "nonfinite_rows",
    "read_skipped",
    "rows_to_keep",
    "screen",
    "with_finite_flags",
]

#: The most groups a GradNAP without ``group_names`` grows to unless ``n_groups`` says more.
MAX_GROWN_GROUPS = 1024
#: The smallest number of groups a step is compiled for (then 32, 64, ...).
MIN_BUCKET = 16
ON_NONFINITE = ("raise", "skip")
#: What ``skipped_`` counts: rows left out for non-finite values, batches without rows/frames.
SKIP_KINDS = ("nonfinite_rows", "empty_batches")

_SKIP_HINT = "Pass on_nonfinite='skip' to leave such rows out (counted in skipped_)."


def _row_word(batch):
    """``"utterance"`` for frame-labelled batches, ``"sample"`` for per-sample ones."""
    return "utterance" if batch.labels.ndim == 2 else "sample"


def take_rows(batch, keep):
    """The batch (a NamedTuple of row-indexed arrays, or None fields) with rows ``keep``."""
    return type(batch)(*(None if field is None else field[keep] for field in batch))


def screen(batch, index, on_nonfinite, skipped):
    """Checks one parsed batch before its step.

    Returns ``(batch, rows)``: the batch without the rows whose input is not finite (with
    ``on_nonfinite="skip"``) and the original indices of the rows kept; ``(None, None)`` when
    nothing is left (an empty batch, or every row skipped). ``skipped`` (a dict of counts) is
    updated in place.

    Raises:
        ValueError: with ``on_nonfinite="raise"``, naming the batch, the first bad row and
            where in it the first non-finite value is.
    """
    x = batch.x
    if x.shape[0] == 0 or (batch.labels.ndim == 2 and x.shape[1] == 0):
        skipped["empty_batches"] = skipped.get("empty_batches", 0) + 1
        return None, None
    bad = ~np.isfinite(x.reshape(len(x), -1))
    bad_rows = np.flatnonzero(bad.any(axis=1))
    rows = np.arange(len(x))
    if bad_rows.size:
        if on_nonfinite == "raise":
            row = int(bad_rows[0])
            where = np.unravel_index(int(np.argmax(bad[row])), x.shape[1:])
            at = (f"frame {where[0]}, feature {where[1]}" if batch.labels.ndim == 2 and
                  len(where) == 2 else f"index {tuple(int(i) for i in where)}")
            raise ValueError(
                f"Batch {index}, {_row_word(batch)} {row}: the input holds "
                f"{int(bad[row].sum())} non-finite value(s) (first {x[row][where]} at {at}); "
                f"one would make every profile NaN. {_SKIP_HINT}"
            )
        skipped["nonfinite_rows"] = skipped.get("nonfinite_rows", 0) + int(bad_rows.size)
        rows = np.setdiff1d(rows, bad_rows)
        if not rows.size:
            return None, None
        batch = take_rows(batch, rows)
    return batch, rows


def finite_rows(value):
    """Float32 ``(batch,)``: 1 where every entry of the row of ``value`` is finite."""
    axes = tuple(range(1, len(value.shape)))
    finite = ops.isfinite(ops.cast(value, "float32"))
    return ops.cast(ops.all(finite, axis=axes) if axes else finite, "float32")


def with_finite_flags(reduce, layers):
    """Wraps a step's ``reduce`` so that its result also holds ``"finite"``: per layer, float32
    ``(batch,)`` flags (1: the row's activations times their gradients, or the activations
    alone without gradients, are all finite)."""

    def wrapped(result, *extras):
        out = dict(reduce(result, *extras))
        flags = {}
        for name in layers:
            a = ops.cast(result.activations[name], "float32")
            if name in result.gradients:
                a = a * ops.cast(result.gradients[name], "float32")
            flags[name] = finite_rows(a)
        out["finite"] = flags
        return out

    return wrapped


def rows_to_keep(result, pending, on_nonfinite, skipped):
    """Checks what a step gave back for a batch (``pending``: GradNAP's record of it, with the
    screened ``batch``, its ``rows``' indices in the batch as given, its ``index`` and
    ``n_groups``). Returns None when all is finite, else (with ``on_nonfinite="skip"``) the
    positions in ``batch`` of the rows to compute again without the others, and counts those
    left out in ``skipped``.

    Raises:
        ValueError: with ``on_nonfinite="raise"``, naming the batch, the row and the layer.
    """
    bad = nonfinite_rows(result, pending.batch, pending.rows, pending.index, on_nonfinite,
                         pending.n_groups)
    if bad is None:
        return None
    skipped["nonfinite_rows"] = skipped.get("nonfinite_rows", 0) + len(bad)
    return np.setdiff1d(np.arange(len(pending.batch.x)), bad)


def nonfinite_rows(result, batch, rows, index, on_nonfinite, n_groups):
    """The positions in ``batch`` of the rows with non-finite step results (all of them when
    the sums or the target are not finite but no row is flagged), or None when all is finite;
    with ``on_nonfinite="raise"`` a ValueError naming the batch, the row and the layer."""
    n = len(batch.x)
    for name, flags in result["finite"].items():
        bad = np.flatnonzero(np.asarray(flags)[:n] < 0.5)
        if bad.size:
            if on_nonfinite == "raise":
                raise ValueError(
                    f"Batch {index}, {_row_word(batch)} {int(rows[bad[0]])}: non-finite "
                    f"(gradient-adjusted) activations in layer '{name}' although the input is "
                    f"finite (an overflow inside the model or the target?). {_SKIP_HINT}"
                )
            return bad
    sums_ok = all(np.isfinite(np.asarray(s)[:n_groups]).all() for s in result["sums"].values())
    if sums_ok and np.isfinite(result["value"]):
        return None
    if on_nonfinite == "raise":
        raise ValueError(
            f"Batch {index}: the step gave non-finite per-group sums or a non-finite target "
            f"({float(result['value'])}) for finite inputs and activations. {_SKIP_HINT}"
        )
    return np.arange(n)


def group_bucket(n_groups):
    """The number of groups a step is compiled for: the next power of two, at least 16.

    Example:

    >>> [group_bucket(n) for n in (0, 16, 17, 60, 1000)]
    [16, 16, 32, 64, 1024]
    """
    return max(MIN_BUCKET, 1 << max(int(n_groups) - 1, 0).bit_length())


def grow_groups(state, labels, index, group_names=None, n_groups=None, kind="frame"):
    """Grows ``state`` to the labels of a batch; returns ``(groups, step groups)``: the real
    count, and the count to compile the step for (the fixed count when it is given, else its
    :func:`group_bucket`).

    Raises:
        ValueError: without ``group_names``, for a label ``>= max(MAX_GROWN_GROUPS,
            n_groups)``, naming the batch and the label.
    """
    top = int(labels.max()) if labels.size else -1
    bound = MAX_GROWN_GROUPS if n_groups is None else max(MAX_GROWN_GROUPS, n_groups)
    if group_names is None and top >= bound:
        what = "frame label" if kind == "frame" else "label"
        raise ValueError(
            f"Batch {index}: {what} {top} is beyond the {bound} groups GradNAP grows to "
            f"without being told (MAX_GROWN_GROUPS = {MAX_GROWN_GROUPS}; each group costs "
            "memory in every layer); pass n_groups (the number of groups) or group_names to "
            "allow more."
        )
    if top >= state.n_groups:
        state.grow(top + 1)
    g = state.n_groups
    fixed = len(group_names) if group_names is not None else n_groups
    if g == fixed:
        return g, max(g, 1)
    return g, group_bucket(g) if g <= MAX_GROWN_GROUPS else g


def check_ctc_targets(labels, label_lengths, n_classes, index):
    """Raises a ValueError naming the batch and utterance for a label length outside
    ``0..labels.shape[1]`` or a label id outside ``0..n_classes - 1`` within the length."""
    labels, lengths = np.asarray(labels), np.asarray(label_lengths)
    width = labels.shape[1]
    outside = np.flatnonzero((lengths < 0) | (lengths > width))
    if outside.size:
        i = int(outside[0])
        raise ValueError(
            f"Batch {index}, utterance {i}: label length {int(lengths[i])} is outside "
            f"0..{width} (the batch has {width} packed label(s) per utterance)."
        )
    # every utterance at once: the labels within each length that are no class id
    within = np.arange(width)[None, :] < lengths[:, None]
    wrong = labels < 0 if n_classes is None else (labels < 0) | (labels >= n_classes)
    rows, columns = np.nonzero(within & wrong)
    if rows.size:
        i, label = int(rows[0]), int(labels[rows[0], columns[0]])
        raise ValueError(
            f"Batch {index}, utterance {i}: label id {label} is outside "
            f"0..{n_classes - 1 if n_classes else '?'}; the model gives {n_classes} classes."
        )


def read_skipped(value, where):
    """The ``skipped`` counts of a saved header (None for files written before they were
    saved: zeros), checked."""
    if value is None:
        return dict.fromkeys(SKIP_KINDS, 0)
    if not isinstance(value, dict):
        raise ValueError(f"{where}: 'skipped' must be a dict of counts. Received: {value!r}")
    unknown = sorted(set(value) - set(SKIP_KINDS))
    if unknown:
        raise ValueError(
            f"{where}: 'skipped' holds unknown kinds {unknown}. Known: {list(SKIP_KINDS)}"
        )
    for key, count in value.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(
                f"{where}: skipped[{key!r}] must be an int >= 0. Received: {count!r}"
            )
    return {key: int(value.get(key, 0)) for key in SKIP_KINDS}


def published(skipped):
    """``skipped_`` as GradNAP shows it: every kind, with 0 for those never counted."""
    return {key: int(skipped.get(key, 0)) for key in SKIP_KINDS}
