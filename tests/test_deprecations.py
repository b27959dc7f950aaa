"""Deprecated spellings of the public API keep working and say what replaces them."""

import numpy as np
import pytest

from keras_topomap.datasets import FeatureConfig, PhoneSegment, Utterance


def test_feature_config_frame_rate():
    config = FeatureConfig()
    with pytest.deprecated_call(match=r"FeatureConfig.frame_rate is deprecated; use "
                                      r"sample_rate / hop_length"):
        assert config.frame_rate == config.sample_rate / config.hop_length


def test_utterance_folded_phones():
    utterance = Utterance("u", np.zeros(1600, "float32"), 16000, transcript="a",
                          phones=[PhoneSegment(0.0, 0.05, "aa"), PhoneSegment(0.05, 0.1, "ao")])
    with pytest.deprecated_call(match="Utterance.folded_phones is deprecated"):
        assert utterance.folded_phones == [p.folded for p in utterance.phones]


def test_size_is_the_old_name_of_neighborhood():
    from keras_topomap import grid

    for fn in (grid.neighbor_weights, grid.pair_weights, grid.neighbor_pairs):
        with pytest.deprecated_call(match=rf"{fn.__name__}\(size=...\) is deprecated; use "
                                          r"neighborhood=..."):
            old = fn((6, 6), size=5)
        for a, b in zip(old, fn((6, 6), neighborhood=5)):
            np.testing.assert_array_equal(a, b)
    with pytest.deprecated_call(match="neighbor_offsets"):
        np.testing.assert_array_equal(grid.neighbor_offsets(size=5), grid.neighbor_offsets(5))
    with pytest.deprecated_call(match="validate_neighborhood"):
        assert grid.validate_neighborhood(size=5) == 5


@pytest.mark.backend
def test_penalties_take_the_old_size_name():
    from keras import ops

    from keras_topomap.activity import topographic_activity_penalty
    from keras_topomap.regularizers import topographic_penalty

    kernel = np.random.default_rng(0).normal(size=(3, 36)).astype("float32")
    with pytest.deprecated_call(match=r"topographic_penalty\(size=...\)"):
        old = topographic_penalty(kernel, (6, 6), size=5)
    np.testing.assert_allclose(ops.convert_to_numpy(old),
                               ops.convert_to_numpy(topographic_penalty(kernel, (6, 6), 5)))
    with pytest.deprecated_call(match=r"topographic_activity_penalty\(size=...\)"):
        old = topographic_activity_penalty(kernel, (6, 6), size=5, global_term=False)[0]
    new = topographic_activity_penalty(kernel, (6, 6), 5, global_term=False)[0]
    np.testing.assert_allclose(ops.convert_to_numpy(old), ops.convert_to_numpy(new))


def test_topomap_callback_int_smooth_is_the_old_window_side():
    from keras_topomap import TopoMapCallback

    probe = np.zeros((2, 8, 3), "float32")
    with pytest.deprecated_call(match=r"TopoMapCallback\(smooth=5\) is deprecated; use "
                                      r"smooth=True, size=5"):
        callback = TopoMapCallback(probe, smooth=5)
    assert (callback.smooth, callback.size) == (True, 5)
    with pytest.deprecated_call(match=r"use smooth=False instead"):
        assert TopoMapCallback(probe, smooth=1).smooth is False
    assert (TopoMapCallback(probe).smooth, TopoMapCallback(probe).size) == (True, 3)
