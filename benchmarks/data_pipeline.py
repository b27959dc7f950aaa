"""Speed of the speech data pipeline on the bundled corpus.

Measures, each in a fresh subprocess so nothing is warm that a new user would not have warm:

1. decoding the whole bundled corpus (``load_tts_corpus("all")``, 1,000 OGG files);
2. the first feature extraction for the whole corpus into an empty cache, for log-mel (40) and
   MFCC (13), once with librosa's numba functions already compiled (their on-disk cache exists,
   the usual case after the first run) and once fully cold (empty ``NUMBA_CACHE_DIR``, as in a
   brand-new environment);
3. the second load of the same features (cache hit);

and, in this process, the throughput of :class:`keras_topomap.datasets.SpeechBatches` over full
epochs of the train split (batches/s and utterances/s, per mode), plus the share of padded
frames with and without length bucketing.

Run::

    KERAS_BACKEND=jax python benchmarks/data_pipeline.py            # everything
    KERAS_BACKEND=jax python benchmarks/data_pipeline.py --quick    # skip the cold numba run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
from keras_topomap.datasets import FeatureConfig, load_corpus_features, load_tts_corpus
t_import = time.perf_counter() - t0
task = sys.argv[1]
if task == "decode":
    t = time.perf_counter(); utts = load_tts_corpus("all"); dt = time.perf_counter() - t
    print(json.dumps({"decode_s": dt, "n": len(utts), "import_s": t_import}))
else:
    cfg = FeatureConfig(kind=task)
    t = time.perf_counter(); fs = load_corpus_features("all", cfg, progress=False)
    dt = time.perf_counter() - t
    print(json.dumps({"extract_s": dt, "frames": int(fs.lengths.sum()), "import_s": t_import}))
"""


def _child(task, cache, numba_dir=None):
    env = dict(os.environ, KERAS_TOPOMAP_CACHE=cache)
    if numba_dir:
        env["NUMBA_CACHE_DIR"] = numba_dir
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, task], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(split="train", batch_size=16, epochs=2):
    from keras_topomap.datasets import FeatureConfig, SpeechBatches, load_corpus_features

    features = load_corpus_features(split, FeatureConfig(), progress=False)
    rows = {}
    for mode in ("ctc", "frames", "all"):
        ds = SpeechBatches(features, batch_size=batch_size, mode=mode, seed=0)
        ds[0]
        t = time.perf_counter()
        n = 0
        for _ in range(epochs):
            for i in range(len(ds)):
                ds[i]
                n += 1
            ds.on_epoch_end()
        dt = time.perf_counter() - t
        rows[mode] = {"batches_per_s": n / dt, "utterances_per_s": n * batch_size / dt}
    bucketed = SpeechBatches(features, batch_size=batch_size, seed=0).padding_fraction
    plain = SpeechBatches(features, batch_size=batch_size, seed=0, bucket=False).padding_fraction
    rows["padding_fraction"] = {"bucketed": bucketed, "not_bucketed": plain}
    rows["n_batches_per_epoch"] = len(SpeechBatches(features, batch_size=batch_size))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the fully cold numba run")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    results = {"backend": os.environ.get("KERAS_BACKEND", "tensorflow")}
    with tempfile.TemporaryDirectory() as cache:
        results["decode"] = _child("decode", cache)
        for kind in ("logmel", "mfcc"):
            results[f"first_{kind}"] = _child(kind, cache)
            results[f"second_{kind}"] = _child(kind, cache)
    if not args.quick:
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as numba:
            results["first_logmel_cold_numba"] = _child("logmel", cache, numba_dir=numba)
    os.environ["KERAS_TOPOMAP_CACHE"] = tempfile.mkdtemp()
    results["batches"] = throughput(batch_size=args.batch_size)
    print(json.dumps(results, indent=2))
    print()
    print("| step | seconds |")
    print("|---|---|")
    print(f"| decode 1,000 OGG utterances | {results['decode']['decode_s']:.1f} |")
    for key, label in (
        ("first_logmel", "first extraction, log-mel 40, whole corpus"),
        ("second_logmel", "second load, log-mel (cache hit)"),
        ("first_mfcc", "first extraction, MFCC 13, whole corpus"),
        ("second_mfcc", "second load, MFCC (cache hit)"),
        ("first_logmel_cold_numba", "first extraction, log-mel, cold numba cache"),
    ):
        if key in results:
            print(f"| {label} | {results[key]['extract_s']:.1f} |")
    print()
    print(f"| SpeechBatches mode (batch {args.batch_size}) | batches/s | utterances/s |")
    print("|---|---|---|")
    for mode in ("ctc", "frames", "all"):
        row = results["batches"][mode]
        print(f"| {mode} | {row['batches_per_s']:.0f} | {row['utterances_per_s']:.0f} |")
    pad = results["batches"]["padding_fraction"]
    print(f"\npadded frames: {pad['bucketed']:.1%} bucketed, {pad['not_bucketed']:.1%} not")
    return results


if __name__ == "__main__":
    main()
