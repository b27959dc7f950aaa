"""Watch topography emerge while a model trains: :class:`TopoMapCallback`.

Every few epochs the callback runs a fixed probe (a batch of inputs, or a small dataset) through
the model, averages each watched layer's activations over the probe's frames, lays the averages
out on the layer's filter grid and smooths them (:func:`keras_topomap.grid.smooth`). The maps
go to TensorBoard, to PNG files and an animated GIF, and to ``callback.history_``; the
topography score of each kernel (:func:`keras_topomap.metrics.topography_score`) goes to the
epoch logs, so it shows in the progress bar and in ``model.fit(...).history``.

With frame labels (``groups``, e.g. the phone of every input frame) the callback also draws one
map per group: the group's mean activation minus the mean over groups, the neuron activation
profile (NAP) of Krug & Stober. A layer frame carries the label of the input frame at its
centre (:func:`keras_topomap.receptive_field.input_frames_to_layer`). With per-sample labels
(``groups`` of shape ``(batch,)``, e.g. the class of each probe image) a group's mean is over its
samples, each averaged over the layer's positions (:mod:`keras_topomap.probe_groups`).

Example:

```python
import keras_topomap

callback = keras_topomap.TopoMapCallback(
    probe=features[:16],            # (16, T, 40) input frames
    log_dir="logs/topomaps",        # TensorBoard images and scalars
    out_dir="topomaps",             # PNG per layer per epoch, topomaps.npz, GIF at the end
    groups=phone_labels[:16],       # (16, T) int, -1 where no label
    group_names=phone_set,
)
model.fit(dataset, epochs=20, callbacks=[callback])
callback.history_["conv_3"].shape   # (20, 8, 8)
```
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import keras
import numpy as np

from keras_topomap import _deprecation, checks, probe_groups
from keras_topomap import _keras_internals as internals
from keras_topomap import grid as grid_lib
from keras_topomap._arrays import to_numpy
from keras_topomap.group_sums import GroupSums
from keras_topomap.map_writers import EpochMaps, MapWriters
from keras_topomap.metrics import topography_score
from keras_topomap.regularizers import filter_kernel, topographic_layers

__all__ = ["TopoMapCallback"]


class TopoMapCallback(keras.callbacks.Callback):
    """Logs smoothed topographic activation maps of a fixed probe every ``every`` epochs.

    At train begin the callback builds one feature-extraction model
    ``keras.Model(model.input, [layer.output, ...] + [penalties])`` over the watched layers
    (sharing the model's weights; the last output holds the regularized layers' penalties) and
    runs the probe through it once, so shape problems surface before the first epoch and the
    compiled predict function is traced once. At the end of every
    ``every``-th epoch (and of the last one) it:

    1. runs the probe through the extractor (``predict_on_batch`` per probe batch);
    2. averages each layer's activations over all (valid) frames of the probe -- one value per
       filter -- and, with ``groups``, over the frames of each group; a group's map is its
       mean minus the mean over groups (NAP);
    3. places the values on the layer's grid (row-major) and smooths them with a non-strided
       ``smooth x smooth`` average (:func:`keras_topomap.grid.smooth`);
    4. computes the kernel's topography score and, for regularized layers, the penalty
       ``regularizer(kernel)`` of the weight it regularizes;
    5. hands the maps, as plain arrays, to the writers (:mod:`keras_topomap.map_writers`),
       which write the outputs below.

    Outputs:

    - ``logs["topo_score/<layer>"]`` for every watched layer with a kernel (shown by the
      progress bar, kept by ``History``).
    - ``log_dir`` (TensorBoard, whenever the ``tensorboard`` package is importable, whatever
      the Keras backend): images ``topomap/<layer>`` and ``nap/<layer>/<group>``, scalars
      ``topo_score/<layer>`` and ``penalty/<layer>``, at step = epoch index (0-based, like
      ``keras.callbacks.TensorBoard``'s epoch summaries). They are written without TensorFlow
      (:mod:`keras_topomap.summaries`), so a JAX or torch run neither imports it nor prints
      its log lines. Without ``tensorboard``: one warning, and only the file outputs.
    - ``out_dir``: ``<layer>/epoch_001.png`` per layer per logged epoch, numbered from 1 like
      the progress bar: the raw map with its Moran's I and z (and the "not topographic" mark
      below the threshold) and a readout of the change since the previous logged epoch
      (RMS change relative to the map's spread, and the correlation with it);
      ``topomaps.npz`` with the whole history (rewritten each logged epoch);
      at train end ``<layer>.gif``, the epoch PNGs as an animation. With groups, also
      ``<layer>/groups_epoch_NNN.png`` (all group maps of a layer tiled in one image) for the
      last logged epoch -- or, with ``group_pngs=True``, for every logged epoch, plus
      ``<layer>_groups.gif``. ``<layer>`` is the name with characters outside
      ``[A-Za-z0-9._-]`` percent-escaped (:func:`keras_topomap.map_writers.layer_file_names`:
      ``"a b"`` -> ``a%20b``, so no two layers share a file); every file is written to a
      temporary file and renamed into place (never half-written); files of an earlier run in
      ``out_dir`` that this run did not replace are named in a warning at train end.

    Colour scales: a layer's PNGs, GIF frames and TensorBoard images (raw maps; TensorBoard
    images carry the verdict in a strip under the map) share one scale across
    epochs, the running range -- the smallest and largest map value seen so far (groups: the
    largest absolute value, symmetric around 0). An epoch's image therefore only changes
    scale when its map leaves the range of every earlier epoch. The ``.npz`` file keeps the
    values.

    Args:
        probe: the inputs to watch: one batch (an array, a tensor, a dict or list for
            multi-input models, or a tuple ``(x, y[, sample_weight])`` of which ``x`` is
            used), or a small dataset: a ``keras.utils.PyDataset``, a ``tf.data.Dataset`` or
            any iterable of such batches (read once, at construction).
        layers: names (or layer objects) of the layers to watch. ``None``: every layer
            with a :class:`~keras_topomap.TopographicRegularizer`. Other layers need a grid in
            ``grids``.
        log_dir: TensorBoard log directory (may be the same as ``keras.callbacks.TensorBoard``
            's; the summaries go to its top level).
        out_dir: directory for PNGs, the ``.npz`` history and the GIFs; created if missing.
        smooth: smooth the maps for display (True) or not (False); the tests run on the raw
            maps either way. An odd int is the deprecated spelling of ``smooth=True,
            size=n`` (1: ``smooth=False``).
        groups: labels of the probe, ``-1`` for "no label": frame labels, int
            ``(batch, T_in)``, or per-sample labels, int ``(batch,)`` (e.g. an image's class;
            each sample's activation is averaged over a layer's positions first, see
            :mod:`keras_topomap.probe_groups`). For a dataset probe: one array for all
            batches, or a list with one array per batch. Gives the per-group maps.
        group_names: names of the labels (``group_names[label]``); default ``"group_<label>"``.
        every: log every ``every`` epochs (the last epoch is always logged). Scores are only
            added to the logs of logged epochs.
        grids: ``{layer_name: (H, W)}`` for watched layers without a TopographicRegularizer
            (``H * W`` = the layer's number of output features); also overrides the grid of a
            regularized layer.
        probe_lengths: valid input frames of each probe sequence, ``(batch,)`` ints (or a
            list per batch), for zero-padded probes: frames past the length are left out of
            every average.
        probe_steps: read at most this many batches from a dataset probe.
        cmap: colormap of the overall maps (default ``"viridis"``; group maps use
            ``"RdBu_r"`` centred at 0).
        interpolation: ``imshow`` interpolation of the PNGs and GIFs (the default
            ``"nearest"`` shows the grid cells; ``"bicubic"`` gives an EEG-like look that makes
            any map, noise included, look smooth).
        image_size: TensorBoard images are enlarged (pixel repetition) to at least this many
            pixels on their longer side.
        fps: frames per second of the GIFs.
        group_pngs: draw the group maps to PNG (and a GIF) every logged epoch, not only the
            last epoch's at train end. Off by default: with dozens of groups these images cost
            several times the rest of the callback (the npz and TensorBoard hold every epoch
            anyway).
        show_smoothed: the PNGs and GIF frames show the raw map (what the layer did); with
            ``True`` the smoothed map is drawn beside it.
        threshold: every drawn map (PNG, GIF frame, TensorBoard image) is tested on its raw
            values against permuted layouts (:func:`keras_topomap.metrics.morans_i_test`) and
            shows Moran's I and z; below ``z = threshold`` it is marked "not topographic".
        size: odd side of the smoothing window (``smooth=True``).
        background: write the TensorBoard summaries and the ``out_dir`` files in a background
            thread, so the next epoch trains meanwhile (at most one epoch in flight; an error
            there is raised at the next logged epoch or at train end). ``False`` writes them
            before ``on_epoch_end`` returns.

    Attributes (filled during ``fit``; several fits append):
        layers_: names of the watched layers.
        grids_: ``{layer: (H, W)}``.
        epochs_: int array of the logged epoch indices (0-based, as Keras passes them).
        history_: ``{layer: array (epochs, H, W)}``, the smoothed overall maps.
        group_history_: ``{layer: array (epochs, G, H, W)}``, the smoothed per-group maps.
        raw_history_, raw_group_history_: the same before smoothing.
        scores_: ``{layer: array (epochs,)}``, topography scores (layers with a kernel).
        penalties_: ``{layer: array (epochs,)}``, regularizer penalties (regularized layers).
        group_labels_: int array of the labels that got a map (those with frames in at least
            one watched layer; in a layer where a group has none its map is 0), ``group_names_``
            their names.
        log_seconds_: wall seconds ``on_epoch_end`` took on each logged epoch (what the
            training loop waited for).
        stop_reason_: None, or why the callback stopped training: at a logged epoch where a
            watched layer's probe activations or kernel held NaN or inf (training diverged),
            it warns (``RuntimeWarning``, naming the layer, the epoch and the probe batch),
            sets ``model.stop_training`` and keeps nothing of that epoch, so every map, file
            and GIF holds the finite epochs before it.
        background_seconds_: CPU seconds spent writing each logged epoch's TensorBoard
            summaries and files (in the writer thread, with ``background``).

    Raises:
        ValueError: at construction for a bad argument (naming it) or an ``out_dir`` /
            ``log_dir`` that cannot be written; at train begin for unknown layer names
            (listing the available ones), a layer without a grid, a grid that does not fit a
            layer, or a probe that does not fit the model.

    Example:

    ```python
    callback = TopoMapCallback(x_probe, out_dir="maps", every=2)
    history = model.fit(x, y, epochs=10, callbacks=[callback])
    history.history["topo_score/conv_2"]      # one score per logged epoch
    callback.history_["conv_2"].shape          # (5, 8, 8)
    ```
    """

    def __init__(
        self,
        probe,
        layers=None,
        log_dir=None,
        out_dir=None,
        smooth=True,
        groups=None,
        group_names=None,
        every=1,
        *,
        grids=None,
        probe_lengths=None,
        probe_steps=None,
        cmap=None,
        interpolation="nearest",
        image_size=64,
        fps=2,
        background=True,
        group_pngs=False,
        show_smoothed=False,
        threshold=3.0,
        size=3,
    ):
        super().__init__()
        self.smooth, self.size = _smoothing(smooth, size)
        self.every = checks.positive_int(every, "every")
        self.image_size = checks.positive_int(image_size, "image_size")
        self.fps = checks.positive_number(fps, "fps")
        self.cmap = cmap or "viridis"
        self.interpolation = interpolation
        probe_steps = checks.positive_int(probe_steps, "probe_steps", allow_none=True)

        self._batches = _read_probe(probe, probe_steps)
        self._batch_sizes = [_leading_shape(x, i)[0] for i, x in enumerate(self._batches)]
        self._lengths = _per_batch(probe_lengths, self._batches, "probe_lengths", ndim=1)
        self._per_sample = probe_groups.is_per_sample(groups, self._batch_sizes)
        self._groups = _per_batch(groups, self._batches, "groups",
                                  ndim=1 if self._per_sample else 2)
        _check_probe_lengths(self._batches, self._lengths)
        probe_groups.check_probe_groups([_leading_shape(x, i) for i, x in
                                         enumerate(self._batches)], self._groups, group_names,
                                        self._per_sample)
        self.group_names = None if group_names is None else [str(n) for n in group_names]

        self.layers = _layer_names(layers)
        self.grids = {}
        for name, value in dict(grids or {}).items():
            self.grids[str(name)] = grid_lib.validate_grid(value, what=f"grids['{name}']")

        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        for what, path in (("out_dir", self.out_dir), ("log_dir", self.log_dir)):
            if path is not None:
                _ensure_writable_dir(path, what)

        self.background = bool(background)
        self.group_pngs = bool(group_pngs)
        self._writers = MapWriters(
            self.log_dir, self.out_dir, cmap=self.cmap, interpolation=self.interpolation,
            image_size=self.image_size, fps=self.fps, group_pngs=self.group_pngs,
            background=self.background, show_smoothed=bool(show_smoothed),
            threshold=float(threshold),
        )
        self.show_smoothed, self.threshold = bool(show_smoothed), float(threshold)
        self._reset_history()
        self._extractor = None

    def _reset_history(self):
        self.layers_ = []
        self.grids_ = {}
        self._epochs = []
        self._maps = {}
        self._raw = {}
        self._group_maps = {}
        self._group_raw = {}
        self._scores = {}
        self._penalties = {}
        self._range = {}
        self._group_range = {}
        self._raw_range = {}
        self._raw_group_range = {}
        self.group_labels_ = np.zeros((0,), dtype=np.int64)
        self.group_names_ = []
        self.log_seconds_ = []
        self.background_seconds_ = []
        self.stop_reason_ = None
        self._last_maps = None
        self._writers.reset()

    # ------------------------------------------------------------------------------------------
    # Train begin: resolve layers, build the extractor, check the probe, precompute weights

    def on_train_begin(self, logs=None):
        model = self.model
        _ensure_graph(model, self._batches[0])
        watched = _watched_layers(model, self.layers, self.grids)
        if self.layers_ and list(watched) != self.layers_:
            self._reset_history()  # another set of layers: an earlier history does not continue
        self.layers_ = list(watched)
        self._layer_objects = {name: info[0] for name, info in watched.items()}
        self.grids_ = {name: info[1] for name, info in watched.items()}
        self._regularized = {
            name: info[2] for name, info in watched.items() if info[2] is not None
        }
        # The weight whose last axis is each layer's output channels (None: transposed and
        # depthwise convolutions, layers without a kernel): what is scored and penalised.
        self._kernels = {name: info[3] for name, info in watched.items()}
        self._extractor = self._build_extractor(model)
        _check_probe_shapes(model, self._batches)
        outputs = [self._extract(x, i)[0] for i, x in enumerate(self._batches)]
        self._check_outputs(outputs)
        self._prepare_reductions(model, outputs)
        # log_dir / out_dir may be re-pointed after construction (train() sends a non-chief
        # worker's outputs to a scratch folder): the writers follow the attributes.
        self._writers.log_dir, self._writers.out_dir = self.log_dir, self.out_dir
        self._writers.open(self.layers_)

    def _build_extractor(self, model):
        """``keras.Model(model.input, [layer.output, ...] + [penalties])``: the watched
        layers' activations and, as one extra output, the regularized layers' penalties, so
        one compiled call per probe batch gives everything (eager regularizer calls would cost
        more than the forward pass, and on JAX compile op by op on first use)."""
        layers = [self._layer_objects[name] for name in self.layers_]
        try:
            outputs = [layer.output for layer in layers]
            if self._regularized:
                readout = _PenaltyReadout(
                    [(reg, self._kernels[name]) for name, reg in self._regularized.items()],
                    name="topomap_penalties",
                )
                outputs.append(readout(layers[0].output))
            # A Sequential model's graph lives in its inner functional model.
            graph = internals.graph(model)
            return keras.Model(graph.input, outputs, name=f"{model.name}_topomap_probe")
        except Exception as e:  # Keras raises several types for graphs it cannot cut
            raise ValueError(
                "TopoMapCallback needs a Functional or Sequential model (built on keras.Input) "
                "whose watched layers are part of its graph, to read their outputs. Could not "
                f"build a feature extractor for layers {self.layers_} of model "
                f"'{model.name}': {e}"
            ) from e

    def _extract(self, x, index):
        """The watched layers' outputs for one probe batch, as a list of float arrays, and the
        penalties of the regularized layers (``{name: float}``)."""
        try:
            outputs = self._extractor.predict_on_batch(x)
        except Exception as e:
            if self._extractor is None or index is None:
                raise
            shapes = keras.tree.map_structure(np.shape, x)
            raise ValueError(
                f"The probe does not fit model '{self.model.name}' (inputs "
                f"{[tuple(t.shape) for t in self.model.inputs]}). Received: probe batch "
                f"{index} of shape {shapes}. The forward pass failed with: {e}"
            ) from e
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        outputs = [np.asarray(out, dtype=np.float32) for out in outputs]
        penalties = {}
        if self._regularized:
            penalties = dict(zip(self._regularized, outputs.pop().astype(np.float64)))
        return outputs, penalties

    def _check_outputs(self, outputs):
        timed = (self._groups is not None and not self._per_sample) or self._lengths is not None
        for name, out in zip(self.layers_, outputs[0]):
            h, w = self.grids_[name]
            if out.shape[-1] != h * w:
                raise ValueError(
                    f"TopoMapCallback: the {h}x{w} grid of layer '{name}' holds {h * w} "
                    f"filters, but the layer has {out.shape[-1]} output features. Received: "
                    f"grid={(h, w)}, output shape {out.shape}"
                )
            if timed and out.ndim != 3:
                raise ValueError(
                    f"TopoMapCallback: frame labels and probe_lengths need layers with outputs "
                    f"(batch, time, features) (per-sample groups (batch,) take any); layer "
                    f"'{name}' gives shape {out.shape}."
                )

    def _prepare_reductions(self, model, outputs):
        """Per batch and layer, which frames (samples) each probe mean sums over, computed
        once (:func:`keras_topomap.probe_groups.plan_reductions`); with groups, sets
        ``group_labels_`` to the labels with frames (samples) in a watched layer."""
        shapes = [_leading_shape(x, i) for i, x in enumerate(self._batches)]
        self._plan = probe_groups.plan_reductions(model, shapes, outputs, self.layers_,
                                                  self._groups, self._lengths, self._per_sample)
        self._frame_groups = None
        if self._groups is None:
            return
        new_labels, self._frame_groups = probe_groups.choose_groups(
            self._plan.labels, self._groups, self.layers_, self._group_name)
        if len(self.group_labels_) and not np.array_equal(new_labels, self.group_labels_):
            self._group_maps, self._group_raw = {}, {}
            self._group_range, self._raw_group_range = {}, {}
        self.group_labels_ = new_labels
        self.group_names_ = [self._group_name(int(g)) for g in new_labels]

    def _group_name(self, label):
        if self.group_names is not None:
            return self.group_names[label]
        return f"group_{label}"

    # ------------------------------------------------------------------------------------------
    # Every logged epoch

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") if self.params else None
        if (epoch + 1) % self.every and (last is None or epoch + 1 != last):
            return
        start = time.perf_counter()
        maps = self._epoch_maps(epoch, logs)
        if maps is None:  # not finite: training stops, nothing of this epoch is kept
            return
        self._last_maps = maps
        self._writers.write(self._last_maps, _history_arrays(self),
                            self.background_seconds_.append)
        self.log_seconds_.append(time.perf_counter() - start)

    def _epoch_maps(self, epoch, logs):
        """Runs the probe, appends this epoch's maps, scores and penalties to the history and
        the scores to ``logs``; returns the epoch's maps as :class:`EpochMaps`, or None (after
        stopping training with a warning) when an activation or kernel is not finite."""
        means, group_means, penalties = self._probe_means()
        problem = self._non_finite(epoch, means, group_means)
        if problem is not None:
            self.stop_reason_ = problem
            warnings.warn(problem, RuntimeWarning, stacklevel=3)
            self.model.stop_training = True
            return None
        self._epochs.append(int(epoch))
        maps, limits, group_maps, group_limits, scores, layer_penalties = ({} for _ in range(6))
        raw_maps, raw_limits, raw_group_maps, raw_group_limits = ({} for _ in range(4))
        for j, name in enumerate(self.layers_):
            grid = self.grids_[name]
            raw = grid_lib.to_grid(means[j], grid)
            self._raw.setdefault(name, []).append(raw)
            raw_maps[name] = raw
            lo, hi = self._raw_range.get(name, (np.inf, -np.inf))
            raw_limits[name] = self._raw_range[name] = (min(lo, float(raw.min())),
                                                        max(hi, float(raw.max())))
            maps[name] = grid_lib.smooth(raw, self.size if self.smooth else 1)
            self._maps.setdefault(name, []).append(maps[name])
            lo, hi = self._range.get(name, (np.inf, -np.inf))
            limits[name] = (min(lo, float(maps[name].min())), max(hi, float(maps[name].max())))
            self._range[name] = limits[name]
            if group_means is not None:
                raw_groups = grid_lib.to_grid(group_means[j], grid)
                self._group_raw.setdefault(name, []).append(raw_groups)
                raw_group_maps[name] = raw_groups
                raw_group_limits[name] = self._raw_group_range[name] = max(
                    self._raw_group_range.get(name, 0.0), float(np.abs(raw_groups).max()))
                group_maps[name] = grid_lib.smooth(raw_groups, self.size if self.smooth else 1)
                self._group_maps.setdefault(name, []).append(group_maps[name])
                group_limits[name] = max(self._group_range.get(name, 0.0),
                                         float(np.abs(group_maps[name]).max()))
                self._group_range[name] = group_limits[name]
            score = self._score_layer(name, logs, penalties.get(name))
            if score is not None:
                scores[name] = score
            if penalties.get(name) is not None:
                layer_penalties[name] = float(penalties[name])
        return EpochMaps(int(epoch), list(self.layers_), maps, limits, group_maps, group_limits,
                         list(self.group_names_), scores, layer_penalties, raw_maps, raw_limits,
                         raw_group_maps, raw_group_limits)

    def _non_finite(self, epoch, means, group_means):
        """The message for the first watched layer whose probe activations or kernel hold NaN
        or inf at this epoch (naming the layer, the epoch and the probe batch), else None."""
        for j, name in enumerate(self.layers_):
            kernel = getattr(self._layer_objects[name], "kernel", None)
            kernel_bad = kernel is not None and not np.all(np.isfinite(to_numpy(kernel)))
            bad = ~np.isfinite(means[j])
            if group_means is not None:
                bad |= ~np.all(np.isfinite(group_means[j]), axis=0)
            if not bad.any() and not kernel_bad:
                continue
            where = ""
            if bad.any():
                batch = self._bad_batches.get(j, 0)
                shape = tuple(_leading_shape(self._batches[batch], batch))
                where = (f": {int(bad.sum())} of {bad.size} filters give NaN or infinite "
                         f"activations on probe batch {batch} (of {len(self._batches)}, "
                         f"leading shape {shape})")
            if kernel_bad:
                where += ("; " if where else ": ") + "its kernel holds NaN or infinite values"
            logged = (f"the maps of the {len(self._epochs)} epochs logged before are kept"
                      if self._epochs else "no epoch was logged before")
            return (
                f"TopoMapCallback: layer '{name}' is not finite at epoch {epoch + 1}{where}. "
                f"Training has diverged, so the callback stops it ({logged}; nothing of epoch "
                f"{epoch + 1} is drawn or saved). Lower the learning rate or the regularizer "
                "strength."
            )
        return None

    def _probe_means(self):
        """Overall means ``[(F,)] per layer``, group NAPs ``[(G, F)]`` (or None) and the
        regularizer penalties ``{name: value}``; ``_bad_batches`` maps a layer's index to the
        first probe batch with a non-finite activation."""
        sums, state = None, None
        self._bad_batches = {}
        for i, x in enumerate(self._batches):
            outputs, batch_penalties = self._extract(x, None)
            if i == 0:
                penalties = batch_penalties
            if sums is None:
                sums = [np.zeros(out.shape[-1]) for out in outputs]
                if self._frame_groups is not None:
                    n_filters = {name: len(s) for name, s in zip(self.layers_, sums)}
                    state = GroupSums(n_filters, len(self.group_labels_))
            for j, out in enumerate(outputs):
                if j not in self._bad_batches and not np.all(np.isfinite(out)):
                    self._bad_batches[j] = i
                frames = out.reshape(-1, out.shape[-1])  # (b * T_l, F)
                index = self._plan.frames[i][j]
                sums[j] += (frames if index is None else frames[index]).sum(0, dtype=np.float64)
                if state is not None and self._per_sample:
                    values = probe_groups.sample_means(out, self._plan.weights[i][j])
                    state.add_frames(self.layers_[j], values, self._frame_groups[i][j])
                elif state is not None:
                    state.add_frames(self.layers_[j], frames, self._frame_groups[i][j])
        means = [total / count for total, count in zip(sums, self._plan.totals)]
        if state is None:
            return means, None, penalties
        return means, [state.profiles(name)[0] for name in self.layers_], penalties

    def _score_layer(self, name, logs, penalty):
        kernel = self._kernels[name]
        grid = self.grids_[name]
        reg = self._regularized.get(name)
        neighborhood = reg.neighborhood if reg is not None else 3
        # An unregularized layer is scored in a 3x3 neighbourhood, if its grid has room for one.
        scored = (
            kernel is not None
            and tuple(kernel.shape)[-1] == grid[0] * grid[1]
            and min(grid) >= neighborhood
        )
        if scored:
            score = topography_score(
                kernel.numpy(),
                grid,
                neighborhood=neighborhood,
                wrap=reg.wrap if reg is not None else False,
            )
            self._scores.setdefault(name, []).append(score)
            if logs is not None:
                logs[f"topo_score/{name}"] = score
        if penalty is not None:
            self._penalties.setdefault(name, []).append(float(penalty))
        return score if scored else None

    def on_train_end(self, logs=None):
        self._writers.finish(self._last_maps if self._epochs else None)

    # ------------------------------------------------------------------------------------------
    # Results

    @property
    def epochs_(self):
        return np.asarray(self._epochs, dtype=np.int64)

    @property
    def history_(self):
        return _stacked(self._maps)

    @property
    def raw_history_(self):
        return _stacked(self._raw)

    @property
    def group_history_(self):
        return _stacked(self._group_maps)

    @property
    def raw_group_history_(self):
        return _stacked(self._group_raw)

    @property
    def scores_(self):
        return _stacked(self._scores)

    @property
    def penalties_(self):
        return _stacked(self._penalties)


# ----------------------------------------------------------------------------------------------
# Helpers


class _PenaltyReadout(keras.layers.Layer):
    """Outputs ``[regularizer(kernel) for regularizer, kernel in pairs]`` (shape ``(n,)``, no
    batch axis), ignoring its input: puts the penalties into the compiled probe model, which
    reads the current weights (on JAX, the state the trainer passes in)."""

    def __init__(self, pairs, **kwargs):
        super().__init__(trainable=False, **kwargs)
        # A closure, not an attribute: the kernels must not become weights of this layer.
        self._penalties = lambda: [regularizer(kernel) for regularizer, kernel in pairs]
        self._count = len(pairs)

    def call(self, inputs):
        return keras.ops.stack(
            [keras.ops.cast(value, "float32") for value in self._penalties()]
        )

    def compute_output_shape(self, input_shape):
        return (self._count,)


def _check_probe_lengths(batches, probe_lengths):
    if probe_lengths is None:
        return
    for i, (x, lengths) in enumerate(zip(batches, probe_lengths)):
        shape = _leading_shape(x, i)
        if len(shape) < 2:
            raise ValueError(
                f"probe_lengths needs a probe with a time axis (batch, T, ...). Received: "
                f"probe batch {i} of shape {shape}"
            )
        if not np.issubdtype(lengths.dtype, np.integer) or lengths.shape != shape[:1]:
            raise ValueError(
                f"probe_lengths for probe batch {i} must be {shape[0]} integers (one per "
                f"sequence). Received: dtype={lengths.dtype}, shape={lengths.shape}"
            )
        if lengths.size and (lengths.min() < 1 or lengths.max() > shape[1]):
            raise ValueError(
                f"probe_lengths for probe batch {i} must lie in [1, {shape[1]}] (its "
                f"frames). Received: min={lengths.min()}, max={lengths.max()}"
            )


def _check_probe_shapes(model, batches):
    inputs = model.inputs
    if len(inputs) != 1:
        return  # multi-input models: the forward pass below names the problem
    expected = tuple(inputs[0].shape)
    for i, x in enumerate(batches):
        leaves = keras.tree.flatten(x)
        if len(leaves) != 1:
            raise ValueError(
                f"Model '{model.name}' takes one input of shape {expected}, but probe "
                f"batch {i} holds {len(leaves)} arrays."
            )
        shape = tuple(np.shape(leaves[0]))
        # The batch axis is not checked: Keras may fix it to the training batch size.
        fits = len(shape) == len(expected) and all(
            e is None or e == s for s, e in zip(shape[1:], expected[1:])
        )
        if not fits:
            raise ValueError(
                f"The probe does not fit model '{model.name}': its input has shape "
                f"{expected} (None = any size). Received: probe batch {i} of shape {shape}"
            )


def _smoothing(smooth, size):
    """``(smooth, size)`` of TopoMapCallback: a flag and an odd window side; an int ``smooth``
    (the window side, as it used to be) still works, with a DeprecationWarning."""
    if isinstance(smooth, (bool, np.bool_)):
        return bool(smooth), checks.odd_int(size, "size")
    if not checks.is_integer(smooth):
        raise ValueError(f"smooth must be True or False. Received: smooth={smooth!r}")
    side = checks.odd_int(smooth, "smooth")
    _deprecation.warn(f"TopoMapCallback(smooth={side})",
                      f"smooth={side > 1}" + (f", size={side}" if side > 1 else ""))
    return side > 1, side if side > 1 else checks.odd_int(size, "size")


def _ensure_graph(model, batch):
    """Builds a Sequential model defined without ``keras.Input`` from the probe batch's shape.

    Such a model has no graph to read layer outputs from (and, on some backends, no
    weights yet at train begin). Batch and time/space axes are left free, so training data
    of any length still fits; a model that cannot be built that way is built for the
    probe's exact shape.
    """
    if not internals.is_unbuilt_sequential(model):
        return
    leaves = keras.tree.flatten(batch)
    if len(leaves) != 1 or np.ndim(leaves[0]) < 2:
        return
    shape = np.shape(leaves[0])
    for input_shape in ((None,) * (len(shape) - 1) + shape[-1:], (None,) + shape[1:]):
        try:
            model.build(input_shape)
        except Exception:  # try the next shape; _build_extractor explains a failure
            continue
        if not internals.is_unbuilt_sequential(model):
            return

def _watched_layers(model, layers, grids):
    """TopoMapCallback's watched layers: ``{name: (layer, grid, regularizer or None, kernel or
    None)}`` in the order of ``layers`` (None: the model's order of its topographic layers),
    each with its grid from ``grids`` or from its regularizer, and the weight whose last axis
    is its output channels (the regularized one; None for transposed and depthwise
    convolutions)."""
    regularized = topographic_layers(model)
    by_name = {
        layer.name: layer
        for layer in internals.all_sublayers(model)
        if layer is not model and not isinstance(layer, keras.layers.InputLayer)
    }
    names = layers if layers is not None else list(regularized)
    if not names:
        raise ValueError(
            f"Model '{model.name}' has no layer with a TopographicRegularizer, so "
            "TopoMapCallback has nothing to watch by default. Pass layers=[...] and "
            "grids={layer_name: (H, W)}. Available layers: " + ", ".join(by_name)
        )
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(
            f"TopoMapCallback: model '{model.name}' has no layer named {unknown}. "
            f"Available layers: {', '.join(by_name)}. Received: layers={names}"
        )
    for name in grids:
        if name not in names:
            raise ValueError(
                f"TopoMapCallback: grids names layer '{name}', which is not watched. "
                f"Watched layers: {names}"
            )
    watched = {}
    for name in names:
        info = regularized.get(name)
        reg = info["regularizer"] if info is not None else None
        kernel = info["kernel"] if info is not None else filter_kernel(by_name[name])
        if name in grids:
            grid = grids[name]
        elif info is not None:
            grid = info["grid"]
        else:
            raise ValueError(
                f"TopoMapCallback: layer '{name}' has no grid: it carries no "
                "TopographicRegularizer. Pass grids={'" + name + "': (H, W)} with H * W "
                "equal to its number of output features."
            )
        watched[name] = (by_name[name], grid, reg, kernel)
    return watched


def _layer_names(layers):
    if layers is None:
        return None
    if isinstance(layers, (str, keras.layers.Layer)):
        layers = [layers]
    names = []
    for layer in layers:
        name = layer.name if isinstance(layer, keras.layers.Layer) else layer
        if not isinstance(name, str):
            raise ValueError(
                f"layers must be layer names or layers. Received: {layer!r} in layers"
            )
        names.append(name)
    if not names:
        raise ValueError("layers is empty; pass None to watch every regularized layer.")
    if len(set(names)) != len(names):
        raise ValueError(f"layers names a layer twice. Received: layers={names}")
    return names


def _is_single_batch(probe):
    return (
        isinstance(probe, (np.ndarray, dict, list, tuple))
        or (hasattr(probe, "shape") and hasattr(probe, "dtype"))
    )


def _read_probe(probe, steps):
    """The probe as a list of input batches (numpy structures)."""
    if probe is None:
        raise ValueError("TopoMapCallback needs a probe (a batch of inputs or a small dataset).")
    if _is_single_batch(probe):
        items = [probe]
    elif isinstance(probe, keras.utils.PyDataset):
        n = len(probe) if steps is None else min(steps, len(probe))
        items = (probe[i] for i in range(n))
    elif hasattr(probe, "as_numpy_iterator"):  # tf.data.Dataset
        items = probe.as_numpy_iterator()
    elif hasattr(probe, "__iter__"):
        items = iter(probe)
    else:
        raise ValueError(
            "probe must be an array/tensor (or a dict/list of them), a tuple (x, y), a "
            f"keras.utils.PyDataset or an iterable of batches. Received: {type(probe).__name__}"
        )
    batches = []
    for item in items:
        if steps is not None and len(batches) >= steps:
            break
        if isinstance(item, tuple):
            item = keras.utils.unpack_x_y_sample_weight(item)[0]
        batches.append(keras.tree.map_structure(to_numpy, item))
    if not batches:
        raise ValueError("The probe dataset yielded no batch.")
    for i, x in enumerate(batches):
        _leading_shape(x, i)
    return batches


def _leading_shape(x, index):
    """Shape of the first array of a probe batch (all must share the batch size)."""
    leaves = keras.tree.flatten(x)
    if not leaves or any(np.ndim(leaf) < 1 for leaf in leaves):
        raise ValueError(
            f"Probe batch {index} must hold arrays with a batch axis. Received: "
            f"{keras.tree.map_structure(np.shape, x)}"
        )
    sizes = {np.shape(leaf)[0] for leaf in leaves}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"The arrays of probe batch {index} must share one non-zero batch size. Received: "
            f"shapes {[np.shape(leaf) for leaf in leaves]}"
        )
    return tuple(np.shape(leaves[0]))


def _per_batch(values, batches, what, ndim):
    """Splits per-sequence ``values`` into one array per probe batch."""
    if values is None:
        return None
    sizes = [_leading_shape(x, i)[0] for i, x in enumerate(batches)]
    if (
        isinstance(values, (list, tuple))
        and len(values) == len(batches)
        and all(np.ndim(v) == ndim for v in values)
    ):
        return [np.asarray(to_numpy(v)) for v in values]
    values = np.asarray(to_numpy(values))
    if values.ndim != ndim or values.shape[0] != sum(sizes):
        raise ValueError(
            f"{what} must have {ndim} dimension(s) and one row per probe sequence "
            f"({sum(sizes)} in {len(batches)} batch(es)), or be a list with one array per "
            f"batch. Received: shape={values.shape}"
        )
    if ndim == 2:
        widths = {_leading_shape(x, i)[1:2] for i, x in enumerate(batches)}
        if len(widths) > 1:
            raise ValueError(
                f"The probe batches have different lengths {sorted(widths)}; give {what} as a "
                "list with one array per batch."
            )
    return np.split(values, np.cumsum(sizes)[:-1])


def _ensure_writable_dir(path, what):
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as e:
        raise ValueError(
            f"TopoMapCallback cannot write to {what}: {e.strerror or e}. Received: "
            f"{what}={path!r}"
        ) from None


def _history_arrays(callback):
    """The history as float32 arrays for ``topomaps.npz`` (stored uncompressed: rewriting it
    every logged epoch must stay cheap as it grows)."""
    arrays = {"epochs": callback.epochs_}
    history, raw = callback.history_, callback.raw_history_
    for name in callback.layers_:
        arrays[f"map/{name}"] = history[name].astype(np.float32)
        arrays[f"raw/{name}"] = raw[name].astype(np.float32)
        arrays[f"grid/{name}"] = np.asarray(callback.grids_[name], dtype=np.int64)
    raw_groups = callback.raw_group_history_
    for name, values in callback.group_history_.items():
        arrays[f"group_map/{name}"] = values.astype(np.float32)
        arrays[f"group_raw/{name}"] = raw_groups[name].astype(np.float32)
    for name, values in callback.scores_.items():
        arrays[f"topo_score/{name}"] = values
    for name, values in callback.penalties_.items():
        arrays[f"penalty/{name}"] = values
    if callback.group_history_:
        arrays["group_labels"] = np.asarray(callback.group_labels_, dtype=np.int64)
        arrays["group_names"] = np.asarray(callback.group_names_, dtype=str)
    arrays["layers"] = np.asarray(callback.layers_, dtype=str)
    return arrays


def _stacked(lists):
    return {name: np.stack(values) for name, values in lists.items() if values}
