"""Which form of the activity regularizer's local term is cheaper at a given layer width?

``keras_topomap.activity`` computes the local term either from the full ``F x F`` correlation
matrix (with :func:`keras_topomap.grid.neighbor_matrix`) or from a neighbour sum of shifted
``(N, F)`` copies; without the global term it switches at ``DENSE_LOCAL_MAX_CHANNELS``. This
script times the compiled value and gradient of the local term (no global term) for both forms
on a masked batch ``--batch x --frames x F``, the two interleaved, for each width of
``--widths``, and prints one row per width. JAX only (``jax.jit``): the switch point was chosen
on the backend the experiments train with.

Usage::

    KERAS_BACKEND=jax python benchmarks/activity_penalty_forms.py
    KERAS_BACKEND=jax python benchmarks/activity_penalty_forms.py --widths 64 --repeats 3  # smoke
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", type=int, default=[64, 256, 512, 1024])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(f"Run with KERAS_BACKEND=jax. Received: {keras.backend.backend()}")
    import jax
    import numpy as np

    from keras_topomap import activity, grid

    rng = np.random.default_rng(0)
    print("| channels | neighbour sum (ms) | correlation matrix (ms) | ratio | load average |")
    print("|---|---|---|---|---|")
    for width in args.widths:
        layout = grid.infer_grid(width)
        x = rng.standard_normal((args.batch, args.frames, width)).astype(np.float32)
        lengths = rng.integers(args.frames // 2, args.frames + 1, args.batch)
        mask = np.arange(args.frames)[None, :] < lengths[:, None]
        timed = {}
        for form, switch in (("shift", 0), ("dense", 10**9)):
            # the switch is read when the function is traced, so each form compiles its own
            activity.DENSE_LOCAL_MAX_CHANNELS = switch
            fn = jax.jit(jax.value_and_grad(
                lambda a, layout=layout, mask=mask: activity.topographic_activity_penalty(
                    a, layout, mask=mask, global_term=False)[0]))
            jax.block_until_ready(fn(x))
            timed[form] = (fn, [])
        for _ in range(args.repeats):
            for fn, times in timed.values():
                start = time.perf_counter()
                jax.block_until_ready(fn(x))
                times.append(time.perf_counter() - start)
        shift, dense = (1000 * float(np.median(timed[k][1])) for k in ("shift", "dense"))
        print(f"| {width} | {shift:.1f} | {dense:.1f} | {dense / shift:.2f} "
              f"| {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
