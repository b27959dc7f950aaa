"""How much does the TopographicActivityRegularizer add to a training step of the recognizer?

For each backend (a fresh process each, ``KERAS_BACKEND`` set) and each stack (``--configs``),
builds three :func:`keras_topomap.models.wav2letter` models from the same seed, without the
weight regularizer:

- ``plain``: the unmasked recognizer, no activity regularizer;
- ``masked``: padding masks on (``mask_padding=True``), no activity regularizer;
- ``activity``: a :class:`keras_topomap.TopographicActivityRegularizer` on every hidden
  convolution (``activity_strength=0.05, activity_global_strength=0.2``), which also switches
  the padding masks on.

Each is compiled as ``keras_topomap.train`` compiles a run (Adam, ``CTCLoss`` with the model's
stride) and trained with ``train_on_batch`` on fixed random batches of the shape of real ones:
``--batch`` utterances of 40 features whose lengths are drawn from ``[3/8, 1] x --frames`` and
zero-padded to ``--frames``, with packed CTC targets of one label per 8 frames. After
``--warmup`` untimed steps, the three models' steps are interleaved in one process (the order
rotating each step), so load from other jobs hits them alike. Reported per row: median ms/step
of each model, the ratio activity / plain (the issue's target: <= 1.10), the ratio
activity / masked (the regularizer alone, without the cost of carrying the masks), the ratio of
median process CPU times per step, and the 1-minute load average before and after.

Usage::

    python benchmarks/activity_overhead.py --configs paper small --json activity_overhead.json
    python benchmarks/activity_overhead.py --backends jax --configs tiny --steps 3 --warmup 1 \
        --frames 64                                                  # a smoke test, seconds

Prints a markdown table (one row per backend and stack) and the load averages at start and
end; ``--json OUT`` also writes the rows to ``OUT``. ``--max-global-channels N`` adds a fourth
model, the activity one with ``N`` anchor channels for the global term of wider layers,
interleaved with the others and reported below the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from step_timing import BACKENDS, interleaved_steps, run_per_backend

#: The activity regularizer's strengths of the measured model.
ACTIVITY = {"activity_strength": 0.05, "activity_global_strength": 0.2}
#: ``wav2letter`` arguments of the three models, in their interleaving order.
VARIANTS = {
    "plain": {"mask_padding": False},
    "masked": {"mask_padding": True},
    "activity": dict(ACTIVITY, mask_padding=True),
}


def build(config, norm, seed, **kwargs):
    """A recognizer compiled like ``keras_topomap.train`` compiles one (Adam, CTC loss)."""
    import keras

    from keras_topomap import ctc, models

    keras.utils.set_random_seed(seed)
    model = models.wav2letter(config, topographic=False, norm=norm, seed=seed, **kwargs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=ctc.CTCLoss(stride=models.total_stride(model)),
    )
    return model


def random_batches(n_batches, batch, frames, seed, n_features=40, n_classes=29):
    """``n_batches`` (x, y): utterances of ``[3/8, 1] x frames`` frames zero-padded to
    ``frames``, and packed CTC targets (one label per 8 frames, labels 1..n_classes-1)."""
    import numpy as np

    from keras_topomap.datasets.batches import pack_ctc_targets

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        lengths = rng.integers(max(1, 3 * frames // 8), frames + 1, size=batch)
        x = rng.normal(size=(batch, frames, n_features)).astype("float32")
        x[np.arange(frames)[None, :] >= lengths[:, None]] = 0.0  # padding: what Masking drops
        labels = [rng.integers(1, n_classes, size=max(1, n // 8)) for n in lengths]
        out.append((x, pack_ctc_targets(lengths, labels)))
    return out


def measure(config, args):
    """One row: the three models of ``config`` timed on this process's backend."""
    import keras
    import numpy as np

    models = {name: build(config, args.norm, args.seed, **kw) for name, kw in VARIANTS.items()}
    if args.max_global_channels:
        # The same activity model with fewer anchor channels for the global term of wide layers
        sparse = build(config, args.norm, args.seed, **VARIANTS["activity"])
        for layer in sparse.layers:
            if getattr(layer, "activity_regularizer", None) is not None:
                layer.activity_regularizer.max_global_channels = args.max_global_channels
        models["sparse"] = sparse
    batches = random_batches(args.batches, args.batch, args.frames, args.seed)
    load_start = os.getloadavg()[0]
    times = interleaved_steps(models, batches, args.steps, args.warmup)
    ms = {name: 1000 * float(np.median(times[name])) for name in models}
    cpu = {name: float(np.median(times[f"{name}_cpu"])) for name in models}
    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "config": config,
        "norm": args.norm,
        "params": int(models["activity"].count_params()),
        "batch": args.batch,
        "frames": args.frames,
        "plain_ms": round(ms["plain"], 1),
        "masked_ms": round(ms["masked"], 1),
        "activity_ms": round(ms["activity"], 1),
        "ratio": round(ms["activity"] / ms["plain"], 3),
        "ratio_vs_masked": round(ms["activity"] / ms["masked"], 3),
        "masking_ratio": round(ms["masked"] / ms["plain"], 3),
        "cpu_ratio": round(cpu["activity"] / cpu["plain"], 3),
        **({"max_global_channels": args.max_global_channels,
            "sparse_ms": round(ms["sparse"], 1),
            "sparse_ratio": round(ms["sparse"] / ms["plain"], 3),
            "sparse_cpu_ratio": round(cpu["sparse"] / cpu["plain"], 3)}
           if "sparse" in ms else {}),
        "load_start": round(load_start, 2),
        "load_end": round(os.getloadavg()[0], 2),
        "steps": args.steps,
        "warmup": args.warmup,
    }


