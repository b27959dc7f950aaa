"""Which probe frames (or samples) each of TopoMapCallback's maps averages over.

The callback's maps are means over a fixed probe. This module works out, once per training run,
what each mean sums over:

- the overall map of a layer: every frame (position) of every probe sequence, or with
  ``probe_lengths`` the layer frames whose receptive-field centre lies within the length;
- per-group maps with **frame labels** ``(batch, T_in)``: a layer frame carries the label of the
  input frame at its centre (:mod:`keras_topomap.receptive_field`);
- per-group maps with **per-sample labels** ``(batch,)`` (an image's class): each sample's
  activation is first averaged over the layer's positions (its valid frames, with
  ``probe_lengths``), then the samples of each group are averaged -- as GradNAP does
  (:mod:`keras_topomap.sample_groups`); any layer output ``(batch, ..., features)`` works.

A group without frames (samples) in a layer gets the map 0 there and is left out of that
layer's baseline (the rule of :class:`~keras_topomap.group_sums.GroupSums`); at least two groups
must have some.

Example:

>>> shapes = [(7, 2, 3, 1)]                        # each probe batch's input shape
>>> plan = plan_reductions(model, shapes, outputs, ["conv"], [labels], None, per_sample=True)
>>> plan.totals                                    # positions per layer over the probe
>>> plan.labels[0][0]                              # batch 0, layer 'conv': one label a sample
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from keras_topomap.receptive_field import check_frame_labels, receptive_fields
from keras_topomap.sample_groups import check_sample_labels

__all__ = ["ProbePlan", "check_probe_groups", "choose_groups", "plan_reductions",
           "sample_means"]


class ProbePlan(NamedTuple):
    """What the probe means sum over (per batch ``i`` and layer ``j``).

    Attributes:
        totals: ``(n_layers,)`` valid frames per layer over all batches.
        frames: ``frames[i][j]``: flat indices of the valid frames among the batch's
            ``(b * T_l)`` (None: all).
        labels: ``labels[i][j]``: the label of each frame (frame labels, ``(b, T_l)``) or of
            each sample (per-sample labels, ``(b,)``); -1 for none. None without groups.
        weights: per-sample labels only: ``weights[i][j]`` ``(b, T_l)`` weights averaging a
            sample's valid positions (rows sum to 1; None: a plain mean over all positions).
    """

    totals: np.ndarray
    frames: list
    labels: list | None
    weights: list | None


def is_per_sample(groups, batch_sizes):
    """Whether ``groups`` holds per-sample labels: one 1-D array, or a list with one 1-D
    array per probe batch (``batch_sizes``); anything else is read as frame labels."""
    if groups is None:
        return False
    if isinstance(groups, (list, tuple)) and len(groups) == len(batch_sizes) and any(
        np.ndim(g) > 0 for g in groups
    ):
        # One array per batch (possibly of different lengths, which np.ndim cannot stack).
        return all(np.ndim(g) == 1 for g in groups)
    return np.ndim(groups) == 1


def check_probe_groups(shapes, groups, group_names, per_sample):
    """Validates the probe's labels (``shapes``: each batch's leading shape)."""
    if groups is None:
        if group_names is not None:
            raise ValueError("group_names was given without groups (the frame labels).")
        return
    top = -1
    for i, (shape, labels) in enumerate(zip(shapes, groups)):
        where = f"groups for probe batch {i}"
        if per_sample:
            check_sample_labels(labels, shape[0], where)
        else:
            check_frame_labels(labels, shape[:2], where)
        top = max(top, int(labels.max()) if labels.size else -1)
    if top < 0:
        what = "sample" if per_sample else "frame"
        raise ValueError(f"groups holds no label >= 0: every probe {what} is marked -1.")
    if group_names is not None and len(group_names) <= top:
        raise ValueError(
            f"group_names must name every label up to {top}. Received: "
            f"{len(group_names)} names"
        )


def plan_reductions(model, shapes, outputs, layers, groups, lengths, per_sample):
    """The :class:`ProbePlan` of a probe: ``shapes`` each batch's leading input shape,
    ``outputs[i][j]`` batch ``i``'s output of layer ``layers[j]``."""
    timed = lengths is not None or (groups is not None and not per_sample)
    valid, labels, weights = [], [], []
    timings = {}
    for i, (shape, outs) in enumerate(zip(shapes, outputs)):
        batch_valid, batch_labels, batch_weights = [], [], []
        for name, out in zip(layers, outs):
            n_frames = int(np.prod(out.shape[1:-1], dtype=np.int64))
            layer_valid = np.ones((shape[0], n_frames), dtype=bool)
            if timed:
                if shape[1] not in timings:
                    timings[shape[1]] = _timings(model, shape[1], layers)
                timing = timings[shape[1]][name]
                if lengths is not None:
                    layer_valid = timing.valid_frames(lengths[i], np.arange(n_frames))
                if groups is not None and not per_sample:
                    layer_labels = timing.labels_at_frames(groups[i], None, n_frames)
                    batch_labels.append(np.where(layer_valid, layer_labels, -1))
            if groups is not None and per_sample:
                n_valid = layer_valid.sum(axis=1)
                # A sample without a valid frame in this layer has nothing to average.
                batch_labels.append(np.where(n_valid > 0, groups[i], -1))
                batch_weights.append(None if layer_valid.all() else
                                     layer_valid / np.maximum(n_valid, 1)[:, None])
            batch_valid.append(layer_valid)
        valid.append(batch_valid)
        labels.append(batch_labels)
        weights.append(batch_weights)
    totals = np.asarray([sum(int(v[j].sum()) for v in valid) for j in range(len(layers))])
    for j, name in enumerate(layers):
        if totals[j] == 0:
            raise ValueError(
                f"TopoMapCallback: no frame of layer '{name}' lies within probe_lengths."
            )
    frames = [[None if v.all() else np.flatnonzero(v.ravel()) for v in batch_valid]
              for batch_valid in valid]
    return ProbePlan(totals, frames, labels if groups is not None else None,
                     weights if per_sample else None)


