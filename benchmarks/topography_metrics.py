"""Topography metrics of trained recognizers: the table of docs/results.md ("Topography metrics").

For every run folder given (as written by ``keras-topomap train`` or
``benchmarks/recognizer_experiment.py``: ``model.keras`` + ``config.json``) this

1. loads the model and computes GradNAP (target: the model's own greedy prediction, gradient x
   activation, group-mean baseline) for all 39 phonemes on the bundled corpus's ``test`` split,
   on every hidden convolution that has a grid (the unconstrained model's layers are put on the
   grids the topographic configuration would use);
2. per layer: the kernel topography score with its permutation mean and z-score
   (:func:`keras_topomap.metrics.topography_test`), and over the phonemes (silence left out) the
   mean and standard deviation of Moran's I, the blur-error AUC and the localisation of the
   (unsmoothed) GradNAP maps;
3. as a baseline for the map metrics, the same maps with the filters randomly re-ordered on the
   grid (one permutation per draw, shared by all phonemes of the layer, ``--map-permutations``
   draws): what the same profiles would score if the layout carried no information. The z-score
   compares the phoneme mean with the spread of the phoneme means over the draws.

Diagnostics: the share of filters that never fire on a labelled test frame, the kernel score on
the weights of live input channels only, the correlation over test frames of neighbouring
filters' activations (against all pairs), and Moran's I of the plain NAP (activation) maps.

It prints markdown tables, writes all numbers (per phoneme too) to ``--json`` and, with
``--figure``, a plot of the three map metrics per layer for each run against their baselines.

Usage::

    KERAS_BACKEND=jax python benchmarks/topography_metrics.py runs/experiment/plain \\
        runs/experiment/topo_0.001 runs/experiment/topo_0.01 runs/experiment/topo_0.1 \\
        --json runs/topography_metrics.json --figure docs/figures/results_map_metrics.png
    # table and figure again from the JSON, without recomputing:
    python benchmarks/topography_metrics.py --from-json runs/topography_metrics.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

MAP_METRICS = ("morans_i", "blur_auc", "localization")
SILENCE = "sil"


def run_label(run_dir):
    """``"unconstrained"`` or ``"topographic, strength S"`` from a run's config.json."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a training run folder: no config.json. "
                         f"Received: {run_dir}")
    train = json.loads(path.read_text())["train"]
    constraint = train.get("topography") or ("weight" if train["topographic"] else "none")
    weight = f"weight {train['strength']:g}"
    if train.get("global_strength"):
        weight += f" + global {train['global_strength']:g}"
    activity = (f"activity {train.get('activity_strength', 0):g} + global "
                f"{train.get('activity_global_strength', 0):g}")
    label = {"none": "unconstrained", "weight": f"topographic, {weight}",
             "activity": activity, "both": f"{weight}, {activity}"}[constraint]
    if train.get("input_strength"):
        label += f", input side {train['input_strength']:g}"
    return label


def map_metrics(maps, neighborhood=3):
    """Moran's I, blur-error AUC and localisation of each map ``(n, H, W)`` -> ``{name: (n,)}``.

    Moran's I is NaN for a constant map (undefined); the others are defined for every map.
    """
    from keras_topomap.metrics import blur_error_auc, localization, morans_i

    def safe_morans_i(m):
        try:
            return morans_i(m, neighborhood)
        except ValueError:  # constant map
            return np.nan

    # A few dozen small maps per call; each metric is itself vectorised over the grid.
    return {
        "morans_i": np.array([safe_morans_i(m) for m in maps]),
        "blur_auc": np.array([blur_error_auc(m) for m in maps]),
        "localization": np.array([localization(m, neighborhood) for m in maps]),
    }


