"""The main demo: the paper end to end on speech (``make demo``, ``python -m keras_topomap.demo``).

One run does what the paper did, at laptop scale, and writes everything to ``--out``
(default ``outputs/``):

1. **Train** the topographic Wav2Letter-style recognizer (``--config small`` by default) on
   the bundled phone-aligned corpus (or ``--data librispeech:DIR`` etc.) with
   :func:`keras_topomap.train.train` for a time budget (``--minutes``), while a
   :class:`~keras_topomap.TopoMapCallback` records the layers' activation maps every epoch
   (the animation). ``--model PATH`` skips training and analyses a saved ``.keras`` model;
   ``--pretrained`` (``make demo ARGS=--pretrained``) analyses the model shipped with the
   package (:func:`keras_topomap.models.pretrained`) instead.
2. **Layout and GradNAP**: the trained filters laid out by their GradNAPs on the training
   split (:mod:`keras_topomap.layout`; ``--layout trained`` keeps their order), then GradNAP
   (:class:`~keras_topomap.GradNAP`) of every phoneme on every topographic layer over the test
   split.
3. **Optimal inputs** (:mod:`keras_topomap.optimal_inputs`) of the most responsive region of
   /AE/, /AA/, /T/ (and the ``--phonemes`` named) on the figure layer (``conv_2``, the paper's
   second layer), single-filter and joint, and their sound (:func:`keras_topomap.sonify.write_wav`).
4. **Figures and metrics**: Figure 1A (filter neighbourhoods of the first layer), Figure 1B,
   the combined Figure 1, the dendrogram of phoneme profiles, GradNAP maps of all phonemes per
   layer, the map animation, the learning curve, ``metrics.json`` / ``metrics.md`` (kernel
   topography score with permutation z-score per layer; Moran's I, blur-error AUC and
   localisation of the GradNAP maps) and ``index.html`` showing all of it
   (:mod:`keras_topomap.report`).

Training stops at the time limit (``--minutes``, default 10) at the latest; on busy cores it cuts
training short and the rest still runs. Run times are in ``docs/benchmarks.md``; the measured
default run (two cores, JAX, with the moving average of the weights): 55 epochs in the 10
minutes, test CER 0.340 (0.294 decoded with the run's character language model,
:mod:`keras_topomap.language_model`), 17.9 minutes in all; the same recipe run to 80 epochs
reaches 0.320 (0.276).
``--synthetic`` runs the older synthetic demo (:mod:`keras_topomap.synthetic_demo`) instead.

Example (command line)::

    make demo
    make demo ARGS="--minutes 20 --phonemes s iy"
    python -m keras_topomap.demo --model runs/topo/model.keras --out outputs/topo

Example (Python):

>>> from keras_topomap.demo import run_demo
>>> summary = run_demo(out="outputs", config="tiny", minutes=1, epochs=1, steps=20)
>>> summary["index"]
'outputs/index.html'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np

from keras_topomap import checks
from keras_topomap._files import load_keras_model
from keras_topomap.datasets.phones import PHONES_39
from keras_topomap.run_io import load_feature_config, write_run_json

# Moved to training_callbacks; importable from here under the same name.
from keras_topomap.training_callbacks import TrainingTimeLimit

__all__ = [
    "DEFAULT_PHONEMES",
    "TrainingTimeLimit",
    "build_parser",
    "gradnap_metrics",
    "layer_verdicts",
    "main",
    "parse_phonemes",
    "run_demo",
]

#: The phonemes of the paper's Figure 1B.
DEFAULT_PHONEMES = ("ae", "aa", "t")
_STAGES = 6
# Batch lengths are padded to a multiple of this: on JAX every new length compiles the training
# step again, and the bundled corpus has 16 lengths at a multiple of 32 but 8 at 64 (for ~10%
# more padded frames).
_PAD = 64


def parse_phonemes(names):
    """Phoneme names (``"/AE/"``, ``"ae"``, ARPAbet such as ``"ao"``) -> classes of the 39 set.

    Folds ARPAbet symbols (:func:`keras_topomap.datasets.fold_phone`), drops duplicates and keeps
    the order.

    Raises:
        ValueError: for a name that is not a phone, or one that folds to silence.
    """
    from keras_topomap.datasets import phones

    result = []
    for name in names:
        text = str(name).strip().strip("/").lower()
        try:
            folded = phones.fold_phone(text)
        except (ValueError, TypeError) as e:
            raise ValueError(f"Unknown phoneme {name!r}. Phonemes: {list(phones.PHONES_39)}. "
                             f"({e})") from None
        if folded is None:
            raise ValueError(f"Phoneme {name!r} has no class in the 39-phone set.")
        if folded not in result:
            result.append(folded)
    return result


def _stage(index, text, verbose):
    if verbose:
        print(f"\n[{index}/{_STAGES}] {text}", flush=True)


def _feature_settings(model_path):
    """``{"features": kind, "n_mels": n}`` of a saved model's training run, when known."""
    try:
        features = load_feature_config(Path(model_path).parent)
    except (ValueError, OSError, KeyError):
        return {}
    return {"features": features.kind, "n_mels": features.n_mels,
            "normalize_features": features.normalize}


