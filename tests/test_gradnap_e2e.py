"""GradNAP end to end: a small recognizer trained briefly on the bundled corpus.

Runs once (TensorFlow run of the suite). Training is short (a few epochs of the "tiny" config on
32 utterances): the model still emits mostly blanks, so the ``ctc_loss`` target is the one with
informative gradients here; the 'prediction' target must then say so instead of returning
silent zeros.
"""

import warnings

import keras
import numpy as np
import pytest

from keras_topomap import GradNAP, datasets, models
from keras_topomap.ctc import CTCLoss

VOWELS = ["iy", "ih", "eh", "ae", "aa", "uw", "ey", "ay"]
FRICATIVES = ["s", "sh", "z", "f", "v"]


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    utterances = datasets.load_tts_corpus("train")[:32]
    train = datasets.SpeechBatches(utterances, batch_size=8, mode="ctc", seed=0,
                                   pad_to_multiple=16)
    model = models.wav2letter("tiny", n_features=40, topographic=True, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=CTCLoss(stride=2))
    history = model.fit(train, epochs=6, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    return model, train.features


def test_gradnap_on_trained_recognizer(trained):
    model, features = trained
    layers = ["conv_2", "conv_big_1"]
    batches = datasets.SpeechBatches(features, batch_size=8, mode="all", shuffle=False,
                                     pad_to_multiple=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few rare phones have no frames in 32 utterances
        gn = GradNAP(model, layers, target="ctc_loss", group_names=datasets.PHONES_39,
                     verbose=0).fit(batches)
    assert gn.grids_ == {name: models.CONFIGS["tiny"].layer_grids()[name] for name in layers}
    vowels = [gn.group_index(p) for p in VOWELS]
    fricatives = [gn.group_index(p) for p in FRICATIVES]
    for name in layers:
        profiles = gn.profiles_[name]
        assert profiles.shape == (39, model.get_layer(name).filters)
        assert np.all(np.isfinite(profiles))
        assert np.all(gn.counts_[name][vowels + fricatives] > 20)
        assert np.all(np.abs(profiles[vowels + fricatives]).max(axis=1) > 0)
        assert gn.maps(name, smooth=True).shape[1:] == gn.grids_[name]
    # Vowels and fricatives give different maps: their class-average profiles differ by a good
    # fraction of their size. (Finer claims -- e.g. that each phone sits closer to its own class
    # -- do not hold reliably after a few epochs of this tiny model; checked over seeds.)
    for name in layers:
        profiles = gn.profiles_[name]
        vowel_mean = profiles[vowels].mean(axis=0)
        fricative_mean = profiles[fricatives].mean(axis=0)
        size = (np.linalg.norm(vowel_mean) + np.linalg.norm(fricative_mean)) / 2
        assert np.linalg.norm(vowel_mean - fricative_mean) > 0.2 * size
    region = gn.most_responsive_region("conv_big_1", "s")
    assert len(region.filters) > 0
    order = gn.cluster("conv_big_1").names
    assert set(VOWELS + FRICATIVES) <= set(order)


def test_plain_nap_and_all_blank_warning(trained):
    model, features = trained
    frames = datasets.SpeechBatches(features, batch_size=8, mode="frames", shuffle=False,
                                    pad_to_multiple=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nap = GradNAP(model, ["conv_2"], adjust="none", group_names=datasets.PHONES_39,
                      verbose=0).fit(frames)
    assert np.all(nap.counts_["conv_2"][[nap.group_index(p) for p in VOWELS]] > 20)
    assert np.all(np.isfinite(nap.profiles_["conv_2"]))
    assert np.abs(nap.profiles_["conv_2"]).max() > 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gn = GradNAP(model, ["conv_2"], group_names=datasets.PHONES_39, verbose=0).fit(frames)
    messages = [str(w.message) for w in caught]
    if gn.target_total_ == 0.0:  # the briefly trained model predicts only blanks
        assert any("predicts the blank" in m for m in messages)
        assert np.all(gn.profiles_["conv_2"] == 0)
    else:
        assert np.abs(gn.profiles_["conv_2"]).max() > 0