def _against_permuted_layouts(maps, grid, map_permutations, rng):
    """Map metrics of ``maps`` and of the same maps with the filters re-ordered on the grid."""
    values = map_metrics(maps)
    n_filters = grid[0] * grid[1]
    flat = maps.reshape(len(maps), n_filters)
    null_means = {name: [] for name in MAP_METRICS}
    null_spread = {name: [] for name in MAP_METRICS}
    for _ in range(map_permutations):
        shuffled = flat[:, rng.permutation(n_filters)].reshape(maps.shape)
        for name, v in map_metrics(shuffled).items():
            null_means[name].append(np.nanmean(v))
            null_spread[name].append(np.nanstd(v))
    report = {}
    for name in MAP_METRICS:
        v = values[name]
        means = np.asarray(null_means[name])
        null_std = float(means.std(ddof=1)) if len(means) > 1 else float("nan")
        mean = float(np.nanmean(v))
        report[name] = {
            "mean": mean,
            "std": float(np.nanstd(v)),
            "n_undefined": int(np.isnan(v).sum()),
            "perm_mean": float(means.mean()),
            "perm_std_over_phonemes": float(np.mean(null_spread[name])),
            "perm_std_of_mean": null_std,
            "z": (mean - float(means.mean())) / null_std if null_std > 0 else float("nan"),
            "values": [float(x) for x in v],
        }
    return report


def layer_report(kernel, grid, gradnap_maps, nap_maps, phonemes, alive, alive_inputs,
                 n_permutations, map_permutations, seed):
    """All metrics of one layer.

    Args:
        kernel: the layer's kernel ``(..., in, F)``.
        grid: its ``(H, W)`` grid.
        gradnap_maps, nap_maps: ``(n_phonemes, H, W)`` GradNAP and plain NAP maps.
        phonemes: their names.
        alive: bool ``(F,)``, filters active on some labelled test frame.
        alive_inputs: bool ``(in,)`` for the input channels (None: all count).
        n_permutations: permutations of the kernel topography test.
        map_permutations: random layouts of the maps.
        seed: seed of both.
    """
    from keras_topomap.metrics import topography_score, topography_test

    kernel = np.asarray(kernel)
    test = topography_test(kernel, grid=grid, n_permutations=n_permutations, seed=seed)
    live_score = test.score
    if alive_inputs is not None and 0 < alive_inputs.sum() < alive_inputs.size:
        live_score = topography_score(kernel[..., alive_inputs, :], grid=grid)
    rng = np.random.default_rng(seed)
    return {
        "grid": list(grid),
        "phonemes": list(phonemes),
        "kernel": {"score": test.score, "null_mean": test.null_mean, "null_std": test.null_std,
                   "z": test.z, "n_permutations": test.n_permutations,
                   "score_live_inputs": live_score},
        "dead_filters": float(1.0 - alive.mean()),
        "dead_inputs": None if alive_inputs is None else float(1.0 - alive_inputs.mean()),
        "maps": _against_permuted_layouts(gradnap_maps, grid, map_permutations, rng),
        "nap_maps": _against_permuted_layouts(nap_maps, grid, map_permutations, rng),
    }


def activation_correlation_matrices(model, grids, features):
    """``{layer: (F, F) correlation over frames}`` of the layers' activations (NaN rows and
    columns for filters that never vary).

    One utterance at a time (no padding frames); running sums of the activations and their
    outer products per layer, so memory stays at ``F x F``.
    """
    import keras

    layers = list(grids)
    sub = keras.Model(model.inputs, [model.get_layer(layer).output for layer in layers])
    sums = {layer: 0.0 for layer in layers}
    products = {layer: 0.0 for layer in layers}
    counts = dict.fromkeys(layers, 0)
    for x in features.features:
        outputs = sub(x[None].astype("float32"))
        for layer, a in zip(layers, outputs):
            a = keras.ops.convert_to_numpy(a)[0].astype(np.float64)
            sums[layer] = sums[layer] + a.sum(axis=0)
            products[layer] = products[layer] + a.T @ a
            counts[layer] += a.shape[0]
    result = {}
    for layer in layers:
        mean = sums[layer] / counts[layer]
        cov = products[layer] / counts[layer] - np.outer(mean, mean)
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        live = std > 1e-9
        corr = cov / np.outer(np.where(live, std, 1.0), np.where(live, std, 1.0))
        result[layer] = np.where(np.outer(live, live), corr, np.nan)
    return result


