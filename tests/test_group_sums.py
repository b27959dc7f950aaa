"""GroupSums: the running per-group state shared by GradNAP and TopoMapCallback."""

import numpy as np
import pytest

from keras_topomap import GroupSums
from keras_topomap.group_sums import group_profiles


def _filled(seed, n_groups=3, window=None):
    rng = np.random.default_rng(seed)
    state = GroupSums({"a": 2, "b": 3}, n_groups, window)
    for name, f in (("a", 2), ("b", 3)):
        labels = rng.integers(-1, n_groups, size=(4, 5))
        state.add_frames(name, rng.normal(size=(4, 5, f)), labels)
        if window is not None:
            k = 2 * window + 1
            state.add_windows(name, rng.normal(size=(n_groups, k, f)),
                              rng.integers(0, 3, size=(n_groups, k)))
    state.n_frames, state.target_total = 7, 1.5
    return state


def test_add_frames_matches_plain_loops():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 4))
    labels = np.array([2, -1, 0, 2, 2, -1])
    state = GroupSums({"x": 4}, n_groups=4)
    state.add_frames("x", values, labels)
    for g in range(4):  # an independent reference
        rows = [values[i] for i in range(6) if labels[i] == g]
        np.testing.assert_allclose(state.sums["x"][g], np.sum(rows, axis=0) if rows else 0.0)
        assert state.counts["x"][g] == len(rows)
    with pytest.raises(ValueError, match="label 4 of layer 'x' is out of range"):
        state.add_frames("x", values, np.full(6, 4))


def test_empty_groups_are_zero_and_out_of_the_baseline():
    sums = np.array([[2.0, 4.0], [0.0, 0.0], [6.0, 0.0]])
    counts = np.array([2, 0, 3])
    profiles, means, base = group_profiles(sums, counts, "group_mean")
    np.testing.assert_allclose(means, [[1, 2], [0, 0], [2, 0]])
    np.testing.assert_allclose(base, [1.5, 1.0])  # over groups 0 and 2 only
    np.testing.assert_allclose(profiles, [[-0.5, 1.0], [0, 0], [0.5, -1.0]])
    _, _, frame_base = group_profiles(sums, counts, "frame_mean")
    np.testing.assert_allclose(frame_base, [8 / 5, 4 / 5])
    nothing = group_profiles(np.zeros((2, 1)), np.zeros(2, int))
    assert all(np.all(np.isfinite(v)) and not np.any(v) for v in nothing)
    state = GroupSums({"a": 2, "b": 2}, 3)
    state.add("a", sums, counts)
    state.add("b", sums, [1, 1, 1])
    assert state.empty_groups().tolist() == [False, True, False]


def test_grow_total_and_arrays_round_trip():
    parts = [_filled(0, n_groups=2, window=1), _filled(1, n_groups=3, window=1)]
    before = parts[0].copy()
    total = GroupSums.total(parts)
    assert total.n_groups == 3 and total.n_frames == 14 and total.target_total == 3.0
    for name in ("a", "b"):
        grown = np.pad(parts[0].counts[name], (0, 1)) + parts[1].counts[name]
        np.testing.assert_array_equal(total.counts[name], grown)
        np.testing.assert_allclose(total.window_sums[name][:2],
                                   parts[0].window_sums[name] + parts[1].window_sums[name][:2])
        # The parts are left as they were (nothing shared by reference).
        np.testing.assert_array_equal(parts[0].sums[name], before.sums[name])
        assert total.sums[name] is not parts[0].sums[name]
    again = GroupSums.from_arrays(total.to_arrays(), ["a", "b"], window=1, n_frames=14)
    for name in ("a", "b"):
        np.testing.assert_array_equal(again.sums[name], total.sums[name])
        np.testing.assert_array_equal(again.window_counts[name], total.window_counts[name])
    assert again.n_filters == {"a": 2, "b": 3}
    with pytest.raises(ValueError, match="part 1 has layers/filters"):
        GroupSums.total([parts[0], GroupSums({"a": 2}, 2, window=1)])
    arrays = total.to_arrays()
    arrays["counts_1"] = arrays["counts_1"][:2]
    with pytest.raises(ValueError, match="where: layer 'b' has sums of shape"):
        GroupSums.from_arrays(arrays, ["a", "b"], window=1, where="where")
    with pytest.raises(ValueError, match="no array 'tsums_0' for layer 'a'"):
        GroupSums.from_arrays({"sums_0": np.zeros((1, 2)), "counts_0": np.zeros(1)}, ["a"],
                              window=1)
