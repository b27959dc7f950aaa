"""Decoding with a character language model: test CER of trained runs, greedy / beam / LM.

For every run folder given (``model.keras`` + ``config.json``, as written by
``keras-topomap train``), this rebuilds the run's own data split, fits a
:class:`keras_topomap.language_model.CharNGramLM` on its training transcripts, tunes the LM
weight and length bonus on its validation split and decodes its test split -- what
``keras-topomap train`` does at the end of a run (``--lm-order``), for runs made before that
step existed. It prints one markdown row per run and writes every number to ``--json``.

Usage::

    KERAS_BACKEND=jax python benchmarks/lm_decoding.py runs/wav2letter --json runs/lm.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def analyse_run(run_dir, order=6):
    import keras

    import keras_topomap  # noqa: F401  (registers the custom objects the .keras file names)
    from keras_topomap import train
    from keras_topomap.models import total_stride

    run_dir = Path(run_dir)
    start = time.perf_counter()
    saved = json.loads((run_dir / "config.json").read_text())["train"]
    fields = train.TrainConfig.__dataclass_fields__
    config = train.TrainConfig(**{k: v for k, v in saved.items() if k in fields})
    train_set, val_set, test_set = train.load_data(config)
    model = keras.saving.load_model(run_dir / "model.keras")
    stride = total_stride(model)
    _, val_logits = train.evaluate(model, train._eval_batches(val_set, config), stride,
                                   return_logits=True)
    _, test_logits = train.evaluate(model, train._eval_batches(test_set, config), stride,
                                    return_logits=True)
    result = train.decode_with_language_model(train_set.transcripts, val_logits, test_logits,
                                              order, config.beam_width)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result.update(run=str(run_dir), seconds=time.perf_counter() - start,
                  greedy_cer=metrics["test"]["cer"], greedy_wer=metrics["test"]["wer"],
                  beam_cer=metrics["test"].get("beam_search", {}).get("cer"),
                  epochs=metrics["epochs_done"])
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--order", type=int, default=6, help="the LM's order")
    p.add_argument("--json", default=None, help="write every number here")
    args = p.parse_args(argv)
    results = []
    print("| run | epochs | test CER greedy | beam search | beam search + LM (weight, bonus) "
          "| test WER greedy | + LM | validation CER + LM |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        r = analyse_run(run, args.order)
        results.append(r)
        beam = "-" if r["beam_cer"] is None else f"{r['beam_cer']:.3f}"
        print(f"| {run} | {r['epochs']} | {r['greedy_cer']:.3f} | {beam} | {r['cer']:.3f} "
              f"({r['lm_weight']}, {r['length_bonus']}) | {r['greedy_wer']:.3f} | "
              f"{r['wer']:.3f} | {r['validation_cer']:.3f} |", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
