"""The Keras callbacks of the recognizer's training, and the checkpoint files they keep.

:func:`keras_topomap.train.train` puts them on ``model.fit``; each is usable on its own:

- :class:`ValidationCER` adds the validation CER, WER and CTC loss to the epoch logs
  (:func:`evaluate` decodes the batches);
- :class:`ResumableEarlyStopping`: Keras' early stopping whose counters a resumed run restores;
- :class:`TimeBudget` stops at an epoch end when one more epoch would exceed a budget;
  :class:`TrainingTimeLimit` at the first batch end past a hard limit (the demo's);
- :class:`TrainingCheckpoint` writes ``checkpoint.keras``, ``best.keras`` and ``state.json``
  as one commit every epoch (:func:`settle_checkpoint` completes or rolls back an interrupted
  one; :func:`rng_states` / :func:`set_rng_states` keep the dropout seeds, which ``.keras``
  files do not);
- :class:`EpochAdvance` moves a distributed ``tf.data`` pipeline to its next epoch.

They are also importable from their first homes (``keras_topomap.train``,
``keras_topomap.demo.TrainingTimeLimit``, ``keras_topomap.distribute.EpochAdvance``).

Example:

>>> from keras_topomap.training_callbacks import TimeBudget, ValidationCER
>>> model.fit(train, epochs=60, callbacks=[ValidationCER(val, stride=2),
...                                        TimeBudget(15 * 60)])
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from keras_topomap import _keras_internals as internals
from keras_topomap import checks, ctc
from keras_topomap import models as models_lib
from keras_topomap.run_io import write_run_json

__all__ = [
    "EpochAdvance",
    "averaged_weights",
    "keep_averaged_weights",
    "ResumableEarlyStopping",
    "TimeBudget",
    "TrainingCheckpoint",
    "TrainingTimeLimit",
    "ValidationCER",
    "evaluate",
    "optimizer_steps",
    "rng_states",
    "set_rng_states",
    "settle_checkpoint",
]


def evaluate(model, batches, stride=None, strategy="greedy", predict=None, strategies=None,
             beam_width=100, return_logits=False):
    """Decode every batch of a ``mode="ctc"`` dataset: CER, WER and mean CTC loss.

    Args:
        model: a recognizer returning logits.
        batches: a :class:`~keras_topomap.datasets.SpeechBatches` (``mode="ctc"``) or any
            sequence of ``(features, packed_targets)``.
        stride: the model's cumulative stride (default: read from the model).
        strategy: ``"greedy"`` or ``"beam_search"``.
        predict: ``predict(model, features) -> logits`` (default: ``model.predict_on_batch``);
            distributed runs pass :meth:`~keras_topomap.distribute.DistributionContext.predict`.
        strategies: several decodings of the same logits, e.g. ``("greedy", "beam_search")``:
            the first fills the top-level keys, every other one adds ``{name: {"cer", "wer",
            "examples"}}`` (overrides ``strategy``).
        beam_width: beams for ``"beam_search"``.
        return_logits: also return every utterance's logits, cut to its output frames, for
            decodings of their own (e.g. :func:`keras_topomap.language_model.decode_with_lm`)
            without a second pass of the model.

    Returns:
        dict with ``cer``, ``wer``, ``loss`` (mean CTC loss per utterance, no regularizer),
        ``n_utterances``, ``decoding`` (the strategy of the top-level rates), and ``examples``
        (the first 5 ``(reference, hypothesis)`` pairs); with ``return_logits``, the pair
        ``(that dict, (logits, references))``: a ``(T_i, classes)`` float32 array and the
        transcript of every utterance, in the batches' order.
    """
    from keras_topomap.datasets import labels_to_text, unpack_ctc_targets

    strategies = tuple(strategies) if strategies else (strategy,)
    stride = models_lib.total_stride(model) if stride is None else stride
    loss_fn = ctc.CTCLoss(stride=stride, reduction="sum")
    references, total_loss, kept = [], 0.0, []
    hypotheses = {name: [] for name in strategies}
    for index in range(len(batches)):
        features, packed = batches[index]
        logits = model.predict_on_batch(features) if predict is None else predict(model, features)
        total_loss += float(keras.ops.convert_to_numpy(loss_fn(packed, logits)))
        frames, label_lengths, labels = unpack_ctc_targets(np.asarray(packed))
        lengths = ctc.output_lengths(frames, stride)
        if return_logits:
            rows = np.asarray(keras.ops.convert_to_numpy(logits), dtype=np.float32)
            kept += [row[: int(n)] for row, n in zip(rows, lengths)]
        for name in strategies:
            hypotheses[name] += ctc.decode_texts(
                logits, lengths, strategy=name, beam_width=beam_width
            )
        references += [labels_to_text(row[:n]) for row, n in zip(labels, label_lengths)]
    first, *others = strategies
    result = {
        **ctc.error_rates(references, hypotheses[first]),
        "loss": total_loss / len(references),
        "n_utterances": len(references),
        "decoding": first,
        "examples": list(zip(references[:5], hypotheses[first][:5])),
    }
    for name in others:
        result[name] = {
            **ctc.error_rates(references, hypotheses[name]),
            "examples": list(zip(references[:5], hypotheses[name][:5])),
        }
        if name == "beam_search":
            result[name]["beam_width"] = int(beam_width)
    return (result, (kept, references)) if return_logits else result


@contextlib.contextmanager
def averaged_weights(model):
    """Within the block, ``model``'s trainable weights are its optimizer's moving averages.

    For an optimizer made with ``use_ema=True`` (``TrainConfig.ema_momentum``): the weights a
    run is validated and kept with are the averages, while training goes on from the raw
    weights, which are put back on leaving the block (also after an error). Without EMA, or
    before the optimizer is built, the block runs on the weights as they are.

    Example:

    >>> with averaged_weights(model):
    ...     result = evaluate(model, val_batches, stride=2)
    """
    averages = internals.moving_averages(getattr(model, "optimizer", None))
    variables = list(model.trainable_variables)
    if averages is None:
        yield model
        return
    if len(averages) != len(variables):
        raise ValueError(
            f"The optimizer of model {model.name!r} averages {len(averages)} variables but the "
            f"model has {len(variables)} trainable ones: was it built for another model?"
        )
    raw = [keras.ops.convert_to_numpy(v) for v in variables]
    _assign_copies(variables, averages)
    try:
        yield model
    finally:
        for variable, value in zip(variables, raw):
            variable.assign(value)


def keep_averaged_weights(model):
    """Puts the optimizer's moving averages in ``model`` for good (``use_ema=True``; else does
    nothing). Returns whether it did.

    Keras' ``fit`` does this at its end too, but on JAX it leaves each weight sharing its
    average's buffer, so the next call that donates the weights (a ``predict``, another
    training step) deletes the averages; this assigns copies.
    """
    averages = internals.moving_averages(getattr(model, "optimizer", None))
    if averages is None:
        return False
    _assign_copies(model.trainable_variables, averages)
    return True


def _assign_copies(variables, averages):
    # Copies, not the averages' own buffers: JAX's predict and train step donate the buffers
    # of the weights they are given, which would delete the averages with them.
    for variable, average in zip(variables, averages):
        if average is not None:
            variable.assign(keras.ops.convert_to_numpy(average))


class ValidationCER(keras.callbacks.Callback):
    """Adds ``val_cer`` and ``val_wer`` (greedy decoding) to the logs at every epoch end.

    With an optimizer that keeps moving averages of the weights (``use_ema=True``) it
    validates the averaged weights (:func:`averaged_weights`), the ones ``fit`` leaves in the
    model at its end.

    Place it before callbacks that read these logs (early stopping, checkpoints, TensorBoard).

    Args:
        batches: ``mode="ctc"`` batches of the validation utterances (not shuffled).
        stride: the model's cumulative stride.
        prefix: log key prefix (``"val"`` -> ``val_cer``).
        predict: as for :func:`evaluate`.

    Example:

    >>> model.fit(train, epochs=20, callbacks=[ValidationCER(val, stride=2),
    ...                                        keras.callbacks.EarlyStopping("val_cer")])
    """

    def __init__(self, batches, stride=2, prefix="val", predict=None):
        super().__init__()
        self.batches = batches
        self.stride = int(stride)
        self.prefix = prefix
        self.predict = predict

    def on_epoch_end(self, epoch, logs=None):
        with averaged_weights(self.model):
            result = evaluate(self.model, self.batches, self.stride, predict=self.predict)
        if logs is not None:
            logs[f"{self.prefix}_cer"] = result["cer"]
            logs[f"{self.prefix}_wer"] = result["wer"]
            logs[f"{self.prefix}_ctc_loss"] = result["loss"]


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` whose counters can be restored when a run resumes.

    ``initial_state`` is ``{"wait", "best", "best_epoch"}`` as saved by
    :class:`TrainingCheckpoint`. Weights are not restored here: :func:`train` reloads the best
    checkpoint at the end (it survives interruptions, unlike in-memory weights).
    """

    def __init__(self, initial_state=None, **kwargs):
        super().__init__(**kwargs)
        self.initial_state = dict(initial_state or {})

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.initial_state:
            self.wait = int(self.initial_state["wait"])
            best = self.initial_state["best"]
            self.best = float("inf") if best is None else float(best)
            self.best_epoch = int(self.initial_state["best_epoch"])

    def state(self):
        best = None if not np.isfinite(self.best) else float(self.best)
        return {"wait": int(self.wait), "best": best, "best_epoch": int(self.best_epoch)}


