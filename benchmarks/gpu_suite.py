"""The speed figures of issue 21 in one run on one GPU: regularizer overheads, GradNAP, training.

Usage::

    KERAS_BACKEND=jax python benchmarks/gpu_suite.py --json gpu.json     # under 8 minutes
    python benchmarks/gpu_suite.py --backends jax torch tensorflow --json gpu.json
    python benchmarks/gpu_suite.py --smoke          # tiny sizes on the CPU, seconds: a test

Each backend (``--backends``; default: ``KERAS_BACKEND`` if set, else ``jax``) runs in a fresh
process with ``KERAS_BACKEND`` set (``step_timing.run_per_backend``), on the paper stack
(``keras_topomap.models.wav2letter("paper")``, 24.7 M parameters) at a GPU-sized batch:
``--batch`` 32 utterances x ``--frames`` 1,000 frames x 40 features. Every measurement
compiles and warms up first (``--warmup`` untimed steps per model), then runs ``--steps``
(default 10) rounds in which the compared runs alternate (the order rotating each round), so
drifts in the machine's load fall on both alike. One row per backend and measurement:

- ``weight_regularizer``: ``train_on_batch`` of the recognizer with a
  :class:`keras_topomap.TopographicRegularizer` on the 10 hidden convolutions against the same
  model without it, both built as ``benchmarks/regularizer_overhead.py`` builds them (Adam, MSE
  on the logits, random targets). Ratio: regularized / plain step.
- ``activity_regularizer``: ``train_on_batch`` of the recognizer with a
  :class:`keras_topomap.TopographicActivityRegularizer` on every hidden convolution (padding
  masks on) against the plain one, built as ``benchmarks/activity_overhead.py`` builds them
  (Adam, CTC loss, utterances of random lengths zero-padded to ``--frames``). Ratio:
  activity / plain step.
- ``gradnap``: a ``GradNAP.fit`` of all 10 hidden convolutions over ``--gradnap-batches``
  batches against ``model.predict`` over the same data, as ``benchmarks/gradnap_speed.py``
  measures it (random phone labels, compilation excluded). Ratio: GradNAP / predict.
- ``training_throughput``: ``train_on_batch`` steps of the plain CTC recognizer of
  ``activity_regularizer`` alone; utterances/s = ``--batch`` / median step time.

Each row gives the median ms of both sides with their min-max over the rounds (the JSON also
has the quartiles), the ratio of the medians (wall clock), the ratio of the median process CPU
times (host work: on a GPU mostly dispatch, on a CPU the computation), the device the backend
runs on (its own name for it) and the backend. The device is read from the backend; where it
is a CPU the run says that no GPU was found, carries on, and labels its figures as CPU
figures.

Time guard (``--max-minutes``, default 8): no measurement and no round starts after 85% of it
(a note says what was skipped), and a backend's process still running when it is over is
stopped, keeping the rows it had finished. ``--smoke`` runs the tiny stack (batch 2 x 64 frames,
2 rounds after 1 warm-up step, 2 GradNAP batches) through every measurement, in seconds on a
CPU; its figures mean nothing. Prints a markdown table; ``--json OUT`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import activity_overhead
import gradnap_speed
import regularizer_overhead
from step_timing import BACKENDS, interleaved_steps, run_per_backend, spread

#: The rows of a backend, in their order (see the module docstring).
MEASUREMENTS = ("weight_regularizer", "activity_regularizer", "gradnap", "training_throughput")
#: (config, batch, frames, steps, warmup, gradnap batches) of a full run and of ``--smoke``.
FULL = {"config": "paper", "batch": 32, "frames": 1000, "steps": 10, "warmup": 2,
        "gradnap_batches": 4}
SMOKE = {"config": "tiny", "batch": 2, "frames": 64, "steps": 2, "warmup": 1,
         "gradnap_batches": 2}
#: Share of ``--max-minutes`` after which no measurement or round starts.
SOFT_LIMIT = 0.85


def device_info():
    """``{"device": name, "device_type": "gpu" or "cpu"}`` of this process's Keras backend."""
    import keras

    backend = keras.backend.backend()
    cpu = {"device": f"CPU ({platform.machine()}, {os.cpu_count()} cores)", "device_type": "cpu"}
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return cpu
        return {"device": device.device_kind, "device_type": device.platform}
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return cpu
        details = tf.config.experimental.get_device_details(gpus[0])
        return {"device": details.get("device_name", gpus[0].name), "device_type": "gpu"}
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return cpu
        return {"device": torch.cuda.get_device_name(0), "device_type": "gpu"}
    return dict(cpu, device=f"{backend} backend: device unknown", device_type="unknown")


