"""GradNAP with per-sample labels (image classifiers): closed-form profiles on every backend,
targets, positions averaged, save/load/merge of the label kind, and clear errors."""

import warnings

import numpy as np
import pytest
from keras import ops

from keras_topomap.gradnap import GradNAP
from keras_topomap.sample_groups import check_sample_labels
from tests.tiny_models import (
    IMAGE_M,
    IMAGE_V,
    hand_image_adjusted,
    hand_sample_profiles,
    image_classifier,
    image_data,
    planted_model,
)

GRIDS = {"conv": (3, 3), "pool": (3, 3), "out": (1, 3)}
CLASSES = np.array([0, 1, 2, 1, 0, 2, 2])
SCALES = np.array([1.0, 0.5, 2.0, 1.5, 0.25, 1.0, 0.5])


def _fit(model=None, layers=("conv", "pool", "out"), batches=None, **kwargs):
    model = model or image_classifier()
    if batches is None:
        x = image_data(CLASSES, SCALES)
        batches = [(x[:4], CLASSES[:4]), (x[4:], CLASSES[4:])]  # the second batch is padded
    kwargs.setdefault("grids", {name: GRIDS[name] for name in layers})
    return GradNAP(model, list(layers), verbose=0, **kwargs).fit(batches)


@pytest.mark.backend
@pytest.mark.parametrize("adjust", ["gradient", "none"])
def test_closed_form_profiles_of_an_image_classifier(adjust):
    gn = _fit(adjust=adjust, group_names=["zero", "one", "two"])
    assert gn.label_kind_ == "sample" and gn.n_frames_ == len(CLASSES)
    adjusted = hand_image_adjusted(CLASSES, SCALES, adjust)
    for name in ("conv", "pool", "out"):
        expected, counts = hand_sample_profiles(adjusted[name], CLASSES, 3)
        np.testing.assert_allclose(gn.profiles_[name], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(gn.counts_[name], counts)
    # By hand for class 2 on conv (gradient): samples 2, 5, 6 with s = 2, 1, 0.5, so A_2 puts
    # 3.5 * 3 / 6 * (3.5 / 3) on filter 2 and 0 elsewhere.
    if adjust == "gradient":
        a2 = IMAGE_M.mean() * IMAGE_V[2] / 6 * SCALES[[2, 5, 6]].mean()
        np.testing.assert_allclose(gn.group_means_["conv"][2], np.eye(9)[2] * a2, rtol=1e-5)
        assert gn.most_responsive_region("conv", "two", size=1).filters.tolist() == [2]
    # The predicted-class logits summed over the real samples (padding rows do not count).
    expected_total = sum(IMAGE_V[c] * s * IMAGE_M.mean() for c, s in zip(CLASSES, SCALES))
    if adjust == "gradient":
        assert gn.target_total_ == pytest.approx(expected_total, rel=1e-5)


@pytest.mark.backend
def test_label_target_reads_the_true_class():
    x = image_data(CLASSES, SCALES)
    labels = CLASSES.copy()
    labels[0] = 1  # an image of class 0 labelled 1: its logit 1 is 0, and so is its gradient
    prediction = _fit(layers=["conv"], batches=[(x, labels)])
    label = _fit(layers=["conv"], batches=[(x, labels)], target="label")
    adjusted = hand_image_adjusted(CLASSES, SCALES)["conv"]
    np.testing.assert_allclose(prediction.profiles_["conv"],
                               hand_sample_profiles(adjusted, labels, 3)[0], rtol=1e-5, atol=1e-6)
    adjusted[0] = 0.0
    np.testing.assert_allclose(label.profiles_["conv"],
                               hand_sample_profiles(adjusted, labels, 3)[0], rtol=1e-5, atol=1e-6)
    assert label.target_total_ < prediction.target_total_


@pytest.mark.backend
def test_callable_target_gets_the_row_mask():
    def target(output, mask):  # the mean logit of class 0 over the real samples
        return ops.sum(output[:, 0] * mask)

    gn = _fit(layers=["out"], target=target, adjust="gradient")
    zero = CLASSES == 0
    expected = np.zeros((3, 3))
    expected[0, 0] = (IMAGE_V[0] * SCALES[zero] * IMAGE_M.mean()).mean()
    np.testing.assert_allclose(gn.group_means_["out"], expected, rtol=1e-5, atol=1e-6)
    assert gn.target_total_ == pytest.approx(expected[0, 0] * zero.sum(), rel=1e-5)


def test_array_data_sequence_model_and_unlabelled_samples():
    # One (x, labels) pair of arrays is split into batches; label -1 leaves a sample out.
    x = image_data(CLASSES, SCALES)
    labels = np.where(np.arange(len(CLASSES)) == 3, -1, CLASSES)
    gn = _fit(layers=["conv"], batches=(x, labels), batch_size=3, adjust="none")
    expected, counts = hand_sample_profiles(hand_image_adjusted(CLASSES, SCALES, "none")["conv"],
                                            labels, 3)
    np.testing.assert_allclose(gn.profiles_["conv"], expected, rtol=1e-5, atol=1e-6)
    assert counts.tolist() == [2, 1, 3] and gn.n_frames_ == 6
    # A Conv1D speech model with one label per utterance: its frames are averaged.
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(5, 12, 9)).astype("float32")
    classes = np.array([0, 1, 1, 0, 2])
    speech = GradNAP(planted_model(), ["topo"], adjust="none", verbose=0).fit([(seq, classes)])
    relu = np.maximum(seq, 0).mean(axis=1)  # topo = relu(identity conv)
    np.testing.assert_allclose(speech.profiles_["topo"], hand_sample_profiles(relu, classes, 3)[0],
                               rtol=1e-5, atol=1e-6)


