"""Train the Wav2Letter-style recognizer with CTC: ``keras-topomap train`` and :func:`train`.

One run (``train(TrainConfig(...))`` or the command line) does, in ``out``:

1. loads the data (the bundled corpus by default; LibriSpeech, TIMIT, TextGrid corpora or a
   corpus built with ``keras-topomap build-corpus`` through ``--data KIND:PATH``), holds out
   whole sentences of the training split for validation, and rejects utterances whose labels
   cannot fit the model's output (:func:`keras_topomap.ctc.check_ctc_lengths`);
2. builds :func:`keras_topomap.models.wav2letter` (with or without the topographic constraint)
   and fits it with :class:`keras_topomap.ctc.CTCLoss` through ``model.fit`` (Keras progress bar);
3. after every epoch: validation CER/WER (:class:`ValidationCER`), early stopping on the
   validation CER, a checkpoint (model, optimizer state, epoch, early-stopping state, history,
   time used) and TensorBoard logs in ``out/logs``;
4. at the end: restores the weights of the best validation CER, evaluates the test split, and
   writes ``out/model.keras`` and ``out/metrics.json`` (test CER, WER, CTC loss, topography
   score and permutation z-score per grid layer, the activity's correlation-vs-distance
   curve and dead-unit share on the test split, training time, history).

``resume=True`` (``--resume``) continues an interrupted run from its last checkpoint: weights,
optimizer state, epoch, the per-epoch shuffling (a function of ``(seed, epoch)``), the early
stopping state and the time budget carry over, so the result equals an uninterrupted run up to
float noise.

Files written to ``out``: ``config.json`` (the :class:`TrainConfig` and feature config),
``checkpoint.keras`` + ``state.json`` (latest epoch), ``best.keras`` (best validation CER),
``model.keras`` (final), ``metrics.json``, ``logs/`` (TensorBoard; with ``maps``, the maps of
a fixed probe of validation utterances in ``logs/maps``). The JSON files are
standard JSON: a value that is not a finite number (a topography z-score of +inf when the
permuted layouts have no spread, the loss of a diverged epoch) is written as ``null``.

Distributed training (``distribute=`` / ``--distribute``, see :mod:`keras_topomap.distribute`):
``mirrored`` (TensorFlow, this machine's devices), ``data-parallel`` (JAX, this machine's
devices) or ``multi-worker`` (TensorFlow ``TF_CONFIG`` / JAX ``jax.distributed``; start the same
command on every worker). ``batch_size`` is then the global batch; the model is built and
compiled in the strategy's scope; each worker trains on its slice of every global batch; every
worker validates (identically, so early stopping agrees); only the chief writes ``out``, the
other workers write their copies of the files to a temporary folder that is removed at the
end. Resuming reads ``out`` on every worker (a shared file system) and may change
``distribute``: the batch plan is the same on any number of workers.

Example (command line)::

    keras-topomap train --config small --epochs 60 --max-minutes 15 --out runs/topo
    keras-topomap train --config small --no-topographic --out runs/plain
    keras-topomap train --config small --topography both --out runs/both
    keras-topomap train --out runs/topo --resume          # after an interruption
    TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]},
               "task": {"type": "worker", "index": 0}}' \
        keras-topomap train --config paper --distribute multi-worker --out runs/paper

Example (Python):

>>> from keras_topomap.train import TrainConfig, train
>>> results = train(TrainConfig(config="tiny", epochs=2, max_train=32, out="runs/smoke"))
>>> results["test"]["cer"], results["topography"]["conv_1"]["score"]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

from keras_topomap import _train_banners, checks, ctc, run_io, summaries
from keras_topomap import distribute as distribute_lib
from keras_topomap import models as models_lib

# Moved to run_io and training_callbacks; importable from here under the same names.
from keras_topomap.run_io import load_feature_config, read_utterances
from keras_topomap.run_io import parse_data_spec as parse_data_spec
from keras_topomap.run_io import read_run_json as _read_run_json
from keras_topomap.run_io import write_run_json as _write_json
from keras_topomap.training_callbacks import (
    ResumableEarlyStopping,
    TimeBudget,
    TrainingCheckpoint,
    ValidationCER,
    evaluate,
    keep_averaged_weights,
    optimizer_steps,
    set_rng_states,
    settle_checkpoint,
)
from keras_topomap.training_callbacks import rng_states as rng_states

__all__ = [
    "ResumableEarlyStopping",
    "TimeBudget",
    "TrainConfig",
    "TrainingCheckpoint",
    "ValidationCER",
    "decode_with_language_model",
    "evaluate",
    "load_data",
    "settle_checkpoint",
    "load_feature_config",
    "main",
    "train",
]

#: Which topographic constraint ``--topography`` puts on every hidden convolution.
TOPOGRAPHIES = ("none", "weight", "activity", "both")

#: Validation utterances in the probe of the maps ``maps=True`` logs (seeded, fixed per run).
MAP_PROBE_SIZE = 16
#: ``TrainConfig.lr_schedule`` choices.
LR_SCHEDULES = ("constant", "warmup-cosine")
# Fields that may differ between a run and its resumption.
_RESUMABLE_CHANGES = (
    "epochs", "resume", "verbose", "max_minutes", "tensorboard", "maps", "distribute",
    "lm_order",  # only the final decoding reads it
    "out",  # a run folder may be moved or copied and resumed where it is now
)


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (the command line's flags).

    Attributes:
        config: model size, ``"small"``, ``"paper"`` or ``"tiny"`` (:data:`models.CONFIGS`).
        topographic: put the topographic regularizer on every hidden convolution (False is
            ``topography="none"``).
        topography: which constraint every hidden convolution carries: ``"none"``,
            ``"weight"`` (the paper's kernel regularizer), ``"activity"``
            (:class:`~keras_topomap.TopographicActivityRegularizer`) or ``"both"``; ``None``
            follows ``topographic`` (``"weight"`` or ``"none"``; see :attr:`constraint`).
        strength: the weight regularizer's strength.
        global_strength: the weight regularizer's global term.
        activity_strength, activity_global_strength: the activity regularizer's local and
            global strengths.
        input_strength: the weight regularizer's input side (the layer above every hidden
            convolution reads its neighbouring channels alike; see
            :func:`keras_topomap.models.wav2letter`); needs a constraint other than
            ``"none"``.
        neighborhood: the regularizer's neighbourhood side.
        dropout: dropout after every hidden convolution.
        epochs: maximum number of epochs.
        batch_size: utterances per batch (the global batch when distributed: a multiple of
            the number of replicas).
        learning_rate: Adam's learning rate.
        clipnorm: gradient norm clipping (``None``: none).
        ema_momentum: keep an exponential moving average of the weights with this momentum
            (Keras' ``use_ema``; e.g. 0.995 averages over about the last 200 steps, the demo's
            choice); the run is validated, kept and tested with the averaged weights
            (``None``: no averaging). Measured without ``distribute``.
        seed: seeds weights, the validation hold-out, subsets and batch shuffling.
        out: output folder.
        data: ``"bundled"`` (sentence hold-out split of the bundled corpus),
            ``"bundled-voice"`` (hold out the voice ``ked_diphone``), ``"tts:DIR"`` (a corpus
            built with ``keras-topomap build-corpus``), or ``"librispeech:DIR"``, ``"timit:DIR"``,
            ``"textgrid:AUDIO_DIR,TEXTGRID_DIR"`` (read with the :mod:`keras_topomap.datasets`
            readers).
        test_data: the test corpus for reader-based ``data`` (same syntax); ``None`` holds out
            ``test_fraction`` of the sentences of ``data``.
        test_fraction: share of sentences held out for testing when ``test_data`` is ``None``
            and ``data`` has no test split.
        val_fraction: share of the training sentences held out for validation (early stopping);
            0 validates on (up to ``max_eval``) training utterances instead.
        patience: epochs without a better validation CER before stopping (0: never stop early).
        max_minutes: training time budget; training stops at the end of the epoch after which
            one more epoch would exceed it (``None``: no budget).
        max_train, max_eval: use a seeded random subset of this many training / evaluation
            utterances (quick runs and tests); ``None`` uses all.
        features, n_mels: the :class:`~keras_topomap.datasets.FeatureConfig` kind and bands.
        pad_to_multiple: pad batch lengths to a multiple of this (fewer compiled shapes).
        length_buckets: pad every batch to one of this many lengths (quantiles of the
            utterance lengths), and its labels to the longest label that fits that length, so
            a compiled backend meets a bounded number of batch shapes (0: only
            ``pad_to_multiple``, which lets the label axis take a new length in almost every
            batch and JAX compile a new program for it).
        norm: ``None``, ``"batch"`` or ``"layer"`` (:func:`models.wav2letter`'s ``norm``).
        augment: SpecAugment-style masking in training (:class:`~keras_topomap.augment.SpecAugment`
            with ``freq_masks``, ``freq_width``, ``time_masks``, ``time_width``).
        freq_masks, freq_width, time_masks, time_width: the masks, when ``augment``.
        lr_schedule: ``"constant"`` (``learning_rate`` throughout) or ``"warmup-cosine"``
            (:class:`~keras_topomap.schedules.WarmupCosineDecay`: linear warm-up over
            ``warmup_epochs`` to ``learning_rate``, cosine decay to
            ``learning_rate * final_lr_fraction`` at epoch ``epochs``).
        warmup_epochs, final_lr_fraction: the schedule's shape.
        normalize_features: standardise features per utterance (``FeatureConfig.normalize``).
        beam_width: beams of the beam-search decoding reported next to the greedy one for the
            test sets (0: greedy only).
        lm_order: order of the character n-gram language model
            (:class:`~keras_topomap.language_model.CharNGramLM`) fitted on the training
            transcripts; the test split is then also decoded by prefix beam search with it
            (``beam_width`` beams), its weight and length bonus tuned on the validation split
            (0, or no held-out validation split, or ``beam_width=0``: no such decoding).
        n_permutations: permutations for the topography z-scores.
        tensorboard: write TensorBoard logs to ``out/logs``.
        maps: with ``tensorboard``, log the maps of every topographic layer to
            ``out/logs/maps`` every epoch (a :class:`~keras_topomap.TopoMapCallback` on
            :data:`MAP_PROBE_SIZE` seeded validation utterances, per-phone maps where they
            have phone labels); a model without topographic layers logs none.
        verbose: Keras ``fit`` verbosity (1: progress bar); above 0 also the start and end
            banners (data sizes, parameters, mapped grids, output folder, the TensorBoard
            command; the files written and what each holds).
        resume: continue the run found in ``out``.
        distribute: ``"none"``, ``"mirrored"`` (TensorFlow), ``"data-parallel"`` (JAX) or
            ``"multi-worker"`` (both; :mod:`keras_topomap.distribute`).
    """

    config: str = "small"
    topographic: bool = True
    topography: str | None = None
    strength: float = 0.01
    global_strength: float = 0.0
    activity_strength: float = 0.05
    activity_global_strength: float = 0.2
    input_strength: float = 0.0
    neighborhood: int = 3
    dropout: float = 0.0
    epochs: int = 60
    batch_size: int = 16
    learning_rate: float = 1e-3
    clipnorm: float | None = 10.0
    ema_momentum: float | None = None
    seed: int = 0
    out: str = "runs/wav2letter"
    data: str = "bundled"
    test_data: str | None = None
    test_fraction: float = 0.1
    val_fraction: float = 0.1
    patience: int = 10
    max_minutes: float | None = None
    max_train: int | None = None
    max_eval: int | None = None
    features: str = "logmel"
    n_mels: int = 40
    pad_to_multiple: int = 32
    length_buckets: int = 8
    norm: str | None = None
    augment: bool = False
    freq_masks: int = 2
    freq_width: int = 8
    time_masks: int = 2
    time_width: int = 20
    lr_schedule: str = "constant"
    warmup_epochs: float = 2.0
    final_lr_fraction: float = 0.01
    normalize_features: bool = True
    beam_width: int = 16
    lm_order: int = 6
    n_permutations: int = 100
    tensorboard: bool = True
    maps: bool = True
    verbose: int = 1
    resume: bool = False
    distribute: str = "none"

    def __post_init__(self):
        models_lib.get_config(self.config)
        if self.topography is not None:
            checks.choice(self.topography, "topography", TOPOGRAPHIES)
            if not self.topographic and self.topography != "none":
                raise ValueError(
                    "topographic=False (--no-topographic) means topography='none'. Received: "
                    f"topography={self.topography!r}"
                )
        checks.number(self.input_strength, "input_strength", minimum=0)
        if self.input_strength > 0 and self.constraint == "none":
            raise ValueError(
                "input_strength (--input-strength) is a side of the topographic constraint: "
                "it needs topography 'weight', 'activity' or 'both'. Received: "
                f"input_strength={self.input_strength}, topography={self.constraint!r}"
            )
        checks.choice(self.distribute, "distribute", distribute_lib.CHOICES)
        for name in ("epochs", "batch_size", "n_mels", "pad_to_multiple"):
            checks.positive_int(getattr(self, name), name)
        checks.choice(self.norm, "norm", models_lib.NORMS)
        checks.choice(self.lr_schedule, "lr_schedule", LR_SCHEDULES)
        for name in ("length_buckets", "freq_masks", "freq_width", "time_masks", "time_width",
                     "beam_width", "lm_order"):
            checks.non_negative_int(getattr(self, name), name)
        checks.number(self.warmup_epochs, "warmup_epochs", minimum=0)
        checks.number(self.final_lr_fraction, "final_lr_fraction", minimum=0, maximum=1)
        for name in ("val_fraction", "test_fraction"):
            checks.fraction(getattr(self, name), name)
        for name in ("max_train", "max_eval"):
            checks.positive_int(getattr(self, name), name, allow_none=True)
        checks.positive_number(self.max_minutes, "max_minutes", allow_none=True)
        checks.non_negative_int(self.patience, "patience")
        checks.positive_number(self.learning_rate, "learning_rate")
        checks.number(self.ema_momentum, "ema_momentum", above=0, below=1, allow_none=True)
        checks.integer(self.n_permutations, "n_permutations", minimum=2)

    @property
    def constraint(self):
        """The resolved ``topography``: given, or ``"weight"`` / ``"none"`` from ``topographic``."""
        if self.topography is not None:
            return self.topography
        return "weight" if self.topographic else "none"

    def feature_config(self):
        from keras_topomap.datasets import FeatureConfig

        return FeatureConfig(
            kind=self.features, n_mels=self.n_mels, normalize=self.normalize_features
        )

    def to_dict(self):
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------- data


