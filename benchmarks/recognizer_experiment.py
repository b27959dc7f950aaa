"""With and without the topographic constraint: the experiment of docs/results.md.

Trains the "small" Wav2Letter recognizer on the bundled corpus with the same seed, data and
schedule (Adam 1e-3, batch 16, a wall-clock training budget) several times, changing only the
topographic constraint: off, and on at a few strengths. Then writes the learning curves and the
strength trade-off figure to docs/figures/ and prints the markdown tables of docs/results.md.

Runs already finished in ``--out`` are reused; an interrupted one resumes.

Usage::

    KERAS_BACKEND=tensorflow python benchmarks/recognizer_experiment.py --out runs/experiment
    # only redo the figures and tables from finished runs:
    python benchmarks/recognizer_experiment.py --out runs/experiment --report-only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# name -> (topographic, strength); "topo_0.01" is the default strength, the main comparison.
RUNS = {
    "plain": (False, 0.0),
    "topo_0.001": (True, 0.001),
    "topo_0.01": (True, 0.01),
    "topo_0.1": (True, 0.1),
}
MAIN = ("topo_0.01", "plain")


def run_all(out, minutes, names):
    from keras_topomap.train import TrainConfig, train

    for name in names:
        folder = Path(out) / name
        if (folder / "metrics.json").is_file():
            print(f"{name}: finished, reusing {folder}")
            continue
        topographic, strength = RUNS[name]
        config = TrainConfig(
            config="small", topographic=topographic, strength=strength or 0.01, epochs=200,
            max_minutes=minutes, seed=0, out=str(folder), verbose=2,
            resume=(folder / "state.json").is_file(),
        )
        print(f"{name}: training ({minutes} min budget)")
        train(config)


def load(out, names):
    found = {}
    for name in names:
        path = Path(out) / name / "metrics.json"
        if path.is_file():
            found[name] = json.loads(path.read_text())
    return found


def label(name, metrics):
    if not metrics["config"]["topographic"]:
        return "unconstrained"
    return f"topographic, strength {metrics['config']['strength']:g}"


def learning_curves(runs, path):
    from keras_topomap.visualization import new_figure

    fig = new_figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 3)
    for name, metrics in runs.items():
        history = metrics["history"]
        epochs = [h["epoch"] for h in history]
        minutes = [h["seconds"] / 60 for h in history]
        style = "-" if name in MAIN else ":"
        text = label(name, metrics)
        axes[0].plot(epochs, [h["loss"] for h in history], style, label=text)
        axes[1].plot(epochs, [h["val_cer"] for h in history], style, label=text)
        axes[2].plot(minutes, [h["val_cer"] for h in history], style, label=text)
    axes[0].set(xlabel="epoch", ylabel="training loss (CTC + penalty)", title="loss")
    axes[1].set(xlabel="epoch", ylabel="validation CER", title="validation CER by epoch")
    axes[2].set(xlabel="training minutes", ylabel="validation CER", title="... by time")
    for ax in axes[1:]:
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def strength_tradeoff(runs, path):
    from keras_topomap.visualization import new_figure

    fig = new_figure(figsize=(5, 3.6))
    ax = fig.subplots()
    for metrics in runs.values():
        scores = [t["score"] for t in metrics["topography"].values()]
        strength = metrics["config"]["strength"] if metrics["config"]["topographic"] else 0
        ax.errorbar(
            metrics["test"]["cer"], np.mean(scores),
            yerr=[[np.mean(scores) - np.min(scores)], [np.max(scores) - np.mean(scores)]],
            fmt="o", capsize=3,
        )
        ax.annotate(f"{strength:g}", (metrics["test"]["cer"], np.mean(scores)),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set(xlabel="test CER", ylabel="topography score (mean, min-max over layers)",
           title="strength trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def tables(runs):
    lines = [
        "| run | epochs | training time | stopped by | test CER | test WER | test CTC loss | "
        "best val CER (epoch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in runs.items():
        lines.append(
            f"| {label(name, m)} | {m['epochs_done']} | {m['training_seconds'] / 60:.1f} min | "
            f"{m['stopped_by']} | {m['test']['cer']:.3f} | {m['test']['wer']:.3f} | "
            f"{m['test']['loss']:.1f} | {m['validation']['cer']:.3f} ({m['best_epoch']}) |"
        )
    lines += [
        "",
        "Topography score per layer (in brackets: mean score of 100 random permutations of the "
        "same filters, and the permutation z-score):",
        "",
    ]
    names = list(runs)
    layers = list(next(iter(runs.values()))["topography"])
    lines.append("| layer | " + " | ".join(label(n, runs[n]) for n in names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for layer in layers:
        cells = []
        for n in names:
            t = runs[n]["topography"][layer]
            cells.append(f"{t['score']:+.3f} (perm. {t['null_mean']:+.2f}, z {t['z']:+.0f})")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines.append(
        "| permutation null mean (all layers) | "
        + " | ".join(
            f"{np.mean([t['null_mean'] for t in runs[n]['topography'].values()]):+.3f}"
            for n in names
        )
        + " |"
    )
    same_epoch = min(m["epochs_done"] for m in runs.values())
    lines += ["", f"Validation CER at epoch {same_epoch} (same number of updates):", ""]
    for name, m in runs.items():
        lines.append(f"- {label(name, m)}: {m['history'][same_epoch - 1]['val_cer']:.3f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/experiment")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per run")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--figures", default="docs/figures")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if not args.report_only:
        run_all(args.out, args.minutes, args.runs)
    runs = load(args.out, args.runs)
    if not runs:
        raise SystemExit(f"No finished runs in {args.out}.")
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    learning_curves(runs, figures / "recognizer_learning_curves.png")
    strength_tradeoff(runs, figures / "recognizer_strength_tradeoff.png")
    print(tables(runs))


if __name__ == "__main__":
    main()
