"""Padded, length-bucketed batches of speech features as a ``keras.utils.PyDataset``.

:class:`SpeechBatches` feeds ``model.fit`` on every Keras backend. It takes utterances (features
are extracted once, up front) or a precomputed :class:`~keras_topomap.datasets.FeatureSet`, and
yields one of three layouts (``mode``):

* ``"ctc"``: ``(features, packed_targets)`` for a CTC recognizer. ``packed_targets`` is int32
  ``(B, 2 + L)``: column 0 is the utterance's length in *input feature frames*, column 1 its
  label length, columns ``2..`` the character labels (:data:`~keras_topomap.datasets.CHARACTERS`
  ids, zero-padded). Keras passes ``y`` to the loss as one tensor, so the lengths travel with the
  labels; :func:`unpack_ctc_targets` splits them again inside the loss. A model that downsamples
  time must convert column 0 to its output frame count itself.
* ``"frames"``: ``(features, frame_labels)`` with frame labels int32 ``(B, T)`` padded with
  ``-1`` (39-phone ids, see :func:`~keras_topomap.datasets.frame_labels`).
* ``"all"``: a dict ``{"features", "feature_lengths", "labels", "label_lengths",
  "frame_labels"}`` for analysis code.

Features are float32 ``(B, T, F)``, zero-padded after each utterance's last frame; ``T`` is the
longest utterance of the batch, rounded up to a multiple of ``pad_to_multiple`` (use e.g. 32 to
limit the number of distinct shapes a compiled model sees).

Bounded shapes (``length_buckets``): a compiled backend (JAX, or TensorFlow with XLA) compiles
one program per distinct input shape, and with ``mode="ctc"`` the shape has two varying axes,
the padded time and the longest label of the batch. Rounding time to a multiple alone leaves
the label axis exact, so a shuffled epoch keeps producing new ``(T, L)`` pairs and the number
of compiled programs grows with every epoch. With ``length_buckets=K`` the padded time is one of
``K`` lengths (quantiles of the data's lengths, rounded up to ``pad_to_multiple``) and the label
axis is padded to the longest label among all utterances that fit that length, a function of
the padded time: each batch size then meets at most ``K`` shapes, however many epochs run.

Batching: with ``bucket=True`` utterances of similar length share a batch (little padding);
with ``shuffle=True`` the batches are reshuffled at every epoch end, deterministically from
``(seed, epoch)``, so two datasets built with the same seed give identical batches epoch by epoch.

Example:

>>> from keras_topomap.datasets import SpeechBatches, load_tts_corpus
>>> ds = SpeechBatches(load_tts_corpus("test")[:40], batch_size=8)
>>> x, y = ds[0]
>>> x.shape[0], x.shape[2], y.dtype
(8, 40, dtype('int32'))
"""

from __future__ import annotations

import math

import keras
import numpy as np

from keras_topomap import checks
from keras_topomap.datasets.features import FeatureConfig, FeatureSet, load_corpus_features

__all__ = [
    "SpeechBatches", "bucket_edges", "pack_ctc_targets", "unpack_ctc_targets", "pad_sequences",
]

_MODES = ("ctc", "frames", "all")


