"""TopoMapCallback with per-sample groups (one label per probe sample): closed-form class maps
of an image classifier on every backend, lengths on sequence layers, and clear errors."""

import numpy as np
import pytest

from keras_topomap import TopoMapCallback
from keras_topomap import grid as grid_lib
from tests.tiny_models import (
    IMAGE_M,
    OFFSET,
    STRIDE,
    hand_image_adjusted,
    hand_sample_profiles,
    image_classifier,
    image_data,
    layer_outputs,
    regression_data,
    two_conv_model,
)

GRIDS = {"conv": (3, 3), "pool": (3, 3), "out": (1, 3)}
CLASSES = np.array([0, 1, 2, 1, 0, 2, 2])
SCALES = np.array([1.0, 0.5, 2.0, 1.5, 0.25, 1.0, 0.5])


def run_once(callback, model):
    callback.set_model(model)
    callback.set_params({"epochs": 1})
    callback.on_train_begin()
    callback.on_epoch_end(0, {})
    return callback


@pytest.mark.backend
def test_class_maps_of_an_image_classifier_in_closed_form():
    x = image_data(CLASSES, SCALES)
    labels = CLASSES.copy()
    labels[3] = -1  # no group: left out of the class maps, kept in the overall map
    callback = run_once(TopoMapCallback(iter((x[:4], x[4:])), layers=list(GRIDS), grids=GRIDS,
                                        groups=[labels[:4], labels[4:]],
                                        group_names=["zero", "one", "two"], smooth=False),
                        image_classifier())
    assert callback.group_names_ == ["zero", "one", "two"]
    means = hand_image_adjusted(CLASSES, SCALES, "none")  # activations averaged per sample
    for name, grid in GRIDS.items():
        expected, _ = hand_sample_profiles(means[name], labels, 3)
        np.testing.assert_allclose(callback.raw_group_history_[name][-1],
                                   grid_lib.to_grid(expected, grid), rtol=1e-5, atol=1e-6)
    # The overall conv map: every position of every image, e.g. filter 2 = the mean of s * M
    # over the class-2 images, weighted by their share of all images.
    overall = SCALES[CLASSES == 2].sum() * IMAGE_M.mean() / len(CLASSES)
    assert callback.raw_history_["conv"][-1][0, 2] == pytest.approx(overall, rel=1e-5)


def test_per_sample_groups_on_sequence_layers_with_lengths():
    model = two_conv_model()
    x = regression_data(4)[0]
    labels, lengths = np.array([0, 1, 1, 0]), np.array([20, 9, 14, 5])
    callback = run_once(TopoMapCallback(x, groups=labels, probe_lengths=lengths, smooth=False),
                        model)
    for name, grid in (("c1", (4, 4)), ("c2", (4, 3))):
        acts = layer_outputs(model, name, x)
        per_sample = []
        for i in range(4):  # plain loop: the layer frames centred before the sample's length
            frames = [acts[i, t] for t in range(acts.shape[1])
                      if t * STRIDE + OFFSET < lengths[i]]
            per_sample.append(np.mean(frames, axis=0))
        expected, counts = hand_sample_profiles(np.array(per_sample), labels, 2)
        np.testing.assert_allclose(callback.raw_group_history_[name][-1],
                                   grid_lib.to_grid(expected, grid), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "groups, message",
    [
        (np.zeros(3, int), r"groups must have 1 dimension\(s\) and one row per probe sequence "
                           r"\(4 in 1 batch\(es\)\).*Received: shape=\(3,\)"),
        (np.array([0.0, 1.0, 0.0, 1.0]), "probe batch 0: per-sample labels must be integers"),
        (np.array([True, False, True, False]), "per-sample labels must be integers"),
        (np.array([0, 1, -2, 1]), "per-sample labels must be >= -1"),
        (-np.ones(4, int), "no label >= 0: every probe sample is marked -1"),
        ([np.zeros(2, int), np.zeros(2, int)], "one row per probe sequence"),
    ],
)
def test_bad_per_sample_groups(groups, message):
    with pytest.raises(ValueError, match=message):
        TopoMapCallback(regression_data(4)[0], groups=groups)


def test_per_sample_groups_need_two_groups_and_names():
    x = image_data(CLASSES, SCALES)
    with pytest.raises(ValueError, match="name every label up to 2"):
        TopoMapCallback(x, groups=CLASSES, group_names=["a", "b"])
    with pytest.raises(ValueError, match="at least two groups"):
        run_once(TopoMapCallback(x, layers=["conv"], grids={"conv": GRIDS["conv"]},
                                 groups=np.zeros(7, int)),
                 image_classifier())