def correlation_summary(corr, grid):
    """``(neighbour_mean, all_pairs_mean, curve)`` of one layer's correlation matrix (NaN for
    filters that never vary): the neighbour mean weighted with the grid's neighbour weights,
    ``curve`` the :func:`keras_topomap.metrics.correlation_by_distance` as a dict."""
    from keras_topomap import grid as grid_lib
    from keras_topomap.metrics import correlation_by_distance

    live = np.isfinite(np.diag(corr))
    first, second, weight = grid_lib.neighbor_pairs(grid)
    both = live[first] & live[second]
    neighbours = (float(np.average(corr[first[both], second[both]], weights=weight[both]))
                  if both.any() else float("nan"))
    live_corr = corr[np.ix_(live, live)]
    pairs = live_corr[np.triu_indices(int(live.sum()), 1)]
    curve = correlation_by_distance(corr, grid=grid)
    curve = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
             for k, v in curve._asdict().items()}
    return neighbours, float(pairs.mean()) if pairs.size else float("nan"), curve


def activation_correlations(model, grids, features):
    """Correlation over frames of neighbouring filters' activations, and of all filter pairs.

    See :func:`activation_correlation_matrices`; filters that never vary are left out.

    Returns:
        ``{layer: (neighbour_mean, all_pairs_mean, curve)}`` (:func:`correlation_summary`):
        the curve's ``falloff`` is how much more neighbours correlate than pairs at random,
        0 for a permuted layout.
    """
    matrices = activation_correlation_matrices(model, grids, features)
    return {layer: correlation_summary(matrices[layer], grids[layer]) for layer in grids}


def analyse_run(run_dir, batch_size=8, max_utterances=None, n_permutations=100,
                map_permutations=20, seed=0, features_cache=None):
    """GradNAP on the test split and every metric for one run folder. Returns a JSON-able dict."""
    import keras

    import keras_topomap  # noqa: F401  (registers the custom objects the .keras file names)
    from keras_topomap import GradNAP, datasets, models
    from keras_topomap.train import load_feature_config

    run_dir = Path(run_dir)
    model_path = run_dir / "model.keras"
    if not model_path.is_file():
        raise ValueError(f"No model.keras in run folder {run_dir}. Received: {run_dir}")
    label = run_label(run_dir)
    start = time.perf_counter()
    model = keras.saving.load_model(model_path)
    grids = models.layer_grids(model)
    feature_config = load_feature_config(run_dir)
    key = feature_config.cache_key()
    features_cache = {} if features_cache is None else features_cache
    if key not in features_cache:
        features = datasets.load_corpus_features("test", feature_config)
        if max_utterances is not None:
            features = features.subset(features.ids[:max_utterances])
        features_cache[key] = features
    features = features_cache[key]
    batches = datasets.SpeechBatches(features, batch_size=batch_size, mode="frames",
                                     shuffle=False)
    layers = list(grids)
    gn = GradNAP(model, layers, group_names=datasets.PHONES_39, grids=grids,
                 batch_size=batch_size, verbose=1)
    gn.fit(batches)
    # Plain NAP (mean activations; no backward pass): a second view of the maps, and which
    # filters never fire on a labelled test frame (ReLU: mean activation 0 in every group).
    nap = GradNAP(model, layers, group_names=datasets.PHONES_39, grids=grids, adjust="none",
                  batch_size=batch_size, verbose=0)
    nap.fit(batches)
    alive = {layer: nap.group_means_[layer].max(axis=0) > 0 for layer in layers}
    gradnap_seconds = time.perf_counter() - start
    result = {
        "run": label,
        "folder": run_dir.name,
        "backend": keras.backend.backend(),
        "n_utterances": len(features),
        "n_frames": int(gn.n_frames_),
        "gradnap_seconds": gradnap_seconds,
        "layers": {},
    }
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        result["test_cer"] = json.loads(metrics_path.read_text())["test"]["cer"]
    correlations = activation_correlations(model, grids, features)
    progbar = keras.utils.Progbar(len(layers), unit_name="layer")
    for i, layer in enumerate(layers):
        counts = gn.counts_[layer]
        keep = [k for k, p in enumerate(datasets.PHONES_39) if p != SILENCE and counts[k] > 0]
        below = _input_layer(model.get_layer(layer))
        report = layer_report(
            keras.ops.convert_to_numpy(model.get_layer(layer).kernel), grids[layer],
            gn.maps(layer)[keep], nap.maps(layer)[keep], [datasets.PHONES_39[k] for k in keep],
            alive[layer], alive.get(below), n_permutations, map_permutations, seed,
        )
        report["n_phonemes"] = len(keep)
        report["activation_correlation"] = {"neighbours": correlations[layer][0],
                                            "all_pairs": correlations[layer][1],
                                            "by_distance": correlations[layer][2]}
        result["layers"][layer] = report
        progbar.update(i + 1)
    result["seconds"] = time.perf_counter() - start
    return result