def test_maps_plots_save_load_merge_keep_the_label_kind(tmp_path):
    x, model = image_data(CLASSES, SCALES), image_classifier()
    whole = _fit(model, layers=["conv"], batches=[(x, CLASSES)])
    assert whole.maps("conv").shape == (3, 3, 3)
    assert whole.cluster("conv").order.size == 3
    whole.plot("conv").clf()
    whole.save(tmp_path / "gn")
    loaded = GradNAP.load(tmp_path / "gn")
    assert loaded.label_kind_ == "sample"
    np.testing.assert_allclose(loaded.profiles_["conv"], whole.profiles_["conv"])
    halves = [_fit(model, layers=["conv"], batches=[(x[s], CLASSES[s])])
              for s in (slice(0, 3), slice(3, None))]
    merged = GradNAP.merge(halves)
    assert merged.label_kind_ == "sample"
    np.testing.assert_allclose(merged.profiles_["conv"], whole.profiles_["conv"], atol=1e-6)
    # partial_fit goes on with the same kind of labels.
    part = _fit(model, layers=["conv"], batches=[(x[:3], CLASSES[:3])])
    part.partial_fit([(x[3:], CLASSES[3:])])
    np.testing.assert_allclose(part.profiles_["conv"], whole.profiles_["conv"], atol=1e-6)


def test_frame_and_sample_labels_do_not_mix():
    model = planted_model()
    seq = np.zeros((2, 12, 9), "float32")
    seq[..., 0] = 1.0
    frame = GradNAP(model, ["topo"], n_groups=2, adjust="none", verbose=0).fit(
        [(seq, np.tile([0, 1], (2, 6)))])
    sample = GradNAP(model, ["topo"], n_groups=2, adjust="none", verbose=0).fit(
        [(seq, np.array([0, 1]))])
    with pytest.raises(ValueError, match="others with per-sample labels"):
        GradNAP.merge([frame, sample])
    with pytest.raises(ValueError, match="Batch 0 has per-sample labels .* fitted with frame"):
        frame.partial_fit([(seq, np.array([0, 1]))])
    with pytest.raises(ValueError, match="Batch 1 has frame labels"):
        GradNAP(model, ["topo"], adjust="none", verbose=0).fit(
            [(seq, np.array([0, 1])), (seq, np.zeros((2, 12), int))])


def test_clear_errors_for_per_sample_labels():
    x = image_data(CLASSES, SCALES)
    model = image_classifier()

    def fit(labels, **kwargs):
        return GradNAP(model, ["conv"], grids={"conv": (3, 3)}, verbose=0, **kwargs).fit(
            [(x, labels)])

    with pytest.raises(ValueError, match=r"Batch 0: per-sample labels must have shape \(7,\).*"
                                         r"Received: shape=\(6,\)"):
        fit(CLASSES[:6])
    with pytest.raises(ValueError, match="must be integers.*Received: dtype=float"):
        fit(CLASSES.astype("float32"))
    with pytest.raises(ValueError, match="must be integers.*Received: dtype=bool"):
        fit(CLASSES > 0)
    with pytest.raises(ValueError, match=">= -1"):
        fit(CLASSES - 2)
    with pytest.raises(ValueError, match="label 2 has no group name"):
        fit(CLASSES, group_names=["a", "b"])
    with pytest.raises(ValueError, match="window=1 needs frame labels"):
        fit(CLASSES, window=1)
    with pytest.raises(ValueError, match="'ctc_loss' needs frame labels"):
        fit(CLASSES, target="ctc_loss")
    with pytest.raises(ValueError, match="shape \\(batch,\\) for per-sample groups|frame timing"):
        fit(np.zeros((7, 2), int))  # 2-D labels on images: frame labels, which need timing
    with pytest.raises(ValueError, match="target='label' needs per-sample labels"):
        GradNAP(planted_model(), ["topo"], target="label", verbose=0).fit(
            [(np.zeros((1, 6, 9), "float32"), np.zeros((1, 6), int))])
    with pytest.raises(ValueError, match=r"the callback probe: per-sample labels must have"):
        check_sample_labels(np.zeros(3, int), 4, "the callback probe")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every group has samples: no warning
        fit(CLASSES)