def _subset(items, n, seed):
    if n is None or n >= len(items):
        return list(items)
    pick = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
    return [items[i] for i in pick]


def extract_feature_set(utterances, feature_config):
    """Features of ``utterances`` as a :class:`~keras_topomap.datasets.FeatureSet` (progress bar
    for more than 50)."""
    from keras_topomap.datasets import FeatureSet

    return FeatureSet.from_utterances(utterances, feature_config, progress=len(utterances) > 50)


def _corpus_split(split, feature_config, root, limit, seed):
    from keras_topomap.datasets import load_corpus_features, load_tts_corpus

    if limit is None:
        return load_corpus_features(split, feature_config, root=root)
    # A small subset: extracting it directly is faster than building the whole cache.
    subset = _subset(load_tts_corpus(split, root=root), limit, seed)
    return extract_feature_set(subset, feature_config)


def hold_out_sentences(feature_set, fraction, seed):
    """Split a :class:`~keras_topomap.datasets.FeatureSet` by sentence: ``(rest, held_out)``.

    Every utterance of a held-out transcript goes to ``held_out`` (so no held-out sentence is
    heard in training, whatever the voice); about ``fraction`` of the distinct transcripts are
    held out, chosen with ``seed``.
    """
    transcripts = sorted(set(feature_set.transcripts))
    n_held = int(round(fraction * len(transcripts)))
    if fraction > 0 and len(transcripts) > 1:
        n_held = min(max(n_held, 1), len(transcripts) - 1)
    held = set(np.random.default_rng(seed).permutation(transcripts)[:n_held].tolist())
    rest_ids = [i for i, t in zip(feature_set.ids, feature_set.transcripts) if t not in held]
    held_ids = [i for i, t in zip(feature_set.ids, feature_set.transcripts) if t in held]
    return feature_set.subset(rest_ids), feature_set.subset(held_ids)


