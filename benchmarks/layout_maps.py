"""Fitted filter layouts: are the held-out maps of a laid-out model smoother than chance?

For every run folder given (``model.keras`` + ``config.json``, as written by
``keras-topomap train`` or ``benchmarks/recognizer_experiment.py``) this

1. computes GradNAP (the model's own greedy prediction, gradient x activation) of every phoneme
   on the bundled corpus's ``train`` split (the utterances the model was trained and validated
   on) and fits a :class:`keras_topomap.layout.FilterLayout` per hidden layer to those profiles
   (silence left out);
2. builds the equivalent model with :func:`keras_topomap.layout.reorder_filters` and checks
   that its logits equal the original's on test utterances;
3. computes GradNAP of both models on the ``test`` split (sentences never used for the
   layout) and, per layer, the median and mean Moran's I of the raw maps with the z-score of the
   mean against random layouts of the same maps (as ``benchmarks/topography_metrics.py``);
4. measures, in both layouts, how the test split's activations correlate with grid distance
   (:func:`keras_topomap.metrics.correlation_by_distance`: its falloff against random layouts
   and whether the curve falls over its first three distance bins).

It prints a markdown table, writes every number to ``--json`` and, with ``--figure``, the raw
maps of a few phonemes on one layer before and after, one pair of rows per run.

Usage::

    KERAS_BACKEND=jax python benchmarks/layout_maps.py runs/topo_none/seed0 \\
        runs/topo_activity_0.002_input_0.03/seed0 --json runs/layout_maps.json \\
        --figure docs/figures/results_layout_maps.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SILENCE = "sil"


def _gradnap(model, grids, features, batch_size):
    from keras_topomap import GradNAP, datasets

    batches = datasets.SpeechBatches(features, batch_size=batch_size, mode="frames",
                                     shuffle=False)
    gn = GradNAP(model, list(grids), group_names=datasets.PHONES_39, grids=grids,
                 batch_size=batch_size, verbose=0)
    return gn.fit(batches)


def _logit_difference(model, other, features, n=8):
    from keras_topomap import datasets

    batch = datasets.SpeechBatches(features.subset(features.ids[:n]), batch_size=n,
                                   mode="all", shuffle=False)[0]
    a = np.asarray(model.predict(batch["features"], verbose=0))
    b = np.asarray(other.predict(batch["features"], verbose=0))
    return float(np.abs(a - b).max() / max(1e-12, np.abs(a).max()))


def analyse_run(run_dir, batch_size=8, map_permutations=20, n_restarts=20, seed=0,
                cache=None, init="spectral"):
    """Layouts fitted on the train split, maps measured on the test split. JSON-able dict."""
    import keras
    from topography_metrics import (
        _against_permuted_layouts,
        activation_correlation_matrices,
        correlation_summary,
        run_label,
    )

    import keras_topomap  # noqa: F401  (registers the custom objects the .keras file names)
    from keras_topomap import datasets, layout, models
    from keras_topomap.train import load_feature_config

    run_dir = Path(run_dir)
    start = time.perf_counter()
    model = keras.saving.load_model(run_dir / "model.keras")
    grids = models.layer_grids(model)
    feature_config = load_feature_config(run_dir)
    cache = {} if cache is None else cache
    key = feature_config.cache_key()
    if key not in cache:
        cache[key] = {split: datasets.load_corpus_features(split, feature_config)
                      for split in ("train", "test")}
    train, test = cache[key]["train"], cache[key]["test"]
    fitted = _gradnap(model, grids, train, batch_size)
    fit_start = time.perf_counter()
    layouts = layout.fit_layouts(fitted, exclude=(SILENCE,), n_restarts=n_restarts, seed=seed,
                                 init=init)
    fit_seconds = time.perf_counter() - fit_start
    laid_out = layout.reorder_filters(model, layouts)
    difference = _logit_difference(model, laid_out, test)
    before = _gradnap(model, grids, test, batch_size)
    after = _gradnap(laid_out, grids, test, batch_size)
    # the laid-out model's activations are the original's with the channels permuted
    correlations = activation_correlation_matrices(model, grids, test)
    rng = np.random.default_rng(seed)
    result = {"run": run_label(run_dir), "folder": str(run_dir), "init": init,
              "n_train": len(train),
              "n_test": len(test), "logit_rel_difference": difference,
              "fit_seconds": fit_seconds, "layers": {}}
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        result["test_cer"] = json.loads(metrics_path.read_text())["test"]["cer"]
    for name, grid in grids.items():
        keep = [k for k, p in enumerate(datasets.PHONES_39)
                if p != SILENCE and before.counts_[name][k] > 0]
        entry = {"train_score": layouts[name].score_,
                 "train_initial_score": layouts[name].initial_score_,
                 "n_phonemes": len(keep)}
        order = layouts[name].order_
        for label, gn, corr in (("original", before, correlations[name]),
                                ("fitted", after, correlations[name][np.ix_(order, order)])):
            maps = gn.maps(name)[keep]
            report = _against_permuted_layouts(maps, grid, map_permutations, rng)["morans_i"]
            values = np.asarray(report["values"])
            neighbours, all_pairs, curve = correlation_summary(corr, grid)
            entry[label] = {"median": float(np.nanmedian(values)), "mean": report["mean"],
                            "z": report["z"], "perm_mean": report["perm_mean"],
                            "values": report["values"],
                            "correlation": {"neighbours": neighbours, "all_pairs": all_pairs,
                                            "curve": curve}}
        result["layers"][name] = entry
    result["seconds"] = time.perf_counter() - start
    return result


def table(results):
    lines = ["| run | test CER | layer | Moran's I median (z), original layout | fitted layout, "
             "test split | fitted layout, train split (mean) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for name, e in r["layers"].items():
            lines.append(
                f"| {r['run']} | {r.get('test_cer', float('nan')):.3f} | {name} | "
                f"{e['original']['median']:+.2f} ({e['original']['z']:+.0f}) | "
                f"{e['fitted']['median']:+.2f} ({e['fitted']['z']:+.0f}) | "
                f"{e['train_score']:+.2f} |")
    return "\n".join(lines)


def summary(results):
    lines = ["| run | test CER | original: median range (min z) | fitted: median range (min z) "
             "| layers >= 0.3 | fitted: activity falloff range (min z) | curves falling | "
             "logits rel. diff. |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = []
        for kind in ("original", "fitted"):
            med = [e[kind]["median"] for e in r["layers"].values()]
            z = [e[kind]["z"] for e in r["layers"].values()]
            cells.append(f"{min(med):+.2f} to {max(med):+.2f} ({min(z):+.0f})")
        above = sum(e["fitted"]["median"] >= 0.3 for e in r["layers"].values())
        curves = [e["fitted"]["correlation"]["curve"] for e in r["layers"].values()]
        falloff = (f"{min(c['falloff'] for c in curves):+.2f} to "
                   f"{max(c['falloff'] for c in curves):+.2f} "
                   f"({min(c['falloff_z'] for c in curves):+.0f})")
        falling = sum(bool(c["falls"]) for c in curves)
        lines.append(f"| {r['run']} ({Path(r['folder']).name}) | "
                     f"{r.get('test_cer', float('nan')):.3f} | {cells[0]} | {cells[1]} | "
                     f"{above} of {len(r['layers'])} | {falloff} | {falling} of {len(curves)} | "
                     f"{r['logit_rel_difference']:.1e} |")
    return "\n".join(lines)


def figure(runs, layer, phonemes, path, batch_size=8, n_restarts=20, seed=0):
    """Raw maps of ``phonemes`` on ``layer``: per run a row in the original layout and a row
    in the layout fitted on the train split, both on the test split."""
    import keras
    from topography_metrics import run_label

    import keras_topomap  # noqa: F401
    from keras_topomap import datasets, layout, models
    from keras_topomap.metrics import is_constant_map, morans_i
    from keras_topomap.train import load_feature_config
    from keras_topomap.visualization import map_verdict, new_figure, plot_grid_map

    index = [datasets.PHONES_39.index(p) for p in phonemes]
    rows = []
    for run_dir in runs:
        run_dir = Path(run_dir)
        model = keras.saving.load_model(run_dir / "model.keras")
        grids = {layer: models.layer_grids(model)[layer]}
        fc = load_feature_config(run_dir)
        train = datasets.load_corpus_features("train", fc)
        test = datasets.load_corpus_features("test", fc)
        fitted = layout.fit_layouts(_gradnap(model, grids, train, batch_size),
                                    exclude=(SILENCE,), n_restarts=n_restarts, seed=seed)[layer]
        maps = _gradnap(model, grids, test, batch_size).maps(layer)[index]
        cer = json.loads((run_dir / "metrics.json").read_text())["test"]["cer"]
        label = "\n".join(run_label(run_dir).split(", "))
        rows.append((f"{label}\ntest CER {cer:.2f}\noriginal layout", maps))
        rows.append((f"{label}\nfitted layout", fitted.maps(maps.reshape(len(index), -1))))
    n = len(phonemes)
    fig = new_figure(figsize=(1.5 * n + 1.2, 1.7 * len(rows) + 0.5))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, maps) in enumerate(rows):
        for k, phoneme in enumerate(phonemes):
            m = maps[k]
            value = "const." if is_constant_map(m) else f"I {morans_i(m):+.2f}"
            plot_grid_map(axes[r, k], m, title=f"/{phoneme.upper()}/ {value}", colorbar=False,
                          verdict=map_verdict(m), diverging=True)
            axes[r, k].title.set_fontsize(7)
        axes[r, 0].set_ylabel(label, fontsize=6.5)
    fig.suptitle(f"{layer}: raw GradNAP maps on the test split; layouts fitted on the train "
                 "split", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--figure", default=None, help="PNG of raw maps before and after")
    p.add_argument("--figure-runs", nargs="*", default=None,
                   help="runs of the figure (default: all)")
    p.add_argument("--layer", default="conv_2", help="layer of the figure")
    p.add_argument("--phonemes", nargs="+", default=["aa", "iy", "s", "n"])
    p.add_argument("--map-permutations", type=int, default=20)
    p.add_argument("--restarts", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--init", default="spectral", choices=("spectral", "identity"),
                   help="where the layout search starts (FilterLayout's init)")
    args = p.parse_args(argv)
    cache, results = {}, []
    for run in args.runs:
        result = analyse_run(run, args.batch_size, args.map_permutations, args.restarts,
                             cache=cache, init=args.init)
        print(f"{run}: {result['seconds']:.0f} s (layout fit {result['fit_seconds']:.1f} s), "
              f"logits rel. difference {result['logit_rel_difference']:.1e}", flush=True)
        results.append(result)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    print(summary(results))
    print()
    print(table(results))
    if args.figure:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        figure(args.figure_runs or args.runs, args.layer, args.phonemes, args.figure,
               args.batch_size, args.restarts)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
