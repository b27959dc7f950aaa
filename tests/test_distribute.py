"""Distributed training: tf.distribute (mirrored, multi-worker) and keras.distribution (JAX).

Fast in-process tests cover the parts that need no second device (TF_CONFIG parsing, the
backend checks, worker sharding). The ``distributed`` tests start fresh processes: TensorFlow
must split the CPU into two logical devices before it initialises, JAX must see two host
devices (``XLA_FLAGS``) before it starts, and MultiWorkerMirroredStrategy needs one process per
worker (two, on 127.0.0.1 ports, each with its own ``TF_CONFIG``). Each distributed step is
compared with one single-device step on the same global batch: equal updated weights (float
noise) show that the CTC loss and the topographic penalty enter the loss once per step, not once
per replica; a single-device step with twice the penalty strength shows the comparison would
notice a penalty counted twice.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from keras_topomap import distribute, train
from keras_topomap.datasets import FeatureConfig, FeatureSet, SpeechBatches, text_to_labels

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- subprocess code

# Shared by every subprocess: a fake global batch, the tiny model, one fit step.
PRELUDE = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np

    def fake_features(n, seed=0, n_features=40):
        from keras_topomap.datasets import FeatureConfig, FeatureSet, text_to_labels
        rng = np.random.default_rng(seed)
        words = "the cat sat on a mat dog ran far away".split()
        texts = [" ".join(rng.choice(words, size=2)) for _ in range(n)]
        feats = [rng.normal(size=(6 * len(t) + int(rng.integers(0, 9)), n_features))
                 .astype("float32") for t in texts]
        frames = [np.full(len(f), -1, np.int32) for f in feats]
        return FeatureSet([f"u{i}" for i in range(n)], ["fake"] * n, texts, feats, frames,
                          FeatureConfig(n_mels=n_features))

    def build(strength, initial=None, clipnorm=None):
        import keras
        from keras_topomap import ctc, models
        model = models.wav2letter("tiny", n_features=40, strength=strength, seed=0)
        model.compile(keras.optimizers.SGD(0.05, clipnorm=clipnorm),
                      loss=ctc.CTCLoss(stride=2))
        if initial is not None:
            model.set_weights(initial)
        return model

    def weights(model):
        return np.concatenate([np.asarray(w).ravel() for w in model.get_weights()])

    def fit_step(model, data, **kwargs):
        before = weights(model)
        history = model.fit(data, epochs=1, shuffle=False, verbose=0, **kwargs)
        return float(history.history["loss"][0]), weights(model) - before

    def global_batch(features, batch_size):
        from keras_topomap.datasets import SpeechBatches
        return SpeechBatches(features, batch_size=batch_size, seed=0)[0]

    def reference_steps(features, clipped=True):
        # One single-device step on the global batch: with the penalty once, twice and
        # (optionally) with clipnorm 0.5; and the weights the distributed models start from.
        x, y = global_batch(features, 8)
        single = build(1.0)
        initial = [np.array(w) for w in single.get_weights()]
        loss_single, single_step = fit_step(single, x, y=y, batch_size=8)
        _, double_penalty_step = fit_step(build(2.0, initial), x, y=y, batch_size=8)
        single_clipped = None
        if clipped:
            _, single_clipped = fit_step(build(1.0, initial, clipnorm=0.5), x, y=y,
                                         batch_size=8)
        return (x, y, single, initial, loss_single, single_step, double_penalty_step,
                single_clipped)

    def report(path, **arrays):
        np.savez(path, **arrays)
    """
)

