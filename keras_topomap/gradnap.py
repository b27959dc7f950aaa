"""GradNAP: gradient-adjusted neuron activation profiles, per group of inputs, on the grid.

How does a trained network respond to each phoneme? For every listed layer, GradNAP averages the
layer's (gradient-adjusted) activations over all frames of each group (phoneme) and subtracts a
baseline, giving one value per filter and group -- a profile that can be drawn on the layer's
topographic grid (the paper's Figure 1B). Definitions (``method.md`` §2 of the project notes):

- Target score of an utterance (``target="prediction"``): the sum over output frames of the logit
  of the class the model predicts there (greedy argmax), skipping frames where that is the CTC
  blank and frames past the utterance's end. ``target="ctc_loss"``: the log-likelihood of the
  transcript, ``-CTC loss`` (same sign convention: higher = more support for the right output).
  Or any callable on the model output (in ``keras.ops``).
- Gradient ``g = d score / d a`` for each layer activation ``a`` (frames x filters), all layers
  from one backward pass (:mod:`keras_topomap.gradients`). Adjusted activation: ``a * g``
  (``adjust="gradient"``, default), ``a * |g|`` (``"abs_gradient"``) or plain ``a`` (``"none"``,
  the original NAP; no backward pass at all).
- Frame labels: each frame of a layer carries the label of the input frame at its centre, found
  through the layer's cumulative stride and receptive field
  (:func:`keras_topomap.receptive_field.receptive_fields`); label ``-1`` (no label, padding)
  and frames centred past the utterance's end never count.
- ``A_g`` = mean adjusted activation over the frames of group ``g`` (one value per filter).
  ``baseline="group_mean"`` (NAP's): ``GradNAP_g = A_g - mean over groups of A_g'``;
  ``baseline="frame_mean"``: ``A_g`` minus the mean over all labelled frames (groups weighted by
  their frame counts). Groups without frames get counts 0, profile 0, a warning, and are left
  out of the baseline -- never NaN.
- Running sums per group and layer: memory does not grow with the dataset; two GradNAPs over
  different data merge exactly (:meth:`GradNAP.merge`).
- Time-resolved view (``window=w``): for every occurrence of a group (a run of equal input frame
  labels), the ``2w + 1`` layer frames around the layer frame nearest the run's centre are
  averaged per group -> ``(n_groups, 2w + 1, n_filters)``; positions outside the utterance do not
  count. ``anchor="saliency"`` centres the window instead on the occurrence's layer frame of
  highest saliency (mean over filters of ``|g|``), as in the authors' later code.

Batches: ``(x, frame_labels)`` with ``x`` float ``(B, T, F)`` and ``frame_labels`` int ``(B, T)``
(``-1`` = none), as :class:`keras_topomap.datasets.SpeechBatches` yields with ``mode="frames"``;
``(x, frame_labels, packed_ctc_targets)`` for ``target="ctc_loss"`` (int ``(B, 2 + L)``: column 0
the feature length, column 1 the label length, columns ``2..`` the labels, blank 0); or the dict
batches of ``SpeechBatches(mode="all")``. Without explicit lengths an utterance ends at its last
labelled frame.

Compilation: batches are padded to a multiple of ``time_bucket`` frames and to a fixed number of
rows, so the step compiles once on TensorFlow and once per time bucket on JAX (see
:mod:`keras_topomap.gradients`).

Example:

>>> gn = GradNAP(model, layers=["conv_1", "conv_2"], group_names=phone_names)
>>> gn.fit(SpeechBatches(utterances, mode="frames"))
>>> gn.profiles_["conv_1"].shape      # (n_groups, n_filters)
>>> gn.most_responsive_region("conv_1", "ae").filters
>>> fig = gn.plot("conv_1", groups=["ae", "aa", "t"])
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from keras_topomap import grid as grid_lib
from keras_topomap._arrays import to_numpy
from keras_topomap.gradients import ActivationGradients, find_layer
from keras_topomap.receptive_field import (
    check_frame_labels,
    input_frames_to_layer,
    receptive_fields,
)

__all__ = ["GradNAP", "Clustering"]

_TARGETS = ("prediction", "ctc_loss")
_ADJUST = ("gradient", "abs_gradient", "none")
_BASELINES = ("group_mean", "frame_mean")
_FORMAT_VERSION = 1


class Clustering(NamedTuple):
    """Average-linkage clustering of group profiles.

    Attributes:
        order: group indices in dendrogram leaf order (groups with frames only).
        names: their names.
        linkage: scipy linkage matrix over ``groups`` (rows refer to positions in ``groups``).
        groups: the group indices that were clustered, in linkage-row order.
    """

    order: np.ndarray
    names: list
    linkage: np.ndarray
    groups: np.ndarray


class _Batch(NamedTuple):
    x: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    ctc_labels: np.ndarray | None
    ctc_label_lengths: np.ndarray | None


class _Pending(NamedTuple):
    """A batch whose step was dispatched and whose result is not yet added."""

    step: Any
    started: Any
    n_groups: int
    timing: dict
    padded: _Batch
    layer_labels: dict
    n_frames: int


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}. Received: {name}={value!r}")


class GradNAP:
    """Gradient-adjusted neuron activation profiles of a model's layers (scikit-learn style).

    Args:
        model: a Keras model with a time axis (input ``(batch, time, features)``), built on
            ``keras.Input``; outputs are logits ``(batch, time, classes)`` for the built-in
            targets.
        layers: names of the layers to profile (their outputs must be ``(batch, time, filters)``).
        target: ``"prediction"``, ``"ctc_loss"`` or a callable ``fn(output)`` /
            ``fn(output, output_mask)`` returning a scalar (or per-utterance values) in
            ``keras.ops``; ``output_mask`` is float ``(batch, time)`` (1 inside an utterance).
        adjust: ``"gradient"`` (``a * g``), ``"abs_gradient"`` (``a * |g|``) or ``"none"``.
        baseline: ``"group_mean"`` or ``"frame_mean"``.
        group_names: names of the groups (label ``k`` -> ``group_names[k]``); fixes the number of
            groups.
        n_groups: number of groups when no names are given (default: grows with the labels seen).
        grids: ``{layer: (H, W)}`` for layers without a
            :class:`~keras_topomap.TopographicRegularizer` (and to override theirs).
        batch_size: rows per step; also used to split array data given to :meth:`fit`.
        window: half width ``w`` of the time-resolved profiles (None: off).
        anchor: where the window of an occurrence is centred: ``"center"`` (the layer frame
            nearest the occurrence's centre) or ``"saliency"`` (its layer frame of highest mean
            ``|g|``; needs gradients, i.e. ``adjust != "none"``).
        blank: the CTC blank class (skipped by ``target="prediction"``; 0 for keras' CTC).
        time_bucket: pad the time axis to a multiple of this (bounds JAX compilations).
        verbose: 1 shows a progress bar during :meth:`fit`.

    Attributes (after :meth:`fit`):
        profiles_: ``{layer: (n_groups, n_filters)}`` GradNAP values.
        counts_: ``{layer: (n_groups,)}`` labelled frames per group.
        group_means_: ``{layer: (n_groups, n_filters)}`` the averages ``A_g`` (0 for empty groups).
        baseline_: ``{layer: (n_filters,)}`` the subtracted baseline.
        time_profiles_, time_counts_: ``{layer: (n_groups, 2w+1, n_filters)}`` and
            ``(n_groups, 2w+1)``, with ``window``.
        grids_: ``{layer: (H, W)}``.
        n_groups_: number of groups.
        n_frames_: labelled input frames seen.
        target_total_: the target summed over all batches (0 for ``adjust="none"``).
        info_: the ``info`` dict given to :meth:`save` (read back by :meth:`load`).
    """

    def __init__(
        self,
        model,
        layers,
        target="prediction",
        adjust="gradient",
        baseline="group_mean",
        group_names=None,
        n_groups=None,
        grids=None,
        batch_size=None,
        window=None,
        anchor="center",
        blank=0,
        time_bucket=32,
        verbose=1,
    ):
        if isinstance(layers, str):
            layers = [layers]
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("GradNAP needs at least one layer name. Received: layers=[]")
        if not (callable(target) or target in _TARGETS):
            raise ValueError(
                f"target must be one of {list(_TARGETS)} or a callable on the model output. "
                f"Received: target={target!r}"
            )
        _check_choice("adjust", adjust, _ADJUST)
        _check_choice("baseline", baseline, _BASELINES)
        self.model = model
        self.target = target
        self.adjust = adjust
        self.baseline = baseline
        self.group_names = None if group_names is None else [str(g) for g in group_names]
        if n_groups is not None and not _positive_int(n_groups):
            raise ValueError(
                f"n_groups must be a positive integer. Received: n_groups={n_groups!r}"
            )
        if self.group_names is not None and n_groups is not None and n_groups != len(group_names):
            raise ValueError(
                f"n_groups={n_groups} does not match the {len(self.group_names)} group_names."
            )
        self.n_groups = len(self.group_names) if self.group_names is not None else n_groups
        if batch_size is not None and not _positive_int(batch_size):
            raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
        self.batch_size = batch_size
        if window is not None and (not isinstance(window, (int, np.integer)) or window < 0):
            raise ValueError(f"window must be a non-negative integer. Received: window={window!r}")
        self.window = None if window is None else int(window)
        _check_choice("anchor", anchor, ("center", "saliency"))
        if anchor == "saliency" and adjust == "none":
            raise ValueError(
                "anchor='saliency' needs gradients; use adjust='gradient' or 'abs_gradient'. "
                "Received: adjust='none'"
            )
        self.anchor = anchor
        if not isinstance(time_bucket, (int, np.integer)) or time_bucket < 1:
            raise ValueError(f"time_bucket must be a positive integer. Received: {time_bucket!r}")
        self.time_bucket = int(time_bucket)
        self.blank = blank
        self.verbose = verbose
        self._grids_arg = dict(grids or {})
        self._steps = {}
        self._timing_cache = {}
        self._label_plans = {}  # id(timing) -> (timing, label_index, label_layers)
        self._rows = batch_size
        self.info_ = {}
        if model is not None:
            self._inspect_model(model)
        else:
            self.grids_ = {}
            self.n_filters_ = {}
        self._reset()

    # ------------------------------------------------------------------------------------------
    # Set-up

    def _inspect_model(self, model):
        names = self.layers
        if len(set(names)) != len(names):
            raise ValueError(f"Layer names must be unique. Received: layers={names}")
        layer_objs = {name: find_layer(model, name) for name in names}
        timing = receptive_fields(model)
        self.n_filters_ = {}
        for name, layer in layer_objs.items():
            if getattr(layer, "data_format", "channels_last") == "channels_first":
                raise ValueError(
                    f"Layer '{name}' uses data_format='channels_first'; GradNAP expects "
                    "(batch, time, filters) activations."
                )
            shape = tuple(layer.output.shape)
            if len(shape) != 3 or name not in timing:
                raise ValueError(
                    f"Layer '{name}' must output (batch, time, filters) frames on the input's "
                    f"time axis. Received: output shape {shape}"
                )
            self.n_filters_[name] = int(shape[-1])
        unknown = sorted(set(self._grids_arg) - set(names))
        if unknown:
            raise ValueError(
                f"grids names layers that are not profiled: {unknown}. Profiled layers: {names}"
            )
        from keras_topomap.regularizers import topographic_layers

        topo = topographic_layers(model)
        self.grids_ = {}
        for name in names:
            what = f"grid of layer '{name}'"
            if name in self._grids_arg:
                g = grid_lib.validate_grid(self._grids_arg[name], self.n_filters_[name], what=what)
            elif name in topo:
                g = tuple(int(v) for v in topo[name]["grid"])
            else:
                raise ValueError(
                    f"Layer '{name}' has no TopographicRegularizer, so its grid is unknown. Pass "
                    f"grids={{'{name}': (H, W)}} with H * W = {self.n_filters_[name]}."
                )
            self.grids_[name] = g
        graph = getattr(model, "_functional", None) or model
        self._output_layer = graph.outputs[0]._keras_history.operation.name
        self._output_timed = self._output_layer in timing
        if self.target in _TARGETS and not self._output_timed:
            raise ValueError(
                f"target={self.target!r} needs an output with a time axis (batch, time, "
                f"classes); model '{model.name}' output layer '{self._output_layer}' has none. "
                "Pass a callable target."
            )

    def _reset(self):
        self.n_groups_ = self.n_groups or 0
        g = self.n_groups_
        self._sums = {name: np.zeros((g, n)) for name, n in self.n_filters_.items()}
        self._counts = {name: np.zeros(g, np.int64) for name in self.n_filters_}
        if self.window is not None:
            k = 2 * self.window + 1
            self._tsums = {name: np.zeros((g, k, n)) for name, n in self.n_filters_.items()}
            self._tcounts = {name: np.zeros((g, k), np.int64) for name in self.n_filters_}
        else:
            self._tsums, self._tcounts = {}, {}
        self.n_frames_ = 0
        self.target_total_ = 0.0
        self._finalize(warn=False)

    def _grow(self, n_groups):
        """Extends the running sums to ``n_groups`` (labels beyond the known groups appeared)."""
        extra = n_groups - self.n_groups_
        for name in self._sums:
            self._sums[name] = np.pad(self._sums[name], [(0, extra), (0, 0)])
            self._counts[name] = np.pad(self._counts[name], [(0, extra)])
            if self.window is not None:
                self._tsums[name] = np.pad(self._tsums[name], [(0, extra), (0, 0), (0, 0)])
                self._tcounts[name] = np.pad(self._tcounts[name], [(0, extra), (0, 0)])
        self.n_groups_ = n_groups

    # ------------------------------------------------------------------------------------------
    # The compiled step

    def _target_fn(self):
        blank = self.blank
        if self.target == "prediction":

            def target(output, activations, mask, *frame_labels):
                best = ops.argmax(output, axis=-1)
                keep = mask if blank is None else mask * ops.cast(best != blank, mask.dtype)
                return ops.sum(ops.max(ops.cast(output, "float32"), axis=-1) * keep)

            return target, 1
        if self.target == "ctc_loss":

            def target(output, activations, mask, labels, label_lengths, out_lengths, row_valid,
                       *frame_labels):
                loss = ops.ctc_loss(labels, ops.cast(output, "float32"), label_lengths,
                                    out_lengths, mask_index=blank)
                return -ops.sum(loss * row_valid)

            return target, 5
        user = self.target
        n_args = _n_positional(user)

        def target(output, activations, mask, *frame_labels):
            return user(output, mask) if n_args >= 2 else user(output)

        return target, 1

    def _step_for(self, n_groups, label_index):
        """The compiled step for ``n_groups`` groups; ``label_index[i]`` says which of the
        label arrays passed to it belongs to ``self.layers[i]`` (layers with the same timing
        share one; see :meth:`_label_plan`)."""
        key = (n_groups, label_index)
        if key in self._steps:
            return self._steps[key]
        if self.model is None:
            raise ValueError(
                "This GradNAP has no model (it was loaded from disk); pass model= to "
                "GradNAP.load to continue fitting."
            )
        target, n_target_extras = self._target_fn()
        layers = self.layers
        adjust = self.adjust
        keep_frames = self.window is not None
        keep_saliency = keep_frames and self.anchor == "saliency"

        def reduce(result, *extras):
            label_arrays = extras[n_target_extras:]
            groups = ops.arange(n_groups, dtype="int32")
            # One-hot group membership per layer frame, built on the device from int labels
            # (-1, no group, matches none).
            onehots = [ops.cast(ops.expand_dims(labels, -1) == groups, "float32")
                       for labels in label_arrays]
            sums, frames, saliency = {}, {}, {}
            for name, index in zip(layers, label_index):
                onehot = onehots[index]
                a = ops.cast(result.activations[name], "float32")
                if keep_saliency:
                    g_abs = ops.abs(ops.cast(result.gradients[name], "float32"))
                    saliency[name] = ops.mean(g_abs, axis=-1)
                if adjust == "gradient":
                    a = a * ops.cast(result.gradients[name], "float32")
                elif adjust == "abs_gradient":
                    a = a * ops.abs(ops.cast(result.gradients[name], "float32"))
                # Per-group sums as one matmul: (groups, frames) @ (frames, filters).
                flat_onehot = ops.reshape(onehot, (-1, onehot.shape[-1]))
                flat_a = ops.reshape(a, (-1, a.shape[-1]))
                sums[name] = ops.matmul(ops.transpose(flat_onehot), flat_a)
                if keep_frames:
                    frames[name] = a
            return {"sums": sums, "frames": frames, "saliency": saliency, "value": result.value}

        needs_grad = adjust != "none"
        # Under a distribution: sums add over replicas, per-frame results join along the batch.
        per_layer = {name: "sum" for name in layers}
        replica_reduce = {
            "sums": per_layer,
            "frames": {name: "concat" for name in layers} if keep_frames else {},
            "saliency": {name: "concat" for name in layers} if keep_saliency else {},
            "value": "sum",
        }
        step = ActivationGradients(
            self.model, layers, target, reduce=reduce, layer_gradients=needs_grad,
            include_output=needs_grad, replica_reduce=replica_reduce,
        )
        self._steps[key] = (step, n_target_extras)
        return self._steps[key]

    def _label_plan(self, timing):
        """Which layers share frame labels: ``(label_index, label_layers)`` with
        ``label_index[i]`` the position of ``self.layers[i]``'s labels among those of
        ``label_layers`` (one layer per distinct frame timing; e.g. every stride-1 'same' conv
        after a stride-2 one maps input frames to its frames alike)."""
        key = id(timing)
        if key not in self._label_plans:
            index, keys, layers = [], [], []
            for name in self.layers:
                lt = timing[name]
                centre = lt.input_frame(lt.length)
                signature = (lt.length, np.asarray(centre).tobytes())
                if signature not in keys:
                    keys.append(signature)
                    layers.append(name)
                index.append(keys.index(signature))
            self._label_plans[key] = (timing, tuple(index), tuple(layers))
        return self._label_plans[key][1:]

    def _timing(self, n_frames):
        if n_frames not in self._timing_cache:
            self._timing_cache[n_frames] = receptive_fields(self.model, n_frames=n_frames)
        return self._timing_cache[n_frames]

    # ------------------------------------------------------------------------------------------
    # Data handling

    def _parse(self, batch, index):
        ctc = None
        lengths = None
        if isinstance(batch, dict):
            missing = [k for k in ("features", "frame_labels") if k not in batch]
            if missing:
                raise ValueError(
                    f"Batch {index}: a dict batch needs 'features' and 'frame_labels'. Missing: "
                    f"{missing}. Received keys: {sorted(batch)}"
                )
            x, labels = batch["features"], batch["frame_labels"]
            if batch.get("feature_lengths") is not None:
                lengths = np.asarray(batch["feature_lengths"])
            if batch.get("labels") is not None and batch.get("label_lengths") is not None:
                ctc = (np.asarray(batch["labels"]), np.asarray(batch["label_lengths"]))
        elif isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
            x, labels = batch[0], batch[1]
            if len(batch) == 3:
                packed = np.asarray(batch[2])
                if packed.ndim != 2 or packed.shape[1] < 2:
                    raise ValueError(
                        f"Batch {index}: packed CTC targets must be int (B, 2 + L) (column 0 "
                        "feature length, column 1 label length, then labels). Received: shape="
                        f"{packed.shape}"
                    )
                lengths = packed[:, 0]
                ctc = (packed[:, 2:], packed[:, 1])
        else:
            raise ValueError(
                f"Batch {index}: expected (x, frame_labels), (x, frame_labels, packed_ctc_targets)"
                f" or a dict with 'features' and 'frame_labels'. Received: {type(batch).__name__}"
                + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            )
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3:
            raise ValueError(
                f"Batch {index}: x must be (batch, time, features). Received: shape={x.shape}"
            )
        labels = check_frame_labels(labels, x.shape[:2], f"Batch {index}")
        if self.group_names is not None and labels.size and labels.max() >= self.n_groups_:
            raise ValueError(
                f"Batch {index}: frame label {labels.max()} has no group name (there are "
                f"{len(self.group_names)} groups)."
            )
        if lengths is None:
            # Without explicit lengths an utterance ends at its last labelled frame.
            labelled = labels >= 0
            last = x.shape[1] - np.argmax(labelled[:, ::-1], axis=1)
            lengths = np.where(labelled.any(axis=1), last, 0)
        lengths = np.asarray(lengths).astype(np.int64).reshape(-1)
        if lengths.shape[0] != x.shape[0] or (lengths.size and (lengths.min() < 0 or
                                                                 lengths.max() > x.shape[1])):
            raise ValueError(
                f"Batch {index}: lengths must be (batch,) within 0..{x.shape[1]}. Received: "
                f"{lengths.tolist()}"
            )
        if self.target == "ctc_loss" and ctc is None:
            raise ValueError(
                f"Batch {index}: target='ctc_loss' needs transcripts: batches (x, frame_labels, "
                "packed_ctc_targets) or dicts with 'labels' and 'label_lengths' (SpeechBatches "
                "mode='all')."
            )
        if ctc is not None:
            ctc = (np.asarray(ctc[0]).astype(np.int32), np.asarray(ctc[1]).astype(np.int32))
        labels = np.where(np.arange(x.shape[1])[None, :] < lengths[:, None], labels, -1)
        return _Batch(x, labels.astype(np.int64), lengths,
                      ctc[0] if ctc else None, ctc[1] if ctc else None)

    def _padded_length(self, n_frames):
        return max(self.time_bucket, -(-n_frames // self.time_bucket) * self.time_bucket)

    def _pad(self, b, replicas=1):
        """Pads time to a multiple of time_bucket and rows to the step's row count (a multiple
        of the number of replicas of an active distribution)."""
        n, t = b.x.shape[:2]
        t_pad = self._padded_length(t)
        self._rows = max(self._rows or n, n)
        rows = -(-self._rows // replicas) * replicas
        x = np.zeros((rows, t_pad, b.x.shape[2]), np.float32)
        x[:n, :t] = b.x
        labels = np.full((rows, t_pad), -1, np.int64)
        labels[:n, :t] = b.labels
        lengths = np.zeros(rows, np.int64)
        lengths[:n] = b.lengths
        ctc_labels = ctc_lengths = None
        if b.ctc_labels is not None:
            # Transcript width padded to a multiple of 16 too: one JAX compilation per bucket.
            width = max(-(-b.ctc_labels.shape[1] // 16) * 16, 16)
            ctc_labels = np.zeros((rows, width), np.int32)
            ctc_labels[:n, : b.ctc_labels.shape[1]] = b.ctc_labels
            ctc_lengths = np.zeros(rows, np.int32)
            ctc_lengths[:n] = b.ctc_label_lengths
        return _Batch(x, labels, lengths, ctc_labels, ctc_lengths), n

    def _batches(self, data):
        """Yields batches from an iterable of batches, a PyDataset, or arrays (x, labels[, ...])."""
        if isinstance(data, (tuple, list)) and len(data) in (2, 3) and _is_array3(data[0]):
            size = self.batch_size or 32
            n = len(data[0])
            for start in range(0, n, size):
                yield tuple(np.asarray(part)[start : start + size] for part in data)
            return
        if isinstance(data, dict) and "features" in data and _is_array3(data["features"]):
            yield data
            return
        if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(
            data, (tuple, list, dict)
        ):
            for i in range(len(data)):  # PyDataset and friends
                yield data[i]
            return
        yield from data

    # ------------------------------------------------------------------------------------------
    # Fitting

    def fit(self, data):
        """Computes the profiles from scratch over ``data`` (see the class doc). Returns self.

        Under an active distribution each batch is spread over its replicas and the per-group
        sums are reduced over them, with the same result as on one device (up to float
        rounding): on JAX with a ``keras.distribution`` distribution set (e.g.
        ``keras.distribution.DataParallel()``), on TensorFlow inside a ``tf.distribute``
        strategy's ``scope()`` (e.g. ``MirroredStrategy``). Batches are padded with empty rows
        to a multiple of the number of replicas.

        Example:

        >>> keras.distribution.set_distribution(keras.distribution.DataParallel())  # JAX
        >>> gn = GradNAP(model, ["conv_1"], batch_size=8).fit(batches)
        """
        self._reset()
        return self.partial_fit(data)

    def partial_fit(self, data):
        """Adds ``data`` to the running sums (profiles are recomputed). Returns self."""
        if self.model is None:
            raise ValueError(
                "This GradNAP has no model (it was loaded from disk); pass model= to "
                "GradNAP.load to continue fitting."
            )
        total = len(data) if hasattr(data, "__len__") and not _is_array_data(data) else None
        progbar = keras.utils.Progbar(total, unit_name="batch") if self.verbose else None
        seen = 0
        pending = None
        for index, batch in enumerate(self._batches(data)):
            # One batch in flight: the next batch is read and prepared while the backend still
            # computes the previous one (JAX dispatches asynchronously).
            started = self._dispatch(self._parse(_batch_to_numpy(batch), index), index)
            if pending is not None:
                self._collect(pending)
            pending = started
            seen += 1
            if progbar is not None:
                progbar.update(seen)
        if pending is not None:
            self._collect(pending)
        if seen == 0:
            raise ValueError("GradNAP.fit received no batches.")
        if self.target == "prediction" and self.adjust != "none" and self.target_total_ == 0.0:
            warnings.warn(
                "GradNAP: the model predicts the blank (or nothing) on every frame, so the "
                "'prediction' target and all its gradients are 0 and every profile is 0. Train "
                "the model longer or use target='ctc_loss'.",
                stacklevel=2,
            )
        self._finalize(warn=True)
        return self

    def _dispatch(self, batch, index):
        """Prepares ``batch`` and starts the step on it; :meth:`_collect` adds the result."""
        if batch.labels.size and batch.labels.max() >= self.n_groups_:
            self._grow(int(batch.labels.max()) + 1)
        g = self.n_groups_
        timing = self._timing(self._padded_length(batch.x.shape[1]))
        label_index, label_layers = self._label_plan(timing)
        step, _ = self._step_for(g, label_index)
        padded, n_real = self._pad(batch, step.n_replicas())
        label_arrays = []
        for name in label_layers:
            lt = timing[name]
            lab = input_frames_to_layer(padded.labels, lt, lt.length)
            centre = lt.input_frame(lt.length)
            lab = np.where(centre[None, :] < padded.lengths[:, None], lab, -1)
            label_arrays.append(lab.astype(np.int32))
        layer_labels = {name: label_arrays[i] for name, i in zip(self.layers, label_index)}
        mask = self._output_mask(timing, padded)
        extras = [mask]
        if self.target == "ctc_loss":
            out_lengths = mask.sum(axis=1).astype(np.int32)
            self._check_ctc(padded, out_lengths, n_real, index)
            row_valid = (np.arange(len(out_lengths)) < n_real).astype(np.float32)
            extras += [padded.ctc_labels, padded.ctc_label_lengths,
                       np.maximum(out_lengths, 1).astype(np.int32), row_valid]
        started = step.dispatch(padded.x, *extras, *label_arrays)
        return _Pending(step, started, g, timing, padded, layer_labels,
                        int((batch.labels >= 0).sum()))

    def _collect(self, pending):
        """Waits for a dispatched batch and adds it to the running sums (the first ``g`` groups:
        more may have appeared since it was dispatched)."""
        result = pending.step.fetch(pending.started)
        g = pending.n_groups
        counts = {}  # layers with the same timing share their label array
        for name in self.layers:
            self._sums[name][:g] += result["sums"][name].astype(np.float64)
            lab = pending.layer_labels[name]
            if id(lab) not in counts:
                counts[id(lab)] = np.bincount(lab[lab >= 0], minlength=g)[:g]
            self._counts[name][:g] += counts[id(lab)]
            if self.window is not None:
                self._accumulate_windows(name, pending.timing[name], pending.padded,
                                         result["frames"][name], g,
                                         result["saliency"].get(name))
        self.n_frames_ += pending.n_frames
        self.target_total_ += float(result["value"])

    def _output_mask(self, timing, padded):
        if not self._output_timed:
            return (padded.lengths > 0).astype(np.float32)
        out = timing[self._output_layer]
        centre = out.input_frame(out.length)
        return (centre[None, :] < padded.lengths[:, None]).astype(np.float32)

    def _check_ctc(self, padded, out_lengths, n_real, index):
        labels, lengths = padded.ctc_labels, padded.ctc_label_lengths
        repeats = ((labels[:, 1:] == labels[:, :-1]) &
                   (np.arange(1, labels.shape[1])[None, :] < lengths[:, None])).sum(axis=1)
        needed = lengths + repeats
        bad = np.nonzero(needed[:n_real] > out_lengths[:n_real])[0]
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"Batch {index}, utterance {i}: the transcript needs {int(needed[i])} output "
                f"frames (labels plus repeats) but the model gives {int(out_lengths[i])}; the "
                "CTC loss would be infinite."
            )

    def _accumulate_windows(self, name, lt, padded, frames, g, saliency=None):
        """Averages +-window layer frames around each occurrence's anchor (vectorised)."""
        labels = padded.labels
        rows, t = labels.shape
        prev = np.concatenate([np.full((rows, 1), -2), labels[:, :-1]], axis=1)
        nxt = np.concatenate([labels[:, 1:], np.full((rows, 1), -2)], axis=1)
        starts = np.argwhere((labels != prev) & (labels >= 0))
        ends = np.argwhere((labels != nxt) & (labels >= 0))
        if not len(starts):
            return
        b = starts[:, 0]
        group = labels[starts[:, 0], starts[:, 1]]
        centre = (starts[:, 1] + ends[:, 1]) / 2.0
        anchor = np.floor((centre - lt.offset) / lt.stride + 0.5).astype(np.int64)
        if saliency is not None:
            anchor = _saliency_anchor(saliency, lt, b, starts[:, 1], ends[:, 1], anchor)
        w = self.window
        idx = anchor[:, None] + np.arange(-w, w + 1)[None, :]  # (n_occ, 2w+1)
        frame_in_input = np.floor(idx * lt.stride + lt.offset)
        valid = (idx >= 0) & (idx < lt.length) & (frame_in_input >= 0) & (
            frame_in_input < padded.lengths[b][:, None]
        )
        windows = frames[b[:, None], np.clip(idx, 0, lt.length - 1)]  # (n_occ, 2w+1, F)
        onehot = np.eye(g)[group]  # (n_occ, G)
        weights = valid.astype(np.float64)
        self._tsums[name][:g] += np.einsum("og,ow,owf->gwf", onehot, weights, windows)
        self._tcounts[name][:g] += np.einsum("og,ow->gw", onehot, weights).astype(np.int64)

    # ------------------------------------------------------------------------------------------
    # Results

    def _finalize(self, warn):
        self.profiles_, self.counts_, self.group_means_, self.baseline_ = {}, {}, {}, {}
        empty_any = np.zeros(self.n_groups_, bool)
        for name in self._sums:
            prof, means, base = _profiles(self._sums[name], self._counts[name], self.baseline)
            self.profiles_[name], self.group_means_[name], self.baseline_[name] = prof, means, base
            self.counts_[name] = self._counts[name].copy()
            empty_any |= self._counts[name] == 0
        self.time_profiles_, self.time_counts_ = {}, {}
        for name in self._tsums:
            self.time_profiles_[name] = _profiles(
                self._tsums[name], self._tcounts[name], self.baseline
            )[0]
            self.time_counts_[name] = self._tcounts[name].copy()
        if warn and empty_any.any():
            names = [self.group_name(i) for i in np.nonzero(empty_any)[0]]
            warnings.warn(
                f"GradNAP: no frames for groups {names} in at least one layer (counts 0, profile "
                "0, left out of the baseline).",
                stacklevel=3,
            )

    def group_name(self, index):
        """The name of group ``index`` (its number as a string when no names were given)."""
        if self.group_names is not None:
            return self.group_names[index]
        return str(index)

    def group_index(self, group):
        """Group name or index -> index."""
        if isinstance(group, (int, np.integer)) and not isinstance(group, bool):
            if not 0 <= group < self.n_groups_:
                raise ValueError(
                    f"Group index {group} is out of range (there are {self.n_groups_} groups)."
                )
            return int(group)
        names = self.group_names if self.group_names is not None else [
            str(i) for i in range(self.n_groups_)
        ]
        if group not in names:
            raise ValueError(f"Unknown group {group!r}. Groups: {names}")
        return names.index(group)

    def _check_layer(self, layer):
        if layer not in self.profiles_:
            raise ValueError(f"Layer '{layer}' is not profiled. Profiled layers: {self.layers}")

    def _check_fitted(self):
        if self.n_frames_ == 0:
            raise ValueError("This GradNAP has not seen any labelled frames; call fit first.")

    def maps(self, layer, smooth=False, size=3):
        """Profiles on the layer's grid: ``(n_groups, H, W)``; ``smooth=True`` applies the
        non-strided ``size x size`` average of :func:`keras_topomap.grid.smooth`."""
        self._check_layer(layer)
        maps = grid_lib.to_grid(self.profiles_[layer], self.grids_[layer])
        return grid_lib.smooth(maps, size) if smooth else maps

    def most_responsive_region(self, layer, group, size=3, inside=True):
        """The ``size x size`` block of highest mean GradNAP of ``group`` on ``layer``'s grid
        (:class:`keras_topomap.grid.Region`: centre, filter indices, value), as
        :func:`keras_topomap.grid.most_responsive_region` defines it: by default the best full
        block on the grid, ``inside=False`` for the cut-border variant."""
        self._check_fitted()
        maps = self.maps(layer)
        return grid_lib.most_responsive_region(maps[self.group_index(group)], size, inside=inside)

    def cluster(self, layer, metric="cosine", method="average"):
        """Hierarchical clustering of the group profiles of ``layer`` (groups with frames only).

        Returns:
            :class:`Clustering`; ``order`` lists the group indices in dendrogram leaf order.
        """
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import pdist

        self._check_layer(layer)
        groups = np.nonzero(self.counts_[layer] > 0)[0]
        if len(groups) < 2:
            raise ValueError(
                f"Clustering needs at least 2 groups with frames in layer '{layer}'. Received: "
                f"{len(groups)}"
            )
        profiles = self.profiles_[layer][groups]
        with np.errstate(invalid="ignore", divide="ignore"):
            dist = pdist(profiles, metric=metric)
        dist = np.nan_to_num(dist, nan=1.0)  # an all-zero profile is equally far from all
        z = linkage(dist, method=method)
        order = groups[leaves_list(z)]
        return Clustering(order, [self.group_name(i) for i in order], z, groups)

    def plot(self, layer, groups=None, **kwargs):
        """Figure 1B (top) for ``groups`` of ``layer``; see
        :func:`keras_topomap.visualization.plot_gradnap`."""
        from keras_topomap.visualization import plot_gradnap

        return plot_gradnap(self, layer, groups=groups, **kwargs)

    # ------------------------------------------------------------------------------------------
    # Merge, save, load

    def _config(self):
        return {
            "format_version": _FORMAT_VERSION,
            "layers": self.layers,
            "target": self.target if isinstance(self.target, str) else "callable",
            "adjust": self.adjust,
            "baseline": self.baseline,
            "group_names": self.group_names,
            "n_groups": self.n_groups_,
            "grids": {k: list(v) for k, v in self.grids_.items()},
            "n_filters": self.n_filters_,
            "window": self.window,
            "anchor": self.anchor,
            "blank": self.blank,
            "time_bucket": self.time_bucket,
            "n_frames": self.n_frames_,
            "target_total": self.target_total_,
            "model": self._model_name(),
        }

    def _model_name(self):
        if self.model is not None:
            return self.model.name
        return getattr(self, "_saved_model_name", None)

    def model_fingerprint(self):
        """A digest of the model's weights (sha256 over every weight's bytes, in order).

        Saved with the sums, so that :meth:`merge` can refuse parts fitted with different
        weights. ``None`` for a GradNAP loaded without a model from a file written before
        fingerprints were saved.
        """
        if self.model is None:
            return getattr(self, "_saved_fingerprint", None)
        import hashlib

        digest = hashlib.sha256()
        for weight in self.model.weights:
            value = np.ascontiguousarray(weight.numpy())
            digest.update(f"{weight.path}:{value.dtype}:{value.shape};".encode())
            digest.update(value.tobytes())
        return digest.hexdigest()

    @classmethod
    def merge(cls, parts):
        """One GradNAP holding the sums of several fitted on different data (same settings).

        Merging adds the running sums and counts of the parts: the counts equal one fit over
        all the data exactly, the profiles up to float rounding (the sums are float64, added in a
        different order). Parts may be live objects or ones read by :meth:`load` (without a
        model), e.g. shards fitted on different machines
        (``keras-topomap gradnap --shard i/n``).

        Args:
            parts: GradNAPs with the same settings (layers, target, adjust, baseline, grids,
                window, anchor, blank, group names) fitted with the same model weights.

        Returns:
            A new GradNAP; it keeps the first part's model (if any), so it can go on fitting.

        Raises:
            ValueError: when there are no parts, or parts differ in a setting, in their group
                names, in the model's name or in its weights (:meth:`model_fingerprint`).

        Example:

        >>> halves = [GradNAP(model, ["conv_1"]).partial_fit(part) for part in (a, b)]
        >>> merged = GradNAP.merge(halves)   # == GradNAP(model, ["conv_1"]).fit(a + b)
        """
        parts = list(parts)
        if not parts:
            raise ValueError("GradNAP.merge needs at least one GradNAP.")
        bad = [type(p).__name__ for p in parts if not isinstance(p, GradNAP)]
        if bad:
            raise ValueError(f"GradNAP.merge takes GradNAP objects. Received: {bad}")
        first = parts[0]
        keys = ("layers", "target", "adjust", "baseline", "grids", "window", "anchor",
                "n_filters", "blank")
        ref = {k: first._config()[k] for k in keys}
        for i, part in enumerate(parts[1:], start=1):
            other = {k: part._config()[k] for k in keys}
            diff = [k for k in keys if other[k] != ref[k]]
            if diff:
                raise ValueError(
                    f"GradNAP.merge: part {i} differs from part 0 in {diff}. Received: "
                    f"{[(other[k], ref[k]) for k in diff]}"
                )
            names = [p.group_names for p in (first, part) if p.group_names is not None]
            if len(names) == 2 and names[0] != names[1]:
                raise ValueError(
                    f"GradNAP.merge: part {i} has different group_names. Received: "
                    f"{names[1]} (part 0: {names[0]})"
                )
        models = [p._model_name() for p in parts]
        known = {m for m in models if m is not None}
        if len(known) > 1:
            raise ValueError(
                f"GradNAP.merge: the parts were fitted with different models. Received model "
                f"names: {models}"
            )
        prints = [p.model_fingerprint() for p in parts]
        if len({f for f in prints if f is not None}) > 1:
            raise ValueError(
                "GradNAP.merge: the parts were fitted with different weights of model "
                f"{next(iter(known), '?')!r} (weight fingerprints differ: "
                f"{[f[:12] if f else None for f in prints]})."
            )
        merged = cls.__new__(cls)
        merged.__dict__.update({k: v for k, v in first.__dict__.items() if not k.startswith("_")})
        merged._grids_arg = dict(first._grids_arg)
        merged._steps, merged._timing_cache = first._steps, first._timing_cache
        merged._label_plans = first._label_plans
        merged._rows = first._rows
        merged.info_ = {}
        for attr in ("_saved_model_name", "_saved_fingerprint"):
            if hasattr(first, attr):
                setattr(merged, attr, getattr(first, attr))
        if hasattr(first, "_output_layer"):
            merged._output_layer, merged._output_timed = first._output_layer, first._output_timed
        n_groups = max(p.n_groups_ for p in parts)
        merged.n_groups_ = first.n_groups_
        merged._sums = {k: v.copy() for k, v in first._sums.items()}
        merged._counts = {k: v.copy() for k, v in first._counts.items()}
        merged._tsums = {k: v.copy() for k, v in first._tsums.items()}
        merged._tcounts = {k: v.copy() for k, v in first._tcounts.items()}
        merged._grow(n_groups)
        merged.n_frames_ = first.n_frames_
        merged.target_total_ = sum(getattr(p, "target_total_", 0.0) for p in parts)
        for part in parts[1:]:
            part_copy = part if part.n_groups_ == n_groups else _grown_copy(part, n_groups)
            for name in merged._sums:
                merged._sums[name] += part_copy._sums[name]
                merged._counts[name] += part_copy._counts[name]
                if merged.window is not None:
                    merged._tsums[name] += part_copy._tsums[name]
                    merged._tcounts[name] += part_copy._tcounts[name]
            merged.n_frames_ += part.n_frames_
        merged._finalize(warn=False)
        return merged

    def save(self, path, info=None):
        """Writes ``<path>.npz`` (running sums and counts) and ``<path>.json`` (settings).

        The files hold the running state, not only the profiles, so a loaded GradNAP can be
        merged exactly with others (:meth:`merge`) or go on fitting (:meth:`load` with a model).
        A callable target is stored as ``"callable"``.

        Args:
            path: file stem (``.npz``/``.json`` may be given; both files are written).
            info: optional JSON-serialisable dict stored alongside (read back as ``info_``),
                e.g. which shard of which data this is.

        Returns:
            The path of the ``.npz`` file.
        """
        stem = _stem(path)
        directory = os.path.dirname(stem)
        if directory:
            os.makedirs(directory, exist_ok=True)
        arrays = {}
        for i, name in enumerate(self.layers):
            arrays[f"sums_{i}"] = self._sums[name]
            arrays[f"counts_{i}"] = self._counts[name]
            if self.window is not None:
                arrays[f"tsums_{i}"] = self._tsums[name]
                arrays[f"tcounts_{i}"] = self._tcounts[name]
        np.savez(stem + ".npz", **arrays)
        config = self._config()
        config["model_fingerprint"] = self.model_fingerprint()
        config["info"] = dict(info if info is not None else getattr(self, "info_", {}))
        with open(stem + ".json", "w") as f:
            json.dump(config, f, indent=2)
        return stem + ".npz"

    @classmethod
    def load(cls, path, model=None):
        """Reads what :meth:`save` wrote. With ``model`` (the same architecture) the result can
        continue fitting; without, everything but fitting works."""
        stem = _stem(path)
        for ext in (".npz", ".json"):
            if not os.path.exists(stem + ext):
                raise ValueError(f"GradNAP.load: missing file {stem + ext!r}.")
        with open(stem + ".json") as f:
            config = json.load(f)
        if config.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"GradNAP.load: {stem + '.json'!r} has format version "
                f"{config.get('format_version')!r}; this version reads {_FORMAT_VERSION}."
            )
        target = config["target"]
        if target == "callable":
            if model is not None:
                raise ValueError(
                    "GradNAP.load: the saved GradNAP used a callable target, which is not saved; "
                    "build a new GradNAP with it and use GradNAP.merge to combine."
                )
            target = "prediction"
        grids = {k: tuple(v) for k, v in config["grids"].items()}
        gn = cls(
            model, config["layers"], target=target, adjust=config["adjust"],
            baseline=config["baseline"], group_names=config["group_names"],
            n_groups=config["n_groups"] or None, grids=grids if model is not None else None,
            window=config["window"], anchor=config.get("anchor", "center"),
            blank=config["blank"], time_bucket=config["time_bucket"],
        )
        gn.target = config["target"] if config["target"] == "callable" else target
        if model is None:
            gn.grids_ = grids
            gn.n_filters_ = {k: int(v) for k, v in config["n_filters"].items()}
        elif gn.n_filters_ != {k: int(v) for k, v in config["n_filters"].items()}:
            raise ValueError(
                f"GradNAP.load: model '{model.name}' has filter counts {gn.n_filters_}, the "
                f"saved profiles {config['n_filters']}."
            )
        gn.n_groups_ = int(config["n_groups"])
        with np.load(stem + ".npz") as data:
            gn._sums = {n: data[f"sums_{i}"] for i, n in enumerate(gn.layers)}
            gn._counts = {n: data[f"counts_{i}"] for i, n in enumerate(gn.layers)}
            if gn.window is not None:
                gn._tsums = {n: data[f"tsums_{i}"] for i, n in enumerate(gn.layers)}
                gn._tcounts = {n: data[f"tcounts_{i}"] for i, n in enumerate(gn.layers)}
        gn.n_frames_ = int(config["n_frames"])
        gn.target_total_ = float(config.get("target_total", 0.0))
        gn.info_ = dict(config.get("info") or {})
        gn._saved_model_name = config.get("model")
        gn._saved_fingerprint = config.get("model_fingerprint")
        if model is not None and gn._saved_fingerprint is not None:
            # Continuing a fit with other weights would silently mix two models.
            if gn.model_fingerprint() != gn._saved_fingerprint:
                warnings.warn(
                    f"GradNAP.load: the weights of model '{model.name}' differ from those the "
                    f"saved sums in {stem + '.json'!r} were computed with.",
                    stacklevel=2,
                )
        gn._finalize(warn=False)
        return gn

    def __repr__(self):
        target = self.target if isinstance(self.target, str) else "callable"
        return (
            f"GradNAP(layers={self.layers}, target={target!r}, adjust={self.adjust!r}, "
            f"baseline={self.baseline!r}, n_groups={self.n_groups_}, n_frames={self.n_frames_})"
        )


