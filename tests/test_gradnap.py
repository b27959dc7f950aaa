"""GradNAP: closed-form profiles on every backend, planted structure, streaming, label mapping."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_topomap.gradnap import GradNAP
from tests.tiny_models import (
    closed_form_data,
    closed_form_model,
    hand_adjusted,
    hand_profiles,
    planted_data,
    planted_model,
    stride2_model,
)

L = keras.layers


@pytest.mark.backend
@pytest.mark.parametrize("adjust", ["gradient", "abs_gradient", "none"])
@pytest.mark.parametrize("baseline", ["group_mean", "frame_mean"])
def test_closed_form_profiles(adjust, baseline):
    model = closed_form_model()
    x, labels = closed_form_data()
    gn = GradNAP(
        model, ["h", "out"], adjust=adjust, baseline=baseline, n_groups=4,
        grids={"h": (1, 2), "out": (1, 3)}, verbose=0,
    )
    with pytest.warns(UserWarning, match="no frames for groups \\['3'\\]"):
        assert gn.fit([(x, labels)]) is gn
    adjusted = hand_adjusted(x, adjust)
    for name in ("h", "out"):
        expected, counts = hand_profiles(adjusted[name], labels, 4, baseline)
        np.testing.assert_allclose(gn.profiles_[name], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(gn.counts_[name], counts)
        assert np.all(np.isfinite(gn.profiles_[name]))
    assert gn.counts_["h"].tolist() == [4, 3, 3, 0]
    assert gn.n_frames_ == 10


@pytest.mark.backend
def test_ctc_loss_and_callable_targets_match_hand_gradients():
    """target='ctc_loss': with a single output frame and a one-label transcript, -CTC loss is
    log_softmax(logits)[label]; its gradient w.r.t. the logits is onehot - softmax."""
    model = closed_form_model()
    x = np.array([[[0.7]], [[-0.4]]], "float32")  # one frame per utterance
    labels = np.array([[0], [1]])
    packed = np.array([[1, 1, 1], [1, 1, 2]])  # feature length 1, label length 1, label
    gn = GradNAP(model, ["out"], target="ctc_loss", n_groups=2, grids={"out": (1, 3)},
                 baseline="frame_mean", verbose=0).fit([(x, labels, packed)])
    logits = np.stack([np.zeros(2), 2 * x[:, 0, 0], -3 * x[:, 0, 0]], axis=-1)
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    grad = np.eye(3)[[1, 2]] - soft
    adjusted = logits * grad
    expected = adjusted - adjusted.mean(axis=0)
    np.testing.assert_allclose(gn.profiles_["out"], expected, rtol=1e-4, atol=1e-6)

    # A callable on the model output: sum of squared logits -> gradient 2 * logits.
    gn = GradNAP(model, ["out"], target=lambda out: ops.sum(out**2), n_groups=2,
                 grids={"out": (1, 3)}, verbose=0).fit([(x, labels)])
    adjusted = 2 * logits**2
    np.testing.assert_allclose(gn.profiles_["out"], adjusted - adjusted.mean(0), rtol=1e-4)


@pytest.mark.backend
def test_stride2_label_mapping():
    model = stride2_model()
    x = np.arange(1.0, 9.0, dtype="float32").reshape(1, 8, 1)  # 1..8
    labels = np.array([[0, 1, 1, 0, 0, 0, 1, -1]])
    gn = GradNAP(model, ["c"], adjust="none", grids={"c": (1, 1)}, n_groups=2,
                 time_bucket=1, verbose=0).fit([(x, labels)])
    # layer frames: sums 3, 7, 11, 15 with labels of input frames 0, 2, 4, 6 -> 0, 1, 0, 1
    assert gn.counts_["c"].tolist() == [2, 2]
    means = np.array([(3 + 11) / 2, (7 + 15) / 2])
    np.testing.assert_allclose(gn.group_means_["c"][:, 0], means)
    np.testing.assert_allclose(gn.profiles_["c"][:, 0], means - means.mean())


@pytest.mark.backend
def test_layers_with_shared_timing_share_labels_and_match_single_layer_fits():
    """Layers of one timing get one label array (a stride-1 'same' conv after a stride-2 one
    sees the stride-2 layer's frames); fitting all layers at once equals fitting each alone."""
    x_in = keras.Input((None, 2))
    a = L.Conv1D(3, 3, padding="same", activation="relu", name="a")(x_in)
    b = L.Conv1D(4, 4, strides=2, padding="same", activation="relu", name="b")(a)
    c = L.Conv1D(4, 3, padding="same", activation="relu", name="c")(b)
    model = keras.Model(x_in, L.Conv1D(5, 1, name="out")(c))
    rng = np.random.default_rng(7)
    batches = [(rng.normal(size=(3, t, 2)).astype("float32"), rng.integers(-1, 4, size=(3, t)))
               for t in (12, 16, 9)]
    grids = {"a": (1, 3), "b": (2, 2), "c": (2, 2)}
    both = GradNAP(model, ["a", "b", "c"], grids=grids, n_groups=4, time_bucket=4, window=1,
                   verbose=0).fit(batches)
    timing = both._timing(16)
    assert both._label_plan(timing) == ((0, 1, 1), ("a", "b"))
    for name in ("a", "b", "c"):
        alone = GradNAP(model, [name], grids={name: grids[name]}, n_groups=4, time_bucket=4,
                        window=1, verbose=0).fit(batches)
        np.testing.assert_array_equal(both.counts_[name], alone.counts_[name])
        np.testing.assert_allclose(both.profiles_[name], alone.profiles_[name], rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(both.time_profiles_[name], alone.time_profiles_[name],
                                   rtol=1e-5, atol=1e-7)
    assert both.counts_["a"].sum() > both.counts_["b"].sum() > 0  # b, c have half the frames


@pytest.mark.backend
@pytest.mark.parametrize("adjust", ["gradient", "none"])
def test_planted_structure(adjust):
    model = planted_model()
    names = [f"g{k}" for k in range(9)]
    gn = GradNAP(model, ["topo"], adjust=adjust, group_names=names, verbose=0)
    gn.fit(planted_data())
    assert gn.grids_["topo"] == (3, 3)  # from the regularizer
    for k in range(9):
        region = gn.most_responsive_region("topo", f"g{k}", size=3)
        assert k in region.filters
        assert np.argmax(gn.profiles_["topo"][k]) == k
    assert gn.maps("topo").shape == (9, 3, 3)
    assert gn.maps("topo", smooth=True).shape == (9, 3, 3)
    clustering = gn.cluster("topo")
    assert sorted(clustering.order.tolist()) == list(range(9))
    assert clustering.names == [names[i] for i in clustering.order]


def test_streaming_merge_and_chunks_equal_one_pass():
    model = planted_model()
    batches = planted_data(n_batches=4, rng=np.random.default_rng(3))
    kwargs = dict(n_groups=9, window=2, verbose=0)
    full = GradNAP(model, ["topo", "out"], grids={"out": (5, 2)}, **kwargs).fit(batches)
    first = GradNAP(model, ["topo", "out"], grids={"out": (5, 2)}, **kwargs).fit(batches[:1])
    second = GradNAP(model, ["topo", "out"], grids={"out": (5, 2)}, **kwargs).fit(batches[1:])
    merged = GradNAP.merge([first, second])
    chunked = GradNAP(model, ["topo", "out"], grids={"out": (5, 2)}, **kwargs)
    for i in range(0, 4, 2):
        chunked.partial_fit(batches[i : i + 2])
    for other in (merged, chunked):
        for name in ("topo", "out"):
            np.testing.assert_allclose(other.profiles_[name], full.profiles_[name], atol=1e-9)
            np.testing.assert_array_equal(other.counts_[name], full.counts_[name])
            np.testing.assert_allclose(other.time_profiles_[name], full.time_profiles_[name],
                                       atol=1e-9)
        assert other.n_frames_ == full.n_frames_
    # Arrays instead of batches: split by batch_size, same result
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    arrays = GradNAP(model, ["topo", "out"], grids={"out": (5, 2)}, batch_size=4, **kwargs)
    np.testing.assert_allclose(arrays.fit((x, y)).profiles_["topo"], full.profiles_["topo"],
                               atol=1e-9)


def test_time_resolved_profiles_by_hand():
    """Identity layer, one feature: windows around each run's centre, averaged per group."""
    x_in = keras.Input((None, 1))
    model = keras.Model(x_in, L.Activation("linear", name="id")(x_in))
    x = np.arange(10, dtype="float32").reshape(1, 10, 1)
    labels = np.array([[0, 0, 0, 1, 1, -1, 0, 0, 1, -1]])
    gn = GradNAP(model, ["id"], adjust="none", window=1, grids={"id": (1, 1)}, n_groups=2,
                 target=lambda out: ops.sum(out), verbose=0).fit([(x, labels)])
    # runs: g0 [0..2] centre 1 -> frames 0,1,2; g1 [3,4] centre 3.5 -> anchor 4 -> 3,4,5;
    # g0 [6,7] centre 6.5 -> anchor 7 -> 6,7,8; g1 [8] -> 7,8,9 but 9 is past the end (length 9)
    sums0 = np.array([0 + 6, 1 + 7, 2 + 8])
    sums1 = np.array([3 + 7, 4 + 8, 5])
    counts = np.array([[2, 2, 2], [2, 2, 1]])
    np.testing.assert_array_equal(gn.time_counts_["id"], counts)
    means = np.stack([sums0 / 2, sums1 / counts[1]])
    np.testing.assert_allclose(gn.time_profiles_["id"][..., 0], means - means.mean(axis=0))


@pytest.mark.backend
def test_time_resolved_saliency_anchor_by_hand():
    """Target sum(out**2) on an identity layer: g = 2x, saliency |2x|, adjusted a*g = 2x**2."""
    x_in = keras.Input((None, 1))
    model = keras.Model(x_in, L.Activation("linear", name="id")(x_in))
    x = np.array([1, 5, 2, 0, 3, 1, 7, 4, 0, 0], "float32").reshape(1, 10, 1)
    labels = np.array([[0, 0, 0, 1, 1, 1, 0, 0, -1, -1]])
    gn = GradNAP(model, ["id"], window=1, anchor="saliency", grids={"id": (1, 1)}, n_groups=2,
                 target=lambda out: ops.sum(out**2), verbose=0).fit([(x, labels)])
    # peaks: frame 1 (g0), frame 4 (g1), frame 6 (g0; the centre anchor would pick 7)
    np.testing.assert_array_equal(gn.time_counts_["id"], [[2, 2, 2], [1, 1, 1]])
    means = np.array([[(2 + 2) / 2, (50 + 98) / 2, (8 + 32) / 2], [0, 18, 2]])
    np.testing.assert_allclose(gn.time_profiles_["id"][..., 0], means - means.mean(axis=0),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="anchor='saliency' needs gradients"):
        GradNAP(model, ["id"], window=1, anchor="saliency", adjust="none", grids={"id": (1, 1)})


def test_save_load_round_trip(tmp_path):
    model = planted_model()
    names = [f"g{k}" for k in range(9)]
    gn = GradNAP(model, ["topo"], group_names=names, window=1, verbose=0).fit(planted_data(1))
    path = gn.save(tmp_path / "sub" / "profiles")
    assert path.endswith("profiles.npz") and (tmp_path / "sub" / "profiles.json").exists()
    loaded = GradNAP.load(path)
    np.testing.assert_allclose(loaded.profiles_["topo"], gn.profiles_["topo"])
    np.testing.assert_allclose(loaded.time_profiles_["topo"], gn.time_profiles_["topo"])
    np.testing.assert_array_equal(loaded.counts_["topo"], gn.counts_["topo"])
    assert loaded.group_names == names and loaded.grids_ == {"topo": (3, 3)}
    a, b = loaded.most_responsive_region("topo", "g4"), gn.most_responsive_region("topo", "g4")
    assert a.center == b.center and a.filters.tolist() == b.filters.tolist()
    with pytest.raises(ValueError, match="no model"):
        loaded.fit(planted_data(1))
    resumed = GradNAP.load(tmp_path / "sub" / "profiles.json", model=model)
    resumed.partial_fit(planted_data(1, rng=np.random.default_rng(5)))
    both = GradNAP(model, ["topo"], group_names=names, window=1, verbose=0)
    both.fit(planted_data(1) + planted_data(1, rng=np.random.default_rng(5)))
    np.testing.assert_allclose(resumed.profiles_["topo"], both.profiles_["topo"], atol=1e-9)


def test_dict_batches_lengths_and_padding_never_count():
    model = stride2_model()
    x = np.ones((2, 8, 1), "float32")
    x[1, 4:] = 100.0  # padding of utterance 1 holds junk that must not count
    labels = np.array([[0, 0, 1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1, 0, 0]])
    batch = {"features": x, "frame_labels": labels, "feature_lengths": np.array([8, 4])}
    gn = GradNAP(model, ["c"], adjust="none", grids={"c": (1, 1)}, n_groups=2, time_bucket=1,
                 verbose=0).fit([batch])
    # utterance 0: 4 layer frames, labels 0,1,0,1; utterance 1: first 2 frames, labels 1,0
    assert gn.counts_["c"].tolist() == [3, 3]
    np.testing.assert_allclose(gn.group_means_["c"][:, 0], [2.0, 2.0])


def test_group_count_grows_with_labels_and_names():
    model = stride2_model()
    x = np.ones((1, 4, 1), "float32")
    gn = GradNAP(model, ["c"], adjust="none", grids={"c": (1, 1)}, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gn.fit([(x, np.array([[0, 0, 1, 1]])), (x, np.array([[4, 4, 4, 4]]))])
    assert gn.n_groups_ == 5 and gn.counts_["c"].tolist() == [1, 1, 0, 0, 2]
    # The first batch is still in flight when the second one grows the groups (with windows).
    windowed = GradNAP(model, ["c"], adjust="none", grids={"c": (1, 1)}, window=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        windowed.fit([(x, np.array([[0, 0, 1, 1]])), (x, np.array([[4, 4, 4, 4]]))])
    assert windowed.counts_["c"].tolist() == [1, 1, 0, 0, 2]
    assert windowed.time_profiles_["c"].shape == (5, 3, 1)
    assert gn.group_name(4) == "4" and gn.group_index("4") == 4


def test_errors(tmp_path):
    model = planted_model()
    data = planted_data(1)
    with pytest.raises(ValueError, match="Layer 'nope' is not in model.*Available layers"):
        GradNAP(model, ["nope"])
    with pytest.raises(ValueError, match="'out' has no TopographicRegularizer.*grids="):
        GradNAP(model, ["out"])
    with pytest.raises(ValueError, match="3x3 holds 9 filters but there are 10"):
        GradNAP(model, ["out"], grids={"out": (3, 3)})
    with pytest.raises(ValueError, match="not profiled: \\['out'\\]"):
        GradNAP(model, ["topo"], grids={"out": (5, 2)})
    for kwargs, match in [
        (dict(target="loss"), "target must be one of"),
        (dict(adjust="grad"), "adjust must be one of"),
        (dict(baseline="mean"), "baseline must be one of"),
        (dict(n_groups=0), "n_groups must be an integer >= 1"),
        (dict(window=True), "window must be an integer >= 0"),
        (dict(group_names=["a"], n_groups=2), "does not match"),
        (dict(batch_size=0), "batch_size must be"),
        (dict(window=-1), "window must be"),
        (dict(time_bucket=0), "time_bucket must be"),
        (dict(anchor="peak"), "anchor must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            GradNAP(model, ["topo"], **kwargs)
    with pytest.raises(ValueError, match="at least one layer"):
        GradNAP(model, [])

    gn = GradNAP(model, ["topo"], n_groups=9, verbose=0)
    assert not hasattr(gn, "profiles_") and not hasattr(gn, "grids_")  # fitted attributes
    x, y = data[0]
    bad_batches = [
        ([(x, y[:, :5])], "Batch 0: frame labels must have shape \\(batch, T_in\\)"),
        ([(x, y.astype("float32"))], "must be integers"),
        ([(x, y - 5)], "must be >= -1"),
        ([(x[0], y)], "x must be \\(batch, time, features\\)"),
        ([(x,)], "expected \\(x, frame_labels\\)"),
        ([{"features": x}], "Missing: \\['frame_labels'\\]"),
        ([(x, y, np.zeros((4,)))], "packed CTC targets"),
        ([], "no batches"),
    ]
    for batches, match in bad_batches:
        with pytest.raises(ValueError, match=match):
            gn.fit(batches)
    named = GradNAP(model, ["topo"], group_names=["a", "b"], verbose=0)
    with pytest.raises(ValueError, match="frame label 8 has no group name"):
        named.fit(data)
    ctc = GradNAP(model, ["topo"], target="ctc_loss", verbose=0)
    with pytest.raises(ValueError, match="needs transcripts"):
        ctc.fit(data)
    packed = np.concatenate([np.full((4, 1), 48), np.full((4, 1), 60), np.ones((4, 60))], axis=1)
    with pytest.raises(ValueError, match="utterance 0: the transcript needs 119 output frames"):
        ctc.fit([(x, y, packed.astype(int))])

    fitted = GradNAP(model, ["topo"], n_groups=9, verbose=0).fit(data)
    with pytest.raises(ValueError, match="Unknown group 'zz'"):
        fitted.most_responsive_region("topo", "zz")
    with pytest.raises(ValueError, match="out of range"):
        fitted.most_responsive_region("topo", 11)
    with pytest.raises(ValueError, match="Layer 'out' is not profiled"):
        fitted.maps("out")
    with pytest.raises(ValueError, match="not been fitted|not seen any"):
        GradNAP(model, ["topo"], n_groups=9).most_responsive_region("topo", 0)
    with pytest.raises(ValueError, match="not been fitted"):
        GradNAP(model, ["topo"], n_groups=9).cluster("topo")
    one_group = [(x, np.where(y == y[0, 0], y, -1))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the other groups have no frames
        lonely = GradNAP(model, ["topo"], n_groups=9, verbose=0).fit(one_group)
    with pytest.raises(ValueError, match="at least 2 groups"):
        lonely.cluster("topo")
    other = GradNAP(model, ["topo"], adjust="none", n_groups=9, verbose=0).fit(data)
    with pytest.raises(ValueError, match="part 1 differs from part 0 in \\['adjust'\\]"):
        GradNAP.merge([fitted, other])
    with pytest.raises(ValueError, match="missing file"):
        GradNAP.load(tmp_path / "nothing")

    x_in = keras.Input((None, 3))
    pooled = L.GlobalAveragePooling1D(name="gap")(L.Conv1D(4, 3, name="c")(x_in))
    clf = keras.Model(x_in, L.Dense(2, name="d")(pooled))
    # Per-sample labels work on these layers; frame labels are refused when they come.
    frames = [(np.zeros((1, 8, 3), "float32"), np.zeros((1, 8), int))]
    with pytest.raises(ValueError, match="'d' must output \\(batch, time, filters\\)"):
        GradNAP(clf, ["d"], grids={"d": (2, 1)}, verbose=0).fit(frames)
    with pytest.raises(ValueError, match="needs an output with a time axis"):
        GradNAP(clf, ["c"], grids={"c": (2, 2)}, verbose=0).fit(frames)


def test_warns_when_the_model_only_predicts_blank():
    model = closed_form_model()
    x = np.zeros((1, 4, 1), "float32")  # x == 0: every frame predicts the blank
    labels = np.array([[0, 0, 1, 1]])
    with pytest.warns(UserWarning, match="predicts the blank"):
        gn = GradNAP(model, ["h"], grids={"h": (1, 2)}, verbose=0).fit([(x, labels)])
    assert gn.target_total_ == 0.0 and np.all(gn.profiles_["h"] == 0)


@pytest.mark.backend
def test_one_compilation_for_batches_of_different_lengths(backend):
    model = planted_model()
    rng = np.random.default_rng(0)
    batches = []
    for n, t in ((4, 40), (4, 50), (3, 37)):  # all pad to 64 frames and 4 rows
        labels = rng.integers(-1, 9, size=(n, t))
        batches.append((rng.normal(size=(n, t, 9)).astype("float32"), labels))
    gn = GradNAP(model, ["topo"], n_groups=9, verbose=0).fit(batches)
    (step, _), = gn._steps.values()
    assert step.trace_count == {"tensorflow": 1, "jax": 1, "torch": 0}[backend]
