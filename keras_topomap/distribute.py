"""Distributed training on the engines Keras has: ``tf.distribute`` and ``keras.distribution``.

``keras-topomap train --distribute CHOICE`` (and :func:`resolve`) turns one word into a
:class:`DistributionContext`:

=================  =========================================================================
``none``           one device (every backend).
``mirrored``       TensorFlow: ``tf.distribute.MirroredStrategy`` over this machine's devices.
``data-parallel``  JAX: ``keras.distribution.DataParallel`` over this machine's devices.
``multi-worker``   TensorFlow: ``tf.distribute.MultiWorkerMirroredStrategy`` from ``TF_CONFIG``.
                   JAX: ``jax.distributed.initialize`` from ``JAX_COORDINATOR_ADDRESS``,
                   ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (or Keras'
                   ``KERAS_DISTRIBUTION_*`` variables, or a SLURM / Open MPI / Kubernetes
                   environment that JAX detects), then ``DataParallel`` over every process'
                   devices.
=================  =========================================================================

The context knows the worker count and rank, which worker is the chief (the one that writes
files), builds the model inside the right scope (:meth:`DistributionContext.scope`), and shards
the training utterances by worker (:class:`ShardedSpeechBatches`): every worker follows the same
per-epoch plan of *global* batches (the plan single-device training would use, a function of
``(seed, epoch)``) and takes its own slice of each, so no utterance is seen twice per epoch and
one distributed step sees exactly the global batch of one single-device step.

The penalty of :class:`~keras_topomap.regularizers.TopographicRegularizer` enters the loss once
per step: under ``tf.distribute`` Keras divides each replica's losses (the CTC mean and the
regularizer's penalty alike, ``keras.losses.loss.scale_loss_for_distribution``) by the number of
replicas and sums the replicas' gradients; under ``keras.distribution`` the step is one program
over the global batch. ``tests/test_distribute.py`` checks that one step on two replicas equals
one single-device step on the same global batch.

Example:

>>> context = resolve("mirrored")            # TensorFlow backend, a machine with two GPUs
>>> with context.scope():
...     model = keras_topomap.models.wav2letter("tiny")
...     model.compile("adam", loss=keras_topomap.ctc.CTCLoss(stride=2))
>>> context.is_chief, context.num_workers, context.num_replicas
(True, 1, 2)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import keras
import numpy as np

from keras_topomap import _keras_internals as internals
from keras_topomap import checks
from keras_topomap.datasets.batches import SpeechBatches

# Moved to training_callbacks; importable from here under the same name.
from keras_topomap.training_callbacks import EpochAdvance

__all__ = [
    "CHOICES",
    "DistributionContext",
    "EpochAdvance",
    "ShardedSpeechBatches",
    "available_choices",
    "read_tf_config",
    "resolve",
]

CHOICES = ("none", "mirrored", "multi-worker", "data-parallel")

_BACKEND_CHOICES = {
    "tensorflow": ("none", "mirrored", "multi-worker"),
    "jax": ("none", "data-parallel", "multi-worker"),
}


def available_choices(backend=None):
    """The ``--distribute`` choices that work on ``backend`` (default: the current one).

    >>> available_choices("jax")
    ('none', 'data-parallel', 'multi-worker')
    """
    backend = backend or keras.backend.backend()
    return _BACKEND_CHOICES.get(backend, ("none",))


def _check_choice(choice, backend):
    checks.choice(choice, "distribute", CHOICES)
    allowed = available_choices(backend)
    if choice not in allowed:
        others = [
            f"{name} ({', '.join(c for c in choices if c != 'none')})"
            for name, choices in _BACKEND_CHOICES.items()
        ]
        raise ValueError(
            f"distribute={choice!r} is not available on the {backend} backend, which supports "
            f"{allowed}. Distributed training exists for: {'; '.join(others)}; choose the "
            f"backend with KERAS_BACKEND. Received: distribute={choice!r}, backend={backend!r}"
        )


# -------------------------------------------------------------------------------- environment


def read_tf_config(value=None):
    """Worker count, rank and chief flag from a ``TF_CONFIG`` (default: the environment's).

    Ranks follow ``tf.distribute``: a ``chief`` task, when the cluster has one, is rank 0 and
    the ``worker`` tasks follow it; otherwise ``worker`` 0 is the chief.

    Args:
        value: the ``TF_CONFIG`` JSON string (``None`` reads ``os.environ["TF_CONFIG"]``).

    Returns:
        ``(num_workers, worker_index, is_chief)``.

    Raises:
        ValueError: no ``TF_CONFIG``, invalid JSON, or a task not in the cluster.

    Example:

    >>> read_tf_config('{"cluster": {"worker": ["h0:2222", "h1:2222"]}, '
    ...                '"task": {"type": "worker", "index": 1}}')
    (2, 1, False)
    """
    raw = os.environ.get("TF_CONFIG") if value is None else value
    if not raw:
        raise ValueError(
            "distribute='multi-worker' on TensorFlow needs the TF_CONFIG environment variable "
            '(e.g. {"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": '
            '"worker", "index": 0}}). Received: TF_CONFIG is not set'
        )
    try:
        config = json.loads(raw)
        cluster = config["cluster"]
        task_type, task_index = config["task"]["type"], int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"TF_CONFIG must be JSON with 'cluster' and 'task' {{'type', 'index'}} ({e}). "
            f"Received: TF_CONFIG={raw!r}"
        ) from None
    chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    if task_type == "chief" and task_index < len(chiefs):
        rank = task_index
    elif task_type == "worker" and task_index < len(workers):
        rank = len(chiefs) + task_index
    else:
        raise ValueError(
            f"TF_CONFIG's task {task_type}:{task_index} is not a chief or worker of its "
            f"cluster {cluster}. Received: TF_CONFIG={raw!r}"
        )
    return len(chiefs) + len(workers), rank, rank == 0


def _jax_multi_worker():
    """Start ``jax.distributed`` from the environment (once); ``(num_workers, rank)``."""
    import jax

    env = os.environ
    if env.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") and not env.get("JAX_COORDINATOR_ADDRESS"):
        coordinator = env["KERAS_DISTRIBUTION_JOB_ADDRESSES"].split(",")[0]
        processes = env.get("KERAS_DISTRIBUTION_NUM_PROCESSES")
        process_id = env.get("KERAS_DISTRIBUTION_PROCESS_ID")
    else:
        coordinator = env.get("JAX_COORDINATOR_ADDRESS")
        processes = env.get("JAX_NUM_PROCESSES")
        process_id = env.get("JAX_PROCESS_ID")
    try:
        processes = None if processes is None else int(processes)
        process_id = None if process_id is None else int(process_id)
    except ValueError:
        raise ValueError(
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers. Received: "
            f"{processes!r}, {process_id!r}"
        ) from None
    if not jax.distributed.is_initialized():
        # CPU processes exchange gradients through gloo (GPUs use NCCL whatever this says).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            jax.distributed.initialize(
                coordinator_address=coordinator, num_processes=processes, process_id=process_id
            )
        except (ValueError, RuntimeError) as e:
            raise ValueError(
                "distribute='multi-worker' on JAX could not start jax.distributed: set "
                "JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and "
                f"JAX_PROCESS_ID, or run under SLURM / Open MPI / Kubernetes ({e}). Received: "
                f"coordinator={coordinator!r}, processes={processes!r}, id={process_id!r}"
            ) from None
    return jax.process_count(), jax.process_index()


# ------------------------------------------------------------------------------------ context


@dataclasses.dataclass
class DistributionContext:
    """A resolved ``--distribute`` choice (make one with :func:`resolve`).

    Attributes:
        choice: ``"none"``, ``"mirrored"``, ``"multi-worker"`` or ``"data-parallel"``.
        backend: the Keras backend it was resolved for.
        strategy: the ``tf.distribute.Strategy`` (TensorFlow), else ``None``.
        distribution: the ``keras.distribution.DataParallel`` (JAX), else ``None``.
        num_workers: processes taking part (1 unless ``multi-worker``).
        worker_index: this process' rank (0 is the chief).
        num_replicas: model replicas in sync over all workers (devices doing one step).
        local_replicas: replicas on this worker.
    """

    choice: str
    backend: str
    strategy: object = None
    distribution: object = None
    num_workers: int = 1
    worker_index: int = 0
    num_replicas: int = 1
    local_replicas: int = 1

    @property
    def is_chief(self):
        """Whether this worker writes the run's files (checkpoints, logs, metrics)."""
        return self.worker_index == 0

    @property
    def is_distributed(self):
        """Whether a step runs on more than one replica or worker."""
        return self.num_replicas > 1 or self.num_workers > 1

    @contextlib.contextmanager
    def scope(self):
        """Build, compile and load models inside this: the strategy's or distribution's scope.

        Example:

        >>> with context.scope():
        ...     model = keras.saving.load_model("runs/paper/checkpoint.keras")
        """
        if self.strategy is not None:
            with self.strategy.scope():
                yield self
        elif self.distribution is not None:
            with self.distribution.scope():
                yield self
        else:
            yield self

    def check_batch_size(self, batch_size):
        """Check that the global ``batch_size`` splits evenly over the replicas.

        Raises:
            ValueError: ``batch_size`` is not a multiple of :attr:`num_replicas`.
        """
        if batch_size % self.num_replicas:
            raise ValueError(
                f"batch_size is the global batch and must be a multiple of the "
                f"{self.num_replicas} replicas of distribute={self.choice!r} "
                f"({self.num_workers} worker(s)). Received: batch_size={batch_size}"
            )

    def adapt_optimizer(self, optimizer):
        """Make gradient clipping see the global gradient under ``tf.distribute``; returns it.

        Keras' TensorFlow optimizer clips (``clipnorm``, ``global_clipnorm``, ``clipvalue``)
        each replica's share of the gradient *before* the replicas' gradients are summed
        (``BaseOptimizer._backend_apply_gradients``), so with clipping active a step on N
        replicas differs from one on one device. Here the clipping of this optimizer sums
        the shares first (one more all-reduce per step), clips the sum and hands back
        ``1 / N`` of it, which the optimizer's own summation turns into the clipped global
        gradient. A no-op without clipping, on one replica and on JAX (whose distributed step
        is one program over the global batch). The change lives on this optimizer object only
        (saved models keep a plain optimizer); call it again after loading a model.

        Args:
            optimizer: a Keras optimizer created in :meth:`scope` (e.g. ``model.optimizer``).

        Returns:
            the same optimizer.

        Example:

        >>> with context.scope():
        ...     model.compile(keras.optimizers.Adam(1e-3, clipnorm=10.0), loss=loss)
        ...     context.adapt_optimizer(model.optimizer)
        """
        clips = optimizer.clipnorm or optimizer.global_clipnorm or optimizer.clipvalue
        if self.strategy is None or self.num_replicas == 1 or not clips:
            return optimizer
        if getattr(optimizer, "_keras_topomap_sums_before_clipping", False):
            return optimizer
        import tensorflow as tf

        clip_shares = internals.gradient_clipping(optimizer)

        def clip_global(grads):
            replica = tf.distribute.get_replica_context()
            if replica is None or replica.num_replicas_in_sync == 1:
                return clip_shares(grads)
            present = [g for g in grads if g is not None]
            summed = iter(replica.all_reduce(tf.distribute.ReduceOp.SUM, present))
            total = [None if g is None else next(summed) for g in grads]
            share = 1.0 / replica.num_replicas_in_sync
            return [None if g is None else g * share for g in clip_shares(total)]

        internals.replace_gradient_clipping(optimizer, clip_global)
        optimizer._keras_topomap_sums_before_clipping = True
        return optimizer

    def prepare_model(self, model):
        """Let ``model.fit`` run under ``MultiWorkerMirroredStrategy``; returns the model.

        Keras 3's TensorFlow ``fit`` does not run under ``MultiWorkerMirroredStrategy`` as it
        is (keras-team/keras#20585), for two reasons this works around on this model object:

        - before the first step it builds the model from one batch that it averages over the
          replicas with ``strategy.reduce`` on the ``(x, y)`` nest, which this strategy cannot
          reduce across workers; the batch is only needed for its shapes and dtypes, so the
          model builds from this worker's first replica's batch instead;
        - it averages the replicas' metrics (the logged ``loss``) with
          ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars; each replica
          hands its scalar metrics over as 1-element vectors, whose mean along axis 0 over all
          replicas is the replicas' mean (a scalar again).

        A no-op for every other strategy and backend, and on Keras versions not known to need
        it (``keras_topomap._keras_internals.KERAS_20585_VERSIONS``: those it was checked on).
        Call it on a model built (or loaded) in :meth:`scope`, after ``compile``.

        Args:
            model: the compiled Keras model.

        Returns:
            the same model.
        """
        if self.strategy is None or self.num_workers == 1:
            return model
        if not internals.needs_multi_worker_fit_workaround():
            return model
        import tensorflow as tf

        compute_metrics = model.compute_metrics

        def metrics_as_vectors(*args, **kwargs):
            results = compute_metrics(*args, **kwargs)
            if tf.distribute.get_replica_context() is None:
                return results
            return {
                name: tf.reshape(value, [1]) if value.shape.rank == 0 else value
                for name, value in results.items()
            }

        model.compute_metrics = metrics_as_vectors

        def build_from_local_batch(iterator=None, data_batch=None):
            if iterator is not None:
                for _, _, batches in iterator:
                    first = next(batches)
                    data_batch = tf.nest.map_structure(
                        lambda v: (
                            self.strategy.experimental_local_results(v)[0]
                            if isinstance(v, tf.distribute.DistributedValues) else v
                        ),
                        first,
                    )
                    break
            with self.strategy.scope():
                internals.symbolic_build(model, data_batch)

        internals.replace_symbolic_build(model, build_from_local_batch)
        return model

    def training_data(self, feature_set, batch_size, seed=0, **kwargs):
        """This worker's training data for ``model.fit`` and the object that holds its epoch.

        Args:
            feature_set: all training utterances (a
                :class:`~keras_topomap.datasets.FeatureSet`), the same on every worker.
            batch_size: the *global* batch size.
            seed: shuffling seed (the same on every worker).
            **kwargs: more :class:`~keras_topomap.datasets.SpeechBatches` arguments.

        Returns:
            ``(data, batches)``: what to pass to ``fit``, and the object whose ``set_epoch`` /
            ``on_epoch_end`` choose the epoch's batch order. Without distribution both are
            one :class:`~keras_topomap.datasets.SpeechBatches`; with ``mirrored`` and on JAX
            both are this worker's :class:`ShardedSpeechBatches`. Under
            ``MultiWorkerMirroredStrategy`` ``data`` is a ``tf.distribute`` dataset that
            feeds each local replica its own :class:`ShardedSpeechBatches` and reads their
            epoch each time it is iterated, and ``batches`` moves those shards together:
            pass ``EpochAdvance(batches)`` to ``fit``'s callbacks (``fit`` only advances a
            ``PyDataset`` itself).

        Raises:
            ValueError: ``batch_size`` not a multiple of the number of replicas.

        Example:

        >>> data, batches = context.training_data(train_features, batch_size=32, seed=0)
        >>> callbacks = [] if data is batches else [distribute.EpochAdvance(batches)]
        >>> model.fit(data, epochs=10, callbacks=callbacks)
        """
        self.check_batch_size(batch_size)
        common = dict(batch_size=batch_size, shuffle=True, seed=seed, mode="ctc", **kwargs)
        if self.choice == "none":
            batches = SpeechBatches(feature_set, **common)
            return batches, batches
        if self.choice == "mirrored" or self.backend == "jax":
            # Keras splits this worker's slice of each global batch over the local replicas:
            # equal shares (each replica's mean then weighs as its share of the batch), which
            # JAX requires and MirroredStrategy needs for the mean over the global batch.
            batches = ShardedSpeechBatches(
                feature_set, num_shards=self.num_workers, shard_index=self.worker_index,
                multiple=self.num_replicas, **common,
            )
            return batches, batches
        # MultiWorkerMirroredStrategy: one slice per replica of this worker, fed per replica.
        shards = [
            ShardedSpeechBatches(
                feature_set, num_shards=self.num_replicas,
                shard_index=self.worker_index * self.local_replicas + r,
                multiple=self.num_replicas, **common,
            )
            for r in range(self.local_replicas)
        ]
        return _tf_per_replica_dataset(self.strategy, shards), _ShardGroup(shards)

    def predict(self, model, features):
        """Logits of ``model`` for one batch, whatever the batch size, on every worker.

        Pads the batch to a multiple of the replicas (replicas need equal, non-empty shares)
        and drops the padding from the output. Every worker must call this with the same
        batch (it may run collective operations).

        Args:
            model: the model (built in :meth:`scope`).
            features: one batch, a NumPy array ``(batch, ...)``.

        Returns:
            NumPy logits ``(batch, ...)``, the same on every worker.
        """
        features = np.asarray(features)
        n = len(features)
        if not self.is_distributed:
            return keras.ops.convert_to_numpy(model.predict_on_batch(features))
        multiple = self.num_replicas
        padded_n = -(-n // multiple) * multiple
        padded = np.concatenate(
            [features, np.zeros((padded_n - n, *features.shape[1:]), features.dtype)]
        )
        if self.backend == "jax" and self.num_workers > 1:
            from jax.experimental import multihost_utils

            # Each process feeds its slice of the (identical) batch; Keras assembles the
            # global array; gather every row on every process.
            share = padded_n // self.num_workers
            mine = padded[self.worker_index * share : (self.worker_index + 1) * share]
            logits = model.predict_on_batch(mine)
            logits = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
        else:
            logits = keras.ops.convert_to_numpy(model.predict_on_batch(padded))
        return logits[:n]

    def any_worker(self, flag):
        """``True`` on every worker when ``flag`` is true on any of them (a collective).

        Stopping decisions that depend on a worker's own clock (a time budget) must agree, or
        the workers that go on would wait for the others forever. Every worker must call it.

        Args:
            flag: this worker's decision.

        Returns:
            bool, the same on every worker.
        """
        if self.num_workers == 1:
            return bool(flag)
        value = np.float32(1.0 if flag else 0.0)
        if self.backend == "jax":
            from jax.experimental import multihost_utils

            return bool(np.max(multihost_utils.process_allgather(np.array([value]))) > 0)
        import tensorflow as tf

        strategy = self.strategy

        def one_replica():
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.constant(value))

        reduced = strategy.experimental_local_results(strategy.run(one_replica))
        return bool(float(reduced[0]) > 0)


def resolve(choice="none"):
    """Build the :class:`DistributionContext` of a ``--distribute`` choice on this backend.

    Under ``multi-worker`` on TensorFlow this must run before TensorFlow executes anything
    (``MultiWorkerMirroredStrategy`` configures the collective runtime at start-up); it sets
    nothing global on TensorFlow. On JAX, ``data-parallel`` and ``multi-worker`` also make the
    ``DataParallel`` the global ``keras.distribution`` (``set_distribution``), as
    ``model.fit`` reads it from there.

    Args:
        choice: one of :data:`CHOICES`.

    Returns:
        a :class:`DistributionContext`.

    Raises:
        ValueError: an unknown choice, a choice the current backend does not have (naming the
            backend and what works), or a ``multi-worker`` environment that is missing or
            invalid.

    Example:

    >>> resolve("none").is_chief
    True
    >>> resolve("mirrored")          # on JAX
    Traceback (most recent call last):
    ...
    ValueError: distribute='mirrored' is not available on the jax backend, ...
    """
    backend = keras.backend.backend()
    _check_choice(choice, backend)
    if choice == "none":
        return DistributionContext(choice, backend)
    if backend == "tensorflow":
        import tensorflow as tf

        if choice == "mirrored":
            strategy = tf.distribute.MirroredStrategy()
            return DistributionContext(
                choice, backend, strategy=strategy, num_replicas=strategy.num_replicas_in_sync,
                local_replicas=strategy.num_replicas_in_sync,
            )
        num_workers, rank, _ = read_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        local = len(strategy.extended.worker_devices)
        return DistributionContext(
            choice, backend, strategy=strategy, num_workers=num_workers, worker_index=rank,
            num_replicas=strategy.num_replicas_in_sync, local_replicas=local,
        )
    # JAX
    num_workers, rank = (1, 0) if choice == "data-parallel" else _jax_multi_worker()
    devices = keras.distribution.list_devices()
    distribution = keras.distribution.DataParallel(
        devices=devices, auto_shard_dataset=False  # ShardedSpeechBatches shards by worker
    )
    keras.distribution.set_distribution(distribution)
    import jax

    return DistributionContext(
        choice, backend, distribution=distribution, num_workers=num_workers, worker_index=rank,
        num_replicas=len(devices), local_replicas=jax.local_device_count(),
    )


# ------------------------------------------------------------------------------------ sharding


def _pad_time(array, length, value):
    if array.shape[1] >= length:
        return array
    widths = [(0, 0)] * array.ndim
    widths[1] = (0, length - array.shape[1])
    return np.pad(array, widths, constant_values=value)


class ShardedSpeechBatches(SpeechBatches):
    """One worker's (or replica's) slice of every global batch of :class:`SpeechBatches`.

    Every shard computes the same per-epoch plan of global batches (the one an unsharded
    :class:`~keras_topomap.datasets.SpeechBatches` with the same ``batch_size`` and ``seed``
    uses, a function of ``(seed, epoch)``) and serves part ``shard_index`` of ``num_shards``
    of each, padded to the time length of the *global* batch. So all shards have the same
    number of batches (no worker waits for another at the end of an epoch), the shards of a
    step have equal shapes (JAX assembles them into one global array), each utterance is served
    by exactly one shard per epoch, and the concatenated shards of a step are the global batch.

    Shards must be equal: the one global batch whose size is not a multiple of ``multiple``
    (the plan's last, short batch) loses its remainder — at most ``multiple - 1`` utterances
    per epoch, a different random few each epoch when shuffling.

    Args:
        data: every training utterance (a :class:`~keras_topomap.datasets.FeatureSet` or
            utterances), identical on every worker.
        num_shards: how many slices each global batch is cut into.
        shard_index: which slice this object serves (``0 <= shard_index < num_shards``).
        multiple: global batch sizes are made multiples of this (a multiple of
            ``num_shards``; default ``num_shards``).
        batch_size: the *global* batch size, a multiple of ``multiple``.
        **kwargs: the other :class:`~keras_topomap.datasets.SpeechBatches` arguments.

    Raises:
        ValueError: bad shard arguments, or too few utterances for one batch per shard.

    Example:

    >>> shards = [ShardedSpeechBatches(features, num_shards=2, shard_index=i, batch_size=8)
    ...           for i in range(2)]
    >>> len(shards[0]) == len(shards[1]), shards[0][0][0].shape[0]
    (True, 4)
    """

    def __init__(self, data, num_shards=1, shard_index=0, multiple=None, batch_size=16,
                 **kwargs):
        multiple = num_shards if multiple is None else multiple
        owner = "ShardedSpeechBatches"
        num_shards = checks.positive_int(num_shards, "num_shards", owner=owner)
        multiple = checks.positive_int(multiple, "multiple", owner=owner)
        shard_index = checks.integer(shard_index, "shard_index", minimum=0,
                                     maximum=num_shards - 1, owner=owner)
        if multiple % num_shards or batch_size % multiple:
            raise ValueError(
                "ShardedSpeechBatches: multiple must be a multiple of num_shards and batch_size "
                f"a multiple of multiple. Received: num_shards={num_shards}, "
                f"multiple={multiple}, batch_size={batch_size}"
            )
        self.num_shards = int(num_shards)
        self.shard_index = int(shard_index)
        self.multiple = int(multiple)
        super().__init__(data, batch_size=batch_size, **kwargs)
        if len(self.lengths) < self.multiple:
            raise ValueError(
                f"ShardedSpeechBatches: {len(self.lengths)} utterances cannot fill one batch of "
                f"{self.multiple} ({self.num_shards} shards). Received: "
                f"{len(self.lengths)} utterances"
            )

    def _make_batches(self, epoch):
        plan = [np.asarray(b) for b in super()._make_batches(epoch)]
        plan = [b[: len(b) - len(b) % self.multiple] for b in plan]
        self.global_batches = [b for b in plan if len(b)]
        share = [len(b) // self.num_shards for b in self.global_batches]
        return [
            b[self.shard_index * s : (self.shard_index + 1) * s]
            for b, s in zip(self.global_batches, share)
        ]

    @property
    def num_batches(self):
        return len(self._batches)

    def __getitem__(self, index):
        item = super().__getitem__(index)
        # Pad to the global batch's time and label lengths: every shard of a step has the
        # same shapes (JAX assembles them into one global array).
        members = self.global_batches[index]
        length = self.padded_length(self.lengths[members].max())
        if self.mode == "frames":
            return _pad_time(item[0], length, 0.0), _pad_time(item[1], length, -1)
        label_width = self._padded_labels(length, [self.labels[i] for i in members])
        if self.mode == "ctc":
            # Packed targets: 2 length columns, then the labels (padded with the blank, 0).
            return _pad_time(item[0], length, 0.0), _pad_time(item[1], 2 + label_width, 0)
        item["features"] = _pad_time(item["features"], length, 0.0)
        item["frame_labels"] = _pad_time(item["frame_labels"], length, -1)
        item["labels"] = _pad_time(item["labels"], label_width, 0)
        return item


class _ShardGroup:
    """The shards of one worker's replicas, moved through epochs together."""

    def __init__(self, shards):
        self.shards = shards

    @property
    def epoch(self):
        return self.shards[0].epoch

    def set_epoch(self, epoch):
        for shard in self.shards:
            shard.set_epoch(epoch)

    def on_epoch_end(self):
        for shard in self.shards:
            shard.on_epoch_end()

    def __len__(self):
        return len(self.shards[0])


def _tf_per_replica_dataset(strategy, shards):
    """A ``tf.distribute`` dataset: replica ``r`` of this worker gets ``shards[r]``'s batches."""
    import tensorflow as tf

    n_features = shards[0].features.features[0].shape[-1]

    def batches():
        # Consecutive elements go to consecutive local replicas.
        for index in range(len(shards[0])):
            for shard in shards:
                yield shard[index]

    signature = (
        tf.TensorSpec((None, None, n_features), tf.float32),
        tf.TensorSpec((None, None), tf.int32),
    )
    steps = len(shards[0])

    def dataset_fn(input_context):
        dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(steps * len(shards)))
        return dataset.prefetch(len(shards))

    return strategy.distribute_datasets_from_function(dataset_fn)
