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
