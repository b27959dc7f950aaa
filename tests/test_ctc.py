"""CTC loss on packed targets, length bookkeeping, decoding and error rates."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_topomap import ctc, models
from keras_topomap.datasets import labels_to_text, pack_ctc_targets, text_to_labels


def _peaky(sequence, n_classes=29):
    """Logits whose argmax path is ``sequence`` (one class id per frame)."""
    return np.log(np.eye(n_classes)[sequence] * 0.97 + 0.03 / n_classes).astype("float32")


def test_output_lengths_is_ceil_of_stride():
    assert ctc.output_lengths(300, 2) == 150
    assert ctc.output_lengths(301, 2) == 151
    np.testing.assert_array_equal(ctc.output_lengths(np.array([1, 2, 3, 7]), 3), [1, 1, 1, 3])
    with pytest.raises(ValueError, match="stride"):
        ctc.output_lengths(10, 0)


def test_required_frames_counts_repeats():
    # "hello": l-l is a repeat, so CTC needs 5 + 1 frames.
    assert ctc.required_frames(text_to_labels("hello")) == 6
    labels = np.array([[1, 1, 1, 0], [1, 2, 0, 0], [3, 3, 0, 0]])
    np.testing.assert_array_equal(ctc.required_frames(labels, [3, 2, 1]), [5, 2, 1])


@pytest.mark.backend
def test_required_frames_on_tensors_matches_numpy():
    labels = np.array([[1, 1, 1, 0], [1, 2, 0, 0], [3, 3, 0, 0]], "int32")
    for lengths in ([3, 2, 1], None):
        tensor_lengths = None if lengths is None else ops.convert_to_tensor(lengths, "int32")
        need = ctc.required_frames(ops.convert_to_tensor(labels), tensor_lengths)
        np.testing.assert_array_equal(ops.convert_to_numpy(need),
                                      ctc.required_frames(labels, lengths))


def test_check_ctc_lengths_names_the_utterance():
    ctc.check_ctc_lengths([12, 13], [[1, 2, 3, 4, 5, 6], [1, 1, 2, 2, 3]], stride=2)  # fits
    with pytest.raises(ValueError, match=r"utt-b: 9 frames -> 5 output frames, needs 6"):
        ctc.check_ctc_lengths(
            [12, 9], [[1, 2, 3], [1, 1, 2, 2]], stride=2, names=["utt-a", "utt-b"]
        )
    with pytest.raises(ValueError, match="one label sequence per utterance"):
        ctc.check_ctc_lengths([3], [], stride=2)


@pytest.mark.backend
def test_loss_matches_ctc_loss_with_strided_lengths():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 8, 6)).astype("float32")
    packed = pack_ctc_targets([15, 9], [np.array([1, 2, 3]), np.array([4, 4])])
    per_sample = ctc.CTCLoss(stride=2, reduction=None)(packed, logits)
    expected = ops.ctc_loss(
        np.array([[1, 2, 3], [4, 4, 0]], "int32"), logits,
        np.array([3, 2], "int32"), np.array([8, 5], "int32"),  # ceil(15/2), ceil(9/2)
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(per_sample), ops.convert_to_numpy(expected), rtol=1e-5
    )
    mean = ctc.CTCLoss(stride=2)(packed, logits)
    np.testing.assert_allclose(float(mean), float(np.mean(ops.convert_to_numpy(expected))), 1e-5)


@pytest.mark.backend
def test_infeasible_sample_adds_zero_and_keeps_gradients_finite():
    model = models.wav2letter("tiny", n_features=5)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=ctc.CTCLoss(stride=2))
    x = np.random.default_rng(1).normal(size=(2, 8, 5)).astype("float32")
    # 8 frames -> 4 output frames: 3 labels fit, "aab" (needs 4) fits, 5 labels do not.
    ok = pack_ctc_targets([8, 8], [np.array([1, 2, 3]), np.array([1, 1, 2])])
    bad = pack_ctc_targets([8, 8], [np.array([1, 2, 3]), np.array([1, 2, 3, 4, 5])])
    assert ctc.count_infeasible(ok) == 0 and ctc.count_infeasible(bad) == 1
    per_sample = ops.convert_to_numpy(ctc.CTCLoss(reduction=None)(bad, model(x)))
    assert np.isfinite(per_sample[0]) and per_sample[0] > 0 and per_sample[1] == 0.0
    model.train_on_batch(x, bad)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_loss_serializes():
    loss = ctc.CTCLoss(stride=3, blank_index=0)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, ctc.CTCLoss) and clone.stride == 3


@pytest.mark.backend
def test_greedy_decoding_on_hand_made_logits():
    # frames: a a _ b _ b b c   -> "abbc" (blank separates the two b's; repeats merge)
    a, b, c = text_to_labels("abc")
    frames = [a, a, 0, b, 0, b, b, c]
    logits = np.stack([_peaky(frames), _peaky([c] * 8)])
    decoded = ctc.ctc_decode(logits, lengths=[8, 3])
    assert [labels_to_text(d) for d in decoded] == ["abbc", "c"]
    # Only the first 4 frames count for the first sample.
    assert labels_to_text(ctc.ctc_decode(logits[:1], lengths=[4])[0]) == "ab"
    beam = ctc.ctc_decode(logits, lengths=[8, 3], strategy="beam_search", beam_width=4)
    assert [labels_to_text(d) for d in beam] == ["abbc", "c"]


def test_decode_texts_and_errors():
    frames = text_to_labels("hi yo")
    texts = ctc.decode_texts(_peaky(list(frames))[None])
    assert texts == ["hi yo"]
    with pytest.raises(ValueError, match="strategy"):
        ctc.ctc_decode(_peaky([1])[None], strategy="viterbi")
    with pytest.raises(ValueError, match="batch, time, classes"):
        ctc.ctc_decode(np.zeros((4, 29), "float32"))
    with pytest.raises(ValueError, match="one length per sample"):
        ctc.ctc_decode(np.zeros((2, 4, 29), "float32"), lengths=[4])


def test_error_rates_use_jiwer_definitions():
    assert ctc.character_error_rate(["the cat"], ["the bat"]) == pytest.approx(1 / 7)
    assert ctc.word_error_rate(["the cat sat", "a dog"], ["the bat sat", "a dog"]) == 0.2
    rates = ctc.error_rates(["abc"], [""])
    assert rates == {"cer": 1.0, "wer": 1.0}
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        ctc.character_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="non-empty reference"):
        ctc.word_error_rate([""], ["x"])


@pytest.mark.backend
def test_loss_rejects_plain_labels_and_bad_packed_targets():
    logits = np.random.default_rng(0).normal(size=(2, 8, 6)).astype("float32")
    loss = ctc.CTCLoss(stride=2)
    plain = np.array([[3, 1, 4, 0, 0], [2, 5, 5, 1, 0]])  # labels, not packed targets
    with pytest.raises(ValueError, match=r"packed targets .*label length 5 is outside \[0, 3\]"):
        loss(plain, logits)
    with pytest.raises(ValueError, match=r"sample 0: the blank \(0\) occurs inside its 2 labels"):
        loss(np.array([[5, 2, 3, 0], [3, 1, 2, 0]]), logits)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        loss(np.array([3, 1]), logits)
    too_long = np.array([[8, 4, 1, 2], [8, 1, 3, 0]])  # 4 labels claimed, 2 columns
    with pytest.raises(ValueError, match="label length 4 is outside"):
        loss(too_long, logits)
    with pytest.raises(ValueError, match="label 7 is not a class index"):
        loss(np.array([[8, 1, 7], [8, 1, 2]]), logits)
    with pytest.raises(ValueError, match="negative frame count"):
        loss(np.array([[-1, 1, 2], [8, 1, 2]]), logits)
    assert ctc.describe_bad_targets(pack_ctc_targets([8, 8], [[1, 2], [3]]), classes=6) is None


@pytest.mark.backend
def test_fit_with_plain_labels_fails_inside_the_compiled_step():
    model = models.wav2letter("tiny", n_features=5)
    model.compile(optimizer="sgd", loss=ctc.CTCLoss(stride=2))
    x = np.random.default_rng(1).normal(size=(4, 8, 5)).astype("float32")
    plain = np.array([[3, 5, 4, 1, 0]] * 4)  # read as packed: 5 labels in 3 columns
    with pytest.raises(Exception, match="packed targets"):
        model.fit(x, plain, epochs=1, batch_size=4, verbose=0)
