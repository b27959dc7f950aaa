"""The demo's ``index.html``: one self-contained page showing every figure, sound and metric.

The page uses relative links only (images, audio and files next to it in the output folder),
inline CSS and no scripts or external assets, so the output folder can be zipped, copied or
served as is.

Example:

>>> from keras_topomap.report import referenced_files, write_index
>>> path = write_index("outputs", metrics=metrics, table=table, files=files, wavs=wavs)
>>> all((path.parent / f).is_file() for f in referenced_files(path.read_text()))
True
"""

from __future__ import annotations

import html
import re
from pathlib import Path

__all__ = ["referenced_files", "write_index"]

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.3em; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child { text-align: left; }
.sounds td { text-align: left; } audio { height: 2em; vertical-align: middle; }
code { background: #f5f5f5; padding: 0 3px; }
.verdict { font-size: 0.9em; margin: 0.2em 0; } .verdict.no { color: #a00000; font-weight: bold; }
"""

_REFERENCE = re.compile(r'(?:src|href)="([^"#:]+)"')


def referenced_files(text):
    """The relative file links (``src=`` / ``href=``) of an HTML page, in order."""
    return [html.unescape(m) for m in _REFERENCE.findall(text)]


def _figure(name, caption, alt=None):
    name = html.escape(name)
    return (f'<figure><a href="{name}"><img src="{name}" alt="{html.escape(alt or caption)}">'
            f"</a><figcaption>{caption}</figcaption></figure>")


def _verdict(metrics, layer):
    """The demo's verdict line for ``layer`` as a paragraph (red when not topographic)."""
    line = metrics.get("verdicts", {}).get(layer)
    if not line:
        return ""
    css = "verdict no" if "not topographic" in line or "not ordered" in line else "verdict"
    return f'<p class="{css}">{html.escape(line)}</p>'


def _markdown_table(table):
    rows = [r.strip().strip("|").split("|") for r in table.strip().splitlines()]
    head, body = rows[0], [r for r in rows[2:]]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>")
    return "\n".join(out) + "</table>"


def write_index(out, metrics, table, files, wavs=None, animations=(), history=None):
    """Writes ``out/index.html`` and returns its path.

    Args:
        out: the demo's output folder (every linked file must be in it).
        metrics: the demo's metrics dict (as written to ``metrics.json``).
        table: the metrics table in Markdown (``metrics.md``).
        files: ``{figure key: file name}`` of the figures written (keys as in
            :func:`keras_topomap.demo.run_demo`: ``figure1``, ``figure1a``, ``figure1b``,
            ``dendrogram``, ``gradnap_eeg``, ``optimal_inputs_<phoneme>``, ``gradnap_<layer>``,
            ``training``, ``animation``, ``activity_correlation``); missing keys are left
            out of the page.
        wavs: ``{phoneme: {"joint" or filter index: relative WAV path}}``.
        animations: relative paths of the per-layer GIFs of the training callback.
        history: the training history (list of per-epoch dicts), for the summary line.

    Returns:
        ``pathlib.Path`` of the page.

    Raises:
        ValueError: when a file the page would link to does not exist in ``out``.
    """
    out = Path(out)
    layer = metrics["figure_layer"]
    first = next(iter(metrics.get("topography", {layer: None})))
    phonemes = metrics["phonemes"]
    slashed = ", ".join(f"/{p.upper()}/" for p in phonemes)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>keras-topomap demo: topographic filter maps of a speech recognizer</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Topographic filter maps of a speech recognizer</h1>",
    ]
    rec = metrics.get("recognizer")
    if rec and rec.get("source") == "the saved model's training run":
        parts.append(
            f"<p>Analysis of the trained model <code>{html.escape(metrics['model'])}</code> "
            f"(backend {html.escape(metrics['backend'])}). Its training run (from the "
            f"<code>metrics.json</code> saved beside it): the <code>"
            f"{html.escape(str(metrics['config']))}</code> config, {rec['parameters']:,} "
            f"parameters, {rec['n_train']} training utterances, {rec['epochs_done']} epochs "
            f"(stopped by {rec['stopped_by']}), weights of epoch {rec['best_epoch']}; test "
            f"character error rate {rec['test_cer']:.3f}, word error rate "
            f"{rec['test_wer']:.3f} on that run's test split.</p>"
        )
    elif rec:
        parts.append(
            f"<p>A Wav2Letter-style recognizer (<code>{html.escape(str(metrics['config']))}"
            f"</code> config, {rec['parameters']:,} parameters) was trained with CTC and the "
            f"topographic regularizer on {rec['n_train']} utterances "
            f"(<code>{html.escape(metrics['data'])}</code>) for {rec['epochs_done']} epochs "
            f"({rec['training_seconds'] / 60:.1f} min, stopped by {rec['stopped_by']}). "
            f"Test character error rate {rec['test_cer']:.3f}, word error rate "
            f"{rec['test_wer']:.3f}, with the weights of the best validation epoch "
            f"({rec['best_epoch']}), which all figures and metrics below analyse. "
            f"Backend: {html.escape(metrics['backend'])}.</p>"
        )
    else:
        parts.append(f"<p>Analysis of the trained model <code>{html.escape(metrics['model'])}"
                     f"</code> (backend {html.escape(metrics['backend'])}).</p>")
    if rec and rec.get("language_model"):
        lm = rec["language_model"]
        parts.append(
            f"<p>Decoded again by beam search with a {lm['order']}-gram character language "
            f"model of the training transcripts (weight {lm['lm_weight']}, length bonus "
            f"{lm['length_bonus']}, both chosen on the validation split), the same test split "
            f"has a character error rate of {lm['cer']:.3f} and a word error rate of "
            f"{lm['wer']:.3f}. The maps below read the model's own greedy transcripts, "
            f"without the language model.</p>")
    parts.append(
        f"<p>GradNAPs (gradient-adjusted neuron activation profiles, target "
        f"<code>{html.escape(metrics['gradnap_target'])}</code>) of every phoneme were computed "
        f"over {metrics['n_test_utterances']} test utterances on every topographic layer. "
        f"All numbers are in <a href=\"metrics.json\">metrics.json</a> "
        f"(table: <a href=\"metrics.md\">metrics.md</a>).</p>"
    )
    layout = metrics.get("layout") or {}
    if layout.get("kind") == "fitted":
        parts.append(
            "<p>The filters of every layer are shown in a layout fitted after training "
            "(<code>keras_topomap.layout.FilterLayout</code>): the grid positions that make the "
            f"GradNAP maps of {layout['n_train_utterances']} training utterances smooth. The "
            "model analysed is the trained one with its filters reordered, which computes the "
            "same outputs. Every map below is of the test utterances, which the layout never "
            "saw, and is tested against random layouts of its own values; the animation shows "
            "the order the filters had in training.</p>"
        )
    if "figure1" in files:
        parts += ["<h2>Figure 1</h2>", _figure(
            files["figure1"],
            "The paper's Figure 1 reproduced: A, the first layer's filters on their grid and two "
            f"3x3 neighbourhoods; B, GradNAPs of {slashed} on layer {layer} and optimal inputs of "
            "their most responsive region. Panels A and B are also shown separately below."),
            _verdict(metrics, first), _verdict(metrics, layer)]
    if "figure1a" in files:
        parts += ["<h2>A: neighbouring filters are similar</h2>", _figure(
            files["figure1a"],
            "Left: every filter of the first layer drawn as a small image (mel band upwards, time "
            "to the right, each filter on its own colour scale), placed at its grid position. "
            "Right: close-ups of the two most coherent non-overlapping 3x3 neighbourhoods "
            "(highest mean cosine similarity of the centre filter to its neighbours, given in "
            "the titles; the centre is framed). Random filter order would give about 0."),
            _verdict(metrics, first)]
    if "figure1b" in files:
        parts += [f"<h2>B: phoneme responses on the map ({html.escape(layer)})</h2>", _figure(
            files["figure1b"],
            "Per phoneme: the GradNAP values on the grid (\"on grid\"), the same smoothed by a "
            "non-strided 3x3 average with the most responsive 3x3 region outlined, the optimal "
            "input of each filter of that region (\"single-filter\", placed as the filters sit "
            "in the region) and of the region as a whole (\"joint\"). Optimal inputs are "
            "normalised log-mel patches (mel band upwards, time to the right) covering the "
            "layer's receptive field."), _verdict(metrics, layer)]
    if wavs:
        parts += ["<h3>Listen to the optimal inputs</h3>",
                  "<p>The features inverted to audio (Griffin-Lim; a sketch of which bands and "
                  "rhythms a region likes, not natural speech).</p><table class=\"sounds\">"]
        for phoneme, sounds in wavs.items():
            cells = [f"<td>/{html.escape(phoneme.upper())}/</td>"]
            for key, path in sounds.items():
                what = "joint" if key == "joint" else f"filter {key}"
                cells.append(f'<td>{what}<br><audio controls preload="none" '
                             f'src="{html.escape(path)}"></audio></td>')
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        for phoneme in wavs:
            key = f"optimal_inputs_{phoneme}"
            if key in files:
                parts.append(_figure(files[key], f"/{phoneme.upper()}/: the optimal inputs with "
                                                 "time (s) and mel frequency (Hz) axes."))
    if "gradnap_eeg" in files:
        parts += ["<h2>EEG-style view</h2>", _figure(
            files["gradnap_eeg"],
            f"The smoothed GradNAP maps of {slashed} on {layer}, interpolated and drawn with "
            "contour lines like a scalp map; a map that is not smoother than chance on its raw "
            "values is greyed out."), _verdict(metrics, layer)]
    if "dendrogram" in files:
        parts += ["<h2>Which phonemes get similar profiles?</h2>", _figure(
            files["dendrogram"],
            f"Average-linkage clustering of the phoneme GradNAP profiles of {layer} (cosine "
            "distance)."), _verdict(metrics, layer)]
    if "animation" in files or animations:
        parts.append("<h2>The map during training</h2>")
        if "animation" in files:
            parts.append(_figure(
                files["animation"],
                f"Mean activation of layer {layer} over a fixed probe of validation utterances, "
                "smoothed, after every epoch (TopoMapCallback), in the filters' training order."))
            parts.append(_verdict(metrics, layer))
        if animations:
            links = ", ".join(f'<a href="{html.escape(a)}">{html.escape(Path(a).stem)}</a>'
                              for a in animations)
            parts.append(f"<p>Animations of every layer: {links}.</p>")
    if "training" in files:
        parts.append(_figure(files["training"], "Learning curves: CTC loss, validation "
                                                "character error rate and the kernel "
                                                "topography score of every layer per epoch."))
    parts += [
        "<h2>Metrics</h2>",
        "<p><b>Topography S</b>: mean weighted cosine similarity of each filter to its 3x3 grid "
        "neighbours (1 = neighbours equal, about 0 without order); <b>permuted S</b> and "
        "<b>z</b>: the same for randomly permuted filters and how many standard deviations S "
        "lies above. GradNAP maps (mean over phonemes): <b>Moran's I</b> (spatial "
        "autocorrelation; about 0 for random maps, shown as <b>permuted I</b>), "
        "<b>blur-error AUC</b> (how much the map changes when blurred; lower = smoother) and "
        "<b>localisation</b> (share of the positive GradNAP mass inside the most responsive 3x3 "
        "region). Activity on the test frames: <b>correlation falloff</b> (how much more "
        "grid neighbours' activations correlate than those of two filters at random; about 0 "
        "when the layout ignores the grid; z against random layouts) and <b>dead</b> (share "
        "of filters that never fire).</p>",
        _markdown_table(table),
    ]
    if "activity_correlation" in files:
        parts.append(_figure(
            files["activity_correlation"],
            "Mean correlation of the activations of two filters against their distance on the "
            "grid (test frames; shaded: standard error of the mean), and the same for random "
            "layouts of the filters (dashed). A topographic layer's curve starts high and "
            "falls; a layer without topography follows the dashed line."))
    if metrics.get("verdicts"):
        parts.append("<h3>Is each layer topographic?</h3>")
        parts += [_verdict(metrics, name) for name in metrics["verdicts"]]
    mosaics = [(k, v) for k, v in files.items() if k.startswith("gradnap_") and k != "gradnap_eeg"]
    if mosaics:
        parts.append("<h2>GradNAPs of all phonemes, every layer</h2>")
        for key, name in mosaics:
            shown = key[len("gradnap_"):]
            parts.append(_figure(name, f"Smoothed GradNAP maps of every phoneme with test frames "
                                       f"on {html.escape(shown)}, each with Moran's I and z of "
                                       f"its raw map."))
            parts.append(_verdict(metrics, shown))
    parts.append("</body></html>")
    text = "\n".join(parts)
    missing = [f for f in referenced_files(text) if not (out / f).is_file()]
    if missing:
        raise ValueError(f"index.html would link to files missing from {out}: {missing}")
    path = out / "index.html"
    path.write_text(text, encoding="utf-8")
    return path
