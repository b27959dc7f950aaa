"""CTC for the Wav2Letter-style recognizer: the loss, length checks, decoding and error rates.

Targets travel through ``model.fit`` as one *packed* int32 array per batch, shape
``(batch, 2 + L)`` (what :class:`keras_topomap.datasets.SpeechBatches` yields with
``mode="ctc"``):

- column 0: the utterance's length in *input* feature frames (before the model's stride),
- column 1: its label length,
- columns 2...: the character labels (index 0 = CTC blank), zero-padded.

:class:`CTCLoss` unpacks them with :mod:`keras.ops`, so one code path trains on TensorFlow, JAX
and PyTorch. The model's first layer has stride 2, so ``T`` input frames give ``ceil(T / 2)``
output frames (:func:`output_lengths`).

Infeasible targets: CTC needs at least ``label length + number of adjacent repeated labels``
output frames (a blank must separate repeats). A shorter output has probability 0 (loss
``+inf`` and NaN gradients). :func:`check_ctc_lengths` rejects such utterances with a clear
error before training (:func:`keras_topomap.train.train` runs it on every utterance); inside the
loss an infeasible sample is computed with an empty label sequence and then multiplied by 0, so
it contributes exactly 0 to the loss and to the gradients instead of NaN/inf poisoning the whole
batch. :func:`count_infeasible` tells how many a batch holds.

Decoding: :func:`ctc_decode` (greedy, or beam search) gives label sequences,
:func:`decode_texts` gives strings; :func:`character_error_rate` and :func:`word_error_rate` use
`jiwer <https://github.com/jitsi/jiwer>`_. :func:`transcribe` runs a model on audio.

Example:

>>> model = keras_topomap.models.wav2letter("small")
>>> model.compile(optimizer="adam", loss=CTCLoss(stride=2))
>>> model.fit(keras_topomap.datasets.SpeechBatches(utterances, mode="ctc"), epochs=10)
>>> texts = decode_texts(model.predict(features), output_lengths(feature_lengths))
"""

from __future__ import annotations

import os

import keras
import numpy as np
from keras import ops

from keras_topomap import checks
from keras_topomap.datasets.batches import unpack_ctc_targets

__all__ = [
    "CTCLoss",
    "character_error_rate",
    "check_ctc_lengths",
    "count_infeasible",
    "ctc_decode",
    "decode_texts",
    "describe_bad_targets",
    "error_rates",
    "output_lengths",
    "required_frames",
    "transcribe",
    "word_error_rate",
]

_STRATEGIES = ("greedy", "beam_search")


