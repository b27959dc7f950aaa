"""Running per-group sums of layer activations: the state behind every neuron activation profile.

A neuron activation profile (NAP) of a group (a phoneme, a class) is the group's mean activation
per filter minus a baseline over groups. Computed over a dataset, it needs only running sums:
per layer, the sum of the (gradient-adjusted) activations of each group's frames and the number
of those frames, plus, for time-resolved profiles, the same per position of a window around each
occurrence. :class:`GroupSums` holds that state for several layers; GradNAP and TopoMapCallback
both fill one and read their profiles from it, so the arithmetic and the empty-group rule are
written once:

- a group without frames in a layer has mean 0 and profile 0 there (never NaN) and is left out of
  that layer's baseline; :meth:`GroupSums.empty_groups` says which groups that concerns;
- ``baseline="group_mean"``: the mean over the groups with frames (NAP's);
  ``baseline="frame_mean"``: the mean over all their frames (groups weighted by frame count).

Two states over different data add exactly (:meth:`GroupSums.total`): counts are integers and
sums float64.

Example:

>>> state = GroupSums({"conv_1": 4}, n_groups=2)
>>> state.add("conv_1", sums=np.ones((2, 4)), counts=np.array([3, 1]))
>>> profiles, means, baseline = state.profiles("conv_1")
"""

from __future__ import annotations

import numpy as np

__all__ = ["GroupSums", "group_profiles"]

BASELINES = ("group_mean", "frame_mean")