def pad_sequences(sequences, value, dtype, length=None):
    """Stack 1-D or 2-D arrays along a new batch axis, padding axis 0 at the end with ``value``."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    length = int(lengths.max(initial=0)) if length is None else int(length)
    tail = sequences[0].shape[1:] if sequences else ()
    out = np.full((len(sequences), length, *tail), value, dtype=dtype)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = seq
    return out


def bucket_edges(lengths, n_buckets, multiple=1):
    """``n_buckets`` (or fewer, when some coincide) padded lengths covering ``lengths``.

    The edges are the ``1/n, 2/n, ..., 1`` quantiles of ``lengths`` rounded up to ``multiple``,
    so about the same number of utterances falls into each bucket and the last edge holds the
    longest utterance.

    Example:

    >>> bucket_edges(np.arange(1, 101), 4, multiple=8).tolist()
    [32, 56, 80, 104]
    """
    lengths = np.asarray(lengths).reshape(-1)
    if isinstance(n_buckets, bool) or int(n_buckets) != n_buckets or n_buckets < 1:
        raise ValueError(f"n_buckets must be a positive int. Received: n_buckets={n_buckets!r}")
    if lengths.size == 0:
        raise ValueError("bucket_edges: no lengths given. Received: an empty array")
    quantiles = np.quantile(lengths, np.arange(1, int(n_buckets) + 1) / int(n_buckets))
    edges = np.ceil(np.ceil(quantiles) / multiple).astype(np.int64) * int(multiple)
    return np.unique(edges)


def pack_ctc_targets(feature_lengths, labels, label_lengths=None):
    """Pack CTC targets into one int32 array ``(B, 2 + L)``.

    Args:
        feature_lengths: ``(B,)`` lengths of the inputs in feature frames.
        labels: a list of 1-D label arrays, or a zero-padded ``(B, L)`` array.
        label_lengths: ``(B,)``; required with a padded array, inferred from a list.

    Returns:
        int32 ``(B, 2 + L)``: ``[:, 0]`` feature length, ``[:, 1]`` label length, ``[:, 2:]``
        labels padded with 0 (the blank, never a real label).

    Example:

    >>> pack_ctc_targets([50, 30], [np.array([3, 1]), np.array([7])])
    array([[50,  2,  3,  1],
           [30,  1,  7,  0]], dtype=int32)
    """
    feature_lengths = np.asarray(feature_lengths, dtype=np.int64).reshape(-1)
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        if label_lengths is None:
            raise ValueError(
                "pack_ctc_targets: label_lengths is required with a padded label array."
            )
        padded = labels
    else:
        labels = [np.asarray(lab).reshape(-1) for lab in labels]
        if label_lengths is None:
            label_lengths = [len(lab) for lab in labels]
        padded = pad_sequences(labels, 0, np.int32) if labels else np.zeros((0, 0), np.int32)
    label_lengths = np.asarray(label_lengths, dtype=np.int64).reshape(-1)
    if not (len(feature_lengths) == len(label_lengths) == len(padded)):
        raise ValueError(
            "pack_ctc_targets: feature_lengths, labels and label_lengths must have the same batch "
            f"size. Received: {len(feature_lengths)}, {len(padded)}, {len(label_lengths)}"
        )
    packed = np.concatenate(
        [feature_lengths[:, None], label_lengths[:, None], np.asarray(padded, dtype=np.int64)],
        axis=1,
    )
    return packed.astype(np.int32)


def unpack_ctc_targets(packed):
    """Split packed targets back into ``(feature_lengths, label_lengths, labels)`` (int32).

    The one place that reads the layout of :func:`pack_ctc_targets`. NumPy arrays give NumPy
    arrays; backend tensors (inside a loss or a compiled step) give tensors (``keras.ops``).

    Example:

    >>> f, n, lab = unpack_ctc_targets(pack_ctc_targets([50], [np.array([3, 1])]))
    >>> int(f[0]), int(n[0]), np.asarray(lab).tolist()
    (50, 2, [[3, 1]])
    """
    if isinstance(packed, (list, tuple, np.ndarray)):
        packed = np.asarray(packed).astype(np.int32)
    else:
        packed = keras.ops.cast(packed, "int32")
    return packed[:, 0], packed[:, 1], packed[:, 2:]


class SpeechBatches(keras.utils.PyDataset):
    """Padded speech batches for ``model.fit`` and analysis: length-bucketed, reproducibly shuffled.

    Args:
        data: a list of :class:`~keras_topomap.datasets.Utterance` (features are extracted
            now, with a progress bar) or a :class:`~keras_topomap.datasets.FeatureSet`.
        config: :class:`~keras_topomap.datasets.FeatureConfig` for utterances (ignored for a
            FeatureSet, which carries its own).
        batch_size: utterances per batch (the last batch may be smaller).
        shuffle: reshuffle batches every epoch, deterministically from ``(seed, epoch)``.
        seed: the shuffling seed.
        mode: ``"ctc"``, ``"frames"`` or ``"all"`` (see the module docstring).
        bucket: group utterances of similar length; shuffling then only mixes lengths within
            pools of ``bucket_pool`` batches, and the batch order is shuffled.
        bucket_pool: pool size in batches for bucketing while shuffling.
        pad_to_multiple: round the padded time length up to a multiple of this.
        length_buckets: ``None``, or the number of padded time lengths (see the module
            docstring: bounds the shapes a compiled model meets), or a sequence of padded
            lengths to use (lengths beyond the last are rounded up to ``pad_to_multiple``).
        **kwargs: ``keras.utils.PyDataset`` arguments (``workers``, ``use_multiprocessing``,
            ``max_queue_size``).

    Attributes:
        features: the :class:`FeatureSet` served.
        epoch: the current epoch (incremented by :meth:`on_epoch_end`).

    Example:

    >>> from keras_topomap.datasets import SpeechBatches, load_corpus_features
    >>> ds = SpeechBatches(load_corpus_features("test"), batch_size=4, mode="all")
    >>> sorted(ds[0])
    ['feature_lengths', 'features', 'frame_labels', 'label_lengths', 'labels']
    """

    def __init__(
        self,
        data,
        config=None,
        batch_size=16,
        shuffle=True,
        seed=0,
        mode="ctc",
        bucket=True,
        bucket_pool=8,
        pad_to_multiple=1,
        progress=False,
        length_buckets=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        checks.choice(mode, "mode", _MODES, owner="SpeechBatches")
        for name, value in (
            ("batch_size", batch_size),
            ("bucket_pool", bucket_pool),
            ("pad_to_multiple", pad_to_multiple),
        ):
            checks.positive_int(value, name, owner="SpeechBatches")
        if isinstance(data, FeatureSet):
            features = data
        else:
            data = list(data)
            features = FeatureSet.from_utterances(
                data, config or FeatureConfig(), progress=progress
            )
        if len(features) == 0:
            raise ValueError("SpeechBatches: no utterances given. Received: an empty dataset")
        self.features = features
        self.config = features.config
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.mode = mode
        self.bucket = bool(bucket)
        self.bucket_pool = int(bucket_pool)
        self.pad_to_multiple = int(pad_to_multiple)
        self.lengths = features.lengths
        self.labels = features.labels if mode in ("ctc", "all") else None
        self.length_buckets = self._edges(length_buckets)
        self._label_pad = None
        if self.length_buckets is not None and self.labels is not None:
            # Longest label among the utterances that fit each edge: the label axis of a batch
            # padded to that edge.
            label_lengths = np.array([len(lab) for lab in self.labels])
            order = np.argsort(self.lengths, kind="stable")
            running = np.maximum.accumulate(label_lengths[order])
            fits = np.searchsorted(self.lengths[order], self.length_buckets, side="right")
            self._label_pad = {
                int(e): int(running[f - 1]) if f > 0 else 0
                for e, f in zip(self.length_buckets, fits)
            }
        self.epoch = 0
        self._batches = self._make_batches(0)

    def _edges(self, length_buckets):
        if length_buckets is None:
            return None
        if isinstance(length_buckets, (int, np.integer)) and not isinstance(length_buckets, bool):
            return bucket_edges(self.lengths, int(length_buckets), self.pad_to_multiple)
        edges = np.asarray(length_buckets)
        if edges.ndim != 1 or edges.size == 0 or not np.issubdtype(edges.dtype, np.integer) or (
            edges < 1
        ).any():
            raise ValueError(
                "SpeechBatches: length_buckets must be None, a positive int or a sequence of "
                f"positive int lengths. Received: {length_buckets!r}"
            )
        return np.unique(edges.astype(np.int64))

    def padded_length(self, longest):
        """The padded time length of a batch whose longest utterance has ``longest`` frames."""
        m = self.pad_to_multiple
        if self.length_buckets is not None:
            at = int(np.searchsorted(self.length_buckets, longest, side="left"))
            if at < len(self.length_buckets):
                return int(self.length_buckets[at])
        return -(-int(longest) // m) * m

    def _padded_labels(self, t_max, labels):
        longest = max(len(lab) for lab in labels)
        if self._label_pad is None:
            return longest
        return max(self._label_pad.get(t_max, longest), longest)

    @classmethod
    def from_corpus(cls, split="train", config=None, root=None, **kwargs):
        """Batches of a bundled-corpus split, using the on-disk feature cache."""
        return cls(load_corpus_features(split, config, root=root), **kwargs)

    def _make_batches(self, epoch):
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable") if self.bucket else np.arange(n)
            return [order[i : i + size] for i in range(0, n, size)]
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n)
        if not self.bucket:
            return [order[i : i + size] for i in range(0, n, size)]
        pool = size * self.bucket_pool
        batches = []
        for p in range(0, n, pool):
            members = order[p : p + pool]
            members = members[np.argsort(self.lengths[members], kind="stable")]
            batches.extend(members[i : i + size] for i in range(0, len(members), size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def set_epoch(self, epoch):
        """Jump to the batch order of ``epoch`` (as if :meth:`on_epoch_end` ran ``epoch`` times)."""
        self.epoch = int(epoch)
        self._batches = self._make_batches(self.epoch)

    def on_epoch_end(self):
        if self.shuffle:
            self.set_epoch(self.epoch + 1)
        else:
            self.epoch += 1

    @property
    def num_batches(self):
        return math.ceil(len(self.lengths) / self.batch_size)

    def __len__(self):
        return self.num_batches

    def batch_indices(self, index):
        """Positions (into :attr:`features`) of the utterances in batch ``index``."""
        return self._batches[index]

    @property
    def padding_fraction(self):
        """Share of padded frames over all batches of the current epoch (lower is better)."""
        padded = sum(self.padded_length(self.lengths[b].max()) * len(b) for b in self._batches)
        return 1.0 - float(self.lengths.sum()) / padded

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"SpeechBatches has {len(self)} batches. Received index: {index}")
        idx = self._batches[index]
        lengths = self.lengths[idx]
        t_max = self.padded_length(lengths.max())
        features = pad_sequences([self.features.features[i] for i in idx], 0.0, np.float32, t_max)
        if self.mode == "frames":
            frames = pad_sequences(
                [self.features.frame_labels[i] for i in idx], -1, np.int32, t_max
            )
            return features, frames
        labels = [self.labels[i] for i in idx]
        label_lengths = np.array([len(lab) for lab in labels], dtype=np.int32)
        padded_labels = pad_sequences(labels, 0, np.int32, self._padded_labels(t_max, labels))
        if self.mode == "ctc":
            return features, pack_ctc_targets(lengths, padded_labels, label_lengths)
        frames = pad_sequences([self.features.frame_labels[i] for i in idx], -1, np.int32, t_max)
        return {
            "features": features,
            "feature_lengths": lengths.astype(np.int32),
            "labels": padded_labels,
            "label_lengths": label_lengths,
            "frame_labels": frames,
        }
