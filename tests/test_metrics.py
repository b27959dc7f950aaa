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
    # Every order scores the same: no spread in the null and no difference, z is 0 (not NaN).
    test = topography_test(same, grid=(8, 8), n_permutations=5, seed=0)
    assert test.null_std == 0 and test.z == 0.0


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


# --- Hand-made maps with known values -----------------------------------------------------------


def _reference_morans_i(grid_map, size=3):
    """Moran's I written out from the definition (method.md §1 weights), loop by loop."""
    h, w = grid_map.shape
    x = grid_map - grid_map.mean()
    r = size // 2
    numerator = 0.0
    for row in range(h):
        for col in range(w):
            neighbours = [
                (row + dy, col + dx, 1.0 / np.hypot(dy, dx))
                for dy in range(-r, r + 1)
                for dx in range(-r, r + 1)
                if (dy, dx) != (0, 0) and 0 <= row + dy < h and 0 <= col + dx < w
            ]
            norm = sum(d for _, _, d in neighbours)
            numerator += sum(d / norm * x[row, col] * x[nr, nc] for nr, nc, d in neighbours)
    # each cell's weights sum to 1, so S0 = N and I = numerator / sum(x^2)
    return numerator / float((x * x).sum())


def test_morans_i_checkerboard_has_the_closed_form_value():
    from keras_topomap.metrics import morans_i

    n = 12
    _, checker, _ = _maps()
    # Edge neighbours (weight 1/d = 1) differ in sign, diagonal ones (1/sqrt(2)) agree, so each
    # cell contributes (diagonal weight - edge weight) / (diagonal weight + edge weight).
    interior = (2 * np.sqrt(2) - 4) / (2 * np.sqrt(2) + 4)  # = 2 sqrt(2) - 3
    side = (np.sqrt(2) - 3) / (np.sqrt(2) + 3)  # 3 edge, 2 diagonal neighbours
    corner = (1 / np.sqrt(2) - 2) / (1 / np.sqrt(2) + 2)  # 2 edge, 1 diagonal
    expected = ((n - 2) ** 2 * interior + 4 * (n - 2) * side + 4 * corner) / n**2
    assert morans_i(checker) == pytest.approx(expected, abs=1e-12)
    assert morans_i(checker) == pytest.approx(-0.232205, abs=1e-6)
    # on a torus every cell is interior
    assert interior == pytest.approx(2 * np.sqrt(2) - 3)
    assert morans_i(checker, wrap=True) == pytest.approx(interior, abs=1e-12)
    # and a checkerboard scaled and shifted is the same map for Moran's I
    assert morans_i(5 * checker + 3) == pytest.approx(expected, abs=1e-12)


def test_morans_i_matches_the_definition_and_gradients_approach_one():
    from keras_topomap.metrics import morans_i

    gradient, checker, noise = _maps()
    rng = np.random.default_rng(4)
    for m in (gradient, checker, noise, rng.normal(size=(5, 9))):
        assert morans_i(m) == pytest.approx(_reference_morans_i(m), abs=1e-12)
    assert morans_i(gradient) == pytest.approx(0.956857, abs=1e-6)
    rows, cols = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    assert morans_i((rows + cols).astype(float)) > 0.998  # border effects fade on larger grids
    assert morans_i(rows.astype(float)) > 0.998
    # random maps centre on the expectation -1/(N-1)
    values = [morans_i(rng.normal(size=(16, 16))) for _ in range(50)]
    assert abs(np.mean(values) + 1 / 255) < 0.01


def test_constant_and_smooth_maps():
    from keras_topomap.metrics import blur_error_auc, localization, morans_i

    constant = np.full((8, 8), 0.7)
    assert blur_error_auc(constant) == 0.0
    with pytest.raises(ValueError, match="constant map"):
        morans_i(constant)
    assert localization(constant) == pytest.approx(9 / 64)  # uniform positive mass
    assert localization(np.zeros((8, 8))) == 0.0
    gradient, checker, noise = _maps()
    # blurring a linear ramp only changes its border cells: a small area under the curve
    assert blur_error_auc(gradient) < 0.1
    assert blur_error_auc(checker) > 0.9
    bump = np.exp(-((np.arange(12)[:, None] - 6) ** 2 + (np.arange(12)[None] - 4) ** 2) / 8.0)
    assert blur_error_auc(bump) < blur_error_auc(noise) < blur_error_auc(checker)
    assert morans_i(bump) > 0.8


