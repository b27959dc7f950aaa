"""The recognizers shipped with the package: lookup, metadata, and that they recognize."""

import numpy as np
import pytest

from keras_topomap import models, train
from keras_topomap.datasets import FeatureConfig, FeatureSet, SpeechBatches, load_tts_corpus


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"expected one of \['small', 'small-plain'\]"):
        models.pretrained("large")
    with pytest.raises(ValueError, match="Received: 'large'"):
        models.pretrained_info("large")
    assert set(models.available_pretrained()) <= set(models.PRETRAINED)


SHIPPED = models.available_pretrained()
needs_models = pytest.mark.skipif(
    sorted(SHIPPED) != sorted(models.PRETRAINED), reason="pretrained models not committed yet"
)


@needs_models
@pytest.mark.parametrize("name", sorted(models.PRETRAINED))
def test_info_round_trips_features_and_describes_the_run(name):
    info = models.pretrained_info(name)
    features = FeatureConfig.from_dict(info["features"])
    assert features.to_dict() == info["features"] and features.n_features == 40
    assert info["command"].startswith("KERAS_BACKEND=jax keras-topomap train")
    assert ("--no-topographic" in info["command"]) == (name == "small-plain")
    metrics = info["metrics"]
    assert 0 <= metrics["test"]["cer"] < 0.5 and "beam_search" in metrics["test"]
    assert metrics["config"]["topographic"] == (name == "small")
    import os

    assert os.path.getsize(info["path"]) <= 5 * 2**20


def _test_utterances(n=24):
    return load_tts_corpus("test")[:n]


@needs_models
@pytest.mark.backend
@pytest.mark.parametrize("name", sorted(models.PRETRAINED))
def test_pretrained_models_transcribe_test_utterances(name):
    model = models.pretrained(name)
    info = models.pretrained_info(name)
    features = FeatureConfig.from_dict(info["features"])
    batches = SpeechBatches(FeatureSet.from_utterances(_test_utterances(), features),
                            batch_size=8, shuffle=False, mode="ctc", pad_to_multiple=32)
    # train.evaluate decodes greedily against the transcripts packed in the targets.
    assert train.evaluate(model, batches)["cer"] < 0.5
    # The same logits on every backend: the reference was computed at export (JAX).
    reference = np.load(models.pretrained_dir(name) / "reference_logits.npz")
    x = reference["features"][None]
    np.testing.assert_allclose(model.predict_on_batch(x)[0], reference["logits"],
                               rtol=1e-5, atol=1e-5 * float(np.abs(reference["logits"]).max()))
