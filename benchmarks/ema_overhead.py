"""What training with a moving average of the weights (``TrainConfig.ema_momentum``) costs.

Times ``train_on_batch`` of the demo's recipe (``small`` config, batch normalization,
SpecAugment, dropout 0.1, the default weight constraint) with and without Keras' ``use_ema``,
interleaved in one process on random features of a fixed shape (one compiled step each), and
the epoch-end swap of :func:`keras_topomap.training_callbacks.averaged_weights`.

Usage::

    KERAS_BACKEND=jax python benchmarks/ema_overhead.py --rounds 8 --steps 10
"""

from __future__ import annotations

import argparse
import os
import time

import keras
import numpy as np

from keras_topomap import train
from keras_topomap.datasets import pack_ctc_targets
from keras_topomap.training_callbacks import averaged_weights


def _batch(batch, frames, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, frames, 40)).astype("float32")
    labels = [rng.integers(1, 29, size=frames // 8) for _ in range(batch)]
    return x, pack_ctc_targets(np.full(batch, frames), labels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="small")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=320)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--momentum", type=float, default=0.995)
    args = p.parse_args(argv)
    x, y = _batch(args.batch, args.frames)
    recipe = dict(config=args.config, norm="batch", augment=True, dropout=0.1)
    built = {}
    for name, ema in (("raw", None), ("ema", args.momentum)):
        keras.utils.set_random_seed(0)
        model = train._build(train.TrainConfig(**recipe, ema_momentum=ema), 40, 51)
        model.train_on_batch(x, y)  # compile
        built[name] = model
    times = {name: [] for name in built}
    for _ in range(args.rounds):
        for name, model in built.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(x, y)
            keras.ops.convert_to_numpy(model.trainable_variables[0])  # wait for the device
            times[name].append((time.perf_counter() - start) / args.steps)
    swaps = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        with averaged_weights(built["ema"]):
            pass
        swaps.append(time.perf_counter() - start)
    raw, ema = np.asarray(times["raw"]), np.asarray(times["ema"])
    ratios = ema / raw
    print(f"backend {keras.backend.backend()}, {args.config}, batch {args.batch} x "
          f"{args.frames} frames, {args.rounds} rounds x {args.steps} steps, load "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"  raw step  median {np.median(raw) * 1e3:6.1f} ms  (min {raw.min() * 1e3:.1f})")
    print(f"  EMA step  median {np.median(ema) * 1e3:6.1f} ms  (min {ema.min() * 1e3:.1f})")
    print(f"  ratio EMA / raw, per round: median {np.median(ratios):.3f} "
          f"(range {ratios.min():.3f}-{ratios.max():.3f})")
    print(f"  averaged_weights swap in and out: median {np.median(swaps) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