def load_data(config):
    """``(train, validation, test)`` :class:`~keras_topomap.datasets.FeatureSet` of a run.

    See :class:`TrainConfig` (``data``, ``test_data``, ``val_fraction``, ``max_train``,
    ``max_eval``). The validation set holds out whole sentences of the training split; with
    ``val_fraction=0`` it is a subset of the training utterances themselves.
    """
    feature_config = config.feature_config()
    seed = config.seed
    if run_io.is_corpus_spec(config.data):
        train_split, root = run_io.corpus_split(config.data, "train")
        test_split, _ = run_io.corpus_split(config.data, "test")
        train_limit = None if config.max_train is None else config.max_train * 2
        train_set = _corpus_split(train_split, feature_config, root, train_limit, seed)
        test_set = _corpus_split(test_split, feature_config, root, config.max_eval, seed + 1)
    else:
        utterances = read_utterances(config.data)
        if config.test_data is not None:
            test_utterances = _subset(read_utterances(config.test_data), config.max_eval, seed + 1)
            train_set = extract_feature_set(utterances, feature_config)
            test_set = extract_feature_set(test_utterances, feature_config)
        else:
            everything = extract_feature_set(utterances, feature_config)
            train_set, test_set = hold_out_sentences(everything, config.test_fraction, seed + 2)
            test_set = test_set.subset(_subset(test_set.ids, config.max_eval, seed + 1))
    if config.val_fraction > 0:
        train_set, val_set = hold_out_sentences(train_set, config.val_fraction, seed + 3)
    else:
        val_set = None
    train_set = train_set.subset(_subset(train_set.ids, config.max_train, seed + 4))
    if val_set is None:
        val_set = train_set
    val_set = val_set.subset(_subset(val_set.ids, config.max_eval, seed + 5))
    for name, subset in (("training", train_set), ("validation", val_set), ("test", test_set)):
        if len(subset) == 0:
            raise ValueError(f"The {name} set of data {config.data!r} is empty.")
    return train_set, val_set, test_set