def compare(times, baseline, measured, labels):
    """A row's figures for two interleaved runs (``times`` as ``interleaved_steps`` gives)."""
    import numpy as np

    base, other = spread(times[baseline]), spread(times[measured])
    cpu = np.median(times[f"{measured}_cpu"]) / np.median(times[f"{baseline}_cpu"])
    return {
        "rounds": len(times[baseline]),
        "baseline": labels[0],
        "measured": labels[1],
        "baseline_ms": base,
        "measured_ms": other,
        "wall_ratio": round(other["median_ms"] / base["median_ms"], 3),
        "cpu_ratio": round(float(cpu), 3),
    }


def weight_regularizer(args, cache):
    import numpy as np

    from keras_topomap import models

    rng = np.random.default_rng(args.seed)
    plain = regularizer_overhead.build(False, config=args.config)
    regularized = regularizer_overhead.build(True, config=args.config)
    frames_out = -(-args.frames // models.total_stride(plain))
    x = rng.normal(size=(args.batch, args.frames, 40)).astype("float32")
    y = rng.normal(size=(args.batch, frames_out, 29)).astype("float32")
    times = interleaved_steps({"plain": plain, "regularized": regularized}, [(x, y)],
                              args.steps, args.warmup, args.soft_deadline)
    return compare(times, "plain", "regularized", ("plain step", "regularized step"))


def activity_regularizer(args, cache):
    variants = {name: activity_overhead.VARIANTS[name] for name in ("plain", "activity")}
    built = {name: activity_overhead.build(args.config, args.norm, args.seed, **kwargs)
             for name, kwargs in variants.items()}
    cache["ctc_plain"] = built["plain"]  # also the model of training_throughput
    times = interleaved_steps(built, ctc_batches(args, cache), args.steps, args.warmup,
                              args.soft_deadline)
    return compare(times, "plain", "activity", ("plain step", "activity step"))


def ctc_batches(args, cache):
    if "ctc_batches" not in cache:
        cache["ctc_batches"] = activity_overhead.random_batches(2, args.batch, args.frames,
                                                                args.seed)
    return cache["ctc_batches"]


def gradnap(args, cache):
    from keras_topomap import models

    model = models.wav2letter(args.config, topographic=False, seed=args.seed)
    x, batches = gradnap_speed.frame_batches(args.gradnap_batches, args.batch, args.frames,
                                             args.seed)
    runs, warm_up = gradnap_speed.predict_and_gradnap(
        model, models.layer_grids(args.config), x, batches, args.batch, nap=False)
    warm_up()
    for _ in range(max(1, args.warmup)):  # whole passes: a first fit still pays set-up costs
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    times.update({f"{name}_cpu": [] for name in runs})
    names = list(runs)
    for i in range(args.steps):
        if time.time() > args.soft_deadline:
            break
        for name in names[i % 2:] + names[: i % 2]:
            start, cpu_start = time.perf_counter(), time.process_time()
            runs[name]()
            times[name].append(time.perf_counter() - start)
            times[f"{name}_cpu"].append(time.process_time() - cpu_start)
    row = compare(times, "predict", "gradnap", ("model.predict", "GradNAP.fit"))
    row["gradnap_batches"] = args.gradnap_batches
    return row


def training_throughput(args, cache):
    model = cache.get("ctc_plain") or activity_overhead.build(
        args.config, args.norm, args.seed, **activity_overhead.VARIANTS["plain"])
    times = interleaved_steps({"train": model}, ctc_batches(args, cache), args.steps,
                              args.warmup, args.soft_deadline)
    steps = spread(times["train"])
    return {
        "rounds": len(times["train"]),
        "baseline": "plain CTC step",
        "baseline_ms": steps,
        "utterances_per_s": round(1000 * args.batch / steps["median_ms"], 1),
        "utterances_per_s_range": [round(1000 * args.batch / steps["max_ms"], 1),
                                   round(1000 * args.batch / steps["min_ms"], 1)],
    }


RUNNERS = {"weight_regularizer": weight_regularizer, "activity_regularizer": activity_regularizer,
           "gradnap": gradnap, "training_throughput": training_throughput}


def child(args):
    """Run the measurements on this process's backend, one JSON row each as it is done."""
    import keras

    keras.utils.set_random_seed(args.seed)
    common = {"backend": keras.backend.backend(), "keras": keras.__version__, **device_info(),
              "config": args.config, "batch": args.batch, "frames": args.frames,
              "warmup": args.warmup, "smoke": args.smoke}
    cache = {}
    for name in args.measurements:
        row = dict(common, measurement=name)
        if time.time() > args.soft_deadline:
            row["skipped"] = "not started: the time guard (--max-minutes) had passed"
        else:
            started = time.time()
            row.update(RUNNERS[name](args, cache))
            row["seconds"] = round(time.time() - started, 1)
            if row["rounds"] == 0:
                row["skipped"] = "no round timed: the time guard passed during the warm-up"
        row["load_average"] = round(os.getloadavg()[0], 2)
        print(json.dumps(row), flush=True)


def cell(figures):
    return f"{figures['median_ms']:g} ({figures['min_ms']:g}-{figures['max_ms']:g})"


def print_table(rows, notes):
    for note in notes:
        print(f"**{note}**\n")
    print("| backend | device | measurement | rounds | baseline: median ms (min-max) "
          "| measured: median ms (min-max) | wall ratio | CPU-time ratio | utterances/s |")
    print("|---" * 9 + "|")
    for r in rows:
        if "measurement" not in r or "skipped" in r:
            continue
        device = r["device"] + (" (CPU figures)" if r["device_type"] == "cpu" else "")
        measured = (f"{r['measured']} {cell(r['measured_ms'])}" if "measured_ms" in r else "-")
        print(f"| {r['backend']} | {device} | {r['measurement']} | {r['rounds']} "
              f"| {r['baseline']} {cell(r['baseline_ms'])} | {measured} "
              f"| {r.get('wall_ratio', '-')} | {r.get('cpu_ratio', '-')} "
              f"| {r.get('utterances_per_s', '-')} |")


def report_notes(rows, args):
    """Lines said above the table: smoke run, missing GPU, measurements skipped or stopped."""
    notes = []
    if args.smoke:
        notes.append("Smoke run (tiny stack and batch): the figures only show that every "
                     "measurement runs.")
    cpu_backends = sorted({r["backend"] for r in rows if r.get("device_type") == "cpu"})
    if cpu_backends:
        notes.append(f"No GPU found ({', '.join(cpu_backends)}): these are CPU figures, "
                     "not GPU figures.")
    for r in rows:
        if "skipped" in r:
            notes.append(f"{r['backend']} {r['measurement']} skipped: {r['skipped']}.")
        if "killed" in r:
            done = {x["measurement"] for x in rows
                    if x["backend"] == r["backend"] and "measurement" in x}
            left = [m for m in args.measurements if m not in done]
            notes.append(f"{r['backend']}: {r['killed']} (--max-minutes {args.max_minutes:g}); "
                         f"not measured: {', '.join(left) or 'none'}.")
    return notes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_backend = os.environ.get("KERAS_BACKEND", "jax")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS,
                        default=[default_backend if default_backend in BACKENDS else "jax"])
    parser.add_argument("--config", help="wav2letter stack (default paper; tiny with --smoke)")
    parser.add_argument("--batch", type=int, help="utterances per batch (default 32)")
    parser.add_argument("--frames", type=int, help="frames per utterance (default 1000)")
    parser.add_argument("--steps", type=int, help="timed rounds per measurement (default 10)")
    parser.add_argument("--warmup", type=int, help="untimed steps per model first (default 2)")
    parser.add_argument("--gradnap-batches", type=int, help="batches of a GradNAP fit (4)")
    parser.add_argument("--norm", choices=["none", "batch"], default="none",
                        help="normalization of the CTC recognizers (activity, throughput)")
    parser.add_argument("--measurements", nargs="+", choices=MEASUREMENTS,
                        default=list(MEASUREMENTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=8.0,
                        help="time guard of the whole run (default 8)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny stack and batch, 2 rounds: every measurement in seconds")
    parser.add_argument("--json", metavar="OUT", help="also write the rows to this JSON file")
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("batch", "frames", "steps", "gradnap_batches"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.max_minutes <= 0:
        parser.error("--warmup must be >= 0 and --max-minutes > 0")
    args.norm = None if args.norm == "none" else args.norm
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        args.soft_deadline = args.deadline
        child(args)
        return None
    started = time.time()
    deadline = started + 60 * args.max_minutes
    child_argv = ["--smoke"] if args.smoke else []
    for key in ("config", "batch", "frames", "steps", "warmup", "gradnap_batches", "seed"):
        child_argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    child_argv += ["--norm", args.norm or "none", "--measurements", *args.measurements,
                   "--deadline", repr(started + SOFT_LIMIT * 60 * args.max_minutes)]
    rows = run_per_backend(os.path.abspath(__file__), args.backends, child_argv,
                           deadline=deadline)
    notes = report_notes(rows, args)
    print(f"GPU suite, {time.strftime('%Y-%m-%d %H:%M')}: {args.config} stack, batch "
          f"{args.batch} x {args.frames} frames x 40 features, {args.steps} rounds after "
          f"{args.warmup} warm-up steps; {time.time() - started:.0f} s\n")
    print_table(rows, notes)
    if args.json:
        settings = {key: getattr(args, key) for key in ("backends", "config", "batch", "frames",
                    "steps", "warmup", "gradnap_batches", "norm", "max_minutes", "smoke")}
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": settings,
                       "gpu_found": any(r.get("device_type") == "gpu" for r in rows),
                       "seconds": round(time.time() - started, 1), "notes": notes,
                       "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
