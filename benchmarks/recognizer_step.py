"""Training-step time of the Wav2Letter recognizer, with and without the topographic constraint.

Times ``model.train_on_batch`` (CTC loss through :class:`keras_topomap.ctc.CTCLoss`, Adam) on
random features of a fixed shape, after a warm-up step that traces/compiles the step.

Usage::

    KERAS_BACKEND=tensorflow python benchmarks/recognizer_step.py --config small --batch 16 \
        --frames 320 --steps 10
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from keras_topomap import ctc, models


def time_steps(config, topographic, batch, frames, steps, seed=0):
    keras.utils.set_random_seed(seed)
    model = models.wav2letter(config, topographic=topographic)
    model.compile(keras.optimizers.Adam(1e-3), loss=ctc.CTCLoss(stride=2))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, frames, 40)).astype("float32")
    n_labels = frames // 8
    labels = [rng.integers(1, 29, size=n_labels) for _ in range(batch)]
    from keras_topomap.datasets import pack_ctc_targets

    y = pack_ctc_targets(np.full(batch, frames), labels)
    model.train_on_batch(x, y)  # trace / compile
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="small", choices=sorted(models.CONFIGS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=320)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    print(f"backend {keras.backend.backend()}, config {args.config}, batch {args.batch} x "
          f"{args.frames} frames x 40 features")
    for topographic in (False, True):
        median, best = time_steps(args.config, topographic, args.batch, args.frames, args.steps)
        kind = "topographic  " if topographic else "unconstrained"
        print(f"  {kind}: median {median * 1000:7.1f} ms/step (best {best * 1000:.1f})")


if __name__ == "__main__":
    main()