def gradnap_metrics(gradnap, n_permutations=199, seed=0, threshold=3.0):
    """Smoothness and localisation of every GradNAP map, per layer.

    For every layer and every group with frames: Moran's I of the raw map on the grid against
    ``n_permutations`` random layouts of its values
    (:func:`keras_topomap.metrics.morans_i_test`: I, the permuted mean, z and p, and whether
    ``z >= threshold``), the blur-error AUC (:func:`~keras_topomap.metrics.blur_error_auc`,
    lower = smoother) and the localisation (:func:`~keras_topomap.metrics.localization`: share
    of positive mass inside the most responsive 3x3 region). A constant map has no Moran's I
    (None) and is not topographic.

    Returns:
        ``{layer: {"groups": {name: {...}}, "mean": {...}, "median": {...},
        "n_topographic": int, "n_maps": int}}``.
    """
    from keras_topomap.metrics import blur_error_auc, localization
    from keras_topomap.visualization import map_verdict

    result = {}
    for layer in gradnap.layers:
        maps = gradnap.maps(layer)
        groups = {}
        for index in np.nonzero(gradnap.counts_[layer] > 0)[0]:
            grid_map = maps[index]
            verdict = map_verdict(grid_map, threshold=threshold, n_permutations=n_permutations,
                                  seed=seed)
            test = verdict.test
            groups[gradnap.group_name(index)] = {
                "morans_i": None if test is None else test.morans_i,
                "morans_i_permuted": None if test is None else test.null_mean,
                "morans_i_z": None if test is None else test.z,
                "morans_i_p": None if test is None else test.p_value,
                "topographic": verdict.topographic,
                "blur_error_auc": float(blur_error_auc(grid_map)),
                "localization": float(localization(grid_map)),
                "frames": int(gradnap.counts_[layer][index]),
            }
        summary = {}
        for how, fn in (("mean", np.mean), ("median", np.median)):
            summary[how] = {
                key: (float(fn(values)) if values else None)
                for key in ("morans_i", "morans_i_permuted", "morans_i_z", "blur_error_auc",
                            "localization")
                for values in [[g[key] for g in groups.values() if g[key] is not None]]
            }
        result[layer] = {"groups": groups, **summary,
                         "n_topographic": sum(g["topographic"] for g in groups.values()),
                         "n_maps": len(groups)}
    return result


def layer_verdicts(metrics, threshold=3.0):
    """One line per topographic layer saying whether its maps are topographic.

    Reads the demo's metrics: the kernel topography z-score (filter order against permuted
    orders) and the GradNAP maps' Moran's I z-scores (each raw map against permuted layouts of
    its values). A layer's maps count as topographic when their median z reaches
    ``threshold``.

    Returns:
        ``{layer: line}``.
    """
    lines = {}
    for layer, topo in metrics["topography"].items():
        kernel = "ordered" if topo["z"] >= threshold else "not ordered"
        text = f"{layer}: kernel S {topo['score']:.3f} (z {topo['z']:.1f}, {kernel})"
        gn = metrics.get("gradnap", {}).get(layer)
        if gn and gn["n_maps"]:
            median_z = gn["median"]["morans_i_z"]
            verdict = ("topographic" if median_z is not None and median_z >= threshold
                       else "not topographic")
            text += (f"; GradNAP maps {verdict}: {gn['n_topographic']} of {gn['n_maps']} "
                     f"smoother than chance (z >= {threshold:g}), median Moran's I "
                     f"{_fmt(gn['median']['morans_i'], '.3f')}, median z "
                     f"{_fmt(median_z, '.1f')}")
        lines[layer] = text
    return lines