MIRRORED = PRELUDE + textwrap.dedent(
    """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keras_topomap import distribute, train

    keras.utils.set_random_seed(0)
    features = fake_features(8)
    (x, y, single, initial, loss_single, single_step, double_penalty_step,
     single_clipped) = reference_steps(features)

    context = distribute.resolve("mirrored")
    with context.scope():
        model = build(1.0, initial)
        plain_clipping = build(1.0, initial, clipnorm=0.5)
    # The training pipeline of train(): global batches, split over the replicas by Keras.
    data, batches = context.training_data(features, 8, seed=0)
    loss_mirrored, mirrored_step = fit_step(model, data)
    # Both models took the same step: the same logits, for a batch the replicas cannot split.
    logits = context.predict(model, x[:3])
    reference_logits = np.asarray(single.predict_on_batch(x[:3]))
    _, plain_clipped = fit_step(plain_clipping, x, y=y, batch_size=8)
    with context.scope():
        adapted = build(1.0, initial, clipnorm=0.5)
        context.adapt_optimizer(adapted.optimizer)
    _, adapted_clipped = fit_step(adapted, x, y=y, batch_size=8)

    # train() under the strategy, then resumed on one device for a second epoch.
    out = sys.argv[2]
    data_sets = (fake_features(12, 1), fake_features(3, 2), fake_features(3, 3))
    common = dict(config="tiny", batch_size=4, verbose=0, n_permutations=5, out=out,
                  tensorboard=False, pad_to_multiple=64)
    first = train.train(train.TrainConfig(epochs=1, distribute="mirrored", **common),
                        data=data_sets)
    second = train.train(train.TrainConfig(epochs=2, resume=True, **common), data=data_sets)
    report(sys.argv[1], replicas=context.num_replicas, loss_single=loss_single,
           loss_mirrored=loss_mirrored, single_step=single_step, mirrored_step=mirrored_step,
           double_penalty_step=double_penalty_step, single_clipped=single_clipped,
           plain_clipped=plain_clipped, adapted_clipped=adapted_clipped, logits=logits,
           reference_logits=reference_logits,
           first_distribution=json.dumps(first["distribution"]),
           epochs=[first["epochs_done"], second["epochs_done"]],
           history=len(second["history"]))
    """
)

MULTI_WORKER = PRELUDE + textwrap.dedent(
    """
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in sys.argv[3].split(",")]},
        "task": {"type": "worker", "index": int(sys.argv[2])},
    })
    import keras
    from keras_topomap import distribute

    context = distribute.resolve("multi-worker")  # before TensorFlow runs anything
    keras.utils.set_random_seed(0)
    features = fake_features(8)
    (x, y, single, initial, loss_single, single_step, double_penalty_step,
     single_clipped) = reference_steps(features)
    with context.scope():
        model = build(1.0, initial)
        clipped = build(1.0, initial, clipnorm=0.5)
        context.adapt_optimizer(clipped.optimizer)
        context.prepare_model(model)
        context.prepare_model(clipped)
    data, batches = context.training_data(features, 8, seed=0)
    shard_ids = [features.ids[i] for i in batches.shards[0].batch_indices(0)]
    loss_workers, worker_step = fit_step(
        model, data, callbacks=[distribute.EpochAdvance(batches)])
    _, worker_clipped = fit_step(clipped, data, callbacks=[distribute.EpochAdvance(batches)])
    agreed = [context.any_worker(context.worker_index == 1), context.any_worker(False)]
    logits = context.predict(model, x[:3])
    reference_logits = np.asarray(single.predict_on_batch(x[:3]))

    # train() in this strategy with a TopoMapCallback: each worker asks for its own folders.
    from keras_topomap import TopoMapCallback, train
    out = os.path.join(sys.argv[4], f"worker{context.worker_index}")
    maps = TopoMapCallback(x[:2], out_dir=os.path.join(out, "topomaps"), background=False)
    data_sets = (fake_features(12, 1), fake_features(3, 2), fake_features(3, 3))
    result = train.train(
        train.TrainConfig(config="tiny", batch_size=4, epochs=1, verbose=0, n_permutations=5,
                          out=out, pad_to_multiple=64, distribute="multi-worker"),
        data=data_sets, callbacks=[maps], context=context)
    report(sys.argv[1], workers=context.num_workers, rank=context.worker_index,
           chief=context.is_chief, loss_single=loss_single, loss_workers=loss_workers,
           single_step=single_step, worker_step=worker_step, single_clipped=single_clipped,
           worker_clipped=worker_clipped, double_penalty_step=double_penalty_step,
           shard_ids=shard_ids, epochs_done=result["epochs_done"], agreed=agreed,
           logits=logits, reference_logits=reference_logits,
           files=sorted(os.listdir(out)) if os.path.isdir(out) else [],
           maps=sorted(os.listdir(os.path.join(out, "topomaps"))))
    """
)

