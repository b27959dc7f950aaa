"""GradNAP pass vs ``model.predict`` over the same data, all listed layers at once.

Builds the paper-size Wav2Letter stack (Conv1D 256x48 stride 2, seven 256x7, 2048x32, 2048x1,
29x1; ReLU, same padding) or a small one inline, feeds batches of 8 utterances x 300 frames x 40
features with random phone labels, and times

- ``model.predict`` over all batches (after a warm-up call), and
- ``GradNAP.fit`` over the same batches for every hidden conv layer at once (after a warm-up
  batch, so compilation is excluded on both sides), and the plain NAP (``adjust="none"``, no
  backward pass),

interleaved ``--repeats`` times; the best time of each is reported with their ratio (target:
<= 2.0), with the process CPU time of the same runs (less sensitive to other jobs on shared
cores than wall time) and the 1-minute load average. ``--conv-grad-ab`` adds a GradNAP run
with the backends' own convolution input gradients (``fast_conv_grad=False`` in
:class:`keras_topomap.gradients.ActivationGradients`) interleaved with the others, to measure
what the adapter's flipped-kernel path saves; ``--fft-ab`` one with every convolution's input
gradient computed directly (``fft_conv_grad=False``), to measure what the FFT path for wide
kernels saves. 12 batches by default: enough for per-call costs (TensorFlow's ``predict`` has
tens of ms of them) to stop flattering either side. Run one backend per process::

    KERAS_BACKEND=jax python benchmarks/gradnap_speed.py --config paper

or all three in turn with ``--all-backends``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

CONFIGS = {
    # (filters, kernel, stride) per conv layer before the output layer
    "paper": [(256, 48, 2)] + [(256, 7, 1)] * 7 + [(2048, 32, 1), (2048, 1, 1)],
    "small": [(64, 48, 2)] + [(64, 7, 1)] * 7 + [(256, 32, 1), (256, 1, 1)],
}


def build(config, n_features=40, n_classes=29):
    import keras

    x = keras.Input((None, n_features))
    h = x
    names = []
    for i, (filters, kernel, stride) in enumerate(CONFIGS[config]):
        name = f"conv_{i}"
        h = keras.layers.Conv1D(filters, kernel, strides=stride, padding="same",
                                activation="relu", name=name)(h)
        names.append(name)
    out = keras.layers.Conv1D(n_classes, 1, name="logits")(h)
    return keras.Model(x, out, name=f"wav2letter_{config}"), names


@contextlib.contextmanager
def direct_conv_grad():
    """GradNAPs built inside compute every Conv1D input gradient directly (flipped kernel), none
    by FFT (as with ``ActivationGradients(..., fft_conv_grad=False)``)."""
    from keras_topomap import fast_conv

    original = fast_conv.fast_conv_override
    fast_conv.fast_conv_override = lambda *args: original(None)
    try:
        yield
    finally:
        fast_conv.fast_conv_override = original


@contextlib.contextmanager
def backend_conv_grad():
    """GradNAPs built inside use the backends' own Conv1D input gradients (as with
    ``ActivationGradients(..., fast_conv_grad=False)``, which GradNAP does not expose)."""
    from keras_topomap import fast_conv

    original = fast_conv.fast_conv_override
    fast_conv.fast_conv_override = lambda *args: None
    try:
        yield
    finally:
        fast_conv.fast_conv_override = original


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def frame_batches(n_batches, batch_size, n_frames, seed=0):
    """Random features ``x`` (``n_batches * batch_size`` utterances of ``n_frames`` x 40) and
    the same cut into ``(features, phone labels)`` batches (labels -1..38, -1: none)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_batches * batch_size, n_frames, 40)).astype("float32")
    labels = rng.integers(-1, 39, size=(n_batches * batch_size, n_frames)).astype("int32")
    batches = [(x[i : i + batch_size], labels[i : i + batch_size])
               for i in range(0, len(x), batch_size)]
    return x, batches


def predict_and_gradnap(model, grids, x, batches, batch_size, nap=True):
    """The timed runs and their warm-up.

    Returns ``(runs, warm_up)``: ``runs`` is ``{"predict": ..., "gradnap": ...[, "nap": ...]}``,
    functions running ``model.predict`` over ``x`` and a fresh fit of a GradNAP (and of a NAP,
    ``adjust="none"``) of every layer of ``grids`` (name -> grid) over ``batches`` (the same
    data); ``warm_up()`` compiles the GradNAP (and NAP) steps on the first batch."""
    from keras_topomap.gradnap import GradNAP

    names = list(grids)
    # Every batch has the same length here, so no time bucketing is needed: time_bucket=4 (a
    # multiple of the stride) keeps 300 frames at 300, exactly what model.predict sees.
    gn = GradNAP(model, names, grids=grids, n_groups=39, time_bucket=4, verbose=0)
    runs = {
        "predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
        "gradnap": lambda: gn.fit(batches),
    }
    if nap:
        plain_nap = GradNAP(model, names, grids=grids, n_groups=39, adjust="none",
                            time_bucket=4, verbose=0)
        runs["nap"] = lambda: plain_nap.fit(batches)

    def warm_up():
        gn.partial_fit(batches[:1])
        if nap:
            plain_nap.partial_fit(batches[:1])

    return runs, warm_up