def _fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def metrics_table(metrics):
    """The per-layer metrics as a Markdown table (also printed at the end of the demo)."""
    lines = [
        "| layer | grid | topography S | permuted S | z | Moran's I | permuted I | "
        "blur-error AUC | localisation | correlation falloff (z) | dead |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layer, topo in metrics["topography"].items():
        gn = metrics["gradnap"].get(layer, {}).get("mean", {})
        act = metrics.get("activity", {}).get(layer)
        falloff = "n/a" if act is None else f"{act['falloff']:+.3f} ({act['falloff_z']:+.1f})"
        dead = "n/a" if act is None else f"{act['dead_share']:.0%}"
        lines.append(
            f"| {layer} | {topo['grid'][0]}x{topo['grid'][1]} | {topo['score']:.3f} | "
            f"{topo['null_mean']:+.3f} ± {topo['null_std']:.3f} | {topo['z']:.1f} | "
            f"{_fmt(gn.get('morans_i'), '.3f')} | {_fmt(gn.get('morans_i_permuted'), '+.3f')} | "
            f"{_fmt(gn.get('blur_error_auc'), '.3f')} | {_fmt(gn.get('localization'), '.3f')} | "
            f"{falloff} | {dead} |"
        )
    return "\n".join(lines)


def _save(fig, path, dpi=110):
    fig.savefig(path, dpi=dpi)
    return path


def _plot_history(history, path, scores=None, score_epochs=None):
    from keras_topomap.visualization import new_figure

    fig = new_figure(figsize=(7.5, 2.8))
    left, right = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for key, style in (("loss", "-"), ("val_ctc_loss", "--"), ("train_ctc_loss", "--")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            left.plot(epochs, values, style, marker="o", markersize=3, label=key)
    left.set_xlabel("epoch")
    left.set_ylabel("CTC loss")
    left.legend(fontsize=7)
    for key in ("val_cer", "train_cer"):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            right.plot(epochs, values, marker="o", markersize=3, label=key)
    right.set_xlabel("epoch")
    right.set_ylabel("character error rate")
    right.legend(fontsize=7, loc="upper left")
    if scores:
        twin = right.twinx()
        for name, values in scores.items():
            twin.plot(np.asarray(score_epochs) + 1, values, ":", marker=".", linewidth=0.8,
                      label=name)
        twin.set_ylabel("kernel topography score (dotted)", fontsize=8)
        twin.legend(fontsize=5, ncol=2, loc="upper right")
    return _save(fig, path)


def run_demo(
    out="outputs",
    config="small",
    minutes=10.0,
    data="bundled",
    model=None,
    phonemes=(),
    seed=0,
    strength=0.01,
    norm="batch",
    augment=True,
    dropout=0.1,
    learning_rate=1e-3,
    ema_momentum=0.995,
    layout="fitted",
    layer=None,
    epochs=200,
    steps=200,
    max_train=None,
    max_eval=None,
    n_permutations=100,
    target="prediction",
    all_wavs=False,
    l2=0.05,
    verbose=1,
):
    """Runs the demo (see the module docstring) and writes its outputs to ``out``.

    Args:
        out: output folder (created; a previous demo's training run in ``out/training`` is
            replaced).
        config: model size for training, ``"tiny"``, ``"small"`` or ``"paper"``.
        minutes: training time budget in minutes.
        data: training/test data, as ``keras-topomap train --data`` (``"bundled"``,
            ``"librispeech:DIR"``, ``"timit:DIR"``, ``"textgrid:AUDIO_DIR,TEXTGRID_DIR"``, ...).
        model: path of a saved trained ``.keras`` model: skip training and analyse it.
        phonemes: phonemes for Figure 1B in addition to /AE/, /AA/ and /T/.
        seed: seeds training, data subsets and the optimal inputs.
        strength: strength of the topographic regularizer.
        norm: normalization between each hidden convolution and its ReLU (``"batch"``,
            ``"layer"`` or ``None``; :func:`keras_topomap.models.wav2letter`). The default,
            with ``augment`` and ``dropout``, is the recipe of the shipped pretrained models
            (docs/results.md): no filter dies, and it recognizes better in the same epochs.
        augment: SpecAugment-style time and frequency masks in training.
        dropout: dropout rate after each hidden convolution.
        learning_rate: Adam's (constant) learning rate.
        ema_momentum: validate, keep and test a moving average of the weights with this
            momentum (``TrainConfig.ema_momentum``; ``None``: the raw weights). The default
            averages over about the last 200 steps, 4 epochs of the bundled corpus
            (docs/results.md: 1.7 points of test CER at 80 epochs, the training unchanged).
        layout: ``"fitted"`` lays the trained filters out with
            :class:`~keras_topomap.layout.FilterLayout`, fitted on the GradNAP profiles of the
            training utterances, and analyses the equivalent reordered model
            (:func:`~keras_topomap.layout.reorder_filters`: same outputs); the maps are then
            read on the test utterances, which the layout never saw. ``"trained"`` keeps the
            order the filters had in training.
        layer: the layer of Figure 1B (default ``conv_2``, the paper's second layer).
        epochs: maximum training epochs (the time budget usually stops training first).
        steps: optimisation steps per optimal input.
        max_train: use this many training utterances (quick runs).
        max_eval: use this many validation / test utterances (quick runs).
        n_permutations: permutations of the kernel topography z-scores.
        target: GradNAP target, ``"prediction"`` or ``"ctc_loss"``; ``"prediction"`` falls back
            to ``"ctc_loss"`` for a model that predicts only blanks.
        all_wavs: write the sound of every single-filter optimal input of each region (default:
            the joint input and the region centre's filter; each takes a few seconds).
        l2: L2 decay per optimisation step of the optimal inputs. Stronger than the package
            default (1e-4): the layers are piecewise linear, so a barely decayed ascent drives
            half of the input to the clipping bounds (+-3) and gives blocky images that also
            take minutes to sonify; 0.05 keeps them within the data's range (on a 15-minute
            small model: 5% of values at the bounds, 70% of the activation).
        verbose: 1 prints stages and progress bars; 0 is silent.

    Returns:
        dict with the paths written (``index``, ``figure1``, ``figure1a``, ``figure1b``,
        ``dendrogram``, ``animation``, ``metrics``, ``wavs``), ``metrics`` (the metrics.json
        content) and ``seconds`` per stage.

    Raises:
        ValueError: for bad options (unknown phoneme, config, data spec, model file, layer).
    """
    wanted = parse_phonemes([*DEFAULT_PHONEMES, *phonemes])
    checks.choice(target, "target", ("prediction", "ctc_loss"))
    checks.choice(layout, "layout", LAYOUTS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    started = time.perf_counter()

    with _timed(seconds, "data"):
        _stage(1, f"Loading data ({data})", verbose)
        train_config, loaded, sets = _load_data(
            out, data, model, config=config, seed=seed, strength=strength, norm=norm,
            augment=augment, dropout=dropout, learning_rate=learning_rate,
            ema_momentum=ema_momentum, epochs=epochs,
            max_train=max_train, max_eval=max_eval, n_permutations=n_permutations,
            verbose=verbose,
        )
    with _timed(seconds, "training"):
        trained = _train_or_load(out, train_config, sets, loaded, config, minutes, model,
                                 verbose)
    net = trained.net
    grids, fig_layer = _figure_layer(net, layer)
    names = list(grids)
    test_set = sets[2]
    layout_info = {"kind": "trained"}
    if layout == "fitted":
        with _timed(seconds, "layout"):
            net, layout_info = _fit_layout(net, names, sets[0], verbose)
    with _timed(seconds, "gradnap"):
        _stage(3, f"GradNAP of {len(PHONES_39)} phonemes on {len(names)} layers "
                  f"({len(test_set)} test utterances)", verbose)
        gradnap, target, shown, skipped = _phoneme_gradnap(net, names, test_set, target,
                                                           fig_layer, wanted, out, verbose)
    with _timed(seconds, "optimal_inputs"):
        _stage(4, f"Optimal inputs of the most responsive {fig_layer} region of "
                  f"{', '.join('/' + p.upper() + '/' for p in shown)}", verbose)
        feature_config = train_config.feature_config()
        inputs = _optimal_inputs(net, gradnap, fig_layer, shown, steps=steps, seed=seed, l2=l2,
                                 verbose=verbose)
        wavs = _write_wavs(out, inputs, shown, grids[fig_layer], feature_config, all_wavs,
                           seed, verbose)
    with _timed(seconds, "figures"):
        _stage(5, "Drawing the figures", verbose)
        files, animations = _draw_figures(out, net, gradnap, grids, fig_layer, shown, inputs,
                                          feature_config, trained, verbose)
    with _timed(seconds, "metrics"):
        _stage(6, "Metrics and index.html", verbose)
        metrics = _demo_metrics(
            out, net, gradnap, grids, test_set, files, n_permutations=n_permutations,
            seed=seed, settings={
                "figure_layer": fig_layer,
                "phonemes": shown,
                "phonemes_without_frames": skipped,
                "regions": {p: {"center": list(r.center), "filters": [int(f) for f in r.filters],
                                "value": r.value} for p, r in zip(shown, inputs.regions)},
                "gradnap_target": target,
                "analysed_weights": trained.analyzed,
                "layout": layout_info,
                "n_test_utterances": len(test_set),
                "model": str(model) if model is not None else str(trained.run["model_path"]),
                "config": config if model is None else _run_config(trained.run),
                "data": data,
                "backend": keras.backend.backend(),
            }, training=trained.run,
        )
        table = metrics_table(metrics)
    seconds["total"] = time.perf_counter() - started
    index = _write_report(out, metrics, table, seconds, files, wavs, animations, trained.history)
    if verbose:
        _print_summary(metrics, table, seconds, out, index)
    return {
        "index": str(index),
        "figure1": str(out / "figure1.png"),
        "figure1a": str(out / "figure1a.png"),
        "figure1b": str(out / "figure1b.png"),
        "dendrogram": str(out / "dendrogram.png"),
        "animation": str(out / "maps.gif") if "animation" in files else None,
        "metrics": str(out / "metrics.json"),
        "wavs": {p: {k: str(out / v) for k, v in f.items()} for p, f in wavs.items()},
        "files": files,
        "seconds": seconds,
        "metrics_data": metrics,
    }


@contextlib.contextmanager
def _timed(seconds, key):
    """Adds the wall-clock seconds of the block to ``seconds[key]``."""
    tick = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = time.perf_counter() - tick


# ---- 1. data


def _run_config(run):
    """The model configuration a saved training run names (None: not known)."""
    config = (run or {}).get("config")
    return config.get("config") if isinstance(config, dict) else None


def _load_data(out, data, model, verbose, **settings):
    """The run's :class:`~keras_topomap.train.TrainConfig`, the ``--model`` (None: train one)
    and the ``(train, validation, test)`` feature sets, checked for phone alignments."""
    from keras_topomap import train as train_lib

    overrides = _feature_settings(model) if model is not None else {}
    train_config = train_lib.TrainConfig(
        data=data, max_minutes=None, out=str(out / "training"), tensorboard=False,
        verbose=verbose, pad_to_multiple=_PAD, **settings, **overrides,
    )
    loaded = load_keras_model(model, "--model") if model is not None else None
    if loaded is not None and not overrides:
        n_features = int(loaded.input_shape[-1])
        train_config = train_lib.TrainConfig(**{**train_config.to_dict(), "n_mels": n_features})
    train_set, val_set, test_set = train_lib.load_data(train_config)
    if not any(np.any(np.asarray(lab) >= 0) for lab in test_set.frame_labels):
        # e.g. LibriSpeech read without alignments: training works, GradNAP would be all empty
        raise ValueError(
            f"The test utterances of --data {data!r} carry no phone alignments, so the demo "
            "cannot compute phoneme GradNAPs. Use aligned data: textgrid:AUDIO_DIR,TEXTGRID_DIR "
            "(Montreal Forced Aligner output for LibriSpeech), timit:DIR or the bundled corpus."
        )
    if verbose:
        print(f"training {len(train_set)}, validation {len(val_set)}, test {len(test_set)} "
              "utterances")
    return train_config, loaded, (train_set, val_set, test_set)


# ---- 2. training with the map animation


class _Trained(NamedTuple):
    net: Any  # the model analysed
    run: Any  # train()'s result (a given model: its run's metrics.json, or None)
    history: list  # per-epoch logs (empty for a given model)
    scores: tuple  # (TopoMapCallback.scores_, .epochs_) or (None, None)
    analyzed: str  # which weights are analysed


#: what the demo quotes of a training run (train()'s result or its metrics.json)
_RUN_KEYS = ("epochs_done", "training_seconds", "stopped_by", "best_epoch", "parameters",
             "n_train")


def saved_training_run(model_path):
    """The ``metrics.json`` that ``keras-topomap train`` wrote beside a saved model (the
    shipped pretrained models carry theirs), or None where there is none or it lacks the
    recognizer's results: the demo then quotes the run's epochs and test CER for a model it
    did not train.

    Example:
        >>> saved_training_run("no/such/model.keras") is None
        True
    """
    path = Path(model_path).with_name("metrics.json")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    test = run.get("test") if isinstance(run, dict) else None
    if not isinstance(test, dict) or any(k not in run for k in _RUN_KEYS) or any(
            k not in test for k in ("cer", "wer", "loss")):
        return None
    return run


def _train_or_load(out, train_config, sets, loaded, config, minutes, model, verbose):
    """Trains the recognizer for ``minutes`` while a TopoMapCallback records the maps, or
    takes the loaded ``--model``."""
    if loaded is not None:
        _stage(2, f"Using the trained model {model} (no training)", verbose)
        return _Trained(loaded, saved_training_run(model), [], (None, None), "as saved")
    from keras_topomap import train as train_lib
    from keras_topomap.callbacks import TopoMapCallback
    from keras_topomap.datasets import SpeechBatches

    _stage(2, f"Training the {config} topographic recognizer for up to {minutes:g} min",
           verbose)
    run_dir, topomap_dir = out / "training", out / "topomaps"
    if (run_dir / "state.json").exists():
        if verbose:
            print(f"replacing the previous demo training run in {run_dir}")
        shutil.rmtree(run_dir)
    if topomap_dir.exists():
        shutil.rmtree(topomap_dir)
    probe = SpeechBatches(sets[1], batch_size=16, mode="all", shuffle=False)[0]
    callback = TopoMapCallback(
        probe["features"], groups=probe["frame_labels"], group_names=PHONES_39,
        probe_lengths=probe["feature_lengths"], out_dir=topomap_dir, fps=3,
    )
    limit = TrainingTimeLimit(60.0 * float(minutes))
    training = train_lib.train(train_config, data=sets, callbacks=[callback, limit])
    if limit.stopped:
        training["stopped_by"] = "time budget"
    # train() restores the epoch of the best validation CER (ties: lower validation loss)
    net = keras.saving.load_model(training["model_path"], compile=False)
    return _Trained(net, training, training["history"], (callback.scores_, callback.epochs_),
                    f"best validation epoch ({training['best_epoch']})")


def _figure_layer(net, layer):
    """``({name: grid}, figure layer)``: the model's topographic layers and the one of
    Figure 1B (``layer``, else ``conv_2``, else the second)."""
    from keras_topomap.regularizers import topographic_layers

    grids = {name: info["grid"] for name, info in topographic_layers(net).items()}
    if not grids:
        raise ValueError(
            f"Model {net.name!r} has no topographic layers (no TopographicRegularizer); the demo "
            "needs a model trained with topographic=True."
        )
    names = list(grids)
    fig_layer = layer or ("conv_2" if "conv_2" in grids else names[min(1, len(names) - 1)])
    if fig_layer not in grids:
        raise ValueError(f"--layer must be a topographic layer {names}. Received: {fig_layer!r}")
    return grids, fig_layer


# ---- 3. GradNAP of every phoneme on every topographic layer


#: ``run_demo(layout=...)``: filters laid out after training, or in their training order
LAYOUTS = ("fitted", "trained")


def _fit_layout(net, names, train_set, verbose):
    """The model with its filters laid out by GradNAP profiles of the training utterances
    (:mod:`keras_topomap.layout`), and what the demo reports about it."""
    from keras_topomap.datasets import SpeechBatches
    from keras_topomap.gradnap import GradNAP
    from keras_topomap.layout import fit_layouts, reorder_filters

    if verbose:
        print(f"fitting filter layouts on the GradNAPs of {len(train_set)} training utterances")
    batches = SpeechBatches(train_set, batch_size=8, mode="all", shuffle=False,
                            pad_to_multiple=_PAD)
    def fit_gradnap(target):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no frames.*")
            return GradNAP(net, layers=names, group_names=PHONES_39, target=target,
                           time_bucket=_PAD, verbose=verbose).fit(batches)

    fitted = fit_gradnap("prediction")
    if fitted.target_total_ == 0:  # a model that predicts only blanks, as in _phoneme_gradnap
        fitted = fit_gradnap("ctc_loss")
    try:
        layouts = fit_layouts(fitted, exclude=("sil",))
    except ValueError as e:  # e.g. profiles that do not vary: nothing to lay out by
        warnings.warn(f"The demo keeps the trained filter order: {e}", stacklevel=3)
        return net, {"kind": "trained", "why": str(e)}
    info = {"kind": "fitted", "n_train_utterances": len(train_set),
            "train_morans_i": {n: {"fitted": lay.score_, "trained": lay.initial_score_}
                               for n, lay in layouts.items()}}
    return reorder_filters(net, layouts), info


def _phoneme_gradnap(net, names, test_set, target, fig_layer, wanted, out, verbose):
    """GradNAP of every phoneme over the test set, saved to ``out/gradnap``; returns it, the
    target used and the ``wanted`` phonemes with and without test frames."""
    from keras_topomap.datasets import SpeechBatches
    from keras_topomap.gradnap import GradNAP

    batches = SpeechBatches(test_set, batch_size=8, mode="all", shuffle=False,
                            pad_to_multiple=_PAD)

    def fit_gradnap(target):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fitted = GradNAP(net, layers=names, group_names=PHONES_39, target=target,
                             time_bucket=_PAD, verbose=verbose).fit(batches)
        return fitted, caught

    gradnap, caught = fit_gradnap(target)
    if target == "prediction" and gradnap.target_total_ == 0:
        if verbose:
            print("The model predicts only blanks; GradNAP uses target='ctc_loss' instead.")
        target = "ctc_loss"
        gradnap, caught = fit_gradnap(target)
    counts = gradnap.counts_[fig_layer]
    absent = [PHONES_39[i] for i in np.nonzero(counts == 0)[0]]
    if verbose and absent:
        print(f"phonemes without test frames (no GradNAP): {absent}")
    # one line above replaces the per-layer "no frames" warnings
    for w in caught:
        if "no frames" not in str(w.message).lower():
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    gradnap.save(out / "gradnap")
    shown = [p for p in wanted if p not in absent]
    skipped = [p for p in wanted if p in absent]
    if not shown:
        raise ValueError(f"None of the phonemes {wanted} occurs in the test data.")
    return gradnap, target, shown, skipped


# ---- 4. optimal inputs of the most responsive regions, and their sound


class _Inputs(NamedTuple):
    regions: list  # per phoneme: its most responsive Region of the figure layer
    singles: list  # per phoneme: one optimal input per filter of the region
    joints: list  # per phoneme: the joint optimal input of the region


def _optimal_inputs(net, gradnap, fig_layer, shown, steps, seed, l2, verbose):
    """Single-filter and joint optimal inputs of each phoneme's most responsive region."""
    from keras_topomap.optimal_inputs import OptimalInputs, optimal_inputs

    found = _Inputs([], [], [])
    for phoneme in shown:
        region = gradnap.most_responsive_region(fig_layer, phoneme)
        single = OptimalInputs(net, fig_layer, region=region, steps=steps, seed=seed, l2=l2,
                               progress=bool(verbose)).fit()
        joint = optimal_inputs(net, fig_layer, region=region, joint=True, steps=steps, seed=seed,
                               l2=l2, progress=bool(verbose))
        found.regions.append(region)
        found.singles.append(single.inputs_)
        found.joints.append(joint[0])
    return found


def _write_wavs(out, inputs, shown, grid, feature_config, all_wavs, seed, verbose):
    """The sound of the optimal inputs under ``out/wav``; returns ``{phoneme: {"joint" or
    filter: relative path}}``.

    Inverting features (NNLS + Griffin-Lim) takes seconds per input: the joint input and the
    region centre's filter by default, every filter of the region with ``all_wavs``.
    """
    from keras_topomap.sonify import write_wav

    (out / "wav").mkdir(exist_ok=True)
    wavs, sounds = {}, []
    for phoneme, region, single, joint in zip(shown, *inputs):
        center = region.center[0] * grid[1] + region.center[1]
        wavs[phoneme] = {"joint": f"wav/{phoneme}_joint.wav"}
        sounds.append((out / wavs[phoneme]["joint"], joint))
        for position, f in enumerate(int(f) for f in region.filters):
            if all_wavs or f == center:
                wavs[phoneme][f] = f"wav/{phoneme}_filter{f}.wav"
                sounds.append((out / wavs[phoneme][f], single[position]))
    bar = keras.utils.Progbar(len(sounds), unit_name="wav") if verbose else None
    for path, features in sounds:
        write_wav(path, features, feature_config, seed=seed)
        if bar is not None:
            bar.add(1)
    return wavs


# ---- 5. figures


def _draw_figures(out, net, gradnap, grids, fig_layer, shown, inputs, feature_config, trained,
                  verbose):
    """Every figure of the demo; returns ``({name: file name}, GIF animations of the maps)``."""
    from keras_topomap import visualization as vis

    names = list(grids)
    first = names[0]
    kernel = net.get_layer(first).kernel
    figure_names = ["figure1a", "figure1b", "figure1", "dendrogram", "gradnap_eeg",
                    *[f"optimal_inputs_{p}" for p in shown], *[f"gradnap_{n}" for n in names]]
    if trained.history:
        figure_names.append("training")
    bar = keras.utils.Progbar(len(figure_names), unit_name="figure") if verbose else None
    files = {}

    def done(name, path):
        files[name] = path.name
        if bar is not None:
            bar.add(1)

    regions, singles, joints = inputs
    # the first layer reads the features: its filter tiles get frame and mel-band axes
    on_input = len(kernel.shape) == 3 and int(kernel.shape[1]) == feature_config.n_features
    figure1a = {"layer": first, "feature_config": feature_config if on_input else None}
    figure1b = {"regions": regions, "feature_config": feature_config}
    done("figure1a", _save(vis.plot_filter_neighborhoods(kernel, grids[first], **figure1a),
                           out / "figure1a.png"))
    done("figure1b", _save(vis.plot_figure1b(gradnap, fig_layer, shown, singles, joints,
                                             **figure1b), out / "figure1b.png"))
    h, w = grids[fig_layer]
    combined = vis.new_figure(figsize=(max(10.0, 2.0 * len(shown) + 1.5),
                                       3.8 + 4.0 * h / w + 3.6))
    top, bottom = combined.subfigures(2, 1, height_ratios=[3.8, 4.0 * h / w + 3.6])
    vis.plot_filter_neighborhoods(kernel, grids[first], fig=top, **figure1a)
    top.text(0.0, 0.98, "A", fontsize=14, fontweight="bold", va="top")
    vis.plot_figure1b(gradnap, fig_layer, shown, singles, joints, fig=bottom, **figure1b)
    bottom.text(0.0, 0.98, "B", fontsize=14, fontweight="bold", va="top")
    done("figure1", _save(combined, out / "figure1.png", dpi=100))
    done("dendrogram", _save(vis.plot_gradnap_dendrogram(gradnap, fig_layer),
                             out / "dendrogram.png"))
    done("gradnap_eeg", _save(vis.plot_gradnap_eeg(gradnap, fig_layer, groups=shown),
                              out / "gradnap_eeg.png"))
    for phoneme, region, single, joint in zip(shown, regions, singles, joints):
        fig = vis.plot_optimal_inputs(single, region, joint, feature_config=feature_config,
                                      suptitle=f"/{phoneme.upper()}/: optimal inputs of the most "
                                      f"responsive {fig_layer} region")
        done(f"optimal_inputs_{phoneme}", _save(fig, out / f"optimal_inputs_{phoneme}.png"))
    for name in names:
        done(f"gradnap_{name}", _save(_phoneme_mosaic(vis, gradnap, name, grids[name]),
                                      out / f"gradnap_{name}.png", dpi=90))
    if trained.history:
        done("training", _plot_history(trained.history, out / "training.png", *trained.scores))
    topomap_dir = out / "topomaps"
    animations = sorted(p.name for p in topomap_dir.glob("*.gif")) if topomap_dir.is_dir() else []
    if f"{fig_layer}.gif" in animations:
        shutil.copyfile(topomap_dir / f"{fig_layer}.gif", out / "maps.gif")
        files["animation"] = "maps.gif"
    return files, animations


def _phoneme_mosaic(vis, gradnap, name, grid):
    """The smoothed GradNAP maps of every phoneme with frames on layer ``name``."""
    groups = np.nonzero(gradnap.counts_[name] > 0)[0]
    hh, ww = grid
    fig = vis.new_figure(figsize=(min(13.0, 1.1 * 8 * ww / hh + 1.5),
                                  1.1 * -(-len(groups) // 8) * 1.15 + 0.6))
    vis.plot_grid_mosaic(fig.add_subplot(), gradnap.maps(name, smooth=True)[groups],
                         raw=gradnap.maps(name)[groups],
                         titles=[f"/{PHONES_39[g].upper()}/" for g in groups], ncols=8,
                         label="GradNAP (smoothed)")
    fig.suptitle(f"GradNAP of every phoneme on {name} ({hh}x{ww}), smoothed", fontsize=9)
    return fig


# ---- 6. metrics and the report


def _demo_metrics(out, net, gradnap, grids, test_set, files, n_permutations, seed, settings,
                  training):
    """``metrics.json``'s content: kernel topography, activity, GradNAP map metrics, the run's
    ``settings``, the recognizer's results (when trained) and the per-layer verdicts; draws the
    activity correlation figure into ``files``."""
    from keras_topomap import train as train_lib
    from keras_topomap import visualization as vis
    from keras_topomap.datasets import SpeechBatches

    topography = train_lib.layer_topography(net, grids, n_permutations, seed)
    activity = train_lib.layer_activity(
        net, SpeechBatches(test_set, batch_size=16, shuffle=False, pad_to_multiple=_PAD),
        grids, seed=seed,
    )
    files["activity_correlation"] = _save(
        vis.plot_correlation_by_distance(activity), out / "activity_correlation.png"
    ).name
    metrics = {
        "topography": topography,
        "activity": activity,
        "gradnap": gradnap_metrics(gradnap, seed=seed),
        **settings,
    }
    if training is not None:
        metrics["recognizer"] = {key: training[key] for key in _RUN_KEYS}
        # a given model's numbers are its training run's, on that run's test split
        metrics["recognizer"]["source"] = (
            "the saved model's training run" if settings["analysed_weights"] == "as saved"
            else "this demo's training")
        metrics["recognizer"].update(
            {f"test_{k}": training["test"][k] for k in ("cer", "wer", "loss")}
        )
        lm = training["test"].get("language_model")
        if lm:  # the same test split, decoded with the run's character LM
            metrics["recognizer"]["language_model"] = {
                k: lm[k] for k in ("cer", "wer", "order", "lm_weight", "length_bonus")}
    metrics["verdicts"] = layer_verdicts(metrics)
    return metrics


def _write_report(out, metrics, table, seconds, files, wavs, animations, history):
    """``metrics.json``, ``metrics.md`` and ``index.html``; returns the index path."""
    from keras_topomap import report

    metrics["seconds"] = seconds
    write_run_json(out / "metrics.json", metrics)
    (out / "metrics.md").write_text(table + "\n")
    return report.write_index(
        out, metrics=metrics, table=table, files=files, wavs=wavs,
        animations=[f"topomaps/{a}" for a in animations], history=history,
    )


def _print_summary(metrics, table, seconds, out, index):
    print("\n" + table)
    print("\nIs each layer topographic? (each raw map against permuted layouts)")
    for line in metrics["verdicts"].values():
        print(f"  {line}")
    if "recognizer" in metrics:
        rec = metrics["recognizer"]
        print(f"\nrecognizer: test CER {rec['test_cer']:.3f}, WER {rec['test_wer']:.3f} after "
              f"{rec['epochs_done']} epochs ({rec['training_seconds'] / 60:.1f} min, stopped "
              f"by {rec['stopped_by']}; from {rec['source']})")
        if rec.get("language_model"):
            lm = rec["language_model"]
            print(f"  decoded with a {lm['order']}-gram character LM of the training "
                  f"transcripts: test CER {lm['cer']:.3f}, WER {lm['wer']:.3f}")
    print(f"\nDone in {seconds['total'] / 60:.1f} min. Results: {out.resolve()}\n"
          f"Open {index.resolve()} in a browser.")


def build_parser():
    """The demo's command line (``python -m keras_topomap.demo --help``)."""
    from keras_topomap import models

    p = argparse.ArgumentParser(
        prog="keras-topomap demo",
        description="Train the topographic speech recognizer, compute GradNAPs of all phonemes "
        "and draw the paper's Figure 1 (writes an index.html). --synthetic runs the older "
        "synthetic demo instead (keras_topomap.synthetic_demo).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default="small", choices=sorted(models.CONFIGS),
                   help="model size to train")
    p.add_argument("--max-minutes", "--minutes", dest="minutes", type=float, default=10.0,
                   help="training time budget in minutes")
    p.add_argument("--data", default="bundled",
                   help="bundled, bundled-voice, tts:DIR, librispeech:DIR, timit:DIR "
                   "or textgrid:AUDIO_DIR,TEXTGRID_DIR (as keras-topomap train --data)")
    p.add_argument("--model", default=None,
                   help="a trained .keras model: skip training and analyse it")
    p.add_argument("--pretrained", nargs="?", const="small", default=None, metavar="NAME",
                   help="skip training and analyse a model shipped with the package: small "
                   "(the default constraint; the default NAME) or another topographic one of "
                   "keras_topomap.models.available_pretrained()")
    p.add_argument("--phonemes", nargs="*", default=[],
                   help="phonemes for Figure 1B besides AE, AA and T (e.g. --phonemes s iy)")
    p.add_argument("--layer", default=None, help="layer of Figure 1B (None: conv_2)")
    p.add_argument("--out", default="outputs", help="output folder")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the weights, the split and the batch order")
    p.add_argument("--strength", type=float, default=0.01,
                   help="topographic regularizer strength")
    p.add_argument("--norm", default="batch", choices=("batch", "layer", "none"),
                   help="normalization between each hidden convolution and its ReLU (the "
                   "shipped models' recipe: batch)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train without the SpecAugment-style masks")
    p.add_argument("--dropout", type=float, default=0.1,
                   help="dropout rate after each hidden convolution")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--ema-momentum", type=float, default=0.995,
                   help="validate, keep and test a moving average of the weights with this "
                   "momentum (0: the raw weights)")
    p.add_argument("--layout", default="fitted", choices=LAYOUTS,
                   help="fitted: lay the filters out by their GradNAPs on the training "
                   "utterances before the analysis (same outputs); trained: keep their order")
    p.add_argument("--epochs", type=int, default=200,
                   help="maximum epochs (the time budget usually stops first)")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps per optimal input")
    p.add_argument("--max-train", type=int, default=None,
                   help="use only N training utterances (None: all)")
    p.add_argument("--max-eval", "--max-utterances", dest="max_eval", type=int, default=None,
                   help="use only N validation and N test utterances (None: all)")
    p.add_argument("--target", default="prediction", choices=("prediction", "ctc_loss"),
                   help="GradNAP target")
    p.add_argument("--l2", type=float, default=0.05,
                   help="L2 decay of the optimal inputs per step")
    p.add_argument("--all-wavs", action="store_true",
                   help="write a WAV for every filter of each region, not only the joint input "
                   "and the centre filter")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1),
                   help="0: quiet, 1: progress bars and messages")
    p.add_argument("--synthetic", action="store_true",
                   help="run the synthetic demo (keras_topomap.synthetic_demo) instead")
    return p


def main(argv=None):
    """``make demo`` / ``python -m keras_topomap.demo`` / ``keras-topomap demo``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--synthetic" in argv:
        from keras_topomap import synthetic_demo

        return synthetic_demo.main([a for a in argv if a != "--synthetic"])
    args = build_parser().parse_args(argv)
    try:
        if args.pretrained is not None:
            from keras_topomap import models

            if args.model is not None:
                raise ValueError("--model and --pretrained exclude each other.")
            args.model = str(models.pretrained_dir(args.pretrained) / "model.keras")
        run_demo(
            out=args.out, config=args.config, minutes=args.minutes, data=args.data,
            model=args.model, phonemes=args.phonemes, seed=args.seed, strength=args.strength,
            norm=None if args.norm == "none" else args.norm, augment=args.augment,
            dropout=args.dropout, learning_rate=args.learning_rate,
            ema_momentum=args.ema_momentum or None, layout=args.layout,
            layer=args.layer,
            epochs=args.epochs, steps=args.steps, max_train=args.max_train,
            max_eval=args.max_eval, target=args.target, all_wavs=args.all_wavs,
            l2=args.l2, verbose=args.verbose,
        )
    except (ValueError, OSError) as e:
        print(f"keras-topomap demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
