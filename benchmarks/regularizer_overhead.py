"""How much does the TopographicRegularizer add to a training step of the paper-size recognizer?

Builds the paper's Wav2Letter stack (Conv1D 256x48 stride 2, seven 256x7, 2048x32, 2048x1, 29x1,
same padding, ReLU, 40 input features, 24.7M parameters) twice -- with the regularizer on the 10
hidden convolutions and without -- and times ``train_on_batch`` steps (batch 8 x 300 frames,
Adam, MSE on the logits: the loss does not matter for the cost of the penalty) interleaved in one
process, so both models see the same machine load. Also times the regularizer alone (value and
gradient over all ten kernels, compiled).

Usage::

    python benchmarks/regularizer_overhead.py                 # all three backends, one process each
    python benchmarks/regularizer_overhead.py --backend jax --steps 20

Prints one table row per backend: median step times and their ratio, the median of paired
step ratios, the ratio of median process CPU times per step (less sensitive to other jobs on a
shared machine), the quartiles and range of the paired ratios, the penalty's own time against
its memory-traffic floor (the kernels read once and their gradient written once at this
machine's numpy copy bandwidth), and the 1-minute load average while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from step_timing import interleaved_steps


def build(topographic, n_features=40, n_classes=29, config="paper"):
    """The package's paper-size recognizer (the stack above, or another ``config`` of
    :func:`keras_topomap.models.wav2letter`), compiled with Adam and MSE."""
    import keras

    from keras_topomap.models import wav2letter

    model = wav2letter(
        config,
        n_features=n_features,
        n_classes=n_classes,
        topographic=topographic,
        strength=0.01,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
    return model


def penalty_timer(model):
    """A compiled function computing the summed penalty and its gradient w.r.t. every kernel."""
    import keras

    backend = keras.backend.backend()
    layers = [lyr for lyr in model.layers if getattr(lyr, "kernel_regularizer", None) is not None]
    kernels = [layer.kernel for layer in layers]

    def total(values):
        return sum(layer.kernel_regularizer(v) for layer, v in zip(layers, values))

    if backend == "jax":
        import jax

        fn = jax.jit(jax.value_and_grad(total))
        values = [k.value for k in kernels]

        def run():
            value, grads = fn(values)
            jax.block_until_ready(grads)

    elif backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def fn():
            with tf.GradientTape() as tape:
                value = total([k.value for k in kernels])
            return value, tape.gradient(value, [k.value for k in kernels])

        def run():
            _, grads = fn()
            _ = [g.numpy() for g in grads[:1]]

    else:
        import torch

        params = [k.value for k in kernels]

        def run():
            value = total(params)
            grads = torch.autograd.grad(value, params)
            _ = grads[0].sum().item()

    return run


def memory_floor(n_values, repeats=5):
    """The penalty's memory-traffic floor: its kernels read once and their gradient written once.

    Returns ``(floor_ms, bandwidth_gb_s)``: ``8 * n_values`` bytes (float32 in and out) over this
    machine's copy bandwidth, measured as the best of ``repeats`` numpy copies of a 64 MB array
    (bytes read plus bytes written per second).
    """
    import numpy as np

    source = np.ones(1 << 24, np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)  # touch the pages once
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    bandwidth = 2 * source.nbytes / best
    return 1000 * 8 * n_values / bandwidth, bandwidth / 1e9


def measure(backend, steps, warmup):
    os.environ["KERAS_BACKEND"] = backend
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 300, 40)).astype("float32")
    y = rng.normal(size=(8, 150, 29)).astype("float32")
    plain, topo = build(False), build(True)
    load_before = os.getloadavg()[0]
    # interleaved, alternating which goes first; process CPU time is less sensitive to other jobs
    times = interleaved_steps({"plain": plain, "topo": topo}, [(x, y)], steps, warmup)
    run = penalty_timer(topo)
    for _ in range(warmup):
        run()
    reg_times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        reg_times.append(time.perf_counter() - start)
    plain_ms = 1000 * float(np.median(times["plain"]))
    topo_ms = 1000 * float(np.median(times["topo"]))
    # Paired ratios (each topographic step against the plain step next to it) are robust to
    # slow drifts in machine load.
    pairs = np.array(times["topo"]) / np.array(times["plain"])
    paired = np.median(pairs)
    n_kernel_values = sum(
        int(np.prod(layer.kernel.shape)) for layer in topo.layers
        if getattr(layer, "kernel_regularizer", None) is not None
    )
    floor_ms, bandwidth = memory_floor(n_kernel_values)
    cpu_ratio = np.median(times["topo_cpu"]) / np.median(times["plain_cpu"])
    return {
        "backend": backend,
        "keras": keras.__version__,
        "params": int(topo.count_params()),
        "plain_ms": round(plain_ms, 1),
        "topo_ms": round(topo_ms, 1),
        "ratio_of_medians": round(topo_ms / plain_ms, 3),
        "paired_ratio": round(float(paired), 3),
        "paired_ratio_quartiles": [round(float(q), 3) for q in np.percentile(pairs, [25, 75])],
        "paired_ratio_range": [round(float(pairs.min()), 3), round(float(pairs.max()), 3)],
        "cpu_ratio": round(float(cpu_ratio), 3),
        "penalty_value_and_grad_ms": round(1000 * float(np.median(reg_times)), 1),
        "memory_floor_ms": round(floor_ms, 1),
        "copy_bandwidth_gb_s": round(bandwidth, 1),
        "load_average": round((load_before + os.getloadavg()[0]) / 2, 1),
        "steps": steps,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch", "all"], default="all")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    if args.backend != "all":
        print(json.dumps(measure(args.backend, args.steps, args.warmup)), flush=True)
        return
    rows = []
    for backend in ("tensorflow", "jax", "torch"):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--backend",
                backend,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"The {backend} run failed (exit status {out.returncode}):\n{out.stderr[-3000:]}"
            )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        "| backend | step without (ms) | step with (ms) | ratio (medians) | paired ratio "
        "(quartiles; range) | CPU-time ratio | penalty value+grad (ms) | memory floor (ms) "
        "| load average | date |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    date = time.strftime("%Y-%m-%d")
    for r in rows:
        (q1, q3), (lo, hi) = r["paired_ratio_quartiles"], r["paired_ratio_range"]
        print(
            f"| {r['backend']} | {r['plain_ms']} | {r['topo_ms']} | {r['ratio_of_medians']} "
            f"| {r['paired_ratio']} ({q1}-{q3}; {lo}-{hi}) | {r['cpu_ratio']} "
            f"| {r['penalty_value_and_grad_ms']} | {r['memory_floor_ms']} "
            f"({r['copy_bandwidth_gb_s']} GB/s) | {r['load_average']} | {date} |"
        )


if __name__ == "__main__":
    main()
