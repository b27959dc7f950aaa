"""Sharded GradNAP (CLI shards + merge == one fit) and GradNAP under a distribution.

The CLI tests run the ``keras-topomap gradnap`` / ``gradnap-merge`` entry points in-process on a
tiny saved recognizer and a few utterances of the bundled corpus. The distribution tests start a
subprocess with two CPU devices (JAX: ``--xla_force_host_platform_device_count=2``; TensorFlow:
two logical CPU devices under ``MirroredStrategy``) and compare with a plain fit.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections import namedtuple

import keras
import numpy as np
import pytest
import soundfile as sf

from keras_topomap import GradNAP, datasets, models
from keras_topomap.gradnap_cli import (
    main,
    merge_main,
    merge_shard_files,
    parse_shard,
    shard_utterances,
)

N_UTTERANCES = 6
LAYERS = ["conv_1", "conv_big_1"]


def _save_tiny(path, seed):
    model = models.wav2letter("tiny", n_features=40, topographic=True, seed=seed)
    model.save(path)
    return model


def _shard_args(model_path, out, shard, *extra):
    return ["--model", str(model_path), "--data", "bundled", "--split", "test",
            "--max-utterances", str(N_UTTERANCES), "--layers", *LAYERS, "--target", "ctc_loss",
            "--shard", shard, "--out", str(out), "--verbose", "0", *extra]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A tiny saved model, its 3 shard files and their merge."""
    root = tmp_path_factory.mktemp("gradnap_shards")
    keras.utils.set_random_seed(0)
    model_path = root / "tiny.keras"
    _save_tiny(model_path, seed=0)
    for i in range(3):
        assert main(_shard_args(model_path, root / "shards", f"{i}/3")) == 0
    assert merge_main([str(root / "shards"), "--out", str(root / "merged")]) == 0
    return root, model_path


def test_sharded_cli_and_merge_equal_one_fit(sharded):
    root, model_path = sharded
    merged = GradNAP.load(root / "merged")
    assert merged.info_["merged_shards"] == [0, 1, 2]
    assert merged.info_["n_utterances"] == N_UTTERANCES
    # One fit over the same utterances through the Python API.
    model = keras.saving.load_model(model_path, compile=False)
    utterances = shard_utterances(datasets.load_tts_corpus("test"), 0, 1, N_UTTERANCES)
    batches = datasets.SpeechBatches(utterances, batch_size=4, shuffle=False, mode="all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = GradNAP(model, LAYERS, target="ctc_loss", group_names=datasets.PHONES_39,
                         verbose=0).fit(batches)
    assert merged.n_frames_ == single.n_frames_
    np.testing.assert_allclose(merged.target_total_, single.target_total_, rtol=1e-5)
    for name in LAYERS:
        np.testing.assert_array_equal(merged.counts_[name], single.counts_[name])
        assert merged.counts_[name].sum() > 100
        scale = np.abs(single.profiles_[name]).max()
        assert scale > 0
        np.testing.assert_allclose(merged.profiles_[name], single.profiles_[name], rtol=1e-4,
                                   atol=1e-5 * scale)
    # The merged file is a usable GradNAP: maps without a model, further fitting with one.
    assert merged.maps(LAYERS[0], smooth=True).shape[1:] == merged.grids_[LAYERS[0]]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*weights of model")  # same weights
        resumed = GradNAP.load(root / "merged", model=model)
    assert resumed.model_fingerprint() == single.model_fingerprint()


def test_shard_files_hold_running_sums(sharded):
    root, _ = sharded
    parts = [GradNAP.load(root / "shards" / f"gradnap-shard-{i:05d}-of-00003") for i in range(3)]
    assert sum(p.info_["n_utterances"] for p in parts) == N_UTTERANCES
    merged = GradNAP.load(root / "merged")
    for name in LAYERS:
        # Sums and counts add exactly (profiles alone could not be merged).
        np.testing.assert_array_equal(sum(p.group_sums_.counts[name] for p in parts),
                                      merged.group_sums_.counts[name])
        np.testing.assert_allclose(sum(p.group_sums_.sums[name] for p in parts),
                                   merged.group_sums_.sums[name], rtol=1e-12)


def test_shards_disjoint_and_covering():
    utt = namedtuple("utt", "id")
    items = [utt(f"u{k:02d}") for k in (5, 3, 9, 1, 0, 7, 2)]
    shards = [shard_utterances(items, i, 3) for i in range(3)]
    ids = [u.id for s in shards for u in s]
    assert sorted(ids) == sorted(u.id for u in items) and len(set(ids)) == len(ids)
    # Independent of the reader's order.
    again = [shard_utterances(items[::-1], i, 3) for i in range(3)]
    assert [[u.id for u in s] for s in shards] == [[u.id for u in s] for s in again]
    assert [u.id for u in shard_utterances(items, 0, 1, max_utterances=3)] == ["u00", "u01",
                                                                                "u02"]
    with pytest.raises(ValueError, match="repeated ids"):
        shard_utterances(items + [utt("u03")], 0, 2)


