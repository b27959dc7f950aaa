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


def _cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


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
    # Vowels and fricatives drive the deep layer differently: their average profiles point in
    # clearly different directions, and fricatives resemble their own class more.
    deep = gn.profiles_["conv_big_1"]
    vowel_mean, fricative_mean = deep[vowels].mean(axis=0), deep[fricatives].mean(axis=0)
    assert _cosine(vowel_mean, fricative_mean) < 0.5
    own = np.mean([_cosine(deep[i], fricative_mean) for i in fricatives])
    other = np.mean([_cosine(deep[i], vowel_mean) for i in fricatives])
    assert own > other
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
    vowels = [nap.group_index(p) for p in VOWELS]
    fricatives = [nap.group_index(p) for p in FRICATIVES]
    profiles = nap.profiles_["conv_2"]
    vowel_mean, fricative_mean = profiles[vowels].mean(axis=0), profiles[fricatives].mean(axis=0)
    # Each class's members resemble their own class mean more than the other's.
    for members, own_mean, other_mean in ((vowels, vowel_mean, fricative_mean),
                                          (fricatives, fricative_mean, vowel_mean)):
        own = np.mean([_cosine(profiles[i], own_mean) for i in members])
        other = np.mean([_cosine(profiles[i], other_mean) for i in members])
        assert own > other

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gn = GradNAP(model, ["conv_2"], group_names=datasets.PHONES_39, verbose=0).fit(frames)
    messages = [str(w.message) for w in caught]
    if gn.target_total_ == 0.0:  # the briefly trained model predicts only blanks
        assert any("predicts the blank" in m for m in messages)
        assert np.all(gn.profiles_["conv_2"] == 0)
    else:
        assert np.abs(gn.profiles_["conv_2"]).max() > 0