def _check_lengths(feature_set, stride, what):
    try:
        ctc.check_ctc_lengths(feature_set.lengths, feature_set.labels, stride, feature_set.ids)
    except ValueError as e:
        raise ValueError(f"{what} set: {e}") from None


# ------------------------------------------------------------------------------------ callbacks


def _eval_batches(feature_set, config):
    from keras_topomap.datasets import SpeechBatches

    return SpeechBatches(
        feature_set, batch_size=config.batch_size, shuffle=False, mode="ctc",
        pad_to_multiple=config.pad_to_multiple, length_buckets=config.length_buckets or None,
    )


def _tensorboard(log_dir):
    """The epoch logs as TensorBoard scalars (train/ and validation/ runs, as
    ``keras.callbacks.TensorBoard`` lays them out), written without TensorFlow; a warning and
    nothing when the tensorboard package is not installed."""
    if not summaries.tensorboard_available("keras-topomap train"):
        return []
    return [summaries.EpochSummaries(log_dir)]


def _maps_callback(config, model, val_set, log_dir):
    """``(TopoMapCallback or None, {layer: grid})`` of ``maps=True``: every topographic layer's
    maps of a seeded probe of validation utterances, per phone where the probe has phone
    labels (readers without alignments give none), to ``log_dir``."""
    from keras_topomap.callbacks import TopoMapCallback
    from keras_topomap.datasets import PHONES_39, SpeechBatches
    from keras_topomap.regularizers import topographic_layers

    grids = {name: tuple(info["grid"]) for name, info in topographic_layers(model).items()}
    if not grids:
        return None, grids
    probe_set = val_set.subset(_subset(val_set.ids, MAP_PROBE_SIZE, config.seed + 6))
    probe = SpeechBatches(probe_set, batch_size=len(probe_set), mode="all", shuffle=False)[0]
    labels = probe["frame_labels"]
    phones = len(np.unique(labels[labels >= 0])) >= 2  # per-phone maps need two phones
    callback = TopoMapCallback(
        probe["features"], probe_lengths=probe["feature_lengths"], log_dir=log_dir,
        groups=labels if phones else None, group_names=PHONES_39 if phones else None,
    )
    return callback, grids


def _load_checkpoint(out, state):
    """``checkpoint.keras`` of ``out``, checked against the committed ``state``."""
    path = Path(out) / "checkpoint.keras"
    try:
        model = keras.saving.load_model(path)
    except Exception as e:  # Keras raises many kinds for a truncated or foreign file
        raise ValueError(
            f"Cannot resume: {path} is unreadable or truncated ({type(e).__name__}: {e})."
        ) from None
    expected = state.get("optimizer_iterations")
    found = optimizer_steps(model)
    if expected is not None and found != expected:
        raise ValueError(
            f"Cannot resume: {path} holds a model after {found} optimizer steps but "
            f"{Path(out) / 'state.json'} records {expected} after epoch {state['epochs_done']}; "
            "the two files come from different epochs."
        )
    return model


def _save_model(model, path):
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------- training


def _build(config, n_features, steps_per_epoch):
    augment = None
    if config.augment:
        augment = {
            "freq_masks": config.freq_masks, "freq_width": config.freq_width,
            "time_masks": config.time_masks, "time_width": config.time_width,
        }
    activity = config.constraint in ("activity", "both")
    model = models_lib.wav2letter(
        config.config,
        n_features=n_features,
        topographic=config.constraint in ("weight", "both"),
        strength=config.strength,
        global_strength=config.global_strength,
        activity_strength=config.activity_strength if activity else 0.0,
        activity_global_strength=config.activity_global_strength if activity else 0.0,
        input_strength=config.input_strength,
        dropout=config.dropout,
        neighborhood=config.neighborhood,
        seed=config.seed,
        norm=config.norm,
        augment=augment,
    )
    averaging = {}
    if config.ema_momentum is not None:
        averaging = {"use_ema": True, "ema_momentum": config.ema_momentum}
    optimizer = keras.optimizers.Adam(
        learning_rate_of(config, steps_per_epoch), clipnorm=config.clipnorm, **averaging
    )
    model.compile(optimizer=optimizer, loss=ctc.CTCLoss(stride=models_lib.total_stride(model)))
    return model


def learning_rate_of(config, steps_per_epoch):
    """The optimizer's learning rate of a run: a float, or a
    :class:`~keras_topomap.schedules.WarmupCosineDecay` over ``config.epochs`` epochs of
    ``steps_per_epoch`` steps (saved with the optimizer, so a resumed run, even with a new
    ``epochs``, continues the curve it started)."""
    if config.lr_schedule == "constant":
        return float(config.learning_rate)
    from keras_topomap.schedules import WarmupCosineDecay

    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    total = int(config.epochs) * int(steps_per_epoch)
    return WarmupCosineDecay(
        peak=float(config.learning_rate), warmup_steps=warmup,
        decay_steps=max(total - warmup, 1), final_fraction=config.final_lr_fraction,
    )


def _check_resume(out, config, repair=True):
    saved_path = out / "config.json"
    if not saved_path.is_file() or not (out / "state.json").is_file():
        raise ValueError(
            f"Cannot resume: {out} holds no checkpoint (config.json and state.json). "
            "Start a new run without --resume."
        )
    saved = _read_run_json(saved_path).get("train")
    if not isinstance(saved, dict):
        raise ValueError(f"Cannot resume: {saved_path} has no 'train' settings.")
    # Runs saved before a field existed ran with its default.
    saved = {**TrainConfig(config=saved.get("config", "small")).to_dict(), **saved}
    mine = config.to_dict()
    changed = {
        k: (saved.get(k), mine[k]) for k in mine if k not in _RESUMABLE_CHANGES and
        saved.get(k) != mine[k]
    }
    if changed:
        details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise ValueError(
            f"Cannot resume the run in {out} with different settings. Received: {details}"
        )
    state = _read_run_json(out / "state.json")
    missing = {"epochs_done", "seconds", "history", "best", "best_epoch"} - set(state)
    if missing:
        raise ValueError(f"Cannot resume: {out / 'state.json'} lacks {sorted(missing)}.")
    if repair:
        settle_checkpoint(out, state)
    return state


