"""How much TopoMapCallback adds to a training epoch of the small Wav2Letter recognizer.

One ``model.fit`` runs ``2 * pairs`` epochs with ``TopoMapCallback(every=2)``: the callback does
its work after every second epoch only, so epochs with and without it alternate within the same
process, warm caches and the same CPU contention (other jobs on a shared machine slow both
kinds alike). The first pair is a warm-up (tracing, compiling, figure construction) and is
reported separately.

Figures:
- epoch time without / with the callback (median over the pairs), and their ratio;
- the time the training loop waits for the callback per logged epoch
  (``callback.log_seconds_``), as a fraction of the median epoch without it -- the less noisy
  measure of the same overhead;
- the CPU time of the callback's writer thread per logged epoch
  (``callback.background_seconds_``: TensorBoard summaries, PNGs, npz), as the same fraction:
  on a machine whose cores are all busy training it comes on top, with idle cores (or a GPU
  doing the training) it is hidden.

Data are synthetic with the recognizer's real shapes: ``--utterances`` sequences of
``--frames`` 40-band feature frames, CTC targets of ~1 character per 8 frames, and
(``--groups``) a phone label per frame from a 39-phone set, with 0-15% padding at the end of
each probe sequence (given to the callback as ``probe_lengths``).

Usage::

    KERAS_BACKEND=jax python benchmarks/callback_overhead.py --pairs 4
    KERAS_BACKEND=tensorflow python benchmarks/callback_overhead.py --groups 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_topomap import TopoMapCallback  # noqa: E402
from keras_topomap.ctc import CTCLoss  # noqa: E402
from keras_topomap.datasets.batches import pack_ctc_targets  # noqa: E402
from keras_topomap.models import wav2letter  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch, up to the end of every callback listed before this one."""

    def __init__(self):
        super().__init__()
        self.starts, self.ends = [], []
        self.train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self.starts.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())

    def on_train_end(self, logs=None):
        self.train_end = time.perf_counter()

    @property
    def seconds(self):
        return np.asarray(self.ends) - np.asarray(self.starts)


def synthetic_data(n, frames, n_features, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, frames, n_features)).astype("float32")
    label_length = frames // 8
    labels = rng.integers(1, 29, size=(n, label_length))
    y = pack_ctc_targets(np.full(n, frames), labels, np.full(n, label_length))
    # Phone labels: runs of 3-15 frames, as in real speech at a 10 ms hop.
    runs = rng.integers(3, 16, size=(n, frames))
    phones = rng.integers(0, 39, size=(n, frames))
    starts = np.cumsum(runs, axis=1)
    index = np.stack([np.searchsorted(s, np.arange(frames), side="right") for s in starts])
    frame_labels = np.take_along_axis(phones, np.minimum(index, frames - 1), axis=1)
    return x, y, frame_labels


def run(args):
    keras.utils.set_random_seed(args.seed)
    x, y, frame_labels = synthetic_data(args.utterances, args.frames, 40, args.seed)
    model = wav2letter("small", n_features=40, topographic=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=CTCLoss(stride=2))

    probe = x[: args.probe]
    rng = np.random.default_rng(args.seed + 1)
    lengths = args.frames - rng.integers(0, args.frames // 7, size=args.probe)
    out = tempfile.mkdtemp(prefix="topomap_bench_")
    kwargs = {}
    if args.groups:
        kwargs = dict(
            groups=frame_labels[: args.probe] % args.groups,
            group_names=[f"ph{i}" for i in range(args.groups)],
            probe_lengths=lengths,
        )
    callback = TopoMapCallback(
        probe,
        log_dir=os.path.join(out, "logs") if args.tensorboard else None,
        out_dir=os.path.join(out, "maps") if args.files else None,
        every=2,
        **kwargs,
    )
    timer = EpochTimer()
    begin = time.perf_counter()
    model.fit(
        x, y, batch_size=args.batch_size, epochs=2 * args.pairs, verbose=0,
        callbacks=[callback, timer],
    )
    total = time.perf_counter() - begin
    seconds = timer.seconds
    without, with_cb = seconds[0::2], seconds[1::2]
    steady_without, steady_with = without[1:], with_cb[1:]
    log = np.asarray(callback.log_seconds_)
    base = statistics.median(steady_without)
    result = {
        "backend": keras.backend.backend(),
        "steps_per_epoch": int(np.ceil(args.utterances / args.batch_size)),
        "probe": args.probe,
        "groups": args.groups,
        "layers": len(callback.layers_),
        "epoch_s_without": [round(float(s), 3) for s in without],
        "epoch_s_with": [round(float(s), 3) for s in with_cb],
        "callback_s": [round(float(s), 3) for s in log],
        "background_cpu_s": [round(float(s), 3) for s in callback.background_seconds_],
        "median_epoch_s_without": round(base, 3),
        "median_epoch_s_with": round(statistics.median(steady_with), 3),
        "ratio_with_over_without": round(statistics.median(steady_with) / base, 4),
        "callback_fraction": round(float(np.median(log[1:])) / base, 4),
        "background_cpu_fraction": round(
            float(np.median(callback.background_seconds_[1:])) / base, 4
        ),
        "first_log_s": round(float(log[0]), 3),
        "fit_total_s": round(total, 1),
        "train_end_s": round(float(timer.train_end - timer.ends[-1]), 3),
    }
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=320)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--probe", type=int, default=16)
    parser.add_argument("--groups", type=int, default=39, help="0: no per-group maps")
    parser.add_argument("--pairs", type=int, default=4, help="epoch pairs (first = warm-up)")
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    parser.add_argument("--no-files", dest="files", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.pairs < 2:
        parser.error("--pairs must be >= 2 (the first pair is a warm-up)")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
