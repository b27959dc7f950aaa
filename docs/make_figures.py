"""Draws the documentation's demo figures from ONE saved demo run and writes their captions.

The figures under ``docs/figures/demo`` and the captions that describe them in ``README.md`` and
``docs/method.md`` come from the same run, so they cannot drift apart:

1. the run is a demo output folder (``python -m keras_topomap.demo --out RUN``, or this script
   with ``--train``): its figures, ``metrics.json`` and trained model;
2. the script recomputes the numbers the captions quote from that run (Figure 1A's close-ups
   against permuted filter orders from the saved model, the rest from ``metrics.json``) and
   writes them to ``docs/figures/demo/figures.json``, with the run's ``metrics.json`` beside
   it (its model named portably);
3. it copies the figures, colour-quantised (a small palette keeps the repository light);
4. it rewrites every caption block ``<!-- caption:NAME -->...<!-- /caption -->`` of the docs
   with :func:`captions` of those numbers. ``tests/test_docs.py`` checks that every figure a
   doc references exists, that every caption block equals what :func:`captions` makes of
   ``figures.json``, and that figures.json's numbers are those of the copied metrics.json.

The committed figures come from the shipped pretrained model (the demo does not train it, so
there is no animation; a run the demo trains adds ``maps.gif`` and its caption).

Usage (from the repository root)::

    KERAS_BACKEND=jax python -m keras_topomap.demo --pretrained --out RUN_DIR
    python docs/make_figures.py RUN_DIR            # a finished demo run
    python docs/make_figures.py RUN_DIR --train    # run the demo into RUN_DIR first
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures" / "demo"
NUMBERS = FIGURES / "figures.json"
#: the run's own metrics.json (its model named portably), which the captions' numbers match
RUN_METRICS = FIGURES / "metrics.json"
DOCS = ("README.md", "docs/method.md")
#: the demo's files that the docs show
FILES = ("figure1.png", "figure1a.png", "figure1b.png", "dendrogram.png", "gradnap_eeg.png")
#: shown when the run has them: the animation exists only for a run the demo trained itself
OPTIONAL = ("maps.gif",)
_BLOCK = re.compile(r"(<!-- caption:(?P<name>[a-z0-9_]+) -->)(?P<body>.*?)(<!-- /caption -->)",
                    re.S)


def portable_model(path):
    """How figures.json and the committed metrics copy name the analysed model: a shipped
    pretrained model by its name, any other by its file name (never a path of the machine
    that drew the figures)."""
    path = Path(path)
    if path.parent.parent.name == "pretrained":
        return f"pretrained:{path.parent.name}"
    return path.name


def metrics_numbers(metrics):
    """The caption numbers that come straight from a demo run's ``metrics.json`` (with its
    ``model`` made portable); :func:`run_numbers` adds what needs the saved model."""
    layers = list(metrics["topography"])
    first, layer = layers[0], metrics["figure_layer"]
    rec = metrics.get("recognizer") or {}
    model = portable_model(metrics["model"])

    def layer_numbers(name):
        topo, gn = metrics["topography"][name], metrics["gradnap"][name]
        return {
            "grid": list(topo["grid"]), "score": topo["score"], "z": topo["z"],
            "null_mean": topo["null_mean"], "n_topographic": gn["n_topographic"],
            "n_maps": gn["n_maps"], "median_morans_i": gn["median"]["morans_i"],
            "median_z": gn["median"]["morans_i_z"],
        }

    groups = metrics["gradnap"][layer]["groups"]
    return {
        "pretrained": model.split(":", 1)[1] if model.startswith("pretrained:") else None,
        "config": metrics.get("config"),
        "data": metrics["data"],
        "epochs": rec.get("epochs_done"),
        "best_epoch": rec.get("best_epoch"),
        "test_cer": rec.get("test_cer"),
        "first_layer": first,
        "figure_layer": layer,
        "layers": {name: layer_numbers(name) for name in (first, layer)},
        "phonemes": {
            p: {"centre": metrics["regions"][p]["center"], "morans_i": groups[p]["morans_i"],
                "z": groups[p]["morans_i_z"]}
            for p in metrics["phonemes"]
        },
        "n_phonemes": len(groups),
        "verdict_threshold": 3.0,
        "layout": {k: v for k, v in (metrics.get("layout") or {"kind": "trained"}).items()
                   if k in ("kind", "n_train_utterances")},
    }


def run_numbers(run):
    """The numbers the captions quote, from the demo run in folder ``run``."""
    import keras
    import numpy as np

    from keras_topomap import visualization as vis

    run = Path(run)
    metrics = json.loads((run / "metrics.json").read_text())
    first = list(metrics["topography"])[0]
    model_path = Path(metrics["model"])
    if not model_path.is_absolute() and not model_path.is_file():
        model_path = run / "training" / "model.keras"
    model = keras.saving.load_model(model_path, compile=False)
    kernel = model.get_layer(first).kernel
    grid = tuple(metrics["topography"][first]["grid"])
    similarity = vis.local_similarity(kernel, grid)
    centres = vis.pick_neighborhoods(similarity, n=2)
    null_mean, null_std = vis.permuted_neighborhoods(kernel, grid, n=len(centres))
    return {
        **metrics_numbers(metrics),
        "closeups": [
            {"centre": list(c), "neighbor_cos": float(similarity[c]),
             "permuted_mean": float(m), "permuted_std": float(s)}
            for c, m, s in zip(centres, null_mean, null_std)
        ],
        "animation_frames": _gif_frames(run / "maps.gif"),
        "_note": "written by docs/make_figures.py from the demo run whose metrics.json is "
                 "copied beside it; captions in the docs are generated from it",
        "_checks": {"finite": bool(np.isfinite(similarity).all())},
    }


def _gif_frames(path):
    if not path.is_file():
        return None
    from PIL import Image

    with Image.open(path) as gif:
        return int(gif.n_frames)


def _z(value):
    """A z-score to one decimal, never "-0.0"."""
    return f"{round(value, 1) + 0.0:.1f}"


def _reading(z, threshold):
    return "smoother than chance" if z is not None and z >= threshold else \
        "not smoother than chance"


def captions(numbers):
    """``{caption name: Markdown text}`` of every caption block, from ``figures.json``'s
    numbers (the same numbers always give the same text)."""
    n = numbers
    t = n["verdict_threshold"]
    first, layer = n["first_layer"], n["figure_layer"]
    lf, ll = n["layers"][first], n["layers"][layer]
    if n["epochs"] is not None:
        shipped = (f"the shipped pretrained model `{n['pretrained']}`, " if n.get("pretrained")
                   else "")
        model = (f"{shipped}the `{n['config']}` recognizer trained for {n['epochs']} epochs on "
                 f"the `{n['data']}` corpus (weights of epoch {n['best_epoch']}, test CER "
                 f"{n['test_cer']:.2f})")
    else:
        model = f"a saved recognizer analysed on the `{n['data']}` corpus"
    layout = n.get("layout") or {"kind": "trained"}
    if layout["kind"] == "fitted":
        model += (f", its filters laid out after training by their GradNAPs on "
                  f"{layout['n_train_utterances']} training utterances (`FilterLayout`; every "
                  f"map is of the test utterances, which the layout never saw)")

    def kernel(name, numbers):
        return (f"`{name}`'s kernel topography S = {numbers['score']:.3f} (permuted filter "
                f"orders {numbers['null_mean']:+.3f}, z = {numbers['z']:.1f})")

    def maps(name, numbers):
        return (f"{numbers['n_topographic']} of {numbers['n_maps']} GradNAP maps of `{name}` "
                f"are smoother than chance on their raw values (z >= {t:g}; median Moran's I "
                f"{numbers['median_morans_i']:.3f}, median z {_z(numbers['median_z'])})")

    closeups = "; ".join(
        f"close-up {k + 1} at {tuple(c['centre'])}: neighbour cos {c['neighbor_cos']:.2f} "
        f"against {c['permuted_mean']:.2f} ± {c['permuted_std']:.2f} for the same choice on "
        f"permuted filter orders" for k, c in enumerate(n["closeups"]))
    phonemes = "; ".join(
        f"/{p.upper()}/ region centred at {tuple(v['centre'])}, Moran's I {v['morans_i']:.2f} "
        f"(z {_z(v['z'])}, {_reading(v['z'], t)})" for p, v in n["phonemes"].items())
    slashed = ", ".join(f"/{p.upper()}/" for p in n["phonemes"])
    frames = n["animation_frames"]
    return {
        "readme_figure1": (
            f"*Figure 1, drawn by the demo for {model}. {kernel(first, lf)}; "
            f"{maps(layer, ll)}. Every map carries its Moran's I and z; maps that are not "
            f"smoother than chance are marked \"not topographic\". How to read it: "
            f"[the method](docs/method.md).*"),
        "method_figure1a": (
            f"*Figure 1A, drawn by the demo for {model}: `{first}`'s "
            f"{lf['grid'][0]} × {lf['grid'][1]} filter map (left) and the two most coherent "
            f"non-overlapping full 3 × 3 blocks (right; \"neighbour cos\" is the mean cosine "
            f"similarity of the centre to its neighbours): {closeups}. {kernel(first, lf)}.*"),
        "method_animation": (
            f"![The maps of {layer} forming during training](figures/demo/maps.gif)\n\n"
            f"*The raw mean activation map of `{layer}` on a fixed probe after each of "
            f"{frames} logged epochs of the same run, recorded by the `TopoMapCallback` (grid "
            f"cells drawn as they are, no interpolation), with each frame's Moran's I and z and "
            f"its change since the previous epoch.*" if frames else
            f"The figures on this page analyse {model}, which the demo did not train, so they "
            f"come without an animation of the maps forming; a run the demo trains writes one "
            f"(`outputs/topomaps/`), and [Watching maps in TensorBoard](tensorboard.md) shows "
            f"the same maps epoch by epoch."),
        "method_dendrogram": (
            f"*The {n['n_phonemes']} phoneme profiles of `{layer}` clustered (cosine distance, "
            f"average linkage), same model. {maps(layer, ll)}: read the clusters with that "
            f"in mind.*"),
        "method_figure1b": (
            f"*Figure 1B, drawn by the demo for the same model: for {slashed} on `{layer}`, "
            f"the GradNAP on the grid, the smoothed map with the most responsive full 3 × 3 "
            f"region outlined, the single-filter optimal inputs of the region's filters (laid "
            f"out as they sit on the grid) and the joint input of the whole region: "
            f"{phonemes}.*"),
        "method_figure1": (
            f"*Figure 1 as the demo draws it, for {model}.*"),
    }


def rewrite_captions(text, generated):
    """``text`` with every caption block replaced by its generated caption.

    Raises:
        ValueError: for a caption block whose name :func:`captions` does not know.
    """
    def replace(match):
        name = match.group("name")
        if name not in generated:
            raise ValueError(f"Unknown caption block {name!r}. Known: {sorted(generated)}")
        return f"{match.group(1)}\n{generated[name]}\n{match.group(4)}"

    return _BLOCK.sub(replace, text)


def caption_blocks(text):
    """``{name: body}`` of the caption blocks of a document (body stripped)."""
    return {m.group("name"): m.group("body").strip() for m in _BLOCK.finditer(text)}


def quantise(source, target, colours=64):
    """Copies a PNG with a ``colours``-colour palette (GIFs: as they are, already palettised)."""
    from PIL import Image

    if source.suffix == ".gif":
        shutil.copyfile(source, target)
        return
    with Image.open(source) as image:
        image.convert("RGB").quantize(colours, dither=Image.Dither.NONE).save(
            target, optimize=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="demo output folder (with metrics.json and the figures)")
    parser.add_argument("--train", action="store_true",
                        help="run the demo into RUN first (python -m keras_topomap.demo)")
    parser.add_argument("--demo-args", default="", help="extra demo options with --train")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if args.train:
        from keras_topomap import demo

        code = demo.main(["--out", str(run), *args.demo_args.split()])
        if code:
            return code
    missing = [f for f in ("metrics.json", *FILES) if not (run / f).is_file()]
    if missing:
        print(f"make_figures: {run} lacks {missing}", file=sys.stderr)
        return 2
    numbers = run_numbers(run)
    FIGURES.mkdir(parents=True, exist_ok=True)
    shown = [*FILES, *(f for f in OPTIONAL if (run / f).is_file())]
    for name in shown:
        quantise(run / name, FIGURES / name)
    for name in set(OPTIONAL) - set(shown):  # an earlier run's file would not match the captions
        (FIGURES / name).unlink(missing_ok=True)
    NUMBERS.write_text(json.dumps(numbers, indent=2) + "\n")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["model"] = portable_model(metrics["model"])
    RUN_METRICS.write_text(json.dumps(metrics, indent=1) + "\n")
    generated = captions(numbers)
    for doc in DOCS:
        path = ROOT / doc
        path.write_text(rewrite_captions(path.read_text(), generated))
    total = sum((FIGURES / f).stat().st_size for f in shown)
    print(f"wrote {len(shown)} figures ({total / 1e6:.2f} MB) and {NUMBERS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