def output_lengths(input_lengths, stride=2):
    """Output frames of a ``"same"``-padded strided model: ``ceil(T / stride)``.

    Works on ints, NumPy arrays and backend tensors (integer dtypes).

    >>> output_lengths(np.array([300, 301]), stride=2)
    array([150, 151])
    """
    stride = checks.positive_int(stride, "stride")
    if isinstance(input_lengths, (int, np.integer)):
        return -(-int(input_lengths) // stride)
    if isinstance(input_lengths, (list, tuple, np.ndarray)):
        return -(-np.asarray(input_lengths) // stride)
    return ops.floor_divide(input_lengths + (stride - 1), stride)


def required_frames(labels, label_lengths=None):
    """Fewest output frames CTC needs per label sequence: length + adjacent repeats.

    A sequence is feasible (CTC can align it) when ``required_frames <= output frames``; this
    is the one place that counts it, for data checks and inside :class:`CTCLoss` alike.

    Args:
        labels: ``(batch, L)`` int labels, zero-padded (NumPy or a backend tensor), or one 1D
            sequence (NumPy).
        label_lengths: ``(batch,)`` lengths; ``None`` counts the non-zero labels.

    Returns:
        ``(batch,)`` int64 array (an int for one sequence); an int32 tensor for tensors.

    Example:

    >>> required_frames([3, 3, 5])
    4
    """
    if not isinstance(labels, (list, tuple, np.ndarray)):  # a backend tensor, inside a loss
        if label_lengths is None:
            label_lengths = ops.sum(ops.cast(ops.not_equal(labels, 0), "int32"), axis=1)
        label_lengths = ops.cast(label_lengths, "int32")
        position = ops.arange(ops.shape(labels)[1] - 1, dtype="int32")
        inside = ops.less(ops.expand_dims(position + 1, 0), ops.expand_dims(label_lengths, 1))
        same = ops.equal(labels[:, 1:], labels[:, :-1])
        return label_lengths + ops.sum(ops.cast(ops.logical_and(same, inside), "int32"), axis=1)
    labels = np.asarray(labels)
    single = labels.ndim == 1
    labels = np.atleast_2d(labels)
    if label_lengths is None:
        label_lengths = np.count_nonzero(labels, axis=1)
    label_lengths = np.atleast_1d(np.asarray(label_lengths, dtype=np.int64))
    position = np.arange(max(labels.shape[1] - 1, 0))
    inside = position[None, :] + 1 < label_lengths[:, None]
    repeats = np.sum((labels[:, 1:] == labels[:, :-1]) & inside, axis=1)
    need = label_lengths + repeats
    return int(need[0]) if single else need


def check_ctc_lengths(n_frames, labels, stride=2, names=None):
    """Raise a clear ``ValueError`` for utterances whose labels cannot fit the model's output.

    Args:
        n_frames: input feature frames per utterance (sequence of ints).
        labels: per utterance, its label sequence (sequences of ints, no padding).
        stride: the model's cumulative stride.
        names: per utterance, a name used in the error (ids or file paths).

    Raises:
        ValueError: naming every offending utterance (up to 5), its frame and label counts.

    Example:

    >>> check_ctc_lengths([10], [[1, 2, 3, 4, 5, 6]], stride=2)
    Traceback (most recent call last):
    ...
    ValueError: 1 utterance(s) have more labels than the model has output frames ...
    """
    stride = checks.positive_int(stride, "stride")
    n_frames = np.asarray(n_frames, dtype=np.int64).reshape(-1)
    if len(labels) != len(n_frames):
        raise ValueError(
            f"check_ctc_lengths needs one label sequence per utterance. Received: "
            f"{len(n_frames)} frame counts and {len(labels)} label sequences."
        )
    width = max((len(seq) for seq in labels), default=0)
    padded = np.zeros((len(labels), max(width, 1)), dtype=np.int64)
    lengths = np.array([len(seq) for seq in labels], dtype=np.int64)
    for i, seq in enumerate(labels):  # one pass over utterances, before training
        padded[i, : len(seq)] = seq
    need = required_frames(padded, lengths)
    have = output_lengths(n_frames, stride)
    bad = np.flatnonzero(need > have)
    if bad.size:
        names = list(range(len(n_frames))) if names is None else list(names)
        details = "; ".join(
            f"{names[i]}: {n_frames[i]} frames -> {have[i]} output frames, needs {need[i]} "
            f"({lengths[i]} labels + {need[i] - lengths[i]} repeats)"
            for i in bad[:5]
        )
        more = f" (and {bad.size - 5} more)" if bad.size > 5 else ""
        raise ValueError(
            f"{bad.size} utterance(s) have more labels than the model has output frames "
            f"(stride {stride}); CTC cannot align them. Shorten the transcripts, use a "
            f"smaller hop or drop these utterances. Received: {details}{more}"
        )


_PACKED_FORMAT = (
    "CTCLoss expects packed targets of shape (batch, 2 + L): column 0 = input frames, column 1 "
    "= label length, then the labels, zero-padded (keras_topomap.datasets.pack_ctc_targets, or "
    "SpeechBatches(mode='ctc')). Plain (batch, L) label arrays must be packed first."
)


def _check_packed_shape(y_true, y_pred):
    shape = tuple(y_true.shape)
    if len(shape) != 2 or (shape[1] is not None and shape[1] < 3):
        raise ValueError(f"{_PACKED_FORMAT} Received: y_true of shape {shape}.")
    if shape[0] is not None and y_pred.shape[0] is not None and shape[0] != y_pred.shape[0]:
        raise ValueError(
            f"CTCLoss: y_true and y_pred hold different batch sizes. Received: y_true of shape "
            f"{shape}, y_pred of shape {tuple(y_pred.shape)}."
        )


def describe_bad_targets(packed, classes, blank_index=0):
    """What is wrong with a packed CTC target batch, as a sentence (``None`` when it is valid).

    Checks that lengths are within bounds (frames >= 0, ``0 <= label length <= L`` for ``L``
    label columns), that every label is a class index in ``[0, classes)``, and that no label
    within a sample's length is the blank (CTC never emits it as a label; plain zero-padded
    labels read as packed targets fail here).

    Example:

    >>> describe_bad_targets(np.array([[8, 5, 12, 12, 15, 0, 0]]), classes=29)
    'sample 0: the blank (0) occurs inside its 5 labels'
    """
    frames, lengths, labels = unpack_ctc_targets(np.asarray(packed))
    width = labels.shape[1]
    inside = np.arange(width)[None, :] < lengths[:, None]
    problems = []
    for i in np.flatnonzero(frames < 0)[:3]:
        problems.append(f"sample {i}: negative frame count {frames[i]}")
    for i in np.flatnonzero((lengths < 0) | (lengths > width))[:3]:
        problems.append(
            f"sample {i}: label length {lengths[i]} is outside [0, {width}] "
            f"(the target has {width} label columns)"
        )
    for i in np.flatnonzero(np.any((labels < 0) | (labels >= classes), axis=1))[:3]:
        row = labels[i]
        problems.append(
            f"sample {i}: label {row[(row < 0) | (row >= classes)][0]} is not a class index in "
            f"[0, {classes})"
        )
    for i in np.flatnonzero(np.any((labels == blank_index) & inside, axis=1))[:3]:
        if 0 <= lengths[i] <= width:
            problems.append(
                f"sample {i}: the blank ({blank_index}) occurs inside its {lengths[i]} labels"
            )
    return "; ".join(problems) or None


def _check_packed_values(packed, classes, blank_index):
    """Raise a ValueError for a bad target batch, in eager code and inside compiled steps.

    Eager tensors are checked at once. Inside a compiled step the values only exist when it
    runs: JAX checks them in a host callback, TensorFlow in a graph assertion (which XLA drops).
    """
    def check(values):
        problem = describe_bad_targets(values, classes, blank_index)
        if problem:
            raise ValueError(f"{_PACKED_FORMAT} Received: {problem}.")

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if isinstance(packed, jax.core.Tracer):
            jax.debug.callback(check, packed)
            return
    elif backend == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            frames, lengths, labels = unpack_ctc_targets(packed)
            width = ops.shape(labels)[1]
            inside = ops.expand_dims(ops.arange(width), 0) < ops.expand_dims(lengths, 1)
            ok = ops.all(frames >= 0) & ops.all((lengths >= 0) & (lengths <= width))
            ok = ok & ops.all((labels >= 0) & (labels < classes))
            ok = ok & ops.logical_not(ops.any((labels == blank_index) & inside))
            tf.debugging.Assert(ok, [_PACKED_FORMAT, "Received (first rows):", packed[:3]])
            return
    check(ops.convert_to_numpy(packed))


def count_infeasible(y_true, stride=2):
    """How many samples of a packed target batch cannot be aligned (they add 0 to the loss)."""
    stride = checks.positive_int(stride, "stride")
    frames, label_lengths, labels = unpack_ctc_targets(np.asarray(y_true))
    need = required_frames(labels, label_lengths)
    return int(np.sum(need > output_lengths(frames, stride)))


@keras.saving.register_keras_serializable(package="keras_topomap")
class CTCLoss(keras.losses.Loss):
    """CTC loss on logits with packed targets and the model's stride.

    ``y_true`` is the packed ``(batch, 2 + L)`` target (see module docstring); ``y_pred`` the
    model's ``(batch, T_out, classes)`` logits. Per sample it computes
    ``ops.ctc_loss(labels, logits, label_length, ceil(frames / stride))`` (clipped to ``T_out``),
    i.e. the negative log-likelihood of the transcript; padded output frames are ignored.
    Infeasible samples contribute 0 (see module docstring); check data with
    :func:`check_ctc_lengths` first. A target that is not a packed batch (wrong shape, lengths
    out of bounds, labels outside ``[0, classes)`` or a blank among the labels, as plain
    zero-padded labels give) raises a ``ValueError`` saying so (:func:`describe_bad_targets`).

    Args:
        stride: the model's cumulative stride (input frames per output frame).
        blank_index: the CTC blank class.
        reduction: as for ``keras.losses.Loss`` (default: mean over the batch).
        name: the loss name.
        dtype: as for ``keras.losses.Loss``.

    Example:

    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=CTCLoss(stride=2))
    """

    def __init__(
        self, stride=2, blank_index=0, reduction="sum_over_batch_size", name="ctc", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.stride = checks.positive_int(stride, "stride")
        self.blank_index = int(blank_index)

    def call(self, y_true, y_pred):
        _check_packed_shape(y_true, y_pred)
        _check_packed_values(ops.cast(y_true, "int32"), int(y_pred.shape[-1]), self.blank_index)
        frames, label_lengths, labels = unpack_ctc_targets(y_true)
        out_lengths = ops.minimum(output_lengths(frames, self.stride), ops.shape(y_pred)[1])
        feasible = ops.less_equal(required_frames(labels, label_lengths), out_lengths)
        # An empty target is always feasible: the masked samples stay finite, then weigh 0.
        safe_lengths = ops.where(feasible, label_lengths, ops.zeros_like(label_lengths))
        losses = ops.ctc_loss(
            labels, y_pred, safe_lengths, out_lengths, mask_index=self.blank_index
        )
        return losses * ops.cast(feasible, losses.dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"stride": self.stride, "blank_index": self.blank_index})
        return config


def ctc_decode(logits, lengths=None, strategy="greedy", beam_width=100, blank_index=0):
    """Decode logits into label sequences (blanks removed, repeats merged).

    Args:
        logits: ``(batch, T, classes)`` model output (array or tensor).
        lengths: ``(batch,)`` valid *output* frames per sample (``output_lengths(frames)``);
            ``None`` uses all ``T``.
        strategy: ``"greedy"`` (best path) or ``"beam_search"``.
        beam_width: beams for ``"beam_search"``.
        blank_index: the CTC blank class.

    Returns:
        list of 1D int arrays, one per sample.

    Example:

    >>> logits = np.log(np.eye(4)[[1, 1, 0, 2, 3, 3]][None] + 1e-3)
    >>> ctc_decode(logits)
    [array([1, 2, 3], dtype=int32)]
    """
    checks.choice(strategy, "strategy", _STRATEGIES)
    logits = ops.convert_to_tensor(logits, dtype="float32")
    if len(logits.shape) != 3:
        raise ValueError(
            f"ctc_decode expects logits of shape (batch, time, classes). "
            f"Received: shape={tuple(logits.shape)}"
        )
    batch, steps = int(logits.shape[0]), int(logits.shape[1])
    if lengths is None:
        lengths = np.full((batch,), steps, dtype=np.int32)
    lengths = np.minimum(np.asarray(lengths, dtype=np.int32).reshape(-1), steps)
    if lengths.shape[0] != batch:
        raise ValueError(
            f"ctc_decode needs one length per sample. Received: {lengths.shape[0]} lengths for "
            f"logits of shape {tuple(logits.shape)}"
        )
    decoded, _ = ops.ctc_decode(
        logits,
        ops.convert_to_tensor(lengths),
        strategy=strategy,
        beam_width=beam_width,
        top_paths=1,
        mask_index=blank_index,
    )
    best = np.asarray(ops.convert_to_numpy(decoded[0]))
    return [row[row >= 0].astype(np.int32) for row in best]


def decode_texts(logits, lengths=None, strategy="greedy", beam_width=100):
    """Decode logits into strings with the package's alphabet (see :func:`ctc_decode`).

    Example:

    >>> decode_texts(model.predict(features), output_lengths(feature_lengths))
    ['the cat sat', ...]
    """
    from keras_topomap.datasets import labels_to_text

    sequences = ctc_decode(logits, lengths, strategy=strategy, beam_width=beam_width)
    return [labels_to_text(seq) for seq in sequences]


def _as_text_list(texts, what):
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{what} must be strings. Received: {[type(t).__name__ for t in texts]}")
    return texts


def _check_pairs(references, hypotheses):
    references = _as_text_list(references, "references")
    hypotheses = _as_text_list(hypotheses, "hypotheses")
    if len(references) != len(hypotheses):
        raise ValueError(
            f"Need one hypothesis per reference. Received: {len(references)} references, "
            f"{len(hypotheses)} hypotheses."
        )
    if not references or not any(r.strip() for r in references):
        raise ValueError("Error rates need at least one non-empty reference. Received: none.")
    return references, hypotheses


def character_error_rate(references, hypotheses):
    """Corpus CER: character edits over reference characters (jiwer), spaces counted.

    >>> character_error_rate(["the cat"], ["the bat"])
    0.14285714285714285
    """
    import jiwer

    references, hypotheses = _check_pairs(references, hypotheses)
    return float(jiwer.cer(references, hypotheses))


def word_error_rate(references, hypotheses):
    """Corpus WER: word edits over reference words (jiwer).

    >>> word_error_rate(["the cat sat"], ["the bat sat"])
    0.3333333333333333
    """
    import jiwer

    references, hypotheses = _check_pairs(references, hypotheses)
    return float(jiwer.wer(references, hypotheses))


def error_rates(references, hypotheses):
    """``{"cer": ..., "wer": ...}`` of a corpus."""
    return {
        "cer": character_error_rate(references, hypotheses),
        "wer": word_error_rate(references, hypotheses),
    }


def transcribe(
    model,
    audio_or_path,
    sample_rate=None,
    feature_config=None,
    strategy="greedy",
    beam_width=100,
    stride=None,
):
    """Transcribe audio with a trained recognizer.

    Features come from :func:`keras_topomap.datasets.extract_features` with ``feature_config``
    (use the one the model was trained with; :func:`keras_topomap.train.train` stores it in its
    output folder and :func:`keras_topomap.train.load_feature_config` reads it back).

    Args:
        model: a Keras model returning CTC logits.
        audio_or_path: a path to an audio file, a 1D float waveform (needs ``sample_rate``), an
            utterance object with ``audio`` and ``sample_rate``, or a list of these.
        sample_rate: Hz of a waveform array.
        feature_config: a :class:`keras_topomap.datasets.FeatureConfig` (default: defaults).
        strategy: ``"greedy"`` or ``"beam_search"``, see :func:`ctc_decode`.
        beam_width: beams for ``"beam_search"``, see :func:`ctc_decode`.
        stride: the model's cumulative stride (default: read from the model).

    Returns:
        the transcript (``str``), or a list of them for a list input.

    Example:

    >>> transcribe(model, "hello.wav")
    'hello world'
    """
    from keras_topomap import datasets

    single = not isinstance(audio_or_path, (list, tuple))
    items = [audio_or_path] if single else list(audio_or_path)
    if not items:
        return []
    if stride is None:
        from keras_topomap.models import total_stride

        stride = total_stride(model)
    config = feature_config if feature_config is not None else datasets.FeatureConfig()
    features = [_features_of(item, sample_rate, config, datasets) for item in items]
    lengths = np.array([f.shape[0] for f in features], dtype=np.int64)
    batch = np.zeros((len(features), int(lengths.max()), features[0].shape[1]), np.float32)
    for i, f in enumerate(features):  # padding a handful of utterances
        batch[i, : f.shape[0]] = f
    logits = model.predict_on_batch(batch)
    texts = decode_texts(logits, output_lengths(lengths, stride), strategy, beam_width)
    return texts[0] if single else texts


def _features_of(item, sample_rate, config, datasets):
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        audio, rate = datasets.read_audio(path)
        item = datasets.Utterance(path, audio, rate, "", path=path)
    elif not (hasattr(item, "audio") and hasattr(item, "sample_rate")):
        audio = np.asarray(item, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(
                f"transcribe expects a mono waveform (1D). Received: shape={audio.shape}"
            )
        if sample_rate is None:
            raise ValueError("transcribe needs sample_rate for a waveform array. Received: None")
        item = datasets.Utterance("<waveform>", audio, int(sample_rate), "")
    return np.asarray(datasets.extract_features(item, config), dtype=np.float32)