def _input_layer(layer):
    """Name of the layer feeding ``layer`` (None if it is not a single layer's output)."""
    history = getattr(layer.input, "_keras_history", None)
    return None if history is None else history.operation.name


def _cell(entry, digits=2):
    mean, std, perm = entry["mean"], entry["std"], entry["perm_mean"]
    return f"{mean:+.{digits}f} ± {std:.{digits}f} ({perm:+.{digits}f})"


def _per_layer_table(results, columns, cells):
    """Markdown table with one row per run and layer: ``columns`` after "run | layer",
    ``cells(layer_result)`` the row's cells."""
    lines = ["| run | layer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for result in results:
        for layer, r in result["layers"].items():
            lines.append(f"| {result['run']} | {layer} | " + " | ".join(cells(r)) + " |")
    return "\n".join(lines)


def table(results):
    """Markdown table: one row per run and layer."""
    columns = ["kernel score (perm. mean, z)", "Moran's I ± sd (perm.)",
               "blur-error AUC ± sd (perm.)", "localisation ± sd (perm.)"]

    def cells(r):
        k, m = r["kernel"], r["maps"]
        return [f"{k['score']:+.3f} ({k['null_mean']:+.2f}, z {k['z']:+.0f})",
                _cell(m["morans_i"]), _cell(m["blur_auc"]), _cell(m["localization"])]

    return _per_layer_table(results, columns, cells)


def z_table(results):
    """Markdown table of the map metrics' z-scores against permuted layouts."""
    names = [r["run"] for r in results]
    lines = [
        "| layer | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for layer in results[0]["layers"]:
        cells = []
        for result in results:
            m = result["layers"][layer]["maps"]
            cells.append(" / ".join(f"{m[name]['z']:+.0f}" for name in MAP_METRICS))
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnostics_table(results):
    """Markdown table: dead filters, kernel score on live inputs, Moran's I of NAP maps."""
    columns = ["dead filters", "kernel score: all inputs / live inputs",
               "activation correlation: neighbours / all pairs",
               "Moran's I of NAP maps ± sd (perm.)"]

    def cells(r):
        k, c = r["kernel"], r["activation_correlation"]
        return [f"{r['dead_filters']:.0%}", f"{k['score']:.2f} / {k['score_live_inputs']:.2f}",
                f"{c['neighbours']:+.2f} / {c['all_pairs']:+.2f}",
                _cell(r["nap_maps"]["morans_i"])]

    return _per_layer_table(results, columns, cells)


def figure(results, path):
    """Per layer, for each run: kernel score, Moran's I of GradNAP and NAP maps, localisation.

    Solid lines: the learned layout; dotted lines (same colour): the permutation baselines.
    """
    from keras_topomap.visualization import new_figure

    layers = list(results[0]["layers"])
    x = np.arange(len(layers))
    panels = [
        ("kernel topography score", lambda r: (r["kernel"]["score"], r["kernel"]["null_mean"])),
        ("Moran's I, GradNAP maps", lambda r: _pair(r["maps"]["morans_i"])),
        ("Moran's I, NAP maps", lambda r: _pair(r["nap_maps"]["morans_i"])),
        ("localisation, GradNAP maps", lambda r: _pair(r["maps"]["localization"])),
    ]
    fig = new_figure(figsize=(13, 3.4))
    axes = fig.subplots(1, len(panels))
    for ax, (title, get) in zip(axes, panels):
        for i, result in enumerate(results):
            learned, permuted = zip(*(get(result["layers"][layer]) for layer in layers))
            ax.plot(x, learned, color=f"C{i}", marker="o", markersize=3, lw=1.3,
                    label=result["run"])
            ax.plot(x, permuted, color=f"C{i}", ls=":", lw=1)
        ticks = [layer.replace("conv_big_", "B").replace("conv_", "") for layer in layers]
        ax.set_xticks(x, ticks, fontsize=8)
        ax.set(title=title, xlabel="layer (conv_N; BN = conv_big_N)")
    axes[0].legend(fontsize=7, title="solid: learned layout, dotted: permuted", title_fontsize=7)
    # A palette PNG: a line plot needs few colours, and the docs stay small.
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=64).save(path, optimize=True)


def _median_z(entry):
    """Median over phonemes of a map metric, and the z of the phoneme mean against layouts."""
    values = np.asarray(entry["values"], dtype=float)
    return float(np.nanmedian(values)), entry["z"]


def target_table(results):
    """Markdown table of the numbers issue 14's target reads, one row per run and layer: median
    Moran's I of the raw GradNAP and NAP maps (z of the mean against permuted layouts), the
    correlation-by-distance falloff (z) and whether the curve falls over its first three bins,
    the share of 3x3 localisation, and the dead-filter share."""
    columns = ["GradNAP Moran's I median (z)", "NAP Moran's I median (z)",
               "falloff (z), falls", "localisation (perm.)", "dead"]

    def cells(r):
        g, n = _median_z(r["maps"]["morans_i"]), _median_z(r["nap_maps"]["morans_i"])
        curve = r["activation_correlation"].get("by_distance")
        fall = ("-" if curve is None else
                f"{curve['falloff']:+.2f} ({curve['falloff_z']:+.0f}), "
                f"{'yes' if curve['falls'] else 'no'}")
        loc = r["maps"]["localization"]
        return [f"{g[0]:+.2f} ({g[1]:+.0f})", f"{n[0]:+.2f} ({n[1]:+.0f})", fall,
                f"{loc['mean']:.2f} ({loc['perm_mean']:.2f})", f"{r['dead_filters']:.0%}"]

    return _per_layer_table(results, columns, cells)


def summary_table(results):
    """Markdown table, one row per run: test CER and, over the layers, the range of the median
    Moran's I of the raw GradNAP and NAP maps (smallest z), of the correlation falloff
    (smallest z) and the largest dead-filter share."""
    lines = ["| run | test CER | GradNAP Moran's I median, range (min z) | "
             "NAP Moran's I median, range (min z) | falloff, range (min z) | dead (max) |",
             "|---|---|---|---|---|---|"]

    def span(pairs):
        values, zs = zip(*pairs)
        return f"{min(values):+.2f} to {max(values):+.2f} ({min(zs):+.0f})"

    for result in results:
        layers = result["layers"].values()
        curves = [r["activation_correlation"].get("by_distance") for r in layers]
        falloff = ("-" if None in curves else
                   span([(c["falloff"], c["falloff_z"]) for c in curves]))
        cer = result.get("test_cer")
        lines.append(
            f"| {result['run']} | {'-' if cer is None else f'{cer:.3f}'} | "
            f"{span([_median_z(r['maps']['morans_i']) for r in layers])} | "
            f"{span([_median_z(r['nap_maps']['morans_i']) for r in layers])} | {falloff} | "
            f"{max(r['dead_filters'] for r in layers):.0%} |"
        )
    return "\n".join(lines)


def curve_figure(results, path, layers=("conv_2", "conv_big_1")):
    """Correlation of channel activity against grid distance, per run, on a few layers, with
    the mean of the permuted layouts (dotted)."""
    from keras_topomap.visualization import new_figure

    layers = [layer for layer in layers if layer in results[0]["layers"]]
    fig = new_figure(figsize=(4.2 * len(layers), 3.3))
    axes = np.atleast_1d(fig.subplots(1, len(layers)))
    for ax, layer in zip(axes, layers):
        for result in results:
            curve = result["layers"][layer]["activation_correlation"].get("by_distance")
            if curve is None:
                continue
            line = ax.errorbar(curve["distance"], curve["mean"], yerr=curve["sem"], marker=".",
                               capsize=2, label=result["run"])
            ax.plot(curve["distance"], curve["null_mean"], ":", color=line[0].get_color())
        ax.axhline(0, color="grey", lw=0.6)
        ax.set(xlabel="grid distance", ylabel="mean activity correlation", title=layer)
    axes[0].legend(fontsize=6)
    fig.suptitle("test split; dotted: the same channels on permuted layouts", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _pair(entry):
    return entry["mean"], entry["perm_mean"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", help="run folders (model.keras, config.json)")
    p.add_argument("--json", help="write all numbers here")
    p.add_argument("--from-json", help="skip computing; print the tables of this JSON")
    p.add_argument("--figure", help="write the per-layer figure here (PNG)")
    p.add_argument("--curve-figure",
                   help="write the correlation-by-distance curves of two layers here (PNG)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-utterances", type=int, default=None,
                   help="only the first N test utterances (for a quick check)")
    p.add_argument("--n-permutations", type=int, default=100,
                   help="permutations of the kernel topography test")
    p.add_argument("--map-permutations", type=int, default=20,
                   help="random layouts of each layer's GradNAP maps (baseline)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())["runs"]
    else:
        if not args.runs:
            p.error("give run folders, or --from-json")
        cache = {}
        results = []
        for run in args.runs:
            print(f"{run}: GradNAP on the test split and metrics")
            results.append(analyse_run(run, args.batch_size, args.max_utterances,
                                       args.n_permutations, args.map_permutations, args.seed,
                                       features_cache=cache))
            print(f"{run}: {results[-1]['seconds']:.0f} s")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            payload = {"settings": {k: v for k, v in vars(args).items()
                                    if k not in ("runs", "json", "from_json", "figure")},
                       "runs": results}
            Path(args.json).write_text(json.dumps(payload, indent=1))
    if args.figure:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        figure(results, args.figure)
    if args.curve_figure:
        Path(args.curve_figure).parent.mkdir(parents=True, exist_ok=True)
        curve_figure(results, args.curve_figure)
    print("Summary over the layers (raw maps; z against permuted layouts):\n")
    print(summary_table(results))
    print("\nTarget numbers (raw maps; z against permuted layouts):\n")
    print(target_table(results))
    print()
    print(table(results))
    print("\nz-scores against permuted layouts (Moran's I / blur-error AUC / localisation):\n")
    print(z_table(results))
    print("\nDiagnostics:\n")
    print(diagnostics_table(results))


if __name__ == "__main__":
    main()
