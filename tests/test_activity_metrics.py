"""Correlation-vs-distance curve and dead-unit share on planted activity."""

import numpy as np
import pytest

from keras_topomap import metrics


def planted_activity(grid=(8, 8), n=400, seed=0):
    """Activity of channels whose responses overlap with grid distance: a moving 2D bump."""
    h, w = grid
    rng = np.random.default_rng(seed)
    rows, cols = np.divmod(np.arange(h * w), w)
    centres = rng.uniform([0, 0], [h, w], size=(n, 2))
    d2 = (rows[None] - centres[:, :1]) ** 2 + (cols[None] - centres[:, 1:]) ** 2
    return np.exp(-d2 / 4.0) + 0.05 * rng.normal(size=(n, h * w))


def test_smooth_map_curve_falls_and_permuted_is_flat():
    x = planted_activity()
    curve = metrics.correlation_by_distance(x, grid=(8, 8), n_permutations=20, seed=0)
    assert curve.falls and curve.falloff > 0.3 and curve.falloff_z > 10
    assert curve.distance[0] == 1 and np.all(curve.count > 0) and np.all(curve.sem[:3] > 0)
    assert abs(curve.falloff_null_mean) < 0.05  # a random layout: ~0 by construction
    assert np.all(np.abs(curve.null_mean[:3] - curve.null_mean[:3].mean()) < 0.05)
    permuted = x[:, np.random.default_rng(1).permutation(64)]
    flat = metrics.correlation_by_distance(permuted, grid=(8, 8), n_permutations=20, seed=0)
    assert abs(flat.falloff) < 0.1 and abs(flat.falloff_z) < 4
    assert np.ptp(flat.mean[:3]) < 0.1


def test_streamed_statistics_match_one_pass_and_skip_masked_frames():
    x = planted_activity(n=120).reshape(4, 30, 64)
    mask = np.ones((4, 30), bool)
    mask[2, 20:] = False
    stats = metrics.ActivityStatistics(64)
    for batch, m in zip(x, mask):
        stats.update(batch[None], m[None])
    np.testing.assert_allclose(stats.correlations(), np.corrcoef(x[mask].T), atol=1e-10)
    assert stats.count == int(mask.sum())


def test_dead_units_and_constant_channels():
    x = planted_activity(n=100)
    x[:, :5] = 0.0  # never fire
    x[:, 5] = -1.0  # never above zero either
    x[:, 6] = 3.0  # fires, but constant: its correlations are undefined and left out
    assert metrics.dead_unit_share(x) == pytest.approx(6 / 64)
    curve = metrics.correlation_by_distance(x, grid=(8, 8), n_permutations=5, seed=0)
    assert curve.n_live == 57 and np.isfinite(curve.falloff)


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"holds 8 channels. Received: activity of shape \(3, 9\)"):
        metrics.ActivityStatistics(8).update(np.zeros((3, 9)))
    with pytest.raises(ValueError, match=r"mask must have the activity's shape.*Received: mask"):
        metrics.ActivityStatistics(8).update(np.zeros((3, 8)), mask=np.ones(4, bool))
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        metrics.ActivityStatistics(2).update(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"needs >= 3 channels that vary. Received: 0 of 16"):
        metrics.correlation_by_distance(np.zeros((10, 16)), grid=(4, 4))
    with pytest.raises(ValueError, match=r"n_permutations must be >= 2"):
        metrics.correlation_by_distance(planted_activity(), grid=(8, 8), n_permutations=1)
    with pytest.raises(ValueError, match=r"grid for 64 channels.*Received"):
        metrics.correlation_by_distance(planted_activity(), grid=(4, 4))
    with pytest.raises(ValueError, match=r"No samples seen yet"):
        metrics.ActivityStatistics(4).dead_units()


def test_degenerate_curves_are_never_nan():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 1))
    # Every varying channel perfectly correlated: every layout has the same falloff (0), whose
    # z-score is 0 (it was inf * 0 = NaN).
    same = np.repeat(base, 16, axis=1) * np.linspace(1, 2, 16) + np.arange(16)
    curve = metrics.correlation_by_distance(same, grid=(4, 4), n_permutations=5)
    assert curve.falloff == pytest.approx(0, abs=1e-12) and curve.falloff_z == 0.0
    # Only channels 0, 1 and 15 vary: no pair at distance 2 or 3, whose bins are left out
    # (their means were NaN, reaching metrics.json).
    x = np.zeros((50, 16))
    x[:, [0, 1, 15]] = rng.normal(size=(50, 3))
    curve = metrics.correlation_by_distance(x, grid=(4, 4), n_permutations=5)
    np.testing.assert_array_equal(curve.distance, [1, 4])
    np.testing.assert_array_equal(curve.count, [1, 2])
    assert not np.isnan(curve.mean).any() and not np.isnan(curve.null_mean).any()
    # Varying channels that are nowhere neighbours: no falloff to measure, said so.
    x = np.zeros((50, 16))
    x[:, [0, 2, 8]] = rng.normal(size=(50, 3))
    with pytest.raises(ValueError, match=r"no two of the 3 channels that vary are grid "
                       r"neighbours.*\[0, 2, 8\] on a 4x4 grid"):
        metrics.correlation_by_distance(x, grid=(4, 4), n_permutations=5)