def print_table(rows, load_start, load_end):
    print(
        "| backend | config | ms/step without | ms/step masked | ms/step with | ratio "
        "| ratio vs masked baseline | CPU-time ratio |"
    )
    print("|---" * 8 + "|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['config']} | {r['plain_ms']} | {r['masked_ms']} "
            f"| {r['activity_ms']} | {r['ratio']} | {r['ratio_vs_masked']} | {r['cpu_ratio']} |"
        )
    for r in rows:
        if "sparse_ms" in r:
            print(f"- {r['backend']} {r['config']}, global term on {r['max_global_channels']} "
                  f"anchor channels: {r['sparse_ms']} ms/step, ratio {r['sparse_ratio']} "
                  f"(CPU-time ratio {r['sparse_cpu_ratio']})")
    print(
        f"\nload average (1, 5, 15 min): start {load_start}, end {load_end}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; target: ratio <= 1.10"
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--configs", nargs="+", default=["paper", "small"],
                        help="wav2letter stacks (paper, small, tiny; checked by the children)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=800, help="padded frames per utterance")
    parser.add_argument("--batches", type=int, default=2, help="distinct batches, cycled")
    parser.add_argument("--norm", choices=["none", "batch"], default="none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write the rows to this JSON file")
    parser.add_argument("--max-global-channels", type=int, default=None,
                        help="also time the activity model with this many anchor channels "
                             "for the global term of wider layers (interleaved with the rest)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.norm = None if args.norm == "none" else args.norm
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        for config in args.configs:
            print(json.dumps(measure(config, args)), flush=True)
        return None
    child_argv = [
        "--configs", *args.configs, "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--batch", str(args.batch), "--frames", str(args.frames), "--batches",
        str(args.batches), "--norm", args.norm or "none", "--seed", str(args.seed),
    ] + (["--max-global-channels", str(args.max_global_channels)]
         if args.max_global_channels else [])
    load_start = tuple(round(v, 2) for v in os.getloadavg())
    rows = run_per_backend(os.path.abspath(__file__), args.backends, child_argv)
    load_end = tuple(round(v, 2) for v in os.getloadavg())
    print_table(rows, load_start, load_end)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_start": load_start, "load_end": load_end, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
