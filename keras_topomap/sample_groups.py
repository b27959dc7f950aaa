"""Per-sample groups: one group per input sample (e.g. an image's class) instead of per frame.

A speech model's profiles group the *frames* of each utterance by their labels; an image
classifier has one label per *sample*. With labels of shape ``(batch,)`` GradNAP and
TopoMapCallback switch to per-sample groups:

- any model with one input works (``(batch, H, W, C)`` images, ``(batch, D)`` vectors,
  ``(batch, T, F)`` sequences), and any layer whose output ends in a filter axis:
  ``(batch, F)``, ``(batch, T, F)``, ``(batch, H, W, F)``;
- a layer with positions (``T`` or ``H, W``) has its (adjusted) activation **averaged over all
  positions** of a sample before the per-group sums, so every sample weighs the same in its
  group whatever the layer's resolution: ``A_g`` is the mean over the samples of group ``g`` of
  the sample's position-averaged ``a * g``;
- label ``-1`` means no group (the sample is left out); the counts are samples, not frames.

Built-in targets, reading the model output as logits ``(batch, classes)`` (or
``(batch, ..., classes)``, summed over the positions):

- ``"prediction"``: the logit of the predicted (argmax) class of each sample. On an output with
  a time axis the CTC blank is skipped as with frame labels; a ``(batch, classes)`` output has
  no blank (class 0 is a class like any other).
- ``"label"``: the logit of the sample's own (true) class.
- a callable ``fn(output)`` / ``fn(output, mask)``, ``mask`` float ``output.shape[:-1]`` (1 for
  real samples, 0 for the rows that pad a batch).

The gradients come from the same compiled step as with frame labels
(:class:`keras_topomap.gradients.ActivationGradients`) and the sums go into the same
:class:`keras_topomap.group_sums.GroupSums`, so maps, regions, clustering, plots,
save/load/merge and the map tests work as before.

Example:

>>> gn = GradNAP(model, ["conv"], grids={"conv": (4, 4)}, group_names=digits)
>>> gn.fit((images, classes))          # images (N, 8, 8, 1), classes (N,) int
>>> gn.label_kind_
'sample'
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from keras import ops

from keras_topomap import batch_checks

__all__ = ["check_sample_labels", "is_sample_batch", "sample_reduce", "sample_target"]

LABEL_KINDS = ("frame", "sample")


class SampleBatch(NamedTuple):
    """One batch with per-sample labels (numpy): ``x`` ``(B, ...)``, ``labels`` int ``(B,)``."""

    x: np.ndarray
    labels: np.ndarray


def check_sample_labels(labels, n_samples, where, n_groups=None):
    """Validates per-sample labels and returns them as an int64 array ``(n_samples,)``.

    Args:
        labels: array ``(n_samples,)`` of ints, ``-1`` for "no group".
        n_samples: the number of samples (rows of the inputs) they label.
        where: what the labels belong to, for error messages (e.g. ``"Batch 3"``).
        n_groups: if given, labels must be ``< n_groups`` (one group name each).

    Raises:
        ValueError: naming ``where``, for a wrong length, a non-integer dtype (floats and
            bools included, even integral ones), labels < -1 or labels without a group name.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != int(n_samples):
        raise ValueError(
            f"{where}: per-sample labels must have shape ({int(n_samples)},), one label per "
            f"sample. Received: shape={labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: per-sample labels must be integers (-1 = no group); convert class "
            f"indices with .astype(int). Received: dtype={labels.dtype}"
        )
    if labels.size and labels.min() < -1:
        raise ValueError(
            f"{where}: per-sample labels must be >= -1 (-1 = no group). Received: "
            f"min={labels.min()}"
        )
    if n_groups is not None and labels.size and labels.max() >= n_groups:
        raise ValueError(
            f"{where}: label {labels.max()} has no group name (there are {n_groups} groups)."
        )
    return labels.astype(np.int64)


def is_sample_batch(batch):
    """Whether a (numpy) batch carries per-sample labels: ``(x, labels)`` with 1-D labels."""
    return (isinstance(batch, (tuple, list)) and len(batch) == 2
            and np.ndim(batch[1]) == 1 and np.ndim(batch[0]) >= 2)


