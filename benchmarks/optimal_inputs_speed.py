"""Speed of optimal inputs: every filter of a 256-filter layer of the small recognizer at once.

Builds ``wav2letter("small")`` (40 log-mel features; ``conv_big_1`` has 256 filters on a 16 x 16
grid, receptive field 194 frames), then times ``OptimalInputs(model, "conv_big_1", steps=200)``
for all 256 filters in one batched run (target: <= 60 s on the project's 2 CPU cores), with the
cone model (default) and, with ``--compare-full``, through the full model for reference. Also
times a 3 x 3 region with ``joint=True`` (8 restarts in one batch).

Weights are random (speed does not depend on training). Run one backend per process::

    KERAS_BACKEND=tensorflow python benchmarks/optimal_inputs_speed.py
    KERAS_BACKEND=jax python benchmarks/optimal_inputs_speed.py --steps 200 --compare-full

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--layer", default="conv_big_1")
    parser.add_argument("--compare-full", action="store_true",
                        help="also time the same run through the full model (no cone)")
    args = parser.parse_args(argv)

    import keras

    from keras_topomap.models import wav2letter
    from keras_topomap.optimal_inputs import OptimalInputs

    keras.utils.set_random_seed(0)
    model = wav2letter("small", n_features=40)
    n_filters = model.get_layer(args.layer).output.shape[-1]
    runs = [("all filters, cone model", dict(cone=True))]
    if args.compare_full:
        runs.append(("all filters, full model", dict(cone=False)))
    runs.append(("3x3 region, joint", dict(region=((8, 8), 3), joint=True)))
    for label, kwargs in runs:
        start = time.perf_counter()
        opt = OptimalInputs(model, args.layer, steps=args.steps, **kwargs).fit()
        seconds = time.perf_counter() - start
        print(json.dumps({
            "backend": keras.backend.backend(),
            "run": label,
            "layer": args.layer,
            "filters": int(n_filters) if "region" not in kwargs else len(opt.filters_),
            "inputs": list(opt.inputs_.shape),
            "steps": args.steps,
            "seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / args.steps, 3),
            "cone": opt.cone_,
            "load_average": round(os.getloadavg()[0], 1),
        }), flush=True)


if __name__ == "__main__":
    main()