def run(config, n_batches, batch_size, n_frames, repeats, conv_grad_ab=False, fft_ab=False):
    import keras

    from keras_topomap import grid
    from keras_topomap.gradnap import GradNAP

    keras.utils.set_random_seed(0)
    model, names = build(config)
    x, batches = frame_batches(n_batches, batch_size, n_frames)
    grids = {name: grid.infer_grid(model.get_layer(name).filters) for name in names}
    runs, warm_up = predict_and_gradnap(model, grids, x, batches, batch_size)
    if conv_grad_ab:
        with backend_conv_grad():
            plain = GradNAP(model, names, grids=grids, n_groups=39, time_bucket=4, verbose=0)
            plain.partial_fit(batches[:1])  # the step is built (and compiled) here
        runs["gradnap_backend_conv_grad"] = lambda: plain.fit(batches)
    if fft_ab:
        with direct_conv_grad():
            direct = GradNAP(model, names, grids=grids, n_groups=39, time_bucket=4, verbose=0)
            direct.partial_fit(batches[:1])
        runs["gradnap_direct_conv_grad"] = lambda: direct.fit(batches)

    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)  # warm-up / compile
    warm_up()  # the GradNAP and NAP steps compile here
    walls = {name: [] for name in runs}
    cpus = {name: [] for name in runs}
    loads = []
    for _ in range(repeats):
        for name, fn in runs.items():
            wall, cpu = _timed(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
        loads.append(os.getloadavg()[0])
    best = {name: min(v) for name, v in walls.items()}
    best_cpu = {name: min(v) for name, v in cpus.items()}
    best_p, best_g, best_n = best["predict"], best["gradnap"], best["nap"]
    row = {
        "backend": keras.backend.backend(),
        "config": config,
        "layers": len(names),
        "batches": n_batches,
        "batch": f"{batch_size}x{n_frames}x40",
        "predict_s": round(best_p, 3),
        "gradnap_s": round(best_g, 3),
        "ratio": round(best_g / best_p, 2),
        "nap_s": round(best_n, 3),
        "nap_ratio": round(best_n / best_p, 2),
        "cpu_ratio": round(best_cpu["gradnap"] / best_cpu["predict"], 2),
        "load": f"{min(loads):.1f}-{max(loads):.1f}",
    }
    if conv_grad_ab:
        plain_s = best["gradnap_backend_conv_grad"]
        row.update(backend_conv_grad_s=round(plain_s, 3),
                   backend_conv_grad_ratio=round(plain_s / best_p, 2))
    if fft_ab:
        direct_s = best["gradnap_direct_conv_grad"]
        row.update(direct_conv_grad_s=round(direct_s, 3),
                   direct_conv_grad_ratio=round(direct_s / best_p, 2))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), nargs="+", default=["small", "paper"])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--all-backends", action="store_true",
                        help="run tensorflow, jax and torch in separate processes")
    parser.add_argument("--conv-grad-ab", action="store_true",
                        help="also time GradNAP with the backends' own conv input gradients")
    parser.add_argument("--fft-ab", action="store_true",
                        help="also time GradNAP without the FFT input gradient (all convs direct)")
    args = parser.parse_args(argv)
    if args.all_backends:
        rows = []
        for backend in ("tensorflow", "jax", "torch"):
            cmd = [sys.executable, __file__, "--config", *args.config, "--batches",
                   str(args.batches), "--batch-size", str(args.batch_size), "--frames",
                   str(args.frames), "--repeats", str(args.repeats)]
            cmd += ["--conv-grad-ab"] if args.conv_grad_ab else []
            cmd += ["--fft-ab"] if args.fft_ab else []
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rows += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        print_table(rows)
        return rows
    rows = [run(c, args.batches, args.batch_size, args.frames, args.repeats, args.conv_grad_ab,
                args.fft_ab) for c in args.config]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def print_table(rows):
    ab = any("backend_conv_grad_s" in r for r in rows)
    fft = any("direct_conv_grad_s" in r for r in rows)
    print("| backend | config | layers | data | predict (s) | GradNAP (s) | ratio | CPU ratio "
          "| NAP (s) | NAP ratio | load |" + (" backend conv grad (s) | ratio |" if ab else "")
          + (" no FFT (s) | ratio |" if fft else ""))
    print("|---" * (11 + 2 * ab + 2 * fft) + "|")
    for r in rows:
        line = (f"| {r['backend']} | {r['config']} | {r['layers']} | {r['batches']} x "
                f"{r['batch']} | {r['predict_s']} | {r['gradnap_s']} | {r['ratio']} | "
                f"{r['cpu_ratio']} | {r['nap_s']} | {r['nap_ratio']} | {r['load']} |")
        if ab:
            line += (f" {r.get('backend_conv_grad_s', '')} | "
                     f"{r.get('backend_conv_grad_ratio', '')} |")
        if fft:
            line += (f" {r.get('direct_conv_grad_s', '')} | "
                     f"{r.get('direct_conv_grad_ratio', '')} |")
        print(line)


if __name__ == "__main__":
    main()