@pytest.mark.parametrize("text", ["3/3", "1", "-1/2", "a/b", "0/0"])
def test_parse_shard_errors(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)


def test_cli_errors(sharded, tmp_path, capsys):
    root, model_path = sharded
    assert main(_shard_args(tmp_path / "nope.keras", tmp_path, "0/2")) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(_shard_args(model_path, tmp_path, "2/2")) == 2
    assert "0 <= I < N" in capsys.readouterr().err
    assert main(_shard_args(model_path, tmp_path, "0/2", "--n-mels", "20")) == 2
    assert "takes 40 features" in capsys.readouterr().err
    assert main(_shard_args(model_path, tmp_path, "0/2", "--data", "librispeech:x",
                            "--split", "train")) == 2
    assert "--split applies" in capsys.readouterr().err
    # LibriSpeech without alignments: transcripts only, so no phoneme frames to average
    chapter = tmp_path / "LibriSpeech" / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 A TONE\n")
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)
    sf.write(chapter / "19-198-0000.flac", tone.astype("float32"), 16000, format="FLAC")
    assert main(["--model", str(model_path), "--data", f"librispeech:{tmp_path / 'LibriSpeech'}",
                 "--shard", "0/2", "--out", str(tmp_path / "ls"), "--verbose", "0"]) == 2
    assert "no phone alignments" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert merge_main([str(tmp_path / "empty"), "--out", str(tmp_path / "m")]) == 2
    assert "No GradNAP shard files" in capsys.readouterr().err
    # the same through the keras-topomap dispatcher ("module:function" entry)
    from keras_topomap import cli

    assert cli.main(["gradnap-merge", str(tmp_path / "empty"), "--out", str(tmp_path / "m")]) == 2
    assert "No GradNAP shard files" in capsys.readouterr().err


def _copy_shards(root, dest, shards=(0, 1, 2)):
    dest.mkdir()
    for i in shards:
        for ext in (".npz", ".json"):
            name = f"gradnap-shard-{i:05d}-of-00003{ext}"
            shutil.copy(root / "shards" / name, dest / name)
    return dest


def _edit_info(path, **changes):
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if key in config["info"]:
            config["info"][key] = value
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_merge_refuses_duplicate_and_missing_shards(sharded, tmp_path):
    root, _ = sharded
    copy = _copy_shards(root, tmp_path / "copy", shards=(1,))
    with pytest.raises(ValueError, match="Shard 1 appears twice"):
        merge_shard_files([root / "shards", copy])
    with pytest.raises(ValueError, match=r"Shards \[0, 2\] of 3 are missing"):
        merge_shard_files([copy])
    with pytest.warns(UserWarning, match="missing"):
        part, info = merge_shard_files([copy], allow_missing=True)
    assert info["merged_shards"] == [1]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_shards": 4}, "disagree on 'n_shards'"),
        ({"max_utterances": 9}, "disagree on 'max_utterances'"),
        ({"data": "tts:elsewhere"}, "disagree on 'data'"),
        # layers that the saved grids do not cover: the file itself is refused
        ({"layers": ["conv_1", "conv_2"]}, r"settings in .*-00002-of-00003\.json.*\['conv_2'\]"),
        ({"adjust": "none"}, r"differs from part 0 in \['adjust'\]"),
        ({"baseline": "frame_mean"}, r"differs from part 0 in \['baseline'\]"),
        ({"model_fingerprint": "0" * 64}, "different weights"),
        ({"model": "other"}, "different models"),
        ({"group_names": list(datasets.PHONES_39)[::-1]}, "different group_names"),
    ],
)
def test_merge_refuses_disagreeing_shards(sharded, tmp_path, changes, message):
    root, _ = sharded
    copy = _copy_shards(root, tmp_path / "copy")
    _edit_info(copy / "gradnap-shard-00002-of-00003.json", **changes)
    with pytest.raises(ValueError, match=message):
        merge_shard_files([copy])


def test_merge_refuses_other_weights(sharded, tmp_path):
    """A shard computed with differently initialised weights (same architecture and name)."""
    root, _ = sharded
    other = tmp_path / "other.keras"
    _save_tiny(other, seed=1)
    assert main(_shard_args(other, tmp_path / "other", "1/3")) == 0
    mixed = _copy_shards(root, tmp_path / "mixed", shards=(0, 2))
    with pytest.raises(ValueError, match="different weights"):
        merge_shard_files([mixed, tmp_path / "other"])


def test_merge_refuses_non_shard_files(sharded, tmp_path):
    root, _ = sharded
    with pytest.raises(ValueError, match="not a shard file"):
        merge_shard_files([root / "merged.json"])
    with pytest.raises(ValueError, match="folder of shard files"):
        merge_shard_files([root / "tiny.keras"])


