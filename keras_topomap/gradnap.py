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
  out of the baseline -- never NaN (the rule of :mod:`keras_topomap.group_sums`).
- Running sums per group and layer (:class:`keras_topomap.group_sums.GroupSums`): memory does
  not grow with the dataset; two GradNAPs over different data merge exactly
  (:meth:`GradNAP.merge`).
- Time-resolved view (``window=w``): for every occurrence of a group (a run of equal input frame
  labels), the ``2w + 1`` layer frames around the layer frame nearest the run's centre are
  averaged per group -> ``(n_groups, 2w + 1, n_filters)``; positions outside the utterance do not
  count. ``anchor="saliency"`` centres the window instead on the occurrence's layer frame of
  highest saliency (mean over filters of ``|g|``), as in the authors' later code.

Per-sample groups (an image's class): batches ``(x, labels)`` with ``labels`` int ``(B,)``, on
any model; positions of a layer are averaged per sample, and ``target="prediction"`` is the logit
of the predicted class, ``target="label"`` that of the true class
(:mod:`keras_topomap.sample_groups`).

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

from keras_topomap import _keras_internals as internals
from keras_topomap import batch_checks, checks, sample_groups
from keras_topomap import grid as grid_lib
from keras_topomap._arrays import to_numpy
from keras_topomap._files import file_stem, replace_atomically, write_json_atomically
from keras_topomap.ctc import required_frames
from keras_topomap.datasets.batches import unpack_ctc_targets
from keras_topomap.gradients import ActivationGradients, find_layer
from keras_topomap.group_sums import BASELINES as _BASELINES
from keras_topomap.group_sums import GroupSums
from keras_topomap.receptive_field import check_frame_labels, receptive_fields

__all__ = ["GradNAP", "Clustering"]

_TARGETS = ("prediction", "ctc_loss", "label")
_ADJUST = ("gradient", "abs_gradient", "none")
_FORMAT_VERSION = 2  # 2: the skipped counts (batch_checks)
_READ_VERSIONS = (1, 2)


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
    batch: Any = None  # the batch as screened, and its rows' indices in the batch as given
    index: int = 0
    rows: Any = None


class GradNAP:
    """Gradient-adjusted neuron activation profiles of a model's layers.

    Settings are the init arguments, each stored under its own name; what fitting learns lives
    in attributes ending in ``_``, which exist only once :meth:`fit`, :meth:`partial_fit`,
    :meth:`load` or :meth:`merge` made them (``hasattr(gn, "profiles_")`` tells whether a
    GradNAP is fitted).

    Args:
        model: a Keras model built on ``keras.Input``; for frame labels one with a time axis
            (input ``(batch, time, features)``, logits ``(batch, time, classes)`` for the
            built-in targets), for per-sample labels any one-input model (e.g. an image
            classifier; :mod:`keras_topomap.sample_groups`). ``None`` for a GradNAP that only
            holds profiles (then ``grids`` must name every layer).
        layers: names of the layers to profile: outputs ``(batch, time, filters)`` for frame
            labels, ``(batch, ..., filters)`` for per-sample labels.
        target: ``"prediction"``, ``"ctc_loss"`` (frame labels), ``"label"`` (per-sample
            labels: the logit of the true class) or a callable ``fn(output)`` /
            ``fn(output, output_mask)`` returning a scalar (or per-utterance values) in
            ``keras.ops``; ``output_mask`` is float ``(batch, time)`` (1 inside an utterance;
            per-sample labels: ``output.shape[:-1]``, 1 for real samples).
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
        on_nonfinite: ``"raise"`` (a ValueError naming the batch and utterance) or ``"skip"``
            (leave the utterance out and count it in ``skipped_``) for NaN or infinite inputs
            and step results (:mod:`keras_topomap.batch_checks`).

    Attributes (once fitted):
        group_sums_: the running state, a :class:`~keras_topomap.group_sums.GroupSums`.
        profiles_: ``{layer: (n_groups, n_filters)}`` GradNAP values.
        counts_: ``{layer: (n_groups,)}`` labelled frames per group.
        group_means_: ``{layer: (n_groups, n_filters)}`` the averages ``A_g`` (0 for empty groups).
        baseline_: ``{layer: (n_filters,)}`` the subtracted baseline.
        time_profiles_, time_counts_: ``{layer: (n_groups, 2w+1, n_filters)}`` and
            ``(n_groups, 2w+1)``, with ``window``.
        grids_: ``{layer: (H, W)}``; n_filters_: ``{layer: n_filters}``.
        n_groups_: number of groups.
        n_frames_: labelled input frames seen (samples, with per-sample labels).
        label_kind_: ``"frame"`` or ``"sample"``: the kind of labels fitted.
        target_total_: the target summed over all batches (0 for ``adjust="none"``).
        skipped_: ``{"nonfinite_rows": n, "empty_batches": n}``: utterances (samples) left out
            for non-finite values and batches without rows or frames.
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
        on_nonfinite="raise",
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
        self.model = model
        self.target = target
        self.adjust = checks.choice(adjust, "adjust", _ADJUST)
        self.baseline = checks.choice(baseline, "baseline", _BASELINES)
        self.group_names = None if group_names is None else [str(g) for g in group_names]
        self.n_groups = checks.positive_int(n_groups, "n_groups", allow_none=True)
        if self.group_names is not None and n_groups is not None and n_groups != len(group_names):
            raise ValueError(
                f"n_groups={n_groups} does not match the {len(self.group_names)} group_names."
            )
        self.batch_size = checks.positive_int(batch_size, "batch_size", allow_none=True)
        self.window = checks.non_negative_int(window, "window", allow_none=True)
        self.anchor = _check_anchor(anchor, adjust)
        self.time_bucket = checks.positive_int(time_bucket, "time_bucket")
        self.blank = blank
        self.verbose = verbose
        self.on_nonfinite = checks.choice(on_nonfinite, "on_nonfinite", batch_checks.ON_NONFINITE)
        self.grids = None if grids is None else dict(grids)
        # Read from the model (or, without one, from grids) once; the fitted grids_ and
        # n_filters_ are copies of these.
        # Frame labels need frame timing; _frame_problem says why a model has none (raised
        # only when frame labels come: per-sample labels work on any model).
        (self._n_filters, self._grids, self._output_layer, self._output_timed,
         self._frame_problem) = _inspect_model(model, self.layers, self.grids or {}, target)
        self._steps = {}
        self._timing_cache = {}
        self._label_plans = {}  # id(timing) -> (timing, label_index, label_layers)
        self._rows = batch_size

    # ------------------------------------------------------------------------------------------
    # Set-up

    def _empty_state(self):
        n_groups = len(self.group_names) if self.group_names is not None else self.n_groups
        return GroupSums(self._n_filters, n_groups or 0, self.window)

    def _set_state(self, state, warn=False, info=None, label_kind=None):
        """Publishes ``state`` and the profiles computed from it as the fitted attributes."""
        self.group_sums_ = state
        self.label_kind_ = label_kind or getattr(self, "label_kind_", None) or "frame"
        self.grids_, self.n_filters_ = dict(self._grids), dict(self._n_filters)
        self.n_groups_, self.n_frames_ = state.n_groups, state.n_frames
        self.target_total_ = state.target_total
        self.skipped_ = batch_checks.published(state.skipped)
        self.profiles_, self.counts_, self.group_means_, self.baseline_ = {}, {}, {}, {}
        for name in state.layers:
            profiles, means, base = state.profiles(name, self.baseline)
            self.profiles_[name], self.group_means_[name], self.baseline_[name] = (
                profiles, means, base
            )
            self.counts_[name] = state.counts[name].copy()
        self.time_profiles_ = {name: state.window_profiles(name, self.baseline)
                               for name in state.window_sums}
        self.time_counts_ = {name: c.copy() for name, c in state.window_counts.items()}
        if info is not None or not hasattr(self, "info_"):
            self.info_ = dict(info or {})
        if warn:
            _warn_empty_groups(self, state)

    # ------------------------------------------------------------------------------------------
    # The compiled step

    def _step_for(self, n_groups, label_index, kind="frame"):
        """The compiled step for ``n_groups`` groups; ``label_index[i]`` says which of the
        label arrays passed to it belongs to ``self.layers[i]`` (layers with the same timing
        share one; see :meth:`_label_plan`); ``kind="sample"``: per-sample labels."""
        key = (kind, n_groups, label_index)
        if key in self._steps:
            return self._steps[key]
        layers, adjust = self.layers, self.adjust
        keep_frames = self.window is not None and kind == "frame"
        keep_saliency = keep_frames and self.anchor == "saliency"
        if kind == "sample":
            n_target_extras = 2
            target = sample_groups.sample_target(self.target, self.blank,
                                                 _n_positional(self.target))
            reduce = sample_groups.sample_reduce(layers, n_groups, adjust)
        else:
            target, n_target_extras = _target_function(self.target, self.blank)
            reduce = _group_sums_reduce(layers, label_index, n_groups, n_target_extras,
                                        adjust, keep_frames, keep_saliency)
        reduce = batch_checks.with_finite_flags(reduce, layers)
        needs_grad = adjust != "none"
        # Under a distribution: sums add over replicas, per-frame results join along the batch.
        per_layer = {name: "sum" for name in layers}
        replica_reduce = {
            "sums": per_layer,
            "frames": {name: "concat" for name in layers} if keep_frames else {},
            "saliency": {name: "concat" for name in layers} if keep_saliency else {},
            "value": "sum", "finite": {name: "concat" for name in layers},
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
        if key not in self._label_plans:  # the timing is kept so that its id stays unique
            self._label_plans[key] = (timing, *_label_sharing(self.layers, timing))
        return self._label_plans[key][1:]

    def _timing(self, n_frames):
        if n_frames not in self._timing_cache:
            self._timing_cache[n_frames] = receptive_fields(self.model, n_frames=n_frames)
        return self._timing_cache[n_frames]

    def _padded_length(self, n_frames):
        return max(self.time_bucket, -(-n_frames // self.time_bucket) * self.time_bucket)

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
        return self._fit(data, self._empty_state())

    def partial_fit(self, data):
        """Adds ``data`` to the running sums (profiles are recomputed). Returns self."""
        state = self.group_sums_.copy() if hasattr(self, "group_sums_") else self._empty_state()
        return self._fit(data, state)

    def _fit(self, data, state):
        """Adds ``data`` to ``state`` (a copy: on an error the GradNAP stays as it was) and
        publishes it."""
        if self.model is None:
            raise ValueError(
                "This GradNAP has no model (it was loaded from disk); pass model= to "
                "GradNAP.load to continue fitting."
            )
        total = len(data) if hasattr(data, "__len__") and not _is_array_data(data) else None
        progbar = keras.utils.Progbar(total, unit_name="batch") if self.verbose else None
        seen = dispatched = 0
        pending = None
        kind = getattr(self, "label_kind_", None) if state.n_frames else None
        for index, batch in enumerate(_batches(data, self.batch_size)):
            # One batch in flight: the next batch is read and prepared while the backend still
            # computes the previous one (JAX dispatches asynchronously).
            batch = _batch_to_numpy(batch)
            batch_kind = "sample" if sample_groups.is_sample_batch(batch) else "frame"
            sample_groups.check_label_kind(batch_kind, kind, index)
            kind = batch_kind
            if kind == "sample":
                parsed = sample_groups.parse_sample_batch(batch, index, self.group_names)
            else:
                parsed = _parse_batch(batch, index, self.target, self.group_names)
            started = self._start(parsed, index, state)
            dispatched += started is not None
            if pending is not None:
                self._collect(pending, state)
            pending = started
            seen += 1
            if progbar is not None:
                progbar.update(seen)
        if pending is not None:
            self._collect(pending, state)
        _check_seen(seen, dispatched, state.skipped)
        _warn_all_blank(self, kind, state)
        self._set_state(state, warn=True, label_kind=kind)
        return self

    def _start(self, parsed, index, state, rows=None):
        """Screens a parsed batch (:func:`keras_topomap.batch_checks.screen`) and starts its
        step: a :class:`_Pending`, or None for a batch skipped whole."""
        batch, kept = batch_checks.screen(parsed, index, self.on_nonfinite, state.skipped)
        if batch is None:
            return None
        rows = kept if rows is None else rows[kept]
        if isinstance(batch, sample_groups.SampleBatch):
            started = sample_groups.dispatch_samples(self, batch, state, index)
        else:
            started = self._dispatch(batch, index, state)
        return _Pending(*started, batch=batch, index=index, rows=rows)

    def _dispatch(self, batch, index, state):
        """Prepares ``batch`` and starts the step on it; :meth:`_collect` adds the result."""
        if self._frame_problem:
            raise ValueError(self._frame_problem)
        g, step_groups = batch_checks.grow_groups(state, batch.labels, index, self.group_names,
                                                  self.n_groups)
        timing = self._timing(self._padded_length(batch.x.shape[1]))
        label_index, label_layers = self._label_plan(timing)
        step, _ = self._step_for(step_groups, label_index)
        self._rows = max(self._rows or len(batch.x), len(batch.x))
        padded, n_real = _pad_batch(batch, self._padded_length(batch.x.shape[1]),
                                    self._rows, step.n_replicas())
        label_arrays = [timing[name].labels_at_frames(padded.labels, padded.lengths)
                        .astype(np.int32) for name in label_layers]
        layer_labels = {name: label_arrays[i] for name, i in zip(self.layers, label_index)}
        if self._output_timed:
            mask = timing[self._output_layer].frames_before_end(padded.lengths)
        else:
            mask = padded.lengths > 0
        mask = mask.astype(np.float32)
        extras = [mask]
        if self.target == "ctc_loss":
            out_lengths = mask.sum(axis=1).astype(np.int32)
            _check_ctc(batch, padded, out_lengths, n_real, index, self.model)
            row_valid = (np.arange(len(out_lengths)) < n_real).astype(np.float32)
            extras += [padded.ctc_labels, padded.ctc_label_lengths,
                       np.maximum(out_lengths, 1).astype(np.int32), row_valid]
        started = step.dispatch(padded.x, *extras, *label_arrays)
        return (step, started, g, timing, padded, layer_labels, int((batch.labels >= 0).sum()))

    def _collect(self, pending, state):
        """Waits for a dispatched batch and adds it to ``state`` (the first ``g`` groups: more
        may have appeared since it was dispatched). Rows with non-finite results raise, or are
        left out: the batch is computed again without them."""
        if pending is None:
            return
        result = pending.step.fetch(pending.started)
        g = pending.n_groups
        keep = batch_checks.rows_to_keep(result, pending, self.on_nonfinite, state.skipped)
        if keep is not None:  # rows left out: the others are computed again
            if keep.size:
                again = batch_checks.take_rows(pending.batch, keep)
                self._collect(self._start(again, pending.index, state, pending.rows[keep]), state)
            return
        counts = {}  # layers with the same timing share their label array
        for name in self.layers:
            lab = pending.layer_labels[name]
            if id(lab) not in counts:
                counts[id(lab)] = np.bincount(lab[lab >= 0], minlength=g)[:g]
            state.add(name, result["sums"][name][:g], counts[id(lab)])
            if self.window is not None:
                windows = _window_sums(pending.timing[name], pending.padded,
                                       result["frames"][name], g, self.window,
                                       result["saliency"].get(name))
                if windows is not None:
                    state.add_windows(name, *windows)
        state.n_frames += pending.n_frames
        state.target_total += float(result["value"])

    # ------------------------------------------------------------------------------------------
    # Results

    def group_name(self, index):
        """The name of group ``index`` (its number as a string when no names were given)."""
        if self.group_names is not None:
            return self.group_names[index]
        return str(index)

    def group_index(self, group):
        """Group name or index -> index."""
        self._check_fitted()
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

    def _check_fitted(self):
        if not hasattr(self, "profiles_"):
            raise ValueError(
                "This GradNAP has not been fitted; call fit, partial_fit, load or merge first."
            )

    def _check_layer(self, layer):
        self._check_fitted()
        if layer not in self.profiles_:
            raise ValueError(f"Layer '{layer}' is not profiled. Profiled layers: {self.layers}")

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
        if self.n_frames_ == 0:
            raise ValueError("This GradNAP has not seen any labelled frames; call fit first.")
        maps = self.maps(layer)
        return grid_lib.most_responsive_region(maps[self.group_index(group)], size, inside=inside)

    def cluster(self, layer, metric="cosine", method="average"):
        """Hierarchical clustering of the group profiles of ``layer`` (groups with frames only).

        Returns:
            :class:`Clustering`; ``order`` lists the group indices in dendrogram leaf order.
        """
        self._check_layer(layer)
        order, z, groups = _cluster_groups(self.profiles_[layer], self.counts_[layer], layer,
                                           metric, method)
        return Clustering(order, [self.group_name(i) for i in order], z, groups)

    def plot(self, layer, groups=None, **kwargs):
        """Figure 1B (top) for ``groups`` of ``layer``; see
        :func:`keras_topomap.visualization.plot_gradnap`."""
        from keras_topomap.visualization import plot_gradnap

        return plot_gradnap(self, layer, groups=groups, **kwargs)

    # ------------------------------------------------------------------------------------------
    # Merge, save, load

    def _settings(self):
        """The settings saved with (and compared between) GradNAPs, JSON-ready."""
        return {
            "format_version": _FORMAT_VERSION,
            "layers": self.layers,
            "target": self.target if isinstance(self.target, str) else "callable",
            "adjust": self.adjust,
            "baseline": self.baseline,
            "group_names": self.group_names,
            "grids": {k: list(v) for k, v in self._grids.items()},
            "n_filters": self._n_filters,
            "window": self.window,
            "anchor": self.anchor,
            "blank": self.blank,
            "time_bucket": self.time_bucket,
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
        return _weights_digest(self.model)

    def _same_settings(self, model=None):
        """A new, unfitted GradNAP with this one's settings (nothing shared with this one)."""
        target = self.target if callable(self.target) or self.target in _TARGETS else None
        new = type(self)(
            model, self.layers, target=target or "prediction", adjust=self.adjust,
            baseline=self.baseline, group_names=self.group_names, n_groups=self.n_groups,
            grids=self._grids, batch_size=self.batch_size, window=self.window,
            anchor=self.anchor, blank=self.blank, time_bucket=self.time_bucket,
            verbose=self.verbose, on_nonfinite=self.on_nonfinite,
        )
        new.target = self.target  # "callable" for one loaded from disk
        if model is None:
            new._saved_model_name = self._model_name()
            new._saved_fingerprint = self.model_fingerprint()
        return new

    @classmethod
    def merge(cls, parts):
        """One GradNAP holding the sums of several fitted on different data (same settings).

        Merging adds the running sums and counts of the parts
        (:meth:`keras_topomap.group_sums.GroupSums.total`): the counts equal one fit over
        all the data exactly, the profiles up to float rounding (the sums are float64, added in a
        different order). Parts may be live objects or ones read by :meth:`load` (without a
        model), e.g. shards fitted on different machines
        (``keras-topomap gradnap --shard i/n``); an unfitted part counts as empty.

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
        _check_mergeable(parts)
        first = parts[0]
        merged = first._same_settings(first.model)
        states = [getattr(p, "group_sums_", None) or p._empty_state() for p in parts]
        merged._set_state(GroupSums.total(states), info={}, label_kind=_merged_kind(parts))
        return merged

    def save(self, path, info=None):
        """Writes ``<path>.npz`` (running sums and counts) and ``<path>.json`` (settings).

        The files hold the running state, not only the profiles, so a loaded GradNAP can be
        merged exactly with others (:meth:`merge`) or go on fitting (:meth:`load` with a model).
        A callable target is stored as ``"callable"``. An unfitted GradNAP writes an empty
        state.

        Args:
            path: file stem (``.npz``/``.json`` may be given; both files are written).
            info: optional JSON-serialisable dict stored alongside (read back as ``info_``),
                e.g. which shard of which data this is.

        Returns:
            The path of the ``.npz`` file.
        """
        stem = file_stem(path)
        directory = os.path.dirname(stem)
        if directory:
            os.makedirs(directory, exist_ok=True)
        state = getattr(self, "group_sums_", None) or self._empty_state()
        # Each file is written beside and renamed into place; the .json, written last, holds
        # the digest of the .npz, so a pair from two different saves (a crash between the two
        # renames) is refused by load instead of being read as one.
        with replace_atomically(stem + ".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **state.to_arrays())
            digest = _file_digest(tmp)
        config = self._settings()
        config.update(n_groups=state.n_groups, n_frames=state.n_frames,
                      label_kind=getattr(self, "label_kind_", "frame"),
                      target_total=state.target_total, model_fingerprint=self.model_fingerprint(),
                      arrays_sha256=digest, skipped=batch_checks.published(state.skipped),
                      info=dict(info if info is not None else getattr(self, "info_", {})))
        write_json_atomically(stem + ".json", config, indent=2)
        return stem + ".npz"

    @classmethod
    def load(cls, path, model=None):
        """Reads what :meth:`save` wrote. With ``model`` (the same architecture) the result can
        continue fitting; without, everything but fitting works."""
        stem = file_stem(path)
        for ext in (".npz", ".json"):
            if not os.path.exists(stem + ext):
                raise ValueError(f"GradNAP.load: missing file {stem + ext!r}.")
        config = _read_header(stem + ".json")
        if config["target"] == "callable" and model is not None:
            raise ValueError(
                "GradNAP.load: the saved GradNAP used a callable target, which is not saved; "
                "build a new GradNAP with it and use GradNAP.merge to combine."
            )
        names = config["group_names"]
        try:
            gn = cls(
                model, config["layers"],
                target="prediction" if config["target"] == "callable" else config["target"],
                adjust=config["adjust"], baseline=config["baseline"], group_names=names,
                n_groups=None if names is not None else (config["n_groups"] or None),
                grids={k: tuple(v) for k, v in config["grids"].items()},
                window=config["window"], anchor=config.get("anchor", "center"),
                blank=config["blank"], time_bucket=config["time_bucket"],
            )
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"GradNAP.load: the settings in {stem + '.json'!r}: {e}") from e
        gn.target = config["target"]
        saved_filters, n_groups = _saved_counts(config, gn, stem, model)
        arrays = _read_arrays(stem + ".npz", config.get("arrays_sha256"), stem + ".json")
        state = GroupSums.from_arrays(
            arrays, gn.layers, gn.window, n_frames=config["n_frames"],
            target_total=config.get("target_total", 0.0), where=f"GradNAP.load({stem!r})",
            n_groups=n_groups, n_filters=saved_filters,
        )
        state.skipped = batch_checks.read_skipped(config.get("skipped"), f"GradNAP.load({stem!r})")
        gn._saved_model_name = config.get("model")
        gn._saved_fingerprint = config.get("model_fingerprint")
        info, kind = _loaded_extras(gn, config, stem, model)
        gn._set_state(state, info=info, label_kind=kind)
        return gn

    def __repr__(self):
        target = self.target if isinstance(self.target, str) else "callable"
        fitted = (f", n_groups={self.n_groups_}, n_frames={self.n_frames_}"
                  if hasattr(self, "profiles_") else ", not fitted")
        return (f"GradNAP(layers={self.layers}, target={target!r}, adjust={self.adjust!r}, "
                f"baseline={self.baseline!r}{fitted})")


# ----------------------------------------------------------------------------------------------
# Helpers: the model, the step's reduction, batches, time-resolved windows


def _inspect_model(model, names, grids, target):
    """``(n_filters, grids, output layer, output has a time axis, frame problem)`` of the
    profiled layers: from the model, or without one (a GradNAP that only holds profiles) from
    ``grids``. ``frame problem``: why frame labels cannot be used (None: they can)."""
    if len(set(names)) != len(names):
        raise ValueError(f"Layer names must be unique. Received: layers={names}")
    if model is None:
        missing = [name for name in names if name not in grids]
        if missing:
            raise ValueError(
                f"A GradNAP without a model needs grids={{layer: (H, W)}} for every layer. "
                f"Missing: {missing}"
            )
        shapes = {name: grid_lib.validate_grid(grids[name], what=f"grid of layer '{name}'")
                  for name in names}
        return {name: h * w for name, (h, w) in shapes.items()}, shapes, None, False, None
    layer_objs = {name: find_layer(model, name) for name in names}
    try:
        timing, frame_problem = receptive_fields(model), None
    except ValueError as e:  # e.g. Conv2D: no time axis, but per-sample labels still work
        timing, frame_problem = {}, f"Frame labels (batch, T) need frame timing: {e}"
    n_filters = {}
    for name, layer in layer_objs.items():
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            raise ValueError(
                f"Layer '{name}' uses data_format='channels_first'; GradNAP expects "
                "channels-last activations (batch, ..., filters)."
            )
        shape = tuple(layer.output.shape)
        problem = sample_groups.sample_layer_problem(name, shape)
        if problem:
            raise ValueError(problem)
        if (len(shape) != 3 or name not in timing) and frame_problem is None:
            frame_problem = (
                f"Layer '{name}' must output (batch, time, filters) frames on the input's "
                f"time axis for frame labels (batch, T); per-sample labels (batch,) work on "
                f"any layer. Received: output shape {shape}"
            )
        n_filters[name] = int(shape[-1])
    unknown = sorted(set(grids) - set(names))
    if unknown:
        raise ValueError(
            f"grids names layers that are not profiled: {unknown}. Profiled layers: {names}"
        )
    from keras_topomap.regularizers import topographic_layers

    topo = topographic_layers(model)
    shapes = {}
    for name in names:
        what = f"grid of layer '{name}'"
        if name in grids:
            shapes[name] = grid_lib.validate_grid(grids[name], n_filters[name], what=what)
        elif name in topo:  # its regularizer's grid must hold the layer's outputs
            shapes[name] = grid_lib.validate_grid(
                topo[name]["grid"], n_filters[name],
                what=f"the TopographicRegularizer grid of layer '{name}' (output channels)",
            )
        else:
            raise ValueError(
                f"Layer '{name}' has no TopographicRegularizer, so its grid is unknown. Pass "
                f"grids={{'{name}': (H, W)}} with H * W = {n_filters[name]}."
            )
    output_layer = internals.producing_layer(internals.graph_outputs(model)[0]).name
    if target in ("prediction", "ctc_loss") and output_layer not in timing and not frame_problem:
        frame_problem = (
            f"target={target!r} with frame labels needs an output with a time axis (batch, "
            f"time, classes); model '{model.name}' output layer '{output_layer}' has none. Pass "
            "a callable target, or per-sample labels (batch,)."
        )
    if target == "label" and not frame_problem:
        frame_problem = "target='label' needs per-sample labels (batch,), one class per sample."
    return n_filters, shapes, output_layer, output_layer in timing, frame_problem


def _group_sums_reduce(layers, label_index, n_groups, n_target_extras, adjust, keep_frames,
                       keep_saliency):
    """The step's on-device reduction: per layer the per-group sums of the adjusted
    activations, and with windows the adjusted frames (and saliency) themselves."""

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

    return reduce


def _label_sharing(names, timing):
    """``(label_index, label_layers)``: one layer per distinct frame timing among ``names``,
    and for each name the position of its timing's layer."""
    index, keys, layers = [], [], []
    for name in names:
        lt = timing[name]
        signature = (lt.length, np.asarray(lt.input_frame()).tobytes())
        if signature not in keys:
            keys.append(signature)
            layers.append(name)
        index.append(keys.index(signature))
    return tuple(index), tuple(layers)


def _target_function(target_name, blank):
    """The step's target ``fn(output, activations, mask, *extras)`` and its number of
    extras before the frame labels."""
    if target_name == "prediction":

        def target(output, activations, mask, *frame_labels):
            best = ops.argmax(output, axis=-1)
            keep = mask if blank is None else mask * ops.cast(best != blank, mask.dtype)
            return ops.sum(ops.max(ops.cast(output, "float32"), axis=-1) * keep)

        return target, 1
    if target_name == "ctc_loss":

        def target(output, activations, mask, labels, label_lengths, out_lengths, row_valid,
                   *frame_labels):
            loss = ops.ctc_loss(labels, ops.cast(output, "float32"), label_lengths,
                                out_lengths, mask_index=blank)
            return -ops.sum(loss * row_valid)

        return target, 5
    user = target_name
    n_args = _n_positional(user)

    def target(output, activations, mask, *frame_labels):
        return user(output, mask) if n_args >= 2 else user(output)

    return target, 1



def _saved_counts(config, gn, stem, model):
    """``(n_filters, n_groups)`` of a saved header, checked against ``gn`` (built from it)."""
    names = config["group_names"]
    try:
        saved_filters = {k: int(v) for k, v in config["n_filters"].items()}
    except (TypeError, ValueError, AttributeError) as e:
        raise ValueError(
            f"GradNAP.load: {stem + '.json'!r} has no valid n_filters. Received: "
            f"{config['n_filters']!r}"
        ) from e
    if gn._n_filters != saved_filters:
        what = f"model '{model.name}'" if model is not None else "the saved grids"
        raise ValueError(
            f"GradNAP.load: {what} give filter counts {gn._n_filters}, the saved profiles "
            f"{config['n_filters']} (in {stem + '.json'!r})."
        )
    n_groups = config["n_groups"]
    if names is not None and n_groups != len(names):
        raise ValueError(
            f"GradNAP.load: {stem + '.json'!r} states n_groups={n_groups!r} but lists "
            f"{len(names)} group_names."
        )
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 0:
        raise ValueError(
            f"GradNAP.load: n_groups in {stem + '.json'!r} must be an int >= 0. Received: "
            f"{n_groups!r}"
        )
    return saved_filters, n_groups


def _cluster_groups(profiles, counts, layer, metric, method):
    """``(leaf order, linkage, clustered groups)`` of the groups with frames."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import pdist

    groups = np.nonzero(counts > 0)[0]
    if len(groups) < 2:
        raise ValueError(
            f"Clustering needs at least 2 groups with frames in layer '{layer}'. Received: "
            f"{len(groups)}"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = pdist(profiles[groups], metric=metric)
    dist = np.nan_to_num(dist, nan=1.0)  # an all-zero profile is equally far from all
    z = linkage(dist, method=method)
    return groups[leaves_list(z)], z, groups


def _merged_kind(parts):
    """The label kind shared by the parts that saw data (refuses frame and sample parts)."""
    kinds = {p.label_kind_ for p in parts if getattr(p, "n_frames_", 0)}
    if len(kinds) > 1:
        raise ValueError(
            "GradNAP.merge: some parts were fitted with frame labels, others with per-sample "
            f"labels. Received label kinds: {[getattr(p, 'label_kind_', None) for p in parts]}"
        )
    return kinds.pop() if kinds else None


def _check_mergeable(parts):
    """Raises unless ``parts`` share settings, group names, model and weights."""
    first = parts[0]
    keys = ("layers", "target", "adjust", "baseline", "grids", "window", "anchor",
            "n_filters", "blank")
    ref = {k: first._settings()[k] for k in keys}
    for i, part in enumerate(parts[1:], start=1):
        other = {k: part._settings()[k] for k in keys}
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


def _parse_batch(batch, index, target, group_names):
    """One batch as a :class:`_Batch` (numpy, labels past each utterance's end set to -1)."""
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
            lengths, label_lengths, labels_ = unpack_ctc_targets(packed)
            ctc = (labels_, label_lengths)
    else:
        raise ValueError(
            f"Batch {index}: expected (x, frame_labels), (x, frame_labels, packed_ctc_targets)"
            f" or a dict with 'features' and 'frame_labels'. Received: {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(
            f"Batch {index}: with frame labels x must be (batch, time, features); give labels "
            f"of shape (batch,) for per-sample groups. Received: shape={x.shape}"
        )
    labels = check_frame_labels(labels, x.shape[:2], f"Batch {index}")
    if 0 in x.shape[:2]:  # no rows or no frames: skipped (and counted) by batch_checks.screen
        return _Batch(x, labels.astype(np.int64), np.zeros(len(x), np.int64), None, None)
    if group_names is not None and labels.size and labels.max() >= len(group_names):
        raise ValueError(
            f"Batch {index}: frame label {labels.max()} has no group name (there are "
            f"{len(group_names)} groups)."
        )
    if lengths is None:
        # Without explicit lengths an utterance ends at its last labelled frame.
        labeled = labels >= 0
        last = x.shape[1] - np.argmax(labeled[:, ::-1], axis=1)
        lengths = np.where(labeled.any(axis=1), last, 0)
    lengths = np.asarray(lengths).astype(np.int64).reshape(-1)
    if lengths.shape[0] != x.shape[0] or (lengths.size and (lengths.min() < 0 or
                                                             lengths.max() > x.shape[1])):
        raise ValueError(
            f"Batch {index}: lengths must be (batch,) within 0..{x.shape[1]}. Received: "
            f"{lengths.tolist()}"
        )
    if target == "ctc_loss" and ctc is None:
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


def _pad_batch(b, t_pad, rows, replicas=1):
    """Pads time to ``t_pad`` frames and rows to ``rows`` rounded up to a multiple of the
    number of replicas of an active distribution. Returns the padded batch and its real rows."""
    n, t = b.x.shape[:2]
    rows = -(-rows // replicas) * replicas
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


def _batches(data, batch_size):
    """Yields batches from an iterable of batches, a PyDataset, or arrays (x, labels[, ...])."""
    if _is_array_data(data):
        size = batch_size or 32
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


def _check_anchor(anchor, adjust):
    checks.choice(anchor, "anchor", ("center", "saliency"))
    if anchor == "saliency" and adjust == "none":
        raise ValueError(
            "anchor='saliency' needs gradients; use adjust='gradient' or 'abs_gradient'. "
            "Received: adjust='none'"
        )
    return anchor


def _warn_all_blank(gn, kind, state):
    """Warns when the 'prediction' target was 0 on every frame (so every profile is 0)."""
    if (gn.target == "prediction" and gn.adjust != "none" and kind == "frame"
            and state.target_total == 0.0):
        warnings.warn(
            "GradNAP: the model predicts the blank (or nothing) on every frame, so the "
            "'prediction' target and all its gradients are 0 and every profile is 0. Train "
            "the model longer or use target='ctc_loss'.",
            stacklevel=4,
        )


def _warn_empty_groups(gn, state):
    """Warns about the groups without frames in at least one layer."""
    empty = state.empty_groups()
    if empty.any():
        names = [gn.group_name(i) for i in np.nonzero(empty)[0]]
        warnings.warn(
            f"GradNAP: no frames for groups {names} in at least one layer (counts 0, profile "
            "0, left out of the baseline).",
            stacklevel=4,
        )


def _loaded_extras(gn, config, stem, model):
    """``(info, label kind)`` of a loaded header, checked; warns when ``model``'s weights are
    not those the sums were computed with."""
    if model is not None and gn._saved_fingerprint is not None:
        # Continuing a fit with other weights would silently mix two models.
        if gn.model_fingerprint() != gn._saved_fingerprint:
            warnings.warn(
                f"GradNAP.load: the weights of model '{model.name}' differ from those the "
                f"saved sums in {stem + '.json'!r} were computed with.",
                stacklevel=3,
            )
    info = config.get("info") or {}
    if not isinstance(info, dict):
        raise ValueError(
            f"GradNAP.load: 'info' in {stem + '.json'!r} must be a dict. Received: {info!r}"
        )
    kind = config.get("label_kind", "frame")
    checks.choice(kind, f"label_kind in {stem + '.json'!r}", sample_groups.LABEL_KINDS)
    return info, kind


def _check_seen(seen, dispatched, skipped):
    """Raises when a fit received no batches, or skipped every one of them."""
    if seen == 0:
        raise ValueError("GradNAP.fit received no batches.")
    if dispatched == 0:
        raise ValueError(
            f"GradNAP.fit: all {seen} batches were skipped (skipped: "
            f"{batch_checks.published(skipped)}); nothing was fitted."
        )


def _check_ctc(batch, padded, out_lengths, n_real, index, model):
    """Checks the transcripts of a ``ctc_loss`` batch: ids, lengths, feasible alignments."""
    n_classes = internals.graph_outputs(model)[0].shape[-1]
    batch_checks.check_ctc_targets(batch.ctc_labels, batch.ctc_label_lengths, n_classes, index)
    needed = required_frames(padded.ctc_labels, padded.ctc_label_lengths)
    bad = np.nonzero(needed[:n_real] > out_lengths[:n_real])[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"Batch {index}, utterance {i}: the transcript needs {int(needed[i])} output "
            f"frames (labels plus repeats) but the model gives {int(out_lengths[i])}; the "
            "CTC loss would be infinite."
        )


def _window_sums(lt, padded, frames, n_groups, window, saliency=None):
    """Per-group sums and counts of the +-``window`` layer frames around each occurrence's
    anchor (vectorised over occurrences), or None when the batch has no labelled frame."""
    labels = padded.labels
    rows, t = labels.shape
    prev = np.concatenate([np.full((rows, 1), -2), labels[:, :-1]], axis=1)
    nxt = np.concatenate([labels[:, 1:], np.full((rows, 1), -2)], axis=1)
    starts = np.argwhere((labels != prev) & (labels >= 0))
    ends = np.argwhere((labels != nxt) & (labels >= 0))
    if not len(starts):
        return None
    b = starts[:, 0]
    group = labels[starts[:, 0], starts[:, 1]]
    anchor = lt.nearest_frame((starts[:, 1] + ends[:, 1]) / 2.0)
    if saliency is not None:
        anchor = _saliency_anchor(saliency, lt, b, starts[:, 1], ends[:, 1], anchor)
    idx = anchor[:, None] + np.arange(-window, window + 1)[None, :]  # (n_occ, 2w+1)
    weights = lt.valid_frames(padded.lengths[b], frames=idx).astype(np.float64)
    windows = frames[b[:, None], np.clip(idx, 0, lt.length - 1)]  # (n_occ, 2w+1, F)
    onehot = np.eye(n_groups)[group]  # (n_occ, G)
    return (np.einsum("og,ow,owf->gwf", onehot, weights, windows),
            np.einsum("og,ow->gw", onehot, weights).astype(np.int64))


def _saliency_anchor(saliency, lt, rows, starts, ends, fallback):
    """Per occurrence, the layer frame of highest saliency among the layer frames attributed to
    it (centre input frame in ``[start, end]``); ``fallback`` where it has none."""
    lo, hi = lt.frames_within(starts, ends)
    has = hi >= lo
    if not has.any():
        return fallback
    span = int((hi - lo + 1)[has].max())
    idx = lo[:, None] + np.arange(span)[None, :]
    inside = idx <= hi[:, None]
    values = np.where(inside, saliency[rows[:, None], np.clip(idx, 0, lt.length - 1)], -np.inf)
    return np.where(has, lo + np.argmax(values, axis=1), fallback)


# Header entries every saved GradNAP has (older files may lack the others).
_HEADER_KEYS = ("format_version", "layers", "target", "adjust", "baseline", "group_names",
                "grids", "n_filters", "window", "blank", "time_bucket", "n_groups", "n_frames")


def _read_header(path):
    """The settings ``.json`` of a saved GradNAP, checked for its keys; ValueError naming the
    file (and line) for anything unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"GradNAP.load: {path!r} is not valid JSON (line {e.lineno}, column {e.colno}: "
            f"{e.msg}); the file is damaged or truncated."
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"GradNAP.load: cannot read {path!r}: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(
            f"GradNAP.load: {path!r} must hold a JSON object. Received: {type(config).__name__}"
        )
    if config.get("format_version") not in _READ_VERSIONS:
        raise ValueError(
            f"GradNAP.load: {path!r} has format version {config.get('format_version')!r}; "
            f"this version reads {list(_READ_VERSIONS)}."
        )
    missing = [key for key in _HEADER_KEYS if key not in config]
    if missing:
        raise ValueError(f"GradNAP.load: {path!r} lacks the entries {missing}.")
    return config


def _read_arrays(path, digest, header):
    """Every array of the ``.npz`` at ``path`` (read in full, so that a damaged archive fails
    here), after checking it against the ``digest`` its header ``.json`` recorded."""
    import zipfile
    import zlib

    if digest is not None and _file_digest(path) != digest:
        raise ValueError(
            f"GradNAP.load: {path!r} is not the file {header!r} was saved with (its sha256 "
            "differs): the pair comes from different saves (an interrupted save?) or was "
            "changed since. Save or compute it again."
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"GradNAP.load: cannot read {path!r} ({type(e).__name__}: {e}); the file is "
            "damaged, truncated or not an .npz archive."
        ) from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(
            f"GradNAP.load: {path!r} is not an .npz archive (it holds a single "
            f"{type(data).__name__}, e.g. a .npy file renamed .npz)."
        )
    try:
        with data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(
            f"GradNAP.load: cannot read the arrays of {path!r} ({type(e).__name__}: {e}); the "
            "file is damaged or truncated."
        ) from e


def _file_digest(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_digest(model):
    import hashlib

    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{weight.path}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


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
    return (isinstance(data, (tuple, list)) and len(data) in (2, 3) and _is_array3(data[0])
            ) or sample_groups.is_sample_array_data(data)


def _batch_to_numpy(batch):
    """A batch (dict, tuple or list of tensors) with numpy arrays in place of its tensors."""
    if isinstance(batch, dict):
        return {k: to_numpy(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_numpy(v) for v in batch)
    return batch

