"""Grid geometry: layouts, neighbourhood weights, smoothing and regions (numpy, backend-free)."""

import numpy as np
import pytest

from keras_topomap import grid


def test_infer_grid_most_square_rows_first():
    assert grid.infer_grid(256) == (16, 16)
    assert grid.infer_grid(2048) == (64, 32)
    assert grid.infer_grid(64) == (8, 8)
    assert grid.infer_grid(96) == (12, 8)
    assert grid.infer_grid(15) == (5, 3)


@pytest.mark.parametrize("n", [7, 31, 2 * 17, 1])
def test_infer_grid_rejects_useless_factorisations(n):
    with pytest.raises(ValueError, match="explicit grid|Cannot"):
        grid.infer_grid(n)


@pytest.mark.parametrize("bad", [(16,), (0, 4), (-2, 8), (2.0, 8), "16x16", None, (True, 4)])
def test_validate_grid_rejects_non_pairs(bad):
    with pytest.raises(ValueError, match="pair of positive integers"):
        grid.validate_grid(bad)


def test_validate_grid_product_mismatch_suggests_grid():
    with pytest.raises(ValueError, match=r"holds 240 filters but there are 256.*grid=\(16, 16\)"):
        grid.validate_grid((16, 15), 256)


def test_index_position_round_trip_row_major():
    g = (4, 6)
    idx = np.arange(24)
    rows, cols = grid.index_to_position(idx, g)
    np.testing.assert_array_equal(rows, idx // 6)
    np.testing.assert_array_equal(cols, idx % 6)
    np.testing.assert_array_equal(grid.position_to_index(rows, cols, g), idx)
    assert grid.index_to_position(7, g) == (1, 1)
    with pytest.raises(ValueError):
        grid.index_to_position(24, g)
    with pytest.raises(ValueError):
        grid.position_to_index(4, 0, g)


def test_neighbor_offsets():
    off = grid.neighbor_offsets(3)
    assert off.shape == (8, 2)
    assert not np.any(np.all(off == 0, axis=1))
    assert grid.neighbor_offsets(5).shape == (24, 2)
    for bad in (1, 2, 4, 3.0):
        with pytest.raises(ValueError, match="odd integer >= 3"):
            grid.neighbor_offsets(bad)


def test_interior_weights_match_method_note():
    offsets, alpha = grid.neighbor_weights((5, 5), 3)
    centre = alpha[:, 2, 2]
    edge = np.isclose(np.abs(offsets).sum(axis=1), 1)
    np.testing.assert_allclose(centre[edge], 1 / (4 + 2 * np.sqrt(2)))
    np.testing.assert_allclose(centre[~edge], (1 / np.sqrt(2)) / (4 + 2 * np.sqrt(2)))
    np.testing.assert_allclose(alpha.sum(axis=0), 1.0)


def test_border_weights_renormalised_over_in_grid_neighbours():
    offsets, alpha = grid.neighbor_weights((4, 4), 3)
    corner = alpha[:, 0, 0]
    present = corner > 0
    assert present.sum() == 3  # right, down, down-right
    np.testing.assert_allclose(corner.sum(), 1.0)
    np.testing.assert_allclose(
        corner[present], np.array([1, 1, 1 / np.sqrt(2)]) / (2 + 1 / np.sqrt(2))
    )


def test_wrap_weights_identical_everywhere():
    _, alpha = grid.neighbor_weights((4, 6), 3, wrap=True)
    np.testing.assert_allclose(alpha, alpha[:, :1, :1] * np.ones((1, 4, 6)))


def test_neighbourhood_larger_than_grid_rejected():
    with pytest.raises(ValueError, match="larger than the 3x8 grid"):
        grid.neighbor_weights((3, 8), 5)


@pytest.mark.parametrize("g,size,wrap", [((4, 4), 3, False), ((3, 5), 3, True), ((8, 8), 5, False)])
def test_pairs_reproduce_the_double_sum(g, size, wrap):
    # sum_c sum_j alpha_cj s(c, j) for a symmetric score s equals the pair sum.
    rng = np.random.default_rng(0)
    f = g[0] * g[1]
    s = rng.normal(size=(f, f))
    s = s + s.T
    offsets, alpha = grid.neighbor_weights(g, size, wrap)
    h, w = g
    total = 0.0
    for c in range(f):
        r, col = divmod(c, w)
        for k, (dy, dx) in enumerate(offsets):
            rr, cc = r + dy, col + dx
            if wrap:
                rr, cc = rr % h, cc % w
            elif not (0 <= rr < h and 0 <= cc < w):
                continue
            total += alpha[k, r, col] * s[c, rr * w + cc]
    first, second, weight = grid.neighbor_pairs(g, size, wrap)
    np.testing.assert_allclose((weight * s[first, second]).sum(), total)


def test_to_grid_and_back():
    x = np.arange(2 * 3 * 12).reshape(2, 3, 12)
    maps = grid.to_grid(x, (3, 4))
    assert maps.shape == (2, 3, 3, 4)
    assert maps[0, 0, 1, 2] == x[0, 0, 6]
    np.testing.assert_array_equal(grid.from_grid(maps, (3, 4)), x)
    with pytest.raises(ValueError):
        grid.to_grid(x, (4, 4))


def test_smooth_border_average_over_in_grid_cells():
    m = np.arange(12, dtype=float).reshape(3, 4)
    s = grid.smooth(m, 3)
    assert s.shape == m.shape
    assert s[1, 1] == pytest.approx(m[0:3, 0:3].mean())
    assert s[0, 0] == pytest.approx(m[0:2, 0:2].mean())
    assert s[2, 3] == pytest.approx(m[1:3, 2:4].mean())
    # a constant map stays constant (no zero-padding bias at the border)
    np.testing.assert_allclose(grid.smooth(np.full((5, 7), 3.5), 3), 3.5)
    # batches of maps
    batch = np.stack([m, 2 * m])
    np.testing.assert_allclose(grid.smooth(batch, 3)[1], 2 * s)
    np.testing.assert_array_equal(grid.smooth(m, 1), m)
    with pytest.raises(ValueError, match="NaN"):
        grid.smooth(np.array([[np.nan, 1.0], [1.0, 1.0]]))


def test_most_responsive_region():
    m = np.zeros((8, 8))
    m[5, 2] = 9.0
    m[5, 3] = 3.0
    m[5, 1] = -5.0
    m[4, 3] = m[6, 3] = 1.0  # the block centred at (5, 3) is the unique maximum (14)
    region = grid.most_responsive_region(m, 3)
    assert region.center == (5, 3)
    assert region.value == pytest.approx(14 / 9)
    assert grid.position_to_index(5, 2, (8, 8)) in region.filters
    assert region.filters.shape == (9,)
    assert region.value == pytest.approx(grid.smooth(m)[region.center])
    corner = np.zeros((4, 4))
    corner[0, 0] = 1.0
    r = grid.most_responsive_region(corner, inside=False)
    assert r.center == (0, 0)
    np.testing.assert_array_equal(np.sort(r.filters), [0, 1, 4, 5])
    # default inside=True: the best block wholly on the grid, here the one holding the corner
    r = grid.most_responsive_region(corner)
    assert r.center == grid.most_responsive_region(corner, inside=True).center
    assert r.center == (1, 1)
    np.testing.assert_array_equal(np.sort(r.filters), [0, 1, 2, 4, 5, 6, 8, 9, 10])
    assert r.value == pytest.approx(1 / 9)
    # a border peak next to a weaker interior block: the interior one wins among full blocks
    edge = np.zeros((6, 6))
    edge[0, 5] = 4.0
    edge[2:5, 1:4] = 0.6
    assert grid.most_responsive_region(edge, inside=False).center == (0, 5)
    assert grid.most_responsive_region(edge).center == (3, 2)
    with pytest.raises(ValueError, match="No 5x5 block lies wholly on a 4x4 grid"):
        grid.most_responsive_region(corner, size=5, inside=True)


@pytest.mark.parametrize("shape", [(8, 8), (12, 8)])
def test_most_responsive_region_is_uniform_over_the_allowed_positions_on_noise(shape):
    from scipy import stats

    h, w = shape
    rng = np.random.default_rng(7)
    n_maps = 40 * (h - 2) * (w - 2)  # 40 expected wins per position (chi-square needs >= 5)
    centres = np.array([grid.most_responsive_region(m).center
                        for m in rng.normal(size=(n_maps, h, w))])
    counts = np.bincount((centres[:, 0] - 1) * (w - 2) + centres[:, 1] - 1,
                         minlength=(h - 2) * (w - 2))
    assert stats.chisquare(counts).pvalue > 0.01
    # the cut-border variant is the biased one: it lands on the grid's border far too often
    cut = np.array([grid.most_responsive_region(m, inside=False).center
                    for m in rng.normal(size=(2000, h, w))])
    on_border = (cut[:, 0] % (h - 1) == 0) | (cut[:, 1] % (w - 1) == 0)
    chance = 1 - (h - 2) * (w - 2) / (h * w)
    assert on_border.mean() > chance + 0.1


def test_region_filters_validation():
    np.testing.assert_array_equal(
        grid.region_filters((1, 1), 3, (4, 4)), [0, 1, 2, 4, 5, 6, 8, 9, 10]
    )
    with pytest.raises(ValueError, match="off the 4x4 grid"):
        grid.region_filters((4, 0), 3, (4, 4))
    with pytest.raises(ValueError, match="odd"):
        grid.region_filters((1, 1), 2, (4, 4))


@pytest.mark.parametrize("g,size,wrap", [((4, 4), 3, False), ((3, 5), 3, True), ((6, 6), 5, False),
                                         ((3, 3), 3, True)])
def test_neighbor_matrix_gives_the_weighted_neighbour_sum(g, size, wrap):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(g[0] * g[1],) * 2)
    s = s + s.T  # any symmetric pair score
    offsets, alpha = grid.neighbor_weights(g, size, wrap)
    h, w = g
    expected = 0.0
    for k, (dy, dx) in enumerate(offsets):  # written out cell by cell
        for r in range(h):
            for c in range(w):
                rr, cc = r + dy, c + dx
                if wrap:
                    rr, cc = rr % h, cc % w
                elif not (0 <= rr < h and 0 <= cc < w):
                    continue
                expected += alpha[k, r, c] * s[r * w + c, rr * w + cc]
    m = grid.neighbor_matrix(g, size, wrap)
    assert m.shape == (h * w, h * w) and m.dtype == np.float32
    np.testing.assert_array_equal(m, m.T)
    np.testing.assert_allclose((m * s).sum(), expected, rtol=1e-6)
    assert not m.flags.writeable