# ----------------------------------------------------------------------------------------------
# GradNAP under a distribution (subprocesses with two CPU devices)

_DIST_SCRIPT = textwrap.dedent(
    """
    import os
    import numpy as np
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keras import ops
    from keras_topomap import gradients, models
    from keras_topomap.gradnap import GradNAP

    # Every conv of 4+ taps takes the FFT input gradient here (JAX, TensorFlow), so the kernel
    # spectra are exercised under the distribution too.
    _init = gradients.ActivationGradients.__init__
    gradients.ActivationGradients.__init__ = (
        lambda self, *a, **k: _init(self, *a, **{"fft_min_kernel": 4, **k}))

    keras.utils.set_random_seed(0)
    model = models.wav2letter("tiny", n_features=12, topographic=True, seed=0)
    rng = np.random.default_rng(0)
    batches = []
    for b, t in enumerate((40, 56, 48)):
        x = rng.normal(size=(3, t, 12)).astype("float32")   # 3 rows: padded to 4 for 2 devices
        labels = rng.integers(-1, 6, size=(3, t))
        ctc = np.zeros((3, 2 + 4), "int64")
        ctc[:, 0] = t - np.arange(3) * 5                    # feature lengths
        ctc[:, 1] = 4
        ctc[:, 2:] = rng.integers(1, 29, size=(3, 4))
        batches.append((x, labels, ctc))
    layers = ["conv_1", "conv_big_1"]
    # ctc_loss: per-row extras (transcripts, lengths) are split too; window: per-frame results
    # are gathered from the replicas.
    settings = [dict(target="ctc_loss", window=1, anchor="saliency")]

    def fit(kw):
        return GradNAP(model, layers, n_groups=6, verbose=0, **kw).fit(batches)

    plain = [fit(kw) for kw in settings]
    placed = []
    if backend == "jax":
        import jax
        assert len(jax.devices()) == 2, jax.devices()
        original = gradients._jax_distribute_batch

        def spy(distribution, arrays):
            out = original(distribution, arrays)
            placed.append(out[0].sharding)
            return out

        gradients._jax_distribute_batch = spy
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        spread = [fit(kw) for kw in settings]
        assert placed and all(len(s.device_set) == 2 and not s.is_fully_replicated
                              for s in placed), placed
        # A bare step needs a batch that splits evenly.
        fn = gradients.ActivationGradients(model, ["conv_1"], lambda out, acts: ops.sum(out))
        try:
            fn(np.zeros((3, 16, 12), "float32"))
            raise AssertionError("no error for 3 rows on 2 devices")
        except ValueError as e:
            assert "split evenly" in str(e), e
        keras.distribution.set_distribution(None)
    else:
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            spread = [fit(kw) for kw in settings]
            steps = [s for g in spread for s, _ in g._steps.values()]
            assert all(step._tf_dist_fns for step in steps)
            assert all(step.n_replicas() == 2 for step in steps)
            # The identity reduce also combines replicas (concatenated activations).
            fn = gradients.ActivationGradients(model, ["conv_1"], lambda out, acts: ops.sum(out))
            x = rng.normal(size=(4, 16, 12)).astype("float32")
            both = fn(x)
            assert fn._tf_dist_fns
        alone = fn(x)
        np.testing.assert_allclose(both.activations["conv_1"], alone.activations["conv_1"],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(both.gradients["conv_1"], alone.gradients["conv_1"],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(both.value, alone.value, rtol=1e-5)

    for a, b in zip(plain, spread):
        assert a.n_frames_ == b.n_frames_
        np.testing.assert_allclose(a.target_total_, b.target_total_, rtol=1e-5)
        for name in layers:
            np.testing.assert_array_equal(a.counts_[name], b.counts_[name])
            scale = np.abs(a.profiles_[name]).max()
            assert scale > 0
            np.testing.assert_allclose(a.profiles_[name], b.profiles_[name], rtol=1e-4,
                                       atol=1e-5 * scale)
            if a.window is not None:
                np.testing.assert_array_equal(a.time_counts_[name], b.time_counts_[name])
                np.testing.assert_allclose(a.time_profiles_[name], b.time_profiles_[name],
                                           rtol=1e-4, atol=1e-5 * scale)
    print("DISTRIBUTED-OK")
    """
)


def _run_distributed(backend, extra_env):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", **extra_env}
    proc = subprocess.run([sys.executable, "-c", _DIST_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "DISTRIBUTED-OK" in proc.stdout, (
        f"{backend} subprocess failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n"
        f"{proc.stderr[-3000:]}"
    )


@pytest.mark.distributed
def test_gradnap_data_parallel_jax_equals_single_device():
    pytest.importorskip("jax")
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    _run_distributed("jax", {"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"})


@pytest.mark.distributed
def test_gradnap_mirrored_strategy_tf_equals_single_device():
    pytest.importorskip("tensorflow")
    _run_distributed("tensorflow", {})