# ----------------------------------------------------------------------------------------------
# Helpers


def _profiles(sums, counts, baseline):
    """(profiles, group means, baseline) from running sums; empty groups -> 0, never NaN.

    ``sums`` is ``(G, ..., F)`` and ``counts`` ``(G, ...)`` (the time-resolved sums carry a
    window axis); the baseline is taken over the group axis, per remaining position.
    """
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


def _saliency_anchor(saliency, lt, rows, starts, ends, fallback):
    """Per occurrence, the layer frame of highest saliency among the layer frames attributed to
    it (centre input frame in ``[start, end]``); ``fallback`` where it has none."""
    lo = np.maximum(np.ceil((starts - lt.offset) / lt.stride), 0).astype(np.int64)
    hi = np.minimum(np.ceil((ends + 1 - lt.offset) / lt.stride) - 1, lt.length - 1)
    hi = hi.astype(np.int64)
    has = hi >= lo
    if not has.any():
        return fallback
    span = int((hi - lo + 1)[has].max())
    idx = lo[:, None] + np.arange(span)[None, :]
    inside = idx <= hi[:, None]
    values = np.where(inside, saliency[rows[:, None], np.clip(idx, 0, lt.length - 1)], -np.inf)
    return np.where(has, lo + np.argmax(values, axis=1), fallback)


def _grown_copy(part, n_groups):
    copy = GradNAP.__new__(GradNAP)
    copy.__dict__.update(part.__dict__)
    copy._sums = {k: v.copy() for k, v in part._sums.items()}
    copy._counts = {k: v.copy() for k, v in part._counts.items()}
    copy._tsums = {k: v.copy() for k, v in part._tsums.items()}
    copy._tcounts = {k: v.copy() for k, v in part._tcounts.items()}
    copy._grow(n_groups)
    return copy


def _positive_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _stem(path):
    path = os.fspath(path)
    for ext in (".npz", ".json"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def _n_positional(fn):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in kinds)


def _is_array3(value):
    return hasattr(value, "shape") and hasattr(value, "ndim") and value.ndim == 3


def _is_array_data(data):
    return isinstance(data, (tuple, list)) and len(data) in (2, 3) and _is_array3(data[0])


def _batch_to_numpy(batch):
    """A batch (dict, tuple or list of tensors) with numpy arrays in place of its tensors."""
    if isinstance(batch, dict):
        return {k: to_numpy(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_numpy(v) for v in batch)
    return batch

