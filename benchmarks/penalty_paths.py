"""The weight penalty's value + gradient by each implementation, per kernel shape and backend.

Times :func:`keras_topomap.regularizers.topographic_penalty` with ``implementation="reference"``
(the ``keras.ops`` code) and ``"fused"`` (the backend's path in :mod:`keras_topomap.fast_penalty`)
on the kernel shapes of the paper stack and the small stack, the two interleaved in one process
per backend, compiled as a training step runs them (``tf.function`` without XLA on TensorFlow,
``jax.jit`` on JAX, eager on PyTorch). This is the measurement behind
``fast_penalty.AUTO_MIN_ELEMENTS``.

Usage::

    python benchmarks/penalty_paths.py                      # TensorFlow and PyTorch
    python benchmarks/penalty_paths.py --backends torch --rounds 12

Prints one markdown row per backend and shape: the median time of each path over the rounds,
their ratio (fused / reference), the largest relative difference of the gradients and the
1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# (kernel shape, grid): the paper stack's four kernel shapes, then the small stack's
SHAPES = [
    ((48, 40, 256), (16, 16)),
    ((7, 256, 256), (16, 16)),
    ((32, 256, 2048), (64, 32)),
    ((1, 2048, 2048), (64, 32)),
    ((7, 64, 64), (8, 8)),
    ((32, 64, 256), (16, 16)),
]


def _timer(backend, kernel_np, grid, implementation):
    """A function running one value + gradient of the penalty, as a train step would."""
    from keras_topomap.regularizers import topographic_penalty

    if backend == "jax":
        import jax

        fn = jax.jit(jax.value_and_grad(
            lambda k: topographic_penalty(k, grid, implementation=implementation)))
        kernel = jax.numpy.asarray(kernel_np)

        def run():
            value, grad = fn(kernel)
            jax.block_until_ready(grad)
            return grad

    elif backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(kernel_np)

        @tf.function
        def fn():
            with tf.GradientTape() as tape:
                value = topographic_penalty(variable, grid, implementation=implementation)
            return value, tape.gradient(value, variable)

        def run():
            _, grad = fn()
            return grad.numpy()

    else:
        import torch

        variable = torch.tensor(kernel_np, requires_grad=True)

        def run():
            value = topographic_penalty(variable, grid, implementation=implementation)
            (grad,) = torch.autograd.grad(value, variable)
            return grad

    return run


def measure(backend, rounds, warmup):
    os.environ["KERAS_BACKEND"] = backend
    import numpy as np
    from keras import ops

    rng = np.random.default_rng(0)
    rows = []
    for shape, grid in SHAPES:
        kernel = rng.normal(size=shape).astype("float32")
        runs = {impl: _timer(backend, kernel, grid, impl) for impl in ("reference", "fused")}
        grads = {impl: ops.convert_to_numpy(run()) for impl, run in runs.items()}
        for _ in range(warmup):
            for run in runs.values():
                run()
        times = {impl: [] for impl in runs}
        load_before = os.getloadavg()[0]
        for i in range(rounds):  # interleaved, alternating which goes first
            order = list(runs) if i % 2 == 0 else list(runs)[::-1]
            for impl in order:
                start = time.perf_counter()
                runs[impl]()
                times[impl].append(time.perf_counter() - start)
        ref, fused = (1000 * float(np.median(times[k])) for k in ("reference", "fused"))
        diff = np.abs(grads["fused"] - grads["reference"]).max() / np.abs(grads["reference"]).max()
        rows.append({
            "backend": backend, "shape": list(shape), "grid": list(grid),
            "elements": int(np.prod(shape)), "reference_ms": round(ref, 2),
            "fused_ms": round(fused, 2), "ratio": round(fused / ref, 3),
            "grad_rel_diff": float(f"{diff:.1e}"),
            "load_average": round((load_before + os.getloadavg()[0]) / 2, 1),
        })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "torch"],
                        choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.rounds, args.warmup)), flush=True)
        return
    print("| backend | kernel | values | reference (ms) | fused (ms) | fused / reference "
          "| gradient rel. diff | load average |")
    print("|---|---|---|---|---|---|---|---|")
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run(
            [sys.executable, __file__, "--worker", backend, "--rounds", str(args.rounds),
             "--warmup", str(args.warmup)],
            env=env, capture_output=True, text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"The {backend} run failed (exit status {out.returncode}):\n"
                               f"{out.stderr[-3000:]}")
        for r in json.loads(out.stdout.strip().splitlines()[-1]):
            shape = " x ".join(map(str, r["shape"]))
            print(f"| {r['backend']} | {shape} | {r['elements']:,} | {r['reference_ms']} "
                  f"| {r['fused_ms']} | {r['ratio']} | {r['grad_rel_diff']} "
                  f"| {r['load_average']} |", flush=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