class TimeBudget(keras.callbacks.Callback):
    """Stops training at an epoch end when one more epoch would exceed ``seconds``.

    The next epoch is predicted from the fastest epoch after the first one of this process (the
    first includes compilation); after the first epoch training stops only once over budget.

    Args:
        seconds: the budget of training time.
        used: seconds already used (by the run being resumed).
        agree: ``agree(flag) -> bool``, true on every worker when any worker's flag is (clocks
            differ between workers, and a worker that stops alone leaves the others waiting);
            ``None`` on one worker.
    """

    def __init__(self, seconds, used=0.0, agree=None):
        super().__init__()
        self.seconds = float(seconds)
        self.used = float(used)
        self.agree = agree
        self.stopped = False
        self._took = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        took = time.perf_counter() - self._start
        self.used += took
        self._took.append(took)
        # The first epoch of a process includes compiling every batch shape (minutes on JAX),
        # so it says little about the next one: predict from the later epochs only.
        later = self._took[1:]
        over = self.used + (min(later) if later else 0.0) > self.seconds
        if self.agree is not None:
            over = self.agree(over)
        if over:
            self.stopped = True
            self.model.stop_training = True


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves everything needed to resume after every epoch; keeps the best model.

    Writes ``checkpoint.keras`` (weights and optimizer state) and ``state.json`` (epochs done,
    history, training seconds, early-stopping and time-budget state, the optimizer's step
    count); ``best.keras`` whenever ``monitor`` improves (equal values: when the ``tiebreak``
    log, by default the matching CTC loss, is lower). With an EMA optimizer ``best.keras``
    holds the averaged weights, the ones :class:`ValidationCER` measured, and
    ``checkpoint.keras`` the raw ones with the averages in the optimizer state.

    The three files change as one: the model files of epoch ``N`` are first written under
    hidden names tagged with ``N``, then ``state.json`` is replaced (the commit), then the
    tagged files are renamed into place. An interruption before the commit leaves the previous
    epoch in force; one after it is completed at resume (:func:`settle_checkpoint`), which also
    refuses a ``checkpoint.keras`` whose optimizer step count is not the one ``state.json``
    records.
    """

    def __init__(self, out, state, early_stopping=None, budget=None, monitor="val_cer",
                 tiebreak=None):
        super().__init__()
        # val_cer -> val_ctc_loss: the loss that breaks ties between equal CERs
        self.tiebreak = tiebreak or monitor.replace("_cer", "_ctc_loss")
        self.out = Path(out)
        self.state = state
        self.early_stopping = early_stopping
        self.budget = budget
        self.monitor = monitor

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        state = self.state
        state["seconds"] += time.perf_counter() - self._start
        state["epochs_done"] = epoch + 1
        entry = {"epoch": epoch + 1, "seconds": state["seconds"]}
        entry.update({k: float(v) for k, v in logs.items()})
        state["history"].append(entry)
        value = logs.get(self.monitor)
        # Ties on the CER (e.g. 1.0 while a short run still outputs only blanks) go to the lower
        # CTC loss, so "best" is not stuck at the first epoch.
        tiebreak = float(logs.get(self.tiebreak, math.inf))
        best_tiebreak = state.get("best_tiebreak")
        if value is not None and (
            state["best"] is None
            or value < state["best"]
            or (value == state["best"] and tiebreak < (
                math.inf if best_tiebreak is None else best_tiebreak))
        ):
            state["best"], state["best_epoch"] = float(value), epoch + 1
            state["best_tiebreak"] = tiebreak if math.isfinite(tiebreak) else None
            with averaged_weights(self.model):  # the weights ValidationCER measured
                self.model.save(_pending_path(self.out, "best", epoch + 1))
        if self.early_stopping is not None:
            state["early_stopping"] = self.early_stopping.state()
        if self.budget is not None:
            state["budget_stopped"] = self.budget.stopped
        state["rng_states"] = rng_states(self.model)
        state["optimizer_iterations"] = optimizer_steps(self.model)
        self.model.save(_pending_path(self.out, "checkpoint", epoch + 1))
        write_run_json(self.out / "state.json", state)  # the commit point
        settle_checkpoint(self.out, state)


class TrainingTimeLimit(keras.callbacks.Callback):
    """Stops ``model.fit`` at the first batch end after ``seconds`` of training (wall clock).

    A hard limit, unlike :class:`TimeBudget`, which stops at an epoch end
    when one more epoch (as long as the last) would exceed the budget: on JAX the first epoch
    also compiles the step for every batch length, so that estimate can end a short run after
    one epoch. Here the epoch in progress is cut short; the epoch-end callbacks (validation,
    checkpoint) still run.

    Args:
        seconds: training time allowed.

    Attributes:
        stopped: whether the limit stopped training.

    Example:

    >>> limit = TrainingTimeLimit(600)
    >>> model.fit(batches, epochs=100, callbacks=[limit])
    """

    def __init__(self, seconds):
        super().__init__()
        self.seconds = checks.positive_number(seconds, "seconds")
        self.stopped = False
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self._start > self.seconds:
            self.stopped = True
            self.model.stop_training = True


class EpochAdvance(keras.callbacks.Callback):
    """Moves a dataset that ``fit`` does not know as a ``PyDataset`` to its next epoch.

    ``model.fit`` calls ``on_epoch_end`` of a ``PyDataset`` itself; the per-replica
    ``tf.data`` pipeline of :meth:`DistributionContext.training_data` reads the epoch from its
    shards when it is iterated, so this callback advances them at every epoch end.
    """

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_epoch_end(self, epoch, logs=None):
        self.batches.on_epoch_end()


def _rng_variables(model):
    # Dropout's random-seed state is a model variable but not a weight, so .keras files do not
    # keep it; without it a resumed run would draw different dropout masks. Keyed by layer name:
    # the order of model.variables can change when a model is loaded.
    found = {}
    for layer in internals.all_sublayers(model, include_self=False):
        states = [v for v in layer.variables if v.path.endswith("seed_generator_state")]
        if states:
            found[layer.name] = states
    return found


def rng_states(model):
    """The model's random-seed states (dropout masks): ``{layer_name: [[int, int], ...]}``."""
    return {
        name: [np.asarray(keras.ops.convert_to_numpy(v.value)).tolist() for v in states]
        for name, states in _rng_variables(model).items()
    }


