"""The same phonemes' raw maps under each constraint: the figure of docs/results.md's
activation-topography experiment.

For every run folder given (``model.keras`` + ``config.json``, as written by
``keras-topomap train``), one row: the raw (unsmoothed, nearest-neighbour) GradNAP maps of a few
phonemes on one layer, then the plain NAP (mean activation) maps of the same phonemes, computed
on the bundled corpus's ``test`` split. Each tile is titled with its Moran's I and marked with its
permutation verdict (:func:`keras_topomap.visualization.map_verdict`, on the raw map); each row
is labelled with its constraint and test CER, read from the run's own ``metrics.json``.

Usage::

    KERAS_BACKEND=jax python benchmarks/configuration_maps.py runs/topo_none/seed0 \\
        runs/topo_activity/seed0 --layer conv_2 --phonemes aa iy s n \\
        --figure docs/figures/results_configuration_maps.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_maps(run_dir, layer, phonemes, batch_size=8, features_cache=None):
    """``(gradnap_maps, nap_maps, info)`` of ``phonemes`` on ``layer`` of one run folder."""
    import keras

    import keras_topomap  # noqa: F401  (registers the custom objects the .keras file names)
    from keras_topomap import GradNAP, datasets, models
    from keras_topomap.train import load_feature_config

    run_dir = Path(run_dir)
    model = keras.saving.load_model(run_dir / "model.keras")
    grids = models.layer_grids(model)
    if layer not in grids:
        raise ValueError(f"{run_dir} has no hidden layer {layer!r}. Received: layer={layer!r}, "
                         f"layers: {sorted(grids)}")
    feature_config = load_feature_config(run_dir)
    cache = {} if features_cache is None else features_cache
    key = feature_config.cache_key()
    if key not in cache:
        cache[key] = datasets.load_corpus_features("test", feature_config)
    batches = datasets.SpeechBatches(cache[key], batch_size=batch_size, mode="frames",
                                     shuffle=False)
    unknown = [p for p in phonemes if p not in datasets.PHONES_39]
    if unknown:
        raise ValueError(f"Unknown phonemes {unknown}; known: {datasets.PHONES_39}")
    index = [datasets.PHONES_39.index(p) for p in phonemes]
    result = []
    for adjust in ("gradient", "none"):
        gn = GradNAP(model, [layer], group_names=datasets.PHONES_39, grids={layer: grids[layer]},
                     adjust=adjust, batch_size=batch_size, verbose=0)
        gn.fit(batches)
        result.append(gn.maps(layer)[index])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    from topography_metrics import run_label  # this folder is on sys.path when run as a script

    info = {"label": run_label(run_dir), "test_cer": metrics["test"]["cer"],
            "epochs": metrics.get("epochs_done")}
    return result[0], result[1], info


def draw(rows, layer, phonemes, path):
    """One row per run: GradNAP maps, then NAP maps, each tile with its Moran's I."""
    from keras_topomap.metrics import is_constant_map, morans_i
    from keras_topomap.visualization import map_verdict, new_figure, plot_grid_map

    n = len(phonemes)
    fig = new_figure(figsize=(1.45 * 2 * n + 0.4, 1.75 * len(rows) + 0.5))
    axes = fig.subplots(len(rows), 2 * n, squeeze=False)
    for r, (gradnap, nap, info) in enumerate(rows):
        for kind, maps, offset in (("GradNAP", gradnap, 0), ("NAP", nap, n)):
            for k, phoneme in enumerate(phonemes):
                ax = axes[r, offset + k]
                m = maps[k]
                value = "const." if is_constant_map(m) else f"I {morans_i(m):+.2f}"
                plot_grid_map(ax, m, title=f"{kind} /{phoneme.upper()}/ {value}",
                              colorbar=False, verdict=map_verdict(m), diverging=kind == "GradNAP")
                ax.title.set_fontsize(7)
        # one clause a line: a long constraint on one line runs off the figure's left edge
        label = "\n".join(info["label"].split(", "))
        axes[r, 0].set_ylabel(f"{label}\ntest CER {info['test_cer']:.2f}", fontsize=6.5)
    fig.suptitle(f"{layer}: raw maps on the test split (no smoothing); rows: constraint",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders, one row each")
    p.add_argument("--layer", default="conv_2")
    p.add_argument("--phonemes", nargs="+", default=["aa", "iy", "s", "n"])
    p.add_argument("--figure", required=True, help="PNG to write")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    cache = {}
    rows = [run_maps(run, args.layer, args.phonemes, args.batch_size, cache) for run in args.runs]
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    draw(rows, args.layer, args.phonemes, args.figure)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