def sample_means(out, weights):
    """Each sample's mean over its positions: ``out`` ``(b, ..., F)`` -> ``(b, F)``."""
    frames = out.reshape(out.shape[0], -1, out.shape[-1]).astype(np.float64)
    if weights is None:
        return frames.mean(axis=1)
    return np.einsum("bt,btf->bf", weights, frames)


def choose_groups(labels, groups, layers, group_name):
    """``(kept labels, labels by position)``: the probe's labels with frames (samples) in at
    least one watched layer, and each batch's and layer's labels as positions among them (-1:
    none or a dropped group). Warns about groups missing from some layers; raises with fewer
    than two groups."""
    present = np.unique(np.concatenate([g[g >= 0] for g in groups]))
    counts = np.zeros((len(layers), int(present.max()) + 1), np.int64)
    for batch_labels in labels:
        for j, layer_labels in enumerate(batch_labels):
            counts[j] += np.bincount(layer_labels[layer_labels >= 0].ravel(),
                                     minlength=counts.shape[1])
    counts = counts[:, present]
    kept = counts.max(axis=0) > 0
    if not counts.min(axis=0).all():
        lost = {
            group_name(int(g)): [layers[j] for j in np.flatnonzero(counts[:, k] == 0)]
            for k, g in enumerate(present)
            if counts[:, k].min() == 0
        }
        warnings.warn(
            "TopoMapCallback: these groups have no frame in some watched layers (their "
            "frames fall between the strided layers' frame centres, or past probe_lengths): "
            f"{lost}. There their map is 0 and they are left out of the baseline; a group "
            "without frames in any watched layer gets no map.",
            stacklevel=4,
        )
    if kept.sum() < 2:
        raise ValueError(
            "TopoMapCallback: per-group maps (group mean minus mean over groups) need at "
            f"least two groups with frames in a watched layer. Received: groups with frames "
            f"{[group_name(int(g)) for g in present[kept]]}"
        )
    new_labels = present[kept]
    # Position of each label in new_labels; -1 for no label or a dropped group.
    lookup = np.full(int(present.max()) + 2, -1)
    lookup[new_labels] = np.arange(len(new_labels))
    # label -1 reads lookup[-1] == -1
    return new_labels, [[lookup[layer_labels] for layer_labels in batch_labels]
                        for batch_labels in labels]


def _timings(model, n_frames, names):
    try:
        timing = receptive_fields(model, n_frames=n_frames)
    except ValueError as e:
        raise ValueError(
            "TopoMapCallback maps frame labels / probe_lengths onto layer frames through the "
            f"model's receptive fields, which failed: {e} (per-sample groups, one label per "
            "probe sample, need no frame timing)"
        ) from e
    missing = [n for n in names if n not in timing]
    if missing:
        raise ValueError(
            f"TopoMapCallback: layers {missing} have no frame timing on the input's time "
            f"axis, so groups / probe_lengths cannot be mapped onto their frames. Layers with "
            f"a time axis: {list(timing)}"
        )
    return timing
