"""Sharded GradNAP from the command line: ``keras-topomap gradnap`` and ``gradnap-merge``.

GradNAP keeps running sums and counts per group, so a pass over a large corpus splits into
independent shards that a cluster scheduler can run anywhere, followed by one cheap merge:

1. ``keras-topomap gradnap --model M.keras --data SPEC --shard i/n --out DIR`` analyses shard
   ``i`` (``0 <= i < n``) of the utterances and writes its running state to
   ``DIR/gradnap-shard-iiiii-of-nnnnn.{npz,json}``. The shards are disjoint and together cover
   the data: the utterances are sorted by id and utterance ``k`` of that order goes to shard
   ``k mod n``, whatever order the corpus reader returns them in.
2. ``keras-topomap gradnap-merge DIR... --out FILE`` checks that the shard files belong together
   (same model weights, data, layers and settings; no shard twice; none missing) and writes one
   GradNAP (:meth:`keras_topomap.GradNAP.merge`): its counts equal a single fit over all the
   data exactly, its profiles up to float rounding. Load it with
   :meth:`keras_topomap.GradNAP.load`.

``--data`` takes the same specs as ``keras-topomap train``: ``bundled`` (``--split`` picks the
part of the bundled corpus, default ``all``), ``bundled-voice``, ``tts:DIR``,
``librispeech:DIR``, ``timit:DIR`` or ``textgrid:AUDIO_DIR,TEXTGRID_DIR``. Features are computed
as the model was trained: with the ``config.json`` of the training run folder that holds the
model (or ``--features-from RUN_DIR``), else with ``--features`` / ``--n-mels``.

Example (a Slurm array job, then the merge)::

    keras-topomap gradnap --model runs/small/model.keras \\
        --data textgrid:LibriSpeech/dev-clean,alignments/dev-clean \\
        --layers conv_1 conv_2 --shard ${SLURM_ARRAY_TASK_ID}/16 --out gradnap_shards
    keras-topomap gradnap-merge gradnap_shards --out gradnap_small
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import sys
import warnings

import numpy as np

from keras_topomap import checks, run_io
from keras_topomap._files import file_stem, load_keras_model

__all__ = ["build_parser", "build_merge_parser", "main", "merge_main", "parse_shard",
           "shard_utterances", "merge_shard_files"]

_SHARD_FILE = "gradnap-shard-{index:05d}-of-{count:05d}"
_SHARD_PATTERN = re.compile(r"gradnap-shard-\d+-of-\d+\.json$")
# Shard files must agree on these info entries to be merged.
_SAME_INFO = ("n_shards", "data", "split", "max_utterances", "features")


def parse_shard(text):
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``.

    Raises:
        ValueError: for anything else.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ValueError(f"--shard must be I/N (e.g. 0/4). Received: {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(
            f"--shard I/N needs N >= 1 and 0 <= I < N (shards are numbered from 0). Received: "
            f"{text!r}"
        )
    return index, count


def shard_utterances(utterances, index, count, max_utterances=None):
    """Shard ``index`` of ``count`` of ``utterances``: disjoint, covering, order-independent.

    The utterances are sorted by id; with ``max_utterances`` only the first that many are used;
    utterance ``k`` of that order belongs to shard ``k % count``.

    Raises:
        ValueError: when ids repeat (shards would not be disjoint).
    """
    ordered = sorted(utterances, key=lambda u: u.id)
    ids = [u.id for u in ordered]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(
            f"Utterance ids must be unique to shard the data. Received repeated ids: {repeated}"
        )
    if max_utterances is not None:
        ordered = ordered[:max_utterances]
    return ordered[index::count]


def _load_utterances(spec, split):
    """Utterances of a ``--data`` spec (the syntax of ``keras-topomap train``)."""
    from keras_topomap.datasets import SPLITS, load_tts_corpus

    if run_io.is_corpus_spec(spec):
        split = split or "all"
        if split not in SPLITS:
            raise ValueError(f"--split must be one of {list(SPLITS)}. Received: {split!r}")
        split, root = run_io.corpus_split(spec, split)
        return load_tts_corpus(split, root=root), split
    if split is not None:
        raise ValueError(
            f"--split applies to the bundled and tts: corpora only; {spec!r} is read whole. "
            f"Received: --split {split}"
        )
    return run_io.read_utterances(spec), None


def _feature_config(args, model_path):
    from keras_topomap.datasets import FeatureConfig

    run_dir = args.features_from
    if run_dir is None and os.path.isfile(os.path.join(os.path.dirname(model_path), "config.json")):
        run_dir = os.path.dirname(model_path) or "."
    if run_dir is not None:
        return run_io.load_feature_config(run_dir), f"config.json of {run_dir}"
    return FeatureConfig(kind=args.features, n_mels=args.n_mels), "command-line options"


def build_parser():
    p = argparse.ArgumentParser(
        prog="keras-topomap gradnap",
        description="GradNAP over one shard of a corpus; writes the running sums for "
        "'keras-topomap gradnap-merge' (see keras_topomap.gradnap_cli).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a saved Keras model (.keras)")
    p.add_argument(
        "--data", default="bundled",
        help="bundled, bundled-voice, tts:DIR, librispeech:DIR, timit:DIR or "
        "textgrid:AUDIO_DIR,TEXTGRID_DIR (as for 'keras-topomap train')",
    )
    p.add_argument("--split", default=None,
                   help="part of a bundled/tts: corpus (train, test, train_voices, test_voice, "
                   "all; None: all)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers to profile (None: every layer with a TopographicRegularizer)")
    p.add_argument("--shard", default="0/1", help="I/N: analyse shard I of N (from 0)")
    p.add_argument("--out", required=True, help="folder for the shard files")
    p.add_argument("--target", default="prediction", choices=("prediction", "ctc_loss"),
                   help="what the gradients are taken of (see GradNAP)")
    p.add_argument("--adjust", default="gradient", choices=("gradient", "abs_gradient", "none"),
                   help="how activations are weighted by the gradients (see GradNAP)")
    p.add_argument("--baseline", default="group_mean", choices=("group_mean", "frame_mean"),
                   help="what each group's profile is compared with (see GradNAP)")
    p.add_argument("--window", type=int, default=None,
                   help="also keep time-resolved profiles over +-W layer frames (None: no)")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per batch")
    p.add_argument("--on-nonfinite", default="raise", choices=("raise", "skip"),
                   help="utterances with NaN/inf features or results: stop with an error, or "
                   "leave them out and count them (GradNAP's on_nonfinite)")
    p.add_argument("--max-eval", "--max-utterances", dest="max_utterances", type=int,
                   default=None,
                   help="use only the first N utterances (by id) before sharding (None: all)")
    p.add_argument("--features-from", default=None,
                   help="training run folder whose config.json gives the feature settings "
                   "(None: the model's folder, if it has one)")
    p.add_argument("--features", default="logmel", choices=("logmel", "mfcc"),
                   help="feature kind when there is no run folder")
    p.add_argument("--n-mels", type=int, default=40, help="mel bands when there is no run folder")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1),
                   help="0: quiet, 1: progress bar")
    return p


def run_shard(args):
    """Runs one shard (parsed ``keras-topomap gradnap`` arguments); returns the npz path."""
    import keras

    from keras_topomap.datasets import PHONES_39, SpeechBatches
    from keras_topomap.gradnap import GradNAP
    from keras_topomap.regularizers import topographic_layers
    from keras_topomap.train import extract_feature_set

    index, count = parse_shard(args.shard)
    checks.positive_int(args.batch_size, "--batch-size")
    checks.positive_int(args.max_utterances, "--max-utterances", allow_none=True)
    model = load_keras_model(args.model, "--model")
    layers = args.layers or list(topographic_layers(model))
    if not layers:
        raise ValueError(
            f"Model {args.model!r} has no layer with a TopographicRegularizer; name the layers "
            "with --layers."
        )
    feature_config, source = _feature_config(args, args.model)
    n_inputs = model.inputs[0].shape[-1]
    if n_inputs is not None and n_inputs != feature_config.n_features:
        raise ValueError(
            f"Model {args.model!r} takes {n_inputs} features per frame, but the feature settings "
            f"(from {source}) give {feature_config.n_features}. Received: {feature_config}"
        )
    utterances, split = _load_utterances(args.data, args.split)
    if utterances and not any(u.phones for u in utterances):
        # LibriSpeech's reader gives transcripts only: every group would stay empty.
        raise ValueError(
            f"The utterances of --data {args.data!r} carry no phone alignments, so GradNAP has "
            "no phoneme frames to average. Use aligned data: textgrid:AUDIO_DIR,TEXTGRID_DIR "
            "(e.g. Montreal Forced Aligner output for LibriSpeech), timit:DIR, tts:DIR or the "
            "bundled corpus."
        )
    mine = shard_utterances(utterances, index, count, args.max_utterances)
    gn = GradNAP(model, layers, target=args.target, adjust=args.adjust, baseline=args.baseline,
                 group_names=PHONES_39, batch_size=args.batch_size, window=args.window,
                 verbose=args.verbose, on_nonfinite=args.on_nonfinite)
    if mine:
        features = extract_feature_set(mine, feature_config)
        mode = "all" if args.target == "ctc_loss" else "frames"
        batches = SpeechBatches(features, batch_size=args.batch_size, shuffle=False, mode=mode)
        with warnings.catch_warnings():
            # Missing phones in one shard are expected; the merge reports them for all shards.
            warnings.filterwarnings("ignore", message="GradNAP: no frames for groups")
            gn.partial_fit(batches)
    else:
        warnings.warn(
            f"Shard {index}/{count} holds no utterances (the data has fewer than {count}); "
            "writing an empty state.",
            stacklevel=2,
        )
    ids_digest = hashlib.sha256("\n".join(u.id for u in mine).encode()).hexdigest()
    info = {
        "shard": index,
        "n_shards": count,
        "data": args.data,
        "split": split,
        "max_utterances": args.max_utterances,
        "features": feature_config.to_dict(),
        "n_utterances": len(mine),
        "utterance_ids_sha256": ids_digest,
        "model_file": os.path.basename(args.model),
        "backend": keras.backend.backend(),
    }
    path = os.path.join(args.out, _SHARD_FILE.format(index=index, count=count))
    return gn.save(path, info=info)


def main(argv=None):
    """``keras-topomap gradnap``."""
    args = build_parser().parse_args(argv)
    try:
        path = run_shard(args)
    except (ValueError, OSError) as e:
        print(f"keras-topomap gradnap: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} (and its .json)")
    return 0


# ------------------------------------------------------------------------------------- merge


def _shard_files(paths):
    """Shard ``.json`` files named by ``paths`` (folders are searched for shard files)."""
    found = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            hits = sorted(
                f for f in glob.glob(os.path.join(glob.escape(path), "*.json"))
                if _SHARD_PATTERN.search(os.path.basename(f))
            )
            if not hits:
                raise ValueError(f"No GradNAP shard files (gradnap-shard-*.json) in {path!r}.")
            found.extend(hits)
        elif path.endswith((".json", ".npz")):
            found.append(path[: -len(".npz")] + ".json" if path.endswith(".npz") else path)
        else:
            raise ValueError(
                f"Expected a folder of shard files or a shard .json/.npz file. Received: {path!r}"
            )
    return found


def merge_shard_files(paths, allow_missing=False):
    """Loads the shard files under ``paths`` and merges them into one GradNAP.

    Args:
        paths: folders holding ``gradnap-shard-*`` files, or the files themselves.
        allow_missing: merge even when some shards of ``0..n-1`` are absent (a warning says
            which); otherwise that is an error.

    Returns:
        ``(gradnap, info)``: the merged :class:`~keras_topomap.GradNAP` (without a model) and
        the info dict to save with it.

    Raises:
        ValueError: when a shard appears twice, shards come from different data, shard counts,
            feature settings, models or GradNAP settings, or shards are missing.
    """
    from keras_topomap.gradnap import GradNAP

    files = _shard_files(paths)
    parts, infos = [], []
    for path in files:
        part = GradNAP.load(path)
        info = part.info_
        if "shard" not in info or "n_shards" not in info:
            raise ValueError(
                f"{path!r} is not a shard file written by 'keras-topomap gradnap' (no shard "
                f"info). Received info: {info}"
            )
        parts.append(part)
        infos.append(info)
    seen = {}
    for path, info in zip(files, infos):
        shard, count = info["shard"], info["n_shards"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (shard, count)) or (
                count < 1 or not 0 <= shard < count):
            raise ValueError(
                f"{path!r} is shard {shard!r} of {count!r}; a shard index runs from 0 to "
                "n_shards - 1 (was the file relabelled?)."
            )
        n_utt = info.get("n_utterances", 0)
        if isinstance(n_utt, bool) or not isinstance(n_utt, int) or n_utt < 0:
            raise ValueError(f"{path!r} states n_utterances={n_utt!r}; expected an int >= 0.")
        if shard in seen:
            raise ValueError(
                f"Shard {shard} appears twice: {seen[shard]!r} and {path!r}. Received files: "
                f"{files}"
            )
        seen[shard] = path
    for key in _SAME_INFO:
        values = {repr(info.get(key)) for info in infos}
        if len(values) > 1:
            detail = {os.path.basename(f): info.get(key) for f, info in zip(files, infos)}
            raise ValueError(f"The shard files disagree on {key!r}. Received: {detail}")
    same_ids = {}
    for path, info in zip(files, infos):
        ids = info.get("utterance_ids_sha256")
        if ids is not None and info.get("n_utterances", 0) > 0:
            if ids in same_ids:
                # Disjoint shards never hold the same utterances: one is a copy of the other.
                raise ValueError(
                    f"{same_ids[ids]!r} and {path!r} hold the same utterances (same id digest); "
                    "merging would count them twice."
                )
            same_ids[ids] = path
    count = infos[0]["n_shards"]
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        message = f"Shards {missing} of {count} are missing. Received files: {files}"
        if not allow_missing:
            raise ValueError(message + " (pass --allow-missing to merge the others anyway)")
        warnings.warn(message, stacklevel=2)
    merged = GradNAP.merge(parts)  # checks layers, settings, group names and model weights
    info = {key: infos[0].get(key) for key in _SAME_INFO}
    info.update(
        merged_shards=sorted(seen),
        n_utterances=int(sum(i.get("n_utterances", 0) for i in infos)),
        model_file=infos[0].get("model_file"),
    )
    return merged, info


def _check_out_is_not_an_input(out, paths):
    """Refuses an ``--out`` that would overwrite one of the shard files being merged."""
    stem = file_stem(out)
    targets = {os.path.realpath(stem + ext) for ext in (".npz", ".json")}
    for path in _shard_files(paths):
        inputs = {os.path.realpath(path), os.path.realpath(path[: -len(".json")] + ".npz")}
        if targets & inputs:
            raise ValueError(
                f"--out {out!r} would overwrite the input shard {path!r}; choose another name."
            )


def build_merge_parser():
    p = argparse.ArgumentParser(
        prog="keras-topomap gradnap-merge",
        description="Merge the shard files of 'keras-topomap gradnap' into one GradNAP "
        "(exact: counts equal one fit, profiles up to float rounding).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("paths", nargs="+", help="folders of shard files, or shard .json files")
    p.add_argument("--out", required=True,
                   help="output file stem (writes OUT.npz and OUT.json; load with GradNAP.load)")
    p.add_argument("--allow-missing", action="store_true",
                   help="merge even if some shards of 0..N-1 are absent")
    return p


def merge_main(argv=None):
    """``keras-topomap gradnap-merge``."""
    args = build_merge_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="GradNAP: no frames for groups")
            _check_out_is_not_an_input(args.out, args.paths)
            merged, info = merge_shard_files(args.paths, allow_missing=args.allow_missing)
        path = merged.save(args.out, info=info)
    except (ValueError, OSError) as e:
        print(f"keras-topomap gradnap-merge: error: {e}", file=sys.stderr)
        return 2
    first = merged.layers[0]
    empty = [merged.group_name(g) for g in np.nonzero(merged.counts_[first] == 0)[0]]
    print(
        f"merged {len(info['merged_shards'])} shards ({info['n_utterances']} utterances, "
        f"{merged.n_frames_} labelled frames) into {path}"
    )
    if empty:
        print(f"groups without frames in {first}: {empty}")
    if any(merged.skipped_.values()):
        print(f"skipped (summed over the shards): {merged.skipped_}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