JAX_DATA_PARALLEL = PRELUDE + textwrap.dedent(
    """
    import keras
    from keras_topomap import distribute

    assert keras.backend.backend() == "jax"
    mirrored_error = None
    try:
        distribute.resolve("mirrored")
    except ValueError as e:
        mirrored_error = str(e)
    keras.utils.set_random_seed(0)
    features = fake_features(8)
    (x, y, single, initial, loss_single, single_step, double_penalty_step,
     single_clipped) = reference_steps(features)

    context = distribute.resolve("data-parallel")
    with context.scope():
        model = build(1.0, initial)
        clipped = build(1.0, initial, clipnorm=0.5)
    data, batches = context.training_data(features, 8, seed=0)
    loss_parallel, parallel_step = fit_step(model, data)
    _, parallel_clipped = fit_step(clipped, data)
    # 3 rows on 2 devices: padded, split, trimmed; the same logits as one device.
    logits = context.predict(model, x[:3])
    reference_logits = np.asarray(single.predict_on_batch(x[:3]))
    kernel_devices = len(model.get_layer("conv_1").kernel.value.sharding.device_set)
    report(sys.argv[1], replicas=context.num_replicas, loss_single=loss_single,
           loss_parallel=loss_parallel, single_step=single_step, parallel_step=parallel_step,
           double_penalty_step=double_penalty_step, single_clipped=single_clipped,
           parallel_clipped=parallel_clipped, mirrored_error=mirrored_error,
           kernel_devices=kernel_devices, logits=logits, reference_logits=reference_logits)
    """
)

JAX_MULTI_WORKER = PRELUDE + textwrap.dedent(
    """
    os.environ.update(
        JAX_COORDINATOR_ADDRESS="127.0.0.1:" + sys.argv[3].split(",")[0],
        JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=sys.argv[2],
    )
    import keras
    from keras_topomap import distribute, train

    context = distribute.resolve("multi-worker")  # jax.distributed before any computation
    keras.utils.set_random_seed(0)
    features = fake_features(8)
    keras.distribution.set_distribution(None)  # the reference: this process' own device
    (x, y, single, initial, loss_single, single_step, double_penalty_step,
     _) = reference_steps(features, clipped=False)
    reference_logits = np.asarray(single.predict_on_batch(x[:3]))
    keras.distribution.set_distribution(context.distribution)
    with context.scope():
        model = build(1.0, initial)
    data, batches = context.training_data(features, 8, seed=0)
    shard_ids = [features.ids[i] for i in batches.batch_indices(0)]
    loss_workers, worker_step = fit_step(model, data)
    # 3 rows on 2 processes: padded, split, gathered; the same logits as one device.
    logits = context.predict(model, x[:3])
    agreed = [context.any_worker(context.worker_index == 1), context.any_worker(False)]

    out = os.path.join(sys.argv[4], f"worker{context.worker_index}")
    data_sets = (fake_features(12, 1), fake_features(3, 2), fake_features(3, 3))
    result = train.train(
        train.TrainConfig(config="tiny", batch_size=4, epochs=1, verbose=0, n_permutations=5,
                          out=out, tensorboard=False, pad_to_multiple=64, max_minutes=60,
                          distribute="multi-worker"),
        data=data_sets, context=context)
    report(sys.argv[1], workers=context.num_workers, rank=context.worker_index,
           replicas=context.num_replicas, loss_single=loss_single, loss_workers=loss_workers,
           single_step=single_step, worker_step=worker_step,
           double_penalty_step=double_penalty_step, shard_ids=shard_ids, logits=logits,
           reference_logits=reference_logits, agreed=agreed,
           epochs_done=result["epochs_done"], test_loss=result["test"]["loss"],
           files=sorted(os.listdir(out)) if os.path.isdir(out) else [])
    """
)


def _env(**extra):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), **extra)
    return env


def _start(args, env, log):
    # A session of its own: on a timeout the whole worker (and its threads) goes.
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_all(processes, logs, timeout):
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    failed = [(rank, p.returncode) for rank, p in enumerate(processes) if p.returncode != 0]
    if failed:
        tails = "\n\n".join(Path(log.name).read_text()[-4000:] for log in logs)
        pytest.fail(f"(worker, exit code) failed or timed out after {timeout} s: {failed}\n{tails}")