class GroupSums:
    """Per layer: float64 sums ``(n_groups, n_filters)`` and int counts ``(n_groups,)`` of the
    frames of each group, and with ``window=w`` the same per window position
    (``(n_groups, 2w + 1, n_filters)`` and ``(n_groups, 2w + 1)``); plus the labelled input
    frames seen and a target total (what GradNAP differentiated, summed over batches).

    Args:
        n_filters: ``{layer: number of filters}``; its order is the layer order of
            :meth:`to_arrays`.
        n_groups: groups to start with (more with :meth:`grow`).
        window: half width of the time-resolved sums, or None.

    Attributes:
        sums, counts: ``{layer: array}`` as above.
        window_sums, window_counts: ``{layer: array}``; empty without ``window``.
        n_frames: labelled input frames added.
        target_total: sum of the target values added.
        skipped: ``{kind: count}`` of what the filler left out (e.g. GradNAP's rows with
            non-finite values); copied and added like the sums.
    """

    def __init__(self, n_filters, n_groups=0, window=None):
        self.n_filters = {str(name): int(n) for name, n in dict(n_filters).items()}
        self.window = None if window is None else int(window)
        self.n_groups = int(n_groups)
        g = self.n_groups
        self.sums = {name: np.zeros((g, n)) for name, n in self.n_filters.items()}
        self.counts = {name: np.zeros(g, np.int64) for name in self.n_filters}
        self.window_sums, self.window_counts = {}, {}
        if self.window is not None:
            k = 2 * self.window + 1
            self.window_sums = {name: np.zeros((g, k, n)) for name, n in self.n_filters.items()}
            self.window_counts = {name: np.zeros((g, k), np.int64) for name in self.n_filters}
        self.n_frames = 0
        self.target_total = 0.0
        self.skipped = {}

    @property
    def layers(self):
        return list(self.n_filters)

    def grow(self, n_groups):
        """Extends every array to ``n_groups`` groups (new groups empty); never shrinks."""
        extra = int(n_groups) - self.n_groups
        if extra <= 0:
            return self
        for table in (self.sums, self.counts, self.window_sums, self.window_counts):
            for name, values in table.items():
                table[name] = np.pad(values, [(0, extra)] + [(0, 0)] * (values.ndim - 1))
        self.n_groups = int(n_groups)
        return self

    def add(self, layer, sums, counts):
        """Adds one batch's per-group sums ``(g, n_filters)`` and counts ``(g,)`` of ``layer``
        to its first ``g`` groups (a batch may know fewer groups than the state)."""
        g = len(counts)
        self.sums[layer][:g] += np.asarray(sums, dtype=np.float64)
        self.counts[layer][:g] += np.asarray(counts).astype(np.int64)

    def add_frames(self, layer, values, labels):
        """Adds frames on the host: ``values`` ``(..., n_filters)`` with int group ``labels``
        ``(...)`` (-1: no group), summed per group in float64."""
        values = np.asarray(values).reshape(-1, self.n_filters[layer])
        labels = np.asarray(labels).reshape(-1)
        order = np.flatnonzero(labels >= 0)
        if not len(order):
            return
        if labels[order].max() >= self.n_groups:
            raise ValueError(
                f"Group label {labels[order].max()} of layer '{layer}' is out of range (there "
                f"are {self.n_groups} groups)."
            )
        # Sorted by group, one np.add.reduceat gives every group's sum.
        order = order[np.argsort(labels[order], kind="stable")]
        groups, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        self.sums[layer][groups] += np.add.reduceat(values[order], starts, axis=0,
                                                    dtype=np.float64)
        self.counts[layer][groups] += counts

    def add_windows(self, layer, sums, counts):
        """Adds time-resolved sums ``(g, 2w + 1, n_filters)`` and counts ``(g, 2w + 1)``."""
        g = len(counts)
        self.window_sums[layer][:g] += np.asarray(sums, dtype=np.float64)
        self.window_counts[layer][:g] += np.asarray(counts).astype(np.int64)

    def copy(self):
        """An independent copy (no array shared with this state)."""
        new = GroupSums(self.n_filters, 0, self.window)
        new.n_groups = self.n_groups
        for source, target in ((self.sums, new.sums), (self.counts, new.counts),
                               (self.window_sums, new.window_sums),
                               (self.window_counts, new.window_counts)):
            target.update({name: values.copy() for name, values in source.items()})
        new.n_frames, new.target_total = self.n_frames, self.target_total
        new.skipped = dict(self.skipped)
        return new

    @classmethod
    def total(cls, parts):
        """One new state holding the sums of ``parts`` (same layers, filters and window; the
        group count is the largest of the parts')."""
        parts = list(parts)
        if not parts:
            raise ValueError("GroupSums.total needs at least one GroupSums.")
        first = parts[0]
        for i, part in enumerate(parts[1:], start=1):
            if (part.n_filters, part.window) != (first.n_filters, first.window):
                raise ValueError(
                    f"GroupSums.total: part {i} has layers/filters {part.n_filters} and window "
                    f"{part.window}; part 0 has {first.n_filters} and {first.window}."
                )
        result = first.copy().grow(max(p.n_groups for p in parts))
        for part in parts[1:]:
            for name in result.layers:
                result.add(name, part.sums[name], part.counts[name])
                if result.window is not None:
                    result.add_windows(name, part.window_sums[name], part.window_counts[name])
            result.n_frames += part.n_frames
            result.target_total += part.target_total
            for kind, count in part.skipped.items():
                result.skipped[kind] = result.skipped.get(kind, 0) + count
        return result

    def profiles(self, layer, baseline="group_mean"):
        """``(profiles, group means, baseline)`` of ``layer``: ``(G, F)``, ``(G, F)``, ``(F,)``."""
        return group_profiles(self.sums[layer], self.counts[layer], baseline)

    def window_profiles(self, layer, baseline="group_mean"):
        """Time-resolved profiles ``(G, 2w + 1, F)`` (baseline per window position)."""
        return group_profiles(self.window_sums[layer], self.window_counts[layer], baseline)[0]

    def empty_groups(self):
        """Bool ``(n_groups,)``: the groups without frames in at least one layer."""
        empty = np.zeros(self.n_groups, bool)
        for counts in self.counts.values():
            empty |= counts == 0
        return empty

    def to_arrays(self):
        """The sums and counts as ``{"sums_<i>", "counts_<i>"[, "tsums_<i>", "tcounts_<i>"]}``
        (``i`` = position of the layer), e.g. for ``np.savez``."""
        arrays = {}
        for i, name in enumerate(self.layers):
            arrays[f"sums_{i}"] = self.sums[name]
            arrays[f"counts_{i}"] = self.counts[name]
            if self.window is not None:
                arrays[f"tsums_{i}"] = self.window_sums[name]
                arrays[f"tcounts_{i}"] = self.window_counts[name]
        return arrays

    @classmethod
    def from_arrays(cls, arrays, layers, window=None, n_frames=0, target_total=0.0,
                    where="GroupSums.from_arrays", n_groups=None, n_filters=None):
        """Reads what :meth:`to_arrays` wrote (``arrays``: a mapping such as an open ``.npz``).

        Every array is checked before it is used, so that a damaged or edited file cannot
        broadcast into a wrong result: sums are float and finite, counts are integers >= 0,
        shapes agree with each other and, when given, with ``n_groups`` and ``n_filters``
        (what a file's header states).

        Args:
            arrays: ``{"sums_<i>", "counts_<i>"[, "tsums_<i>", "tcounts_<i>"]}``.
            layers: the layer names, in the order of ``i``.
            window: half width of the time-resolved sums, or None.
            n_frames: the state's number of frames (samples) summed.
            target_total: the state's summed target.
            where: what the error messages name (e.g. the file).
            n_groups: the expected number of groups (None: read from the arrays).
            n_filters: ``{layer: expected number of filters}`` (None: read from the arrays).

        Raises:
            ValueError: naming ``where`` and the layer, for a missing array, shapes that do not
                fit together or the header, non-finite sums or negative / non-integer counts.
        """
        layers = list(layers)
        if not layers:
            raise ValueError(f"{where}: no layers.")
        keys = ["sums", "counts"] + (["tsums", "tcounts"] if window is not None else [])
        read = {}
        for i, name in enumerate(layers):
            for key in keys:
                if f"{key}_{i}" not in arrays:
                    raise ValueError(f"{where}: no array '{key}_{i}' for layer '{name}'.")
                read[key, name] = np.asarray(arrays[f"{key}_{i}"])
        if n_groups is None:
            n_groups = read["counts", layers[0]].shape[0] if read["counts", layers[0]].ndim else 0
        n_groups = int(n_groups)
        filters = {}
        for name in layers:
            sums, counts = read["sums", name], read["counts", name]
            expected_f = None if n_filters is None else int(n_filters[name])
            if (sums.ndim != 2 or counts.shape != (n_groups,) or sums.shape[0] != n_groups
                    or (expected_f is not None and sums.shape[1] != expected_f)):
                f_text = "n_filters" if expected_f is None else expected_f
                raise ValueError(
                    f"{where}: layer '{name}' has sums of shape {sums.shape} and counts of "
                    f"shape {counts.shape}; expected ({n_groups}, {f_text}) and ({n_groups},)."
                )
            filters[name] = sums.shape[1]
            _check_values(sums, counts, where, f"layer '{name}'")
        state = cls(filters, n_groups, window)
        for name in layers:
            state.add(name, read["sums", name], read["counts", name])
            if window is not None:
                k = 2 * state.window + 1
                tsums, tcounts = read["tsums", name], read["tcounts", name]
                if tsums.shape != (n_groups, k, filters[name]) or tcounts.shape != (
                    n_groups, k
                ):
                    raise ValueError(
                        f"{where}: layer '{name}' has window sums of shape {tsums.shape} and "
                        f"counts {tcounts.shape}; expected {(n_groups, k, filters[name])} and "
                        f"{(n_groups, k)}."
                    )
                _check_values(tsums, tcounts, where, f"layer '{name}' (window)")
                state.add_windows(name, tsums, tcounts)
        if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or (
                n_frames < 0):
            raise ValueError(f"{where}: n_frames must be an int >= 0. Received: {n_frames!r}")
        if isinstance(target_total, bool) or not isinstance(
                target_total, (int, float, np.number)) or not np.isfinite(target_total):
            raise ValueError(
                f"{where}: target_total must be a finite number. Received: {target_total!r}"
            )
        state.n_frames, state.target_total = int(n_frames), float(target_total)
        return state

    def __repr__(self):
        return (
            f"GroupSums(layers={self.layers}, n_groups={self.n_groups}, window={self.window}, "
            f"n_frames={self.n_frames})"
        )


