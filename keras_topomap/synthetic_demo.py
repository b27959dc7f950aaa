"""The synthetic demo: does the topographic constraint order a layer's filters?

Trains the same small Conv1D network twice on a synthetic sequence-labelling task -- once with
:class:`~keras_topomap.TopographicRegularizer` on its hidden convolutions, once without -- and
prints, for every hidden layer, the kernel topography score of each run next to the score of a
random permutation of the same filters (the "no topography" baseline, with its z-score).

The task: each sequence is a chain of segments; every segment is a noisy copy of one of
``n_classes`` random prototype patterns (a "phoneme"), and the network labels every frame with
its segment's class. It is small enough to train in about a minute on two CPU cores and needs no
speech data. It was the package's first demo; the main demo (:mod:`keras_topomap.demo`) now
trains the speech recognizer and draws the paper's figures.

Run it with ``python -m keras_topomap.synthetic_demo [--epochs N] [--strength S]``,
``python -m keras_topomap.demo --synthetic`` or ``make demo ARGS=--synthetic``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

__all__ = [
    "make_sequence_task", "build_conv_model", "run_synthetic_demo", "format_results", "main",
]


def make_sequence_task(
    n_sequences=512,
    length=96,
    n_features=12,
    n_classes=12,
    segment=(4, 12),
    noise=1.5,
    seed=0,
    sample_seed=0,
):
    """Synthetic frame-labelling data.

    ``seed`` fixes the task (the class prototypes); ``sample_seed`` draws the sequences, so a
    validation set is the same task with another ``sample_seed``.

    Returns:
        ``(x, y)``: x float32 ``(n_sequences, length, n_features)``, y int32
        ``(n_sequences, length)`` frame classes.
    """
    task = np.random.default_rng(seed)
    prototypes = task.normal(size=(n_classes, n_features))
    # each prototype also has a slow temporal shape so that filters need context
    ramps = np.sin(np.linspace(0, np.pi, 16))[:, None] * task.normal(
        size=(n_classes, 1, n_features)
    )
    rng = np.random.default_rng([seed, sample_seed])
    lengths = rng.integers(segment[0], segment[1] + 1, size=(n_sequences, length))
    classes = rng.integers(0, n_classes, size=(n_sequences, length))
    # segment id of every frame: cumulative segment lengths, vectorised over sequences
    bounds = np.cumsum(lengths, axis=1)
    frame = np.arange(length)
    seg_index = (bounds[:, None, :] <= frame[None, :, None]).sum(axis=2)
    y = np.take_along_axis(classes, seg_index, axis=1)
    seg_start = np.where(
        seg_index > 0, np.take_along_axis(bounds, np.maximum(seg_index - 1, 0), 1), 0
    )
    position = np.clip(frame[None, :] - seg_start, 0, 15)
    x = (
        prototypes[y]
        + ramps[y, position]
        + noise * rng.normal(size=(n_sequences, length, n_features))
    )
    return x.astype("float32"), y.astype("int32")


def build_conv_model(
    n_features=12,
    n_classes=12,
    filters=64,
    width=5,
    n_hidden=3,
    topographic=True,
    strength=0.01,
    seed=0,
):
    """A small fully convolutional frame classifier; hidden convs on square grids if topographic."""
    import keras

    from keras_topomap import TopographicRegularizer

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, n_features), name="features")
    x = inputs
    for i in range(n_hidden):
        reg = TopographicRegularizer(strength=strength) if topographic else None
        x = keras.layers.Conv1D(
            filters,
            width,
            padding="same",
            activation="relu",
            kernel_regularizer=reg,
            name=f"conv_{i + 1}",
        )(x)
    outputs = keras.layers.Conv1D(n_classes, 1, name="logits")(x)
    return keras.Model(inputs, outputs, name="topographic" if topographic else "unconstrained")


def run_synthetic_demo(
    epochs=12, strength=0.01, batch_size=32, n_permutations=200, seed=0, verbose=1
):
    """Trains both models and returns ``{run: {layer: TopographyResult}}`` plus accuracies."""
    import keras

    from keras_topomap.metrics import topography_test

    x, y = make_sequence_task(seed=seed)
    x_val, y_val = make_sequence_task(n_sequences=128, seed=seed, sample_seed=1)
    results = {}
    for topographic in (True, False):
        name = "topographic" if topographic else "unconstrained"
        if verbose:
            print(f"\nTraining the {name} model ({epochs} epochs)")
        model = build_conv_model(
            n_features=x.shape[-1],
            n_classes=int(y.max()) + 1,
            topographic=topographic,
            strength=strength,
            seed=seed,
        )
        model.compile(
            optimizer=keras.optimizers.Adam(3e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        start = time.perf_counter()
        model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose, shuffle=True)
        seconds = time.perf_counter() - start
        _, accuracy = model.evaluate(x_val, y_val, verbose=0)
        scores = {
            layer.name: topography_test(layer.kernel, n_permutations=n_permutations, seed=seed)
            for layer in model.layers
            if layer.name.startswith("conv_")
        }
        results[name] = {"scores": scores, "accuracy": float(accuracy), "seconds": seconds}
    return results


def format_results(results):
    lines = [
        "",
        "Kernel topography score S (1 = every filter equals its grid neighbours, 0 = no order)",
        f"{'layer':<8} {'run':<14} {'S':>7} {'permuted S':>18} {'z':>8}",
    ]
    for run, result in results.items():
        for layer, r in result["scores"].items():
            lines.append(
                f"{layer:<8} {run:<14} {r.score:7.3f} {r.null_mean:9.3f} +- {r.null_std:5.3f} "
                f"{r.z:8.1f}"
            )
    lines.append("")
    for run, result in results.items():
        lines.append(
            f"{run:<14} validation frame accuracy {result['accuracy']:.3f} "
            f"(trained in {result['seconds']:.0f} s)"
        )
    return "\n".join(lines)


def build_parser():
    """The synthetic demo's command line (``keras-topomap demo --synthetic --help``)."""
    parser = argparse.ArgumentParser(
        prog="keras-topomap demo --synthetic",
        description="Train a small Conv1D model with and without the topographic constraint "
        "and compare the topography of its filters.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=12, help="epochs of each training run")
    parser.add_argument("--strength", type=float, default=0.01,
                        help="topographic regularizer strength")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    parser.add_argument("--n-permutations", "--permutations", dest="permutations", type=int,
                        default=200, help="shuffled layouts of the topography z-scores")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    results = run_synthetic_demo(
        epochs=args.epochs,
        strength=args.strength,
        seed=args.seed,
        n_permutations=args.permutations,
    )
    print(format_results(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