def _run(script, *args, timeout=240, **env):
    log_path = Path(args[0]).with_suffix(".log")
    with open(log_path, "w") as log:
        process = _start(["-c", script, *map(str, args)], _env(**env), log)
        _wait_all([process], [log], timeout)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(make_args, tmp_path, timeout=240, **env):
    """Start one process per worker, each with its TF_CONFIG task index; wait for all."""
    ports = ",".join(map(str, _free_ports(2)))
    processes, logs = [], []
    try:
        for rank in range(2):
            log = open(tmp_path / f"worker{rank}.log", "w")
            logs.append(log)
            processes.append(_start(make_args(rank, ports), _env(**env), log))
        _wait_all(processes, logs, timeout)
    finally:
        for log in logs:
            log.close()


def assert_same_step(distributed, single, double_penalty):
    scale = np.abs(single).max()
    assert scale > 1e-3  # the step moved the weights
    np.testing.assert_allclose(distributed, single, rtol=0, atol=1e-5 * scale)
    # A penalty counted twice would show: it moves the weights by far more than the noise.
    assert np.abs(double_penalty - single).max() > 100 * np.abs(distributed - single).max()
    assert np.abs(double_penalty - single).max() > 1e-3 * scale


# ----------------------------------------------------------------------- in-process (fast)


def fake_features(n, seed=0, n_features=8, lengths=None, texts=None):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(10, 60, size=n) if lengths is None else lengths
    feats = [rng.normal(size=(int(k), n_features)).astype("float32") for k in lengths]
    frames = [np.full(len(f), -1, np.int32) for f in feats]
    texts = ["ab" * (1 + i % 3) for i in range(n)] if texts is None else texts
    assert all(len(text_to_labels(t)) for t in texts)
    return FeatureSet(
        [f"u{i}" for i in range(n)], ["s"] * n, texts, feats, frames,
        FeatureConfig(n_mels=n_features),
    )


def test_read_tf_config_ranks_and_chief():
    workers = {"worker": ["h0:1", "h1:1", "h2:1"]}
    config = {"cluster": workers, "task": {"type": "worker", "index": 2}}
    assert distribute.read_tf_config(json.dumps(config)) == (3, 2, False)
    config["task"]["index"] = 0
    assert distribute.read_tf_config(json.dumps(config)) == (3, 0, True)
    with_chief = {"cluster": {"chief": ["c:1"], **workers}, "task": {"type": "worker",
                                                                      "index": 0}}
    assert distribute.read_tf_config(json.dumps(with_chief)) == (4, 1, False)
    with_chief["task"] = {"type": "chief", "index": 0}
    assert distribute.read_tf_config(json.dumps(with_chief)) == (4, 0, True)


@pytest.mark.parametrize(
    "value, match",
    [
        ("not json", "TF_CONFIG must be JSON"),
        ('{"cluster": {"worker": ["h:1"]}}', "TF_CONFIG must be JSON"),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 3}}',
         "not a chief or worker"),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "ps", "index": 0}}',
         "not a chief or worker"),
    ],
)
def test_read_tf_config_errors(value, match):
    with pytest.raises(ValueError, match=match):
        distribute.read_tf_config(value)


def test_resolve_checks_the_choice_against_the_backend(monkeypatch, backend):
    with pytest.raises(ValueError, match="distribute must be one of"):
        distribute.resolve("horovod")
    assert distribute.available_choices("torch") == ("none",)
    assert distribute.available_choices("jax") == ("none", "data-parallel", "multi-worker")
    unavailable = next(c for c in distribute.CHOICES if c not in distribute.available_choices())
    with pytest.raises(ValueError, match=f"not available on the {backend} backend") as error:
        distribute.resolve(unavailable)
    assert "KERAS_BACKEND" in str(error.value)
    context = distribute.resolve("none")
    assert (context.is_chief, context.num_workers, context.num_replicas) == (True, 1, 1)
    assert not context.is_distributed
    if backend == "tensorflow":
        monkeypatch.delenv("TF_CONFIG", raising=False)
        with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
            distribute.resolve("multi-worker")