def layer_topography(model, grids, n_permutations=100, seed=0):
    """Topography score and permutation test of each grid layer's kernel.

    Returns:
        ``{layer_name: {"score", "z", "null_mean", "null_std", "grid"}}``.
    """
    from keras_topomap.metrics import topography_test

    result = {}
    for name, grid in grids.items():
        test = topography_test(
            model.get_layer(name).kernel, grid=grid, n_permutations=n_permutations, seed=seed
        )
        result[name] = {
            "score": test.score,
            "z": test.z,
            "null_mean": test.null_mean,
            "null_std": test.null_std,
            "grid": list(grid),
        }
    return result


def layer_activity(model, batches, grids, n_permutations=20, seed=0):
    """Correlation-vs-distance curve and dead-unit share of each grid layer's activity on data.

    Runs ``model`` over ``batches`` (``(features, packed CTC targets)``, whose column 0 gives
    each utterance's length), keeps every layer's real frames (``ceil(length / stride)``) and
    streams them into :class:`~keras_topomap.metrics.ActivityStatistics`.

    Returns:
        ``{layer_name: {"falloff", "falloff_z", "falloff_null_mean", "falls", "dead_share",
        "n_live", "frames", "curve": {"distance", "mean", "sem", "null_mean"}}}``.
    """
    from keras_topomap.datasets import unpack_ctc_targets
    from keras_topomap.metrics import ActivityStatistics, correlation_by_distance
    from keras_topomap.receptive_field import receptive_fields

    names = list(grids)
    timings = receptive_fields(model)
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    stats = {n: ActivityStatistics(grids[n][0] * grids[n][1]) for n in names}
    for index in range(len(batches)):
        features, targets = batches[index]
        outputs = probe.predict_on_batch(features)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        lengths = unpack_ctc_targets(np.asarray(targets))[0].astype(np.int64)
        for name, out in zip(names, outputs):
            out = keras.ops.convert_to_numpy(out)
            frames = -(-lengths // timings[name].stride)
            stats[name].update(out, np.arange(out.shape[1])[None] < frames[:, None])
    result = {}
    for name in names:
        curve = correlation_by_distance(
            stats[name].correlations(), grids[name], n_permutations=n_permutations, seed=seed
        )
        result[name] = {
            "falloff": curve.falloff,
            "falloff_z": curve.falloff_z,
            "falloff_null_mean": curve.falloff_null_mean,
            "falls": curve.falls,
            "dead_share": float(stats[name].dead_units().mean()),
            "n_live": curve.n_live,
            "frames": int(stats[name].count),
            "curve": {key: [float(v) for v in getattr(curve, key)]
                      for key in ("distance", "mean", "sem", "null_mean")},
        }
    return result


def _redirect_outputs(callbacks, folder):
    """Point the ``log_dir`` / ``out_dir`` of callbacks at ``folder`` (non-chief workers)."""
    for index, callback in enumerate(callbacks):
        for attribute in ("log_dir", "out_dir"):
            if getattr(callback, attribute, None) is not None:
                target = Path(folder) / f"callback_{index}_{attribute}"
                target.mkdir(parents=True, exist_ok=True)
                setattr(callback, attribute, os.fspath(target))


def train(config=None, data=None, callbacks=None, context=None, **overrides):
    """Run one training (see the module docstring); returns the results written to metrics.json.

    Args:
        config: a :class:`TrainConfig` (default: defaults); ``overrides`` replace its fields.
        data: optional ``(train, validation, test)``
            :class:`~keras_topomap.datasets.FeatureSet` to use instead of loading
            ``config.data`` (features must match ``config.features`` / ``n_mels``).
        callbacks: more Keras callbacks for ``fit`` (e.g. a
            :class:`~keras_topomap.callbacks.TopoMapCallback`). When distributed they run on
            every worker (they may run the model, which takes every worker); on the other
            workers than the chief their ``log_dir`` / ``out_dir`` are redirected to the
            temporary folder, so only the chief's files land where they were asked for.
        context: a :class:`~keras_topomap.distribute.DistributionContext` already resolved
            for ``config.distribute`` (a process can create ``MultiWorkerMirroredStrategy``
            only once); default: ``distribute.resolve(config.distribute)``.

    Returns:
        dict with ``test`` (``cer``, ``wer``, ``loss``, ``n_utterances``, ``examples``),
        ``validation`` (same, best epoch), ``topography`` (per grid layer),
        ``training_seconds``, ``epochs_done``, ``best_epoch``, ``stopped_by``, ``history``,
        ``config``, ``model_path``, ``parameters`` and ``distribution`` (``choice``,
        ``num_workers``, ``worker_index``, ``num_replicas``).

    Raises:
        ValueError: bad settings, unusable data (naming the utterances), a resume that does
            not match the saved run, or a ``distribute`` choice the backend does not have.
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    if context is None:
        # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything.
        context = distribute_lib.resolve(config.distribute)
        restore = context.distribution is not None
    elif context.choice != config.distribute:
        raise ValueError(
            f"The context was resolved for distribute={context.choice!r} but the config asks "
            f"for distribute={config.distribute!r}. Received: context={context}"
        )
    else:
        restore = False
    try:
        return _train(config, data, callbacks, context)
    finally:
        if restore:  # leave no global distribution behind that this call set
            keras.distribution.set_distribution(None)


def _train(config, data, callbacks, context):
    out = Path(config.out)
    context.check_batch_size(config.batch_size)
    if config.resume:
        # Only the chief completes an interrupted save; the others read the folder it settles.
        state = _check_resume(out, config, repair=context.is_chief)
    else:
        if (out / "state.json").exists():
            raise ValueError(
                f"{out} already holds a training run (state.json). Pass resume=True (--resume) "
                "to continue it, or choose another output folder."
            )
        state = {
            "epochs_done": 0, "seconds": 0.0, "history": [], "best": None, "best_epoch": 0,
            "early_stopping": None, "budget_stopped": False,
        }
    # Only the chief writes the run's folder; the others keep their copies apart.
    if context.is_chief:
        out.mkdir(parents=True, exist_ok=True)
        write_dir = out
    else:
        write_dir = Path(tempfile.mkdtemp(prefix=f"keras-topomap-worker{context.worker_index}-"))
    try:
        return _fit_and_report(config, data, callbacks, context, out, write_dir, state)
    finally:
        if write_dir != out:
            shutil.rmtree(write_dir, ignore_errors=True)


def _fit_and_report(config, data, callbacks, context, out, write_dir, state):
    keras.utils.set_random_seed(config.seed)

    feature_config = config.feature_config()
    if data is None:
        train_set, val_set, test_set = load_data(config)
    else:
        train_set, val_set, test_set = data
        for subset in data:
            if subset.config != feature_config:
                raise ValueError(
                    f"data features do not match the run's feature config {feature_config}. "
                    f"Received: {subset.config}"
                )
    stride = models_lib.get_config(config.config).stride
    for what, subset in (("training", train_set), ("validation", val_set), ("test", test_set)):
        _check_lengths(subset, stride, what)
    if not config.resume:
        _write_json(
            write_dir / "config.json",
            {"train": config.to_dict(), "features": feature_config.to_dict(),
             "n_train": len(train_set), "n_validation": len(val_set), "n_test": len(test_set)},
        )

    with context.scope():
        if config.resume:
            model = _load_checkpoint(out, state)
            set_rng_states(model, state.get("rng_states", {}))
        else:
            steps = math.ceil(len(train_set) / config.batch_size)
            model = _build(config, feature_config.n_features, steps)
        context.adapt_optimizer(model.optimizer)
        context.prepare_model(model)
    stride = models_lib.total_stride(model)

    train_data, batches = context.training_data(
        train_set, config.batch_size, seed=config.seed, pad_to_multiple=config.pad_to_multiple,
        length_buckets=config.length_buckets or None,
    )
    batches.set_epoch(state["epochs_done"])
    val_batches = _eval_batches(val_set, config)
    # Without a held-out split (val_fraction=0) the "validation" utterances are training ones.
    val_prefix = "train" if data is None and config.val_fraction == 0 else "val"
    monitor = f"{val_prefix}_cer"
    predict = context.predict if context.is_distributed else None

    fit_callbacks = [
        ValidationCER(val_batches, stride, prefix=val_prefix, predict=predict),
        keras.callbacks.TerminateOnNaN(),
    ]
    if train_data is not batches:
        fit_callbacks.insert(0, distribute_lib.EpochAdvance(batches))
    early = None
    if config.patience > 0:
        early = ResumableEarlyStopping(
            initial_state=state["early_stopping"], monitor=monitor, mode="min",
            patience=config.patience, min_delta=1e-4,
        )
        fit_callbacks.append(early)
    budget = None
    if config.max_minutes is not None:
        agree = context.any_worker if context.num_workers > 1 else None
        budget = TimeBudget(60.0 * config.max_minutes, used=state["seconds"], agree=agree)
        fit_callbacks.append(budget)
    fit_callbacks.append(TrainingCheckpoint(write_dir, state, early, budget, monitor=monitor))
    log_dir = out / "logs" if config.tensorboard and summaries.tensorboard_available(
        "keras-topomap train") else None
    if log_dir is not None and context.is_chief:
        fit_callbacks += _tensorboard(log_dir)
    maps, watched = (None, None)
    if config.maps and log_dir is not None:
        maps, watched = _maps_callback(config, model, val_set, write_dir / "logs" / "maps")
    extra = [maps] if maps is not None else []
    extra += list(callbacks or [])
    if not context.is_chief:
        _redirect_outputs(extra, write_dir)
    fit_callbacks += extra

    banners = config.verbose > 0 and context.is_chief
    if banners:
        print(_train_banners.start_banner(
            config, (train_set, val_set, test_set), model, watched, log_dir), flush=True)
    already_over = state.get("budget_stopped") or (
        early is not None and state["early_stopping"] is not None
        and state["early_stopping"]["wait"] >= config.patience
    )
    if state["epochs_done"] < config.epochs and not already_over:
        model.fit(
            train_data,
            epochs=config.epochs,
            initial_epoch=state["epochs_done"],
            callbacks=fit_callbacks,
            # SpeechBatches shuffles from (seed, epoch); Keras' own batch shuffling would draw
            # from Python's global RNG, which a resumed run cannot replay.
            shuffle=False,
            verbose=config.verbose if context.is_chief else 0,
        )
    last = state["history"][-1] if state["history"] else {}
    last_loss = last.get("loss", 0.0)  # null in a resumed state.json: not finite when written
    if last_loss is None or not math.isfinite(last_loss):
        raise ValueError(
            f"Training produced a non-finite loss at epoch {state['epochs_done']}; lower the "
            f"learning rate or the strength. History: {state['history'][-3:]}"
        )

    best = write_dir / "best.keras"
    if not best.is_file() and write_dir != out and (out / "best.keras").is_file():
        best = out / "best.keras"  # a resumed run with no better epoch since: the chief's file
    restored = best.is_file()
    if restored:
        model.load_weights(best)
    else:
        # With EMA, the averaged weights: fit puts them in at its end, but sharing their
        # buffers on JAX, and a finished run resumed here has the raw ones. No-op without EMA.
        keep_averaged_weights(model)
    strategies = ("greedy", "beam_search") if config.beam_width > 0 else ("greedy",)
    test, test_logits = evaluate(
        model, _eval_batches(test_set, config), predict=predict, strategies=strategies,
        beam_width=config.beam_width or 100, return_logits=True,
    )
    validation, val_logits = evaluate(model, val_batches, stride, predict=predict,
                                      return_logits=True)
    if config.lm_order > 0 and config.beam_width > 0 and val_prefix == "val" and len(val_set):
        test["language_model"] = decode_with_language_model(
            train_set.transcripts, val_logits, test_logits, config.lm_order, config.beam_width,
            write_dir if context.is_chief else None)
    grids = models_lib.layer_grids(config.config)
    topography = layer_topography(model, grids, config.n_permutations, config.seed)
    activity = layer_activity(
        model, _eval_batches(test_set, config), grids,
        seed=config.seed,
    )
    penalties = {}
    if config.constraint in ("weight", "both"):
        penalties = {
            layer.name: float(keras.ops.convert_to_numpy(layer.kernel_regularizer(layer.kernel)))
            for layer in model.layers if layer.name in grids
        }
    if (budget is not None and budget.stopped) or state.get("budget_stopped"):
        stopped_by = "time budget"
    elif early is not None and early.stopped_epoch > 0:
        stopped_by = "early stopping"
    else:
        stopped_by = "epochs"
    model_path = write_dir / "model.keras"
    _save_model(model, model_path)
    results = {
        "test": test,
        "validation": validation,
        "validation_split": "training utterances" if val_prefix == "train" else "held out",
        "topography": topography,
        "activity": activity,
        "penalty": penalties,
        "training_seconds": state["seconds"],
        "epochs_done": state["epochs_done"],
        "best_epoch": state["best_epoch"],
        "stopped_by": stopped_by,
        "history": state["history"],
        "config": config.to_dict(),
        "features": feature_config.to_dict(),
        "backend": keras.backend.backend(),
        "parameters": int(model.count_params()),
        "n_train": len(train_set),
        "model_path": str(model_path),
        "distribution": {
            "choice": context.choice, "num_workers": context.num_workers,
            "worker_index": context.worker_index, "num_replicas": context.num_replicas,
        },
    }
    _write_json(write_dir / "metrics.json", results)
    if banners:
        print(_train_banners.end_banner(write_dir, state, restored, maps is not None, log_dir,
                                        phones=maps is not None and maps.group_names is not None))
    return results


def decode_with_language_model(train_texts, validation, test, order=6, beam_width=16,
                               write_dir=None):
    """The test split decoded with a character n-gram LM of the training transcripts.

    The :class:`~keras_topomap.language_model.CharNGramLM` is fitted on ``train_texts``, its
    weight and length bonus are tuned on the validation utterances, and the test utterances
    are decoded with the chosen pair (what ``keras-topomap train`` reports as
    ``test.language_model``).

    Args:
        train_texts: the training transcripts.
        validation: ``(logits, transcripts)`` of the validation utterances, the logits one
            ``(T_i, classes)`` array per utterance (what ``evaluate(..., return_logits=True)``
            returns second).
        test: the same for the test utterances.
        order: the LM's order.
        beam_width: beams of the prefix beam search.
        write_dir: where to save the LM as ``lm.json`` (None: not saved).

    Returns:
        dict with the test split's ``cer``, ``wer`` and ``examples``, the LM's ``order`` and
        ``n_sentences``, the chosen ``lm_weight`` and ``length_bonus``, their
        ``validation_cer`` and the whole ``tuning_grid``.
    """
    from keras_topomap import language_model as lm_lib

    lm = lm_lib.CharNGramLM(order=order).fit(train_texts)
    tuned = lm_lib.tune_weights(*validation, lm, beam_width=beam_width)
    test_logits, test_texts = test
    test_texts = list(test_texts)
    hypotheses = lm_lib.decode_with_lm(test_logits, None, lm, tuned["lm_weight"],
                                       tuned["length_bonus"], beam_width=beam_width)
    if write_dir is not None:
        lm.save(Path(write_dir) / "lm.json")
    return {
        **ctc.error_rates(test_texts, hypotheses),
        "examples": list(zip(test_texts[:5], hypotheses[:5])),
        "order": order, "beam_width": beam_width, "n_sentences": lm.n_sentences_,
        "lm_weight": tuned["lm_weight"], "length_bonus": tuned["length_bonus"],
        "validation_cer": tuned["cer"], "tuning_grid": tuned["grid"],
    }


# ------------------------------------------------------------------------------ command line


def build_parser():
    defaults = TrainConfig()
    p = argparse.ArgumentParser(
        prog="keras-topomap train",
        description="Train the Wav2Letter-style recognizer with CTC (see keras_topomap.train).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=defaults.config, choices=sorted(models_lib.CONFIGS),
                   help="model size (keras_topomap.models.CONFIGS)")
    p.add_argument(
        "--topographic", action=argparse.BooleanOptionalAction, default=defaults.topographic,
        help="topographic regularizer on every hidden convolution",
    )
    p.add_argument(
        "--topography", default=None, choices=TOPOGRAPHIES,
        help="constraint on every hidden convolution: none, weight (the paper's kernel "
        "regularizer; the default), activity, or both (--no-topographic: none)",
    )
    p.add_argument("--strength", type=float, default=defaults.strength,
                   help="weight regularizer strength")
    p.add_argument("--global-strength", type=float, default=defaults.global_strength,
                   help="weight regularizer's global term")
    p.add_argument("--activity-strength", type=float, default=defaults.activity_strength,
                   help="activity regularizer's local strength")
    p.add_argument("--activity-global-strength", type=float,
                   default=defaults.activity_global_strength,
                   help="activity regularizer's global strength")
    p.add_argument("--input-strength", type=float, default=defaults.input_strength,
                   help="weight regularizer's input side: the layer above each hidden "
                   "convolution reads neighbouring channels of its grid alike (smooth GradNAP "
                   "gradients); needs --topography other than none")
    p.add_argument("--neighborhood", type=int, default=defaults.neighborhood,
                   help="side of the regularizer's square neighbourhood on the grid (odd)")
    p.add_argument("--dropout", type=float, default=defaults.dropout,
                   help="dropout rate after each hidden convolution")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="maximum epochs")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help="utterances per batch (global, over all devices)")
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                   help="Adam learning rate")
    p.add_argument("--clipnorm", type=float, default=defaults.clipnorm,
                   help="clip each gradient to this norm")
    p.add_argument("--ema-momentum", type=float, default=defaults.ema_momentum,
                   help="validate, keep and test a moving average of the weights with this "
                        "momentum, e.g. 0.995 (none: the raw weights)")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help="seed of the weights, the split and the batch order")
    p.add_argument("--out", default=defaults.out, help="output folder")
    p.add_argument(
        "--data", default=defaults.data,
        help="bundled, bundled-voice, tts:DIR, librispeech:DIR, timit:DIR or "
        "textgrid:AUDIO_DIR,TEXTGRID_DIR",
    )
    p.add_argument("--test-data", default=None,
                   help="test corpus for KIND:PATH data (None: split off --data)")
    p.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                   help="share of the training utterances held out for validation")
    p.add_argument("--test-fraction", type=float, default=defaults.test_fraction,
                   help="share held out for testing when --data has no test split")
    p.add_argument("--patience", type=int, default=defaults.patience,
                   help="early stopping patience in epochs on the validation CER (0: off)")
    p.add_argument("--max-minutes", "--minutes", dest="max_minutes", type=float, default=None,
                   help="training time budget in minutes (None: no budget)")
    p.add_argument("--max-train", type=int, default=None,
                   help="use only N training utterances (None: all)")
    p.add_argument("--max-eval", "--max-utterances", dest="max_eval", type=int, default=None,
                   help="use only N validation and N test utterances (None: all)")
    p.add_argument("--features", default=defaults.features, choices=("logmel", "mfcc"),
                   help="input features")
    p.add_argument("--n-mels", type=int, default=defaults.n_mels,
                   help="mel bands (features per frame)")
    p.add_argument("--pad-to-multiple", type=int, default=defaults.pad_to_multiple,
                   help="pad batch lengths to a multiple of this (fewer compiled shapes)")
    p.add_argument("--length-buckets", type=int, default=defaults.length_buckets,
                   help="pad batches to one of N lengths, labels to match (bounded compiled "
                   "shapes; 0: only --pad-to-multiple)")
    p.add_argument("--norm", default="none", choices=("none", "batch", "layer"),
                   help="normalization between each hidden convolution and its ReLU "
                   "(none: the paper's layers)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=defaults.augment,
                   help="SpecAugment-style time and frequency masks in training")
    p.add_argument("--freq-masks", type=int, default=defaults.freq_masks,
                   help="frequency masks per utterance (with --augment)")
    p.add_argument("--freq-width", type=int, default=defaults.freq_width,
                   help="widest frequency mask (features)")
    p.add_argument("--time-masks", type=int, default=defaults.time_masks,
                   help="time masks per utterance (with --augment)")
    p.add_argument("--time-width", type=int, default=defaults.time_width,
                   help="widest time mask (frames)")
    p.add_argument("--lr-schedule", default=defaults.lr_schedule, choices=LR_SCHEDULES,
                   help="constant, or linear warm-up then cosine decay over --epochs")
    p.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs,
                   help="epochs of linear learning-rate warm-up (warmup-cosine)")
    p.add_argument("--final-lr-fraction", type=float, default=defaults.final_lr_fraction,
                   help="the decayed learning rate as a fraction of --learning-rate")
    p.add_argument("--normalize-features", action=argparse.BooleanOptionalAction,
                   default=defaults.normalize_features,
                   help="standardise features per utterance")
    p.add_argument("--lm-order", type=int, default=defaults.lm_order,
                   help="order of the character n-gram LM of the training transcripts that "
                        "also decodes the test split (0: none)")
    p.add_argument("--beam-width", type=int, default=defaults.beam_width,
                   help="beams of the test beam-search decoding (0: greedy only)")
    p.add_argument("--n-permutations", "--permutations", dest="n_permutations", type=int,
                   default=defaults.n_permutations,
                   help="shuffled layouts of the final topography z-scores")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction,
                   default=defaults.tensorboard, help="write TensorBoard logs to OUT/logs")
    p.add_argument("--maps", action=argparse.BooleanOptionalAction, default=defaults.maps,
                   help=f"log every topographic layer's maps of {MAP_PROBE_SIZE} validation "
                   "utterances to "
                   "OUT/logs/maps every epoch (TensorBoard images; needs --tensorboard)")
    p.add_argument("--verbose", type=int, default=defaults.verbose, choices=(0, 1, 2),
                   help="Keras progress output: 0 silent, 1 progress bar, 2 a line per epoch")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--distribute", default=defaults.distribute, choices=distribute_lib.CHOICES,
        help="none; mirrored (TensorFlow: this machine's devices); data-parallel (JAX: this "
        "machine's devices); multi-worker (TensorFlow: TF_CONFIG; JAX: jax.distributed from "
        "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); --batch-size is global",
    )
    return p


def main(argv=None):
    """``keras-topomap train`` / ``python -m keras_topomap.train``."""
    args = vars(build_parser().parse_args(argv))
    args["norm"] = None if args["norm"] == "none" else args["norm"]
    try:
        config = TrainConfig(**args)
        results = train(config)
    except (ValueError, OSError) as e:
        print(f"keras-topomap train: error: {e}", file=sys.stderr)
        return 2
    if results["distribution"]["worker_index"] != 0:
        rank = results["distribution"]["worker_index"]
        print(f"worker {rank} done (the chief writes {config.out})")
        return 0
    test = results["test"]
    print(
        f"test CER {test['cer']:.3f}  WER {test['wer']:.3f}  CTC loss {test['loss']:.2f}  "
        f"({results['epochs_done']} epochs, {results['training_seconds']:.0f} s, stopped by "
        f"{results['stopped_by']})"
    )
    if "beam_search" in test:
        beam = test["beam_search"]
        print(f"beam search ({beam['beam_width']} beams): test CER {beam['cer']:.3f}  "
              f"WER {beam['wer']:.3f}")
    if "language_model" in test:
        lm = test["language_model"]
        print(f"beam search with a {lm['order']}-gram character LM (weight {lm['lm_weight']}, "
              f"length bonus {lm['length_bonus']}): test CER {lm['cer']:.3f}  "
              f"WER {lm['wer']:.3f}")
    for name, topo in results["topography"].items():
        act = results["activity"][name]
        print(f"  {name:<11} topography {topo['score']:+.3f}  z {topo['z']:+.1f}  "
              f"correlation falloff {act['falloff']:+.3f}  z {act['falloff_z']:+.1f}  "
              f"dead {act['dead_share']:.0%}")
    if not config.verbose:  # the end banner names the files otherwise
        print(f"wrote {results['model_path']} and {Path(config.out) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
