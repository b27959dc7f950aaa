"""Kernel topography score and its permutation test."""

import numpy as np
import pytest
from keras import ops

from keras_topomap import TopographicRegularizer, topography_score, topography_test


def test_identical_filters_score_one_and_random_filters_score_zero():
    rng = np.random.default_rng(0)
    same = np.repeat(rng.normal(size=(20, 1)), 64, axis=1)
    assert topography_score(same, grid=(8, 8)) == pytest.approx(1.0, abs=1e-6)
    random = rng.normal(size=(400, 256))
    assert abs(topography_score(random)) < 0.02  # inferred 16x16 grid


@pytest.mark.parametrize("wrap", [False, True])
def test_score_is_one_minus_the_mean_penalty(wrap):
    kernel = np.random.default_rng(1).normal(size=(3, 5, 48)).astype("float32")
    reg = TopographicRegularizer(grid=(8, 6), strength=1.0, reduction="mean", wrap=wrap)
    penalty = float(ops.convert_to_numpy(reg(ops.convert_to_tensor(kernel))))
    assert topography_score(kernel, grid=(8, 6), wrap=wrap) == pytest.approx(1 - penalty, rel=1e-5)


def test_permutation_test_separates_smooth_from_shuffled():
    h = w = 8
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    centres = np.random.default_rng(2).normal(size=(10, 2))
    # filter i is a smooth function of its grid position
    kernel = np.cos(centres[:, :1] * rows.ravel() / 4 + centres[:, 1:] * cols.ravel() / 4)
    smooth = topography_test(kernel, grid=(h, w), n_permutations=50, seed=0)
    assert smooth.score > 0.5 and smooth.z > 5
    assert smooth.n_permutations == 50
    shuffled = kernel[:, np.random.default_rng(3).permutation(64)]
    result = topography_test(shuffled, grid=(h, w), n_permutations=50, seed=0)
    assert abs(result.z) < 4
    # same seed -> same null distribution
    again = topography_test(kernel, grid=(h, w), n_permutations=50, seed=0)
    assert again == smooth


def test_errors():
    with pytest.raises(ValueError, match="n_permutations"):
        topography_test(np.ones((2, 16)), n_permutations=1)
    with pytest.raises(ValueError, match="NaN"):
        topography_score(np.full((2, 16), np.nan))
    with pytest.raises(ValueError, match=r"kernel of shape \(2, 16\)"):
        topography_score(np.ones((2, 16)), grid=(4, 3))


def _maps():
    rows, cols = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    gradient = (rows + cols).astype(float)
    checker = np.where((rows + cols) % 2 == 0, 1.0, -1.0)
    noise = np.random.default_rng(0).normal(size=(12, 12))
    return gradient, checker, noise


def test_morans_i_on_known_maps():
    from keras_topomap.metrics import morans_i

    gradient, checker, noise = _maps()
    assert morans_i(gradient) > 0.8
    assert morans_i(checker) < -0.1
    assert abs(morans_i(noise)) < 0.2
    with pytest.raises(ValueError, match="constant map"):
        morans_i(np.ones((5, 5)))


def test_blur_error_auc_orders_smoothness():
    from keras_topomap.metrics import blur_error_auc

    gradient, checker, noise = _maps()
    assert blur_error_auc(np.full((6, 6), 2.0)) == 0.0
    assert blur_error_auc(gradient) < blur_error_auc(noise) < blur_error_auc(checker)
    # scale-free: multiplying the map does not change the score
    assert blur_error_auc(3 * noise) == pytest.approx(blur_error_auc(noise))
    with pytest.raises(ValueError, match="sigmas"):
        blur_error_auc(noise, sigmas=[1.0])


def test_localization_and_regions():
    from keras_topomap.metrics import connected_regions, localization

    m = np.zeros((8, 8))
    m[2:5, 3:6] = 1.0
    assert localization(m) == pytest.approx(1.0)
    m[7, 7] = 9.0
    assert localization(m) == pytest.approx(9.0 / 18.0)  # the single hot cell's block wins
    assert localization(-np.ones((4, 4))) == 0.0
    labels, sizes = connected_regions(m, threshold=0.5)
    assert sorted(sizes.tolist()) == [1, 9]
    assert labels[3, 4] != labels[7, 7]
    with pytest.raises(ValueError, match="NaN"):
        localization(np.full((3, 3), np.nan))