def test_config_and_command_line_accept_distribute():
    assert train.TrainConfig(config="tiny").distribute == "none"
    with pytest.raises(ValueError, match="distribute must be one of"):
        train.TrainConfig(config="tiny", distribute="mirror")
    args = train.build_parser().parse_args(["--distribute", "multi-worker"])
    assert args.distribute == "multi-worker"
    context = distribute.DistributionContext("mirrored", "tensorflow", num_replicas=4)
    with pytest.raises(ValueError, match="multiple of the 4 replicas"):
        context.check_batch_size(6)


@pytest.mark.parametrize("n, batch_size, shards, multiple", [(37, 8, 2, 2), (40, 12, 3, 6)])
def test_shards_split_every_global_batch_once(n, batch_size, shards, multiple):
    features = fake_features(n)
    plain = SpeechBatches(features, batch_size=batch_size, seed=3, pad_to_multiple=4)
    for epoch in (0, 1):
        parts = [
            distribute.ShardedSpeechBatches(
                features, num_shards=shards, shard_index=i, multiple=multiple,
                batch_size=batch_size, seed=3, pad_to_multiple=4,
            )
            for i in range(shards)
        ]
        for part in parts:
            part.set_epoch(epoch)
        plain.set_epoch(epoch)
        assert len({len(p) for p in parts}) == 1
        seen = []
        for index in range(len(parts[0])):
            items = [p[index] for p in parts]
            # Same shapes on every shard; together they are the global batch of the plan.
            assert len({x.shape for x, _ in items}) == 1
            assert items[0][0].shape[0] * shards % multiple == 0
            ids = np.concatenate([p.batch_indices(index) for p in parts])
            np.testing.assert_array_equal(ids, parts[0].global_batches[index])
            seen.extend(ids.tolist())
        assert len(seen) == len(set(seen))  # no utterance twice in an epoch
        assert n - multiple < len(seen) <= n  # at most multiple - 1 left out
        # The plan is the single-device plan (minus the short batch's remainder).
        plain_batches = [plain.batch_indices(i).tolist() for i in range(len(plain))]
        trimmed = [b[: len(b) - len(b) % multiple] for b in plain_batches]
        assert [b.tolist() for b in parts[0].global_batches] == [b for b in trimmed if b]
        # Deterministic: a fresh shard at this epoch serves the same utterances.
        again = distribute.ShardedSpeechBatches(
            features, num_shards=shards, shard_index=1, multiple=multiple,
            batch_size=batch_size, seed=3, pad_to_multiple=4,
        )
        again.set_epoch(epoch)
        np.testing.assert_array_equal(again[0][1], parts[1][0][1])
    first = distribute.ShardedSpeechBatches(features, num_shards=2, shard_index=0,
                                            batch_size=batch_size, seed=3)
    orders = [first.batch_indices(0).tolist()]
    first.on_epoch_end()
    orders.append(first.batch_indices(0).tolist())
    assert orders[0] != orders[1]  # reshuffled every epoch


def test_shard_padding_and_modes():
    features = fake_features(
        8, lengths=[10, 11, 12, 13, 50, 51, 52, 53], texts=["ab"] * 4 + ["abc abc"] * 4
    )
    parts = [
        distribute.ShardedSpeechBatches(features, num_shards=2, shard_index=i, batch_size=8,
                                        shuffle=False, mode=mode)
        for i, mode in ((0, "frames"), (1, "all"))
    ]
    x0, frames0 = parts[0][0]
    item1 = parts[1][0]
    # Shard 0 holds the short utterances but is padded to the global batch's 53 frames.
    assert x0.shape == (4, 53, 8) and frames0.shape == (4, 53)
    assert item1["features"].shape == (4, 53, 8) and item1["frame_labels"].shape == (4, 53)
    assert (frames0[:, 13:] == -1).all()
    whole = SpeechBatches(features, batch_size=8, shuffle=False)[0]
    np.testing.assert_array_equal(np.concatenate([x0, item1["features"]]), whole[0])
    # Packed CTC targets too: shard 0 holds the short transcripts, padded to the long ones.
    ctc_parts = [
        distribute.ShardedSpeechBatches(features, num_shards=2, shard_index=i, batch_size=8,
                                        shuffle=False)[0][1]
        for i in range(2)
    ]
    assert ctc_parts[0].shape == ctc_parts[1].shape == whole[1][:4].shape
    np.testing.assert_array_equal(np.concatenate(ctc_parts), whole[1])
    assert item1["labels"].shape[1] == whole[1].shape[1] - 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_shards=0), "num_shards must be an integer >= 1"),
        (dict(num_shards=2, shard_index=2), r"shard_index must be an integer in \[0, 1\]"),
        (dict(num_shards=2, multiple=3), "multiple must be a multiple of num_shards"),
        (dict(num_shards=2, batch_size=5), "batch_size a multiple of multiple"),
        (dict(num_shards=16, batch_size=16), "cannot fill one batch of 16"),
    ],
)
def test_shard_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distribute.ShardedSpeechBatches(fake_features(8), **kwargs)