def is_sample_array_data(data):
    """Whether ``data`` is one pair of arrays ``(x, labels)`` (split into batches by GradNAP)
    rather than a sequence of batches."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        return False
    x, labels = data
    return (all(hasattr(v, "shape") and hasattr(v, "ndim") for v in data)
            and x.ndim >= 2 and labels.ndim == 1 and len(x) == len(labels))


def parse_sample_batch(batch, index, group_names):
    """``(x, labels)`` as a :class:`SampleBatch` (float32 inputs, checked int64 labels)."""
    x = np.asarray(batch[0], dtype=np.float32)
    where = f"Batch {index}"
    n_groups = None if group_names is None else len(group_names)
    return SampleBatch(x, check_sample_labels(batch[1], x.shape[0], where, n_groups))


def pad_sample_batch(batch, rows, replicas=1):
    """Pads the rows to ``rows`` rounded up to a multiple of ``replicas`` (padding rows get
    label -1). Returns the padded batch, the real rows' mask (float32) and their number."""
    n = len(batch.x)
    rows = -(-max(rows, n) // replicas) * replicas
    x = np.zeros((rows,) + batch.x.shape[1:], np.float32)
    x[:n] = batch.x
    labels = np.full(rows, -1, np.int32)
    labels[:n] = batch.labels
    row_valid = (np.arange(rows) < n).astype(np.float32)
    return SampleBatch(x, labels), row_valid, n


def sample_target(target, blank, n_positional):
    """The step's target ``fn(output, activations, row_valid, labels)`` for per-sample labels.

    ``n_positional``: how many positional arguments a callable ``target`` takes (1 or 2).
    """
    if target == "ctc_loss":
        raise ValueError(
            "target='ctc_loss' needs frame labels and transcripts; with per-sample labels use "
            "target='prediction', 'label' or a callable."
        )

    def row_mask(output, row_valid):
        # row_valid (B,) broadcast over the output's positions: (B, ...) like output[..., 0].
        mask = ops.reshape(row_valid, (-1,) + (1,) * (len(output.shape) - 2))
        return ops.ones_like(ops.cast(output[..., 0], "float32")) * mask

    def fn(output, activations, row_valid, labels):
        out = ops.cast(output, "float32")
        mask = row_mask(out, row_valid)
        if target == "prediction":
            if len(out.shape) > 2 and blank is not None:
                mask = mask * ops.cast(ops.argmax(out, axis=-1) != blank, "float32")
            return ops.sum(ops.max(out, axis=-1) * mask)
        if target == "label":
            onehot = ops.one_hot(ops.maximum(labels, 0), out.shape[-1], dtype="float32")
            onehot = ops.reshape(onehot, (-1,) + (1,) * (len(out.shape) - 2) + (out.shape[-1],))
            return ops.sum(ops.sum(out * onehot, axis=-1) * mask)
        return target(output, mask) if n_positional >= 2 else target(output)

    return fn


def sample_reduce(layers, n_groups, adjust):
    """The step's on-device reduction for per-sample labels: per layer, the adjusted
    activation averaged over its positions, summed per group (one matmul)."""

    def reduce(result, row_valid, labels):
        groups = ops.arange(n_groups, dtype="int32")
        onehot = ops.cast(ops.expand_dims(labels, -1) == groups, "float32")  # (B, G); -1: none
        sums = {}
        for name in layers:
            a = ops.cast(result.activations[name], "float32")
            if adjust == "gradient":
                a = a * ops.cast(result.gradients[name], "float32")
            elif adjust == "abs_gradient":
                a = a * ops.abs(ops.cast(result.gradients[name], "float32"))
            if len(a.shape) > 2:
                a = ops.mean(a, axis=tuple(range(1, len(a.shape) - 1)))
            sums[name] = ops.matmul(ops.transpose(onehot), a)
        return {"sums": sums, "frames": {}, "saliency": {}, "value": result.value}

    return reduce


def sample_layer_problem(name, shape):
    """Why layer ``name`` with output ``shape`` cannot be profiled per sample (None: it can)."""
    if len(shape) < 2 or shape[-1] is None:
        return (
            f"Layer '{name}' must output (batch, ..., filters) with a known number of filters. "
            f"Received: output shape {shape}"
        )
    return None


def check_label_kind(kind, fitted_kind, index):
    """Raises when a batch's label kind differs from the one already fitted."""
    if fitted_kind is not None and kind != fitted_kind:
        labels = {"frame": "frame labels (batch, T)", "sample": "per-sample labels (batch,)"}
        raise ValueError(
            f"Batch {index} has {labels[kind]}, but this GradNAP was fitted with "
            f"{labels[fitted_kind]}; one GradNAP holds one kind of groups."
        )


def dispatch_samples(gn, batch, state, index=0):
    """Starts ``gn``'s compiled step on a per-sample batch (number ``index``, for messages).
    Returns the fields of GradNAP's pending batch: step, started call, groups, timing (None),
    padded batch, per layer the labels the counts come from, labelled samples."""
    if gn.window is not None:
        raise ValueError(f"window={gn.window} needs frame labels (batch, T); per-sample labels "
                         "(batch,) have no time course.")
    g, step_groups = batch_checks.grow_groups(state, batch.labels, index, gn.group_names,
                                              gn.n_groups, kind="sample")
    step, _ = gn._step_for(step_groups, (), kind="sample")
    gn._rows = max(gn._rows or len(batch.x), len(batch.x))
    padded, row_valid, _ = pad_sample_batch(batch, gn._rows, step.n_replicas())
    started = step.dispatch(padded.x, row_valid, padded.labels)
    layer_labels = {name: padded.labels for name in gn.layers}  # one array: counted once
    return step, started, g, None, padded, layer_labels, int((batch.labels >= 0).sum())