def set_rng_states(model, states):
    """Restore what :func:`rng_states` returned (same architecture)."""
    variables = _rng_variables(model)
    if sorted(states) != sorted(variables):
        raise ValueError(
            f"Model {model.name!r} has random-seed states in layers {sorted(variables)}. "
            f"Received states for: {sorted(states)}"
        )
    for name, values in states.items():
        for variable, value in zip(variables[name], values):
            variable.assign(np.asarray(value, dtype=variable.dtype))


def _pending_path(out, name, epoch):
    """Where ``<name>.keras`` of epoch ``epoch`` waits for its ``state.json`` commit."""
    return Path(out) / f".{name}.epoch{int(epoch):05d}.keras"


def optimizer_steps(model):
    """The optimizer's step count (``optimizer.iterations``) of ``model``; None without an
    optimizer. :class:`TrainingCheckpoint` records it to match ``checkpoint.keras`` with
    ``state.json``."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def settle_checkpoint(out, state):
    """Complete or roll back an interrupted :class:`TrainingCheckpoint` save in ``out``.

    ``state`` is the committed ``state.json``: the model files tagged with its epoch are
    renamed into place (the save had committed), files tagged with another epoch are removed
    (a save that never committed). Safe to call at any time; a no-op after a complete save.
    """
    out = Path(out)
    for name in ("checkpoint", "best"):
        keep = _pending_path(out, name, state["epochs_done"])
        for path in sorted(out.glob(f".{name}.epoch*.keras")):
            if path == keep:
                os.replace(path, out / f"{name}.keras")
            else:
                path.unlink()