def _check_values(sums, counts, where, what):
    """Raises unless ``sums`` are finite floats and ``counts`` integers >= 0."""
    if not (np.issubdtype(sums.dtype, np.floating) or np.issubdtype(sums.dtype, np.integer)):
        raise ValueError(f"{where}: {what} has sums of dtype {sums.dtype}; expected float.")
    if not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"{where}: {what} has counts of dtype {counts.dtype}; expected int.")
    if not np.all(np.isfinite(sums)):
        bad = np.argwhere(~np.isfinite(sums))[0].tolist()
        raise ValueError(
            f"{where}: {what} has {int((~np.isfinite(sums)).sum())} non-finite sums (first at "
            f"index {bad}: {sums[tuple(bad)]})."
        )
    if counts.size and counts.min() < 0:
        raise ValueError(
            f"{where}: {what} has negative counts (min {int(counts.min())}); counts are >= 0."
        )


def group_profiles(sums, counts, baseline="group_mean"):
    """``(profiles, group means, baseline)`` from per-group sums; empty groups -> 0, never NaN.

    ``sums`` is ``(G, ..., F)`` and ``counts`` ``(G, ...)`` (time-resolved sums carry a window
    axis); the baseline is taken over the group axis, per remaining position, from the groups
    with frames only.
    """
    if baseline not in BASELINES:
        raise ValueError(
            f"baseline must be one of {list(BASELINES)}. Received: baseline={baseline!r}"
        )
    present = counts > 0
    safe = np.maximum(counts, 1)[..., None]
    means = np.where(present[..., None], sums / safe, 0.0)
    n_present = present.sum(axis=0)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        if baseline == "group_mean":
            base = means.sum(axis=0) / n_present
        else:
            base = sums.sum(axis=0) / counts.sum(axis=0)[..., None]
    base = np.where(n_present > 0, base, 0.0)
    profiles = np.where(present[..., None], means - base, 0.0)
    return profiles, means, base