# ------------------------------------------------------------------ distributed (subprocess)


@pytest.mark.distributed
def test_mirrored_step_equals_single_device_step(tmp_path):
    """Two logical CPU devices: the same update as one device, with and without clipping."""
    result_path = tmp_path / "mirrored.npz"
    _run(MIRRORED, result_path, tmp_path / "run", KERAS_BACKEND="tensorflow")
    r = np.load(result_path)
    assert int(r["replicas"]) == 2
    np.testing.assert_allclose(r["loss_mirrored"], r["loss_single"], rtol=1e-5)
    assert_same_step(r["mirrored_step"], r["single_step"], r["double_penalty_step"])
    # Keras clips each replica's share of the gradient; adapt_optimizer clips the sum.
    scale = np.abs(r["single_clipped"]).max()
    np.testing.assert_allclose(r["adapted_clipped"], r["single_clipped"], atol=1e-5 * scale)
    assert np.abs(r["plain_clipped"] - r["single_clipped"]).max() > 0.1 * scale
    np.testing.assert_allclose(r["logits"], r["reference_logits"], atol=1e-4)
    assert json.loads(str(r["first_distribution"]))["num_replicas"] == 2
    assert r["epochs"].tolist() == [1, 2] and int(r["history"]) == 2
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.distributed
def test_multi_worker_step_equals_single_device_step(tmp_path):
    """Two workers (processes) with a TF_CONFIG each: one step on half a batch each."""

    def worker_args(rank, ports):
        return ["-c", MULTI_WORKER, str(tmp_path / f"worker{rank}.npz"), str(rank), ports,
                str(tmp_path / "runs")]

    _run_workers(worker_args, tmp_path, KERAS_BACKEND="tensorflow")
    results = [np.load(tmp_path / f"worker{rank}.npz") for rank in range(2)]
    assert [int(r["rank"]) for r in results] == [0, 1]
    assert [bool(r["chief"]) for r in results] == [True, False]
    assert all(int(r["workers"]) == 2 for r in results)
    # Each worker trained on its own half of the global batch.
    halves = [set(r["shard_ids"].tolist()) for r in results]
    assert len(halves[0]) == len(halves[1]) == 4 and not halves[0] & halves[1]
    for r in results:
        np.testing.assert_allclose(r["loss_workers"], r["loss_single"], rtol=1e-5)
        assert_same_step(r["worker_step"], r["single_step"], r["double_penalty_step"])
        # With adapt_optimizer the workers clip the summed gradient, as one device does.
        scale = np.abs(r["single_clipped"]).max()
        np.testing.assert_allclose(r["worker_clipped"], r["single_clipped"], atol=1e-5 * scale)
        assert r["agreed"].tolist() == [True, False]  # worker 1's flag reached worker 0
        np.testing.assert_allclose(r["logits"], r["reference_logits"], atol=1e-4)
    np.testing.assert_array_equal(results[0]["worker_step"], results[1]["worker_step"])
    # train() with a TopoMapCallback: the chief wrote the run and the maps; the other worker's
    # folders (created by the callback's constructor) stayed empty.
    assert [int(r["epochs_done"]) for r in results] == [1, 1]
    assert {"checkpoint.keras", "metrics.json", "model.keras", "logs", "topomaps"} <= set(
        results[0]["files"].tolist())
    assert {"topomaps.npz", "conv_2", "conv_3"} <= set(results[0]["maps"].tolist())
    assert results[1]["files"].tolist() == ["topomaps"] and results[1]["maps"].size == 0