@pytest.mark.parametrize("grid", [(8, 8), (16, 16), (6, 10)])
def test_localization_of_single_peak_and_uniform_maps(grid):
    from keras_topomap.metrics import localization

    h, w = grid
    # one positive cell anywhere, corners and borders included, is fully localised
    for row, col in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, 0), (h // 2, w // 2)]:
        m = np.full(grid, -0.5)
        m[row, col] = 3.0
        assert localization(m) == pytest.approx(1.0)
    # a uniform positive map: the region holds 9 of the H*W cells wherever it lies
    assert localization(np.ones(grid)) == pytest.approx(9 / (h * w))
    assert localization(np.ones(grid), size=5) == pytest.approx(25 / (h * w))
    # two equal peaks far apart: half the mass
    m = np.zeros(grid)
    m[0, 0] = m[h - 1, w - 1] = 1.0
    assert localization(m) == pytest.approx(0.5)


def test_localization_region_is_the_most_responsive_one_kept_inside_the_grid():
    from keras_topomap import grid as grid_lib
    from keras_topomap.metrics import localization

    m = np.zeros((8, 8))
    m[0, 0] = 4.0  # the corner block (2 x 2 cells on the grid) has the highest mean
    m[1, 2] = 1.0  # outside the 2 x 2 corner block, inside the 3 x 3 block moved inwards
    m[5, 5] = 1.0  # elsewhere
    assert grid_lib.most_responsive_region(m, inside=False).center == (0, 0)
    # localisation uses the package's one region: the best full block, here centred at (1, 1)
    assert grid_lib.most_responsive_region(m).center == (1, 1)
    assert localization(m) == pytest.approx(5.0 / 6.0)
    with pytest.raises(ValueError, match="size"):
        localization(m, size=2)
    with pytest.raises(ValueError, match="larger than"):
        localization(np.ones((4, 8)), size=5)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        localization(np.ones(16))


@pytest.mark.parametrize("value", [0.0, 0.1, 0.7, -3.3, 1e5 / 3])
def test_constant_maps_are_constant_despite_rounding(value):
    from keras_topomap.metrics import blur_error_auc, morans_i

    # 0.1 - mean(0.1, ...) is not exactly 0 in floating point; that noise must not become a map
    constant = np.full((8, 8), value)
    assert blur_error_auc(constant) == 0.0
    with pytest.raises(ValueError, match="constant map"):
        morans_i(constant)


def _reference_weights(h, w, size=3):
    """Dense row-normalised reciprocal-distance weights ``W[c, j]`` (method.md §1)."""
    r = size // 2
    weights = np.zeros((h * w, h * w))
    for row in range(h):
        for col in range(w):
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    if (dy, dx) != (0, 0) and 0 <= row + dy < h and 0 <= col + dx < w:
                        weights[row * w + col, (row + dy) * w + col + dx] = 1 / np.hypot(dy, dx)
    return weights / weights.sum(axis=1, keepdims=True)


def _randomization_moments(grid_map):
    """Mean and variance of Moran's I over all permutations of the map's values (Cliff & Ord's
    closed form under the randomization assumption)."""
    weights = _reference_weights(*grid_map.shape)
    n = weights.shape[0]
    x = grid_map.ravel() - grid_map.mean()
    s0 = weights.sum()
    s1 = 0.5 * ((weights + weights.T) ** 2).sum()
    s2 = ((weights.sum(axis=0) + weights.sum(axis=1)) ** 2).sum()
    b2 = n * (x**4).sum() / ((x**2).sum() ** 2)
    mean = -1.0 / (n - 1)
    second = (
        n * ((n * n - 3 * n + 3) * s1 - n * s2 + 3 * s0**2)
        - b2 * ((n * n - n) * s1 - 2 * n * s2 + 6 * s0**2)
    ) / ((n - 1) * (n - 2) * (n - 3) * s0**2)
    return mean, second - mean**2


@pytest.mark.parametrize("shape", [(8, 8), (6, 10)])
def test_morans_i_test_matches_the_closed_form_null(shape):
    from keras_topomap.metrics import morans_i, morans_i_test

    m = np.random.default_rng(5).exponential(size=shape)  # skewed values: b2 matters
    result = morans_i_test(m, n_permutations=20000, seed=0)
    mean, variance = _randomization_moments(m)
    assert result.morans_i == pytest.approx(morans_i(m), abs=1e-12)
    assert result.morans_i == pytest.approx(_reference_morans_i(m), abs=1e-12)
    # 20000 draws: the standard error of the mean is std / 141, of the std about std / 200
    assert result.null_mean == pytest.approx(mean, abs=4 * np.sqrt(variance) / 141)
    assert result.null_std == pytest.approx(np.sqrt(variance), rel=0.03)
    assert result.z == pytest.approx((result.morans_i - result.null_mean) / result.null_std)
    assert result.n_permutations == 20000


def test_morans_i_test_on_planted_maps_and_its_p_value():
    from keras_topomap.metrics import morans_i_test

    gradient, checker, _ = _maps()
    ramp = morans_i_test(gradient, n_permutations=199, seed=0)
    # no permuted layout of a ramp is as smooth: the smallest p-value 199 draws can give
    assert ramp.p_value == pytest.approx(1 / 200)
    assert ramp.z > 10 and ramp.is_topographic() and ramp.is_topographic(threshold=10)
    rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    bump = np.exp(-((rows - 5.0) ** 2 + (cols - 9.0) ** 2) / 8.0)
    assert morans_i_test(bump, n_permutations=199).z > 5
    board = morans_i_test(checker, n_permutations=199, seed=0)
    assert board.p_value == pytest.approx(1.0)  # one-sided: rougher than chance is not smoother
    assert board.z < 0 and not board.is_topographic()
    # same seed, same null; another seed, another one
    assert morans_i_test(gradient, n_permutations=50, seed=3) == morans_i_test(
        gradient, n_permutations=50, seed=3)
    assert morans_i_test(gradient, n_permutations=50, seed=3) != morans_i_test(
        gradient, n_permutations=50, seed=4)


def test_morans_i_test_p_value_is_calibrated_on_noise():
    from keras_topomap.metrics import morans_i_test

    rng = np.random.default_rng(6)
    p = np.array([morans_i_test(rng.normal(size=(8, 8)), n_permutations=99, seed=i).p_value
                  for i in range(600)])
    # 600 noise maps: 5% +- 0.9% (one standard error); allow about 3 standard errors
    assert 0.025 < np.mean(p < 0.05) < 0.08
    assert 0.07 < np.mean(p < 0.1) < 0.13
    z = np.array([morans_i_test(rng.normal(size=(8, 8)), n_permutations=99, seed=i).z
                  for i in range(200)])
    assert np.mean(z >= 3) < 0.02  # the drawing threshold almost never fires on noise


def test_results_print_readably():
    from keras_topomap.metrics import morans_i_test

    gradient, _, noise = _maps()
    text = str(morans_i_test(gradient, n_permutations=99))
    assert text.startswith("Moran's I = 0.957 (permuted layouts ")
    assert "z = " in text and "p = 0.01" in text and "ordered" in text
    assert "not topographic" in str(morans_i_test(noise, n_permutations=99))
    smooth = np.cos(np.arange(64.0) / 8)[None, :] * np.ones((5, 1))
    result = str(topography_test(np.tile(smooth, (1, 1)), grid=(8, 8), n_permutations=20))
    assert result.startswith("topography S = ") and "± " in result and "z = " in result


def test_morans_i_test_errors():
    from keras_topomap.metrics import morans_i_test

    with pytest.raises(ValueError, match="n_permutations"):
        morans_i_test(np.eye(4), n_permutations=1)
    with pytest.raises(ValueError, match="constant map"):
        morans_i_test(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        morans_i_test(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        morans_i_test(np.ones(16))


@pytest.mark.parametrize("grid", [(7, 9), (16, 16), (4, 3)])
@pytest.mark.parametrize("wrap", [False, True])
def test_identical_filters_give_z_zero_despite_rounding(grid, wrap):
    # Every order of identical filters scores the same up to float rounding; dividing one
    # rounding error by another gave z = -0.9, 0.9 or -inf.
    rng = np.random.default_rng(0)
    for scale in (1e-3, 1.0, 1e6):
        kernel = np.repeat(rng.normal(size=(5, 1)), grid[0] * grid[1], axis=1) * scale
        test = topography_test(kernel.astype("float32"), grid=grid, wrap=wrap,
                                       n_permutations=6, seed=0)
        assert test.z == 0.0, (scale, test)
