"""What ``keras-topomap train`` prints before the first epoch and after the last.

The start banner names the data (utterances and feature frames of each split), the model's
parameter count, the layers whose maps are logged (with their grids), the output folder and the
TensorBoard command that shows the run; the end banner names every file the run wrote and what
it holds. :func:`keras_topomap.train.train` prints both unless ``verbose=0``.

Example:

>>> print(start_banner(config, (train_set, val_set, test_set), model, {"conv_1": (4, 4)},
...                    "runs/small/logs"))
"""

from __future__ import annotations

import shlex
from pathlib import Path

__all__ = ["end_banner", "start_banner"]


def _frames(feature_set):
    return int(sum(int(n) for n in feature_set.lengths))


def start_banner(config, sets, model, watched, log_dir):
    """The lines printed before training.

    Args:
        config: the run's :class:`~keras_topomap.train.TrainConfig`.
        sets: ``(train, validation, test)`` feature sets.
        model: the built (or resumed) model.
        watched: ``{layer: (H, W)}`` of the layers whose maps are logged; ``None`` when maps
            are off (``maps=False`` or no TensorBoard logs).
        log_dir: the TensorBoard folder, or ``None`` without TensorBoard logs.
    """
    out = Path(config.out)
    what = "resuming" if config.resume else "training"
    lines = [f"keras-topomap train: {what} the {config.config!r} recognizer in {out}"]
    for name, subset in zip(("train", "validation", "test"), sets):
        plural = "" if len(subset) == 1 else "s"
        lines.append(f"  {name + ' data':<16}{len(subset):>7,} utterance{plural} "
                     f"{_frames(subset):>11,} frames")
    lines.append(f"  {'parameters':<16}{int(model.count_params()):>7,}")
    if watched:
        grids = ", ".join(f"{name} {h}x{w}" for name, (h, w) in watched.items())
        lines.append(f"  {'maps':<16}{grids}")
    elif watched is not None:
        lines.append(f"  {'maps':<16}none: the model has no topographic layer (no grid to map)")
    elif config.maps and log_dir is None:
        lines.append(f"  {'maps':<16}off (they are TensorBoard images; TensorBoard logs are off)")
    else:
        lines.append(f"  {'maps':<16}off (--no-maps)")
    lines.append(f"  {'output folder':<16}{out}")
    if log_dir is None:
        lines.append(f"  {'TensorBoard':<16}off")
    else:
        lines.append(f"  {'TensorBoard':<16}tensorboard --logdir {shlex.quote(str(log_dir))}")
    return "\n".join(lines)


def end_banner(folder, state, restored, maps_logged, log_dir, phones=False):
    """The lines printed after training: every written file and what it holds.

    Args:
        folder: where the files were written.
        state: the run's state (``epochs_done``, ``best_epoch``).
        restored: whether ``model.keras`` holds the best-validation weights (``best.keras``
            existed); otherwise it holds the last epoch's.
        maps_logged: whether the maps went to ``log_dir/maps``.
        log_dir: the TensorBoard folder, or ``None`` without TensorBoard logs.
        phones: whether the maps include one per phone.
    """
    folder = Path(folder)
    last, best = state["epochs_done"], state["best_epoch"]
    if restored:
        held = f"the weights of the best validation CER (epoch {best} of {last})"
    else:
        held = f"the weights of the last epoch ({last}; no best validation epoch was kept)"
    rows = [
        ("model.keras", f"{held}: the model to use"),
        ("best.keras", f"the same weights (epoch {best}), as training kept them")
        if restored else None,
        ("checkpoint.keras", f"the last epoch ({last}) with the optimizer state, for --resume"),
        ("state.json", "epochs done, history, early-stopping and time state (--resume)"),
        ("config.json", "the run's settings and feature config"),
        ("metrics.json", "test and validation CER, WER, loss; topography per layer; history"),
    ]
    if log_dir is not None:
        log_dir = Path(log_dir)
        rows.append((f"{log_dir.name}/", "TensorBoard: loss, learning rate (train/); "
                                         "CER, WER, CTC loss (validation/)"))
        if maps_logged:
            tags = "topomap/<layer>" + (", nap/<layer>/<phone>" if phones else "")
            rows.append((f"{log_dir.name}/maps/", f"TensorBoard images of every epoch's maps: "
                                                  f"{tags}"))
    width = max(len(row[0]) for row in rows if row) + 2
    lines = [f"keras-topomap train: wrote {folder}"]
    lines += [f"  {name:<{width}}{text}" for name, text in filter(None, rows)]
    if log_dir is not None:
        lines.append(f"  watch it: tensorboard --logdir {shlex.quote(str(log_dir))}")
    return "\n".join(lines)