@pytest.mark.distributed
def test_multi_worker_training_run_from_the_command_line(tmp_path):
    """``keras-topomap train --distribute multi-worker`` on two workers: the chief writes."""
    outs = [tmp_path / "chief", tmp_path / "worker1"]

    def worker_args(rank, ports):
        tf_config = {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports.split(",")]},
            "task": {"type": "worker", "index": rank},
        }
        code = (
            f"import os, sys; os.environ['TF_CONFIG'] = {json.dumps(tf_config)!r}; "
            "from keras_topomap.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        return [
            "-c", code, "train", "--config", "tiny", "--distribute", "multi-worker",
            "--max-train", "8", "--max-eval", "4", "--epochs", "1", "--batch-size", "4",
            "--n-permutations", "5", "--verbose", "0", "--out", str(outs[rank]),
            "--max-minutes", "60",  # the workers agree on the budget every epoch
        ]

    _run_workers(worker_args, tmp_path, KERAS_BACKEND="tensorflow")
    files = {p.name for p in outs[0].iterdir()}
    assert {"config.json", "state.json", "checkpoint.keras", "model.keras", "metrics.json",
            "logs"} <= files
    assert not outs[1].exists()  # the other worker wrote nothing where it was pointed
    metrics = json.loads((outs[0] / "metrics.json").read_text())
    assert metrics["distribution"] == {
        "choice": "multi-worker", "num_workers": 2, "worker_index": 0, "num_replicas": 2,
    }
    assert metrics["epochs_done"] == 1 and np.isfinite(metrics["test"]["loss"])
    assert "worker 1 done" in (tmp_path / "worker1.log").read_text()


@pytest.mark.distributed
def test_jax_data_parallel_step_equals_single_device_step(tmp_path):
    """JAX with two host devices: DataParallel's step is the single-device step.

    ``train()`` under a JAX distribution runs in the two-process test below.
    """
    result_path = tmp_path / "jax.npz"
    _run(
        JAX_DATA_PARALLEL, result_path, KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
    )
    r = np.load(result_path)
    assert int(r["replicas"]) == 2
    assert "not available on the jax backend" in str(r["mirrored_error"])
    np.testing.assert_allclose(r["loss_parallel"], r["loss_single"], rtol=1e-5)
    assert_same_step(r["parallel_step"], r["single_step"], r["double_penalty_step"])
    scale = np.abs(r["single_clipped"]).max()
    np.testing.assert_allclose(r["parallel_clipped"], r["single_clipped"], atol=1e-5 * scale)
    assert int(r["kernel_devices"]) == 2  # the weights are replicated on both devices
    np.testing.assert_allclose(r["logits"], r["reference_logits"], atol=1e-4)


@pytest.mark.distributed
def test_jax_multi_worker_step_equals_single_device_step(tmp_path):
    """Two JAX processes (jax.distributed from JAX_* variables, gloo on CPU)."""

    def worker_args(rank, ports):
        return ["-c", JAX_MULTI_WORKER, str(tmp_path / f"worker{rank}.npz"), str(rank), ports,
                str(tmp_path / "runs")]

    _run_workers(worker_args, tmp_path, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    results = [np.load(tmp_path / f"worker{rank}.npz") for rank in range(2)]
    assert [int(r["rank"]) for r in results] == [0, 1]
    assert all(int(r["workers"]) == 2 and int(r["replicas"]) == 2 for r in results)
    halves = [set(r["shard_ids"].tolist()) for r in results]
    assert len(halves[0]) == len(halves[1]) == 4 and not halves[0] & halves[1]
    for r in results:
        np.testing.assert_allclose(r["loss_workers"], r["loss_single"], rtol=1e-5)
        assert_same_step(r["worker_step"], r["single_step"], r["double_penalty_step"])
        np.testing.assert_allclose(r["logits"], r["reference_logits"], atol=1e-4)
        assert r["agreed"].tolist() == [True, False]  # worker 1's flag reached worker 0
        assert int(r["epochs_done"]) == 1 and np.isfinite(float(r["test_loss"]))
    assert {"checkpoint.keras", "metrics.json", "model.keras"} <= set(
        results[0]["files"].tolist())
    assert results[1]["files"].size == 0  # the chief alone wrote a run folder
