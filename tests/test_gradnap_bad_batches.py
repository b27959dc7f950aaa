"""GradNAP on bad batches: non-finite inputs and results, degenerate batches, unbounded group
labels and inconsistent CTC transcripts (issue 18, items 3, 6, 7 and 12).

Each case once ended in NaN profiles, a raw traceback from inside a backend, or an allocation
without bound; each now gives a clear error naming the batch (and utterance) or a counted skip,
the same on every backend.
"""

import json
import warnings

import numpy as np
import pytest

from keras_topomap import batch_checks
from keras_topomap.datasets import pack_ctc_targets
from keras_topomap.gradnap import GradNAP
from tests.tiny_models import closed_form_data, closed_form_model

GRIDS = {"h": (1, 2), "out": (1, 3)}


def _gn(model=None, **kwargs):
    return GradNAP(model or closed_form_model(), ["h", "out"],
                   **{"grids": GRIDS, "verbose": 0, **kwargs})


def _fit(batches, model=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # groups without frames
        return _gn(model, **kwargs).fit(batches)


def _poisoned(value=np.nan, row=1, frame=2):
    """Two batches of the closed-form data; batch 1 has ``value`` in one frame of ``row``."""
    x, labels = closed_form_data()
    bad = x.copy()
    bad[row, frame, 0] = value
    return [(x, labels), (bad, labels)]


def _assert_same_fit(a, b):
    for name in ("h", "out"):
        np.testing.assert_array_equal(a.counts_[name], b.counts_[name])
        np.testing.assert_allclose(a.profiles_[name], b.profiles_[name], rtol=1e-6, atol=1e-6)
    assert a.n_frames_ == b.n_frames_


# ----------------------------------------------------------------------------------------------
# Item 3: non-finite inputs and step results


@pytest.mark.backend
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_nonfinite_input_is_refused_naming_batch_and_utterance(value):
    with pytest.raises(ValueError, match=r"Batch 1, utterance 1: .*non-finite.*frame 2"):
        _fit(_poisoned(value))


@pytest.mark.backend
def test_skip_leaves_out_the_utterances_with_nonfinite_input_and_counts_them():
    x, labels = closed_form_data()
    skipped = _fit(_poisoned(), on_nonfinite="skip", n_groups=3)
    clean = _fit([(x, labels), (x[:1], labels[:1])], n_groups=3)
    _assert_same_fit(skipped, clean)
    assert skipped.skipped_ == {"nonfinite_rows": 1, "empty_batches": 0}
    assert np.isfinite(skipped.target_total_)
    # A batch whose every row is bad is skipped whole.
    x_nan = np.full_like(x, np.nan)
    gn = _fit([(x, labels), (x_nan, labels)], on_nonfinite="skip")
    assert gn.skipped_["nonfinite_rows"] == 2 and gn.n_frames_ == int((labels >= 0).sum())


@pytest.mark.backend
def test_a_finite_input_with_a_nonfinite_step_result_is_caught():
    # 3e38 is finite in float32, but the logit -3x overflows: the gradients come back inf.
    with pytest.raises(ValueError, match=r"Batch 1, utterance 0: non-finite .*layer 'h'"):
        _fit(_poisoned(3e38, row=0))
    x, labels = closed_form_data()
    skipped = _fit(_poisoned(3e38, row=0), on_nonfinite="skip", n_groups=3)
    clean = _fit([(x, labels), (x[1:], labels[1:])], n_groups=3)
    _assert_same_fit(skipped, clean)
    assert skipped.skipped_["nonfinite_rows"] == 1
    for name in ("h", "out"):
        assert np.isfinite(skipped.profiles_[name]).all()


@pytest.mark.backend
def test_nonfinite_per_sample_inputs_are_refused_or_skipped():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8, 1)).astype("float32")
    classes = np.array([0, 1, 2, 0, 1, 2])
    x[4, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"Batch 0, sample 4: .*non-finite"):
        _fit([(x, classes)])
    gn = _fit([(x, classes)], on_nonfinite="skip")
    clean = _fit([(np.delete(x, 4, axis=0), np.delete(classes, 4))])
    _assert_same_fit(gn, clean)
    assert gn.skipped_["nonfinite_rows"] == 1


def test_on_nonfinite_is_checked_and_skipped_exists_only_once_fitted():
    with pytest.raises(ValueError, match=r"on_nonfinite must be one of \['raise', 'skip'\]"):
        _gn(on_nonfinite="ignore")
    gn = _gn(on_nonfinite="skip")
    assert gn.on_nonfinite == "skip" and not hasattr(gn, "skipped_")
    x, labels = closed_form_data()
    assert _fit([(x, labels)]).skipped_ == {"nonfinite_rows": 0, "empty_batches": 0}


def test_skipped_counts_are_saved_loaded_and_merged(tmp_path):
    x, labels = closed_form_data()
    model = closed_form_model()
    a = _fit(_poisoned(), model=model, on_nonfinite="skip", n_groups=3)
    b = _fit([(x[:0], labels[:0]), (x, labels)], model=model, n_groups=3)
    assert b.skipped_ == {"nonfinite_rows": 0, "empty_batches": 1}
    a.save(tmp_path / "a")
    header = json.loads((tmp_path / "a.json").read_text())
    assert header["format_version"] == 2 and header["skipped"]["nonfinite_rows"] == 1
    loaded = GradNAP.load(tmp_path / "a")
    assert loaded.skipped_ == a.skipped_
    merged = GradNAP.merge([loaded, b])
    assert merged.skipped_ == {"nonfinite_rows": 1, "empty_batches": 1}
    # partial_fit adds to the counts.
    assert a.partial_fit(_poisoned()).skipped_["nonfinite_rows"] == 2


def test_gradnap_merge_adds_and_prints_the_skipped_counts(tmp_path, capsys):
    from keras_topomap.gradnap_cli import build_parser, merge_main

    args = ["--model", "m.keras", "--out", "o", "--on-nonfinite", "skip"]
    assert build_parser().parse_args(args).on_nonfinite == "skip"
    x, labels = closed_form_data()
    model = closed_form_model()
    for i, batches in enumerate([_poisoned(), [(x, labels)]]):
        part = _fit(batches, model=model, on_nonfinite="skip", n_groups=3)
        info = {"shard": i, "n_shards": 2, "data": "d", "split": None, "max_utterances": None,
                "features": {}, "n_utterances": 2, "utterance_ids_sha256": f"ids{i}"}
        part.save(tmp_path / "shards" / f"gradnap-shard-{i:05d}-of-00002", info=info)
    assert merge_main([str(tmp_path / "shards"), "--out", str(tmp_path / "merged")]) == 0
    assert "skipped (summed over the shards): {'nonfinite_rows': 1" in capsys.readouterr().out
    assert GradNAP.load(tmp_path / "merged").skipped_["nonfinite_rows"] == 1


def test_a_shard_of_format_version_1_still_loads(tmp_path):
    x, labels = closed_form_data()
    _fit([(x, labels)], n_groups=3).save(tmp_path / "old")
    path = tmp_path / "old.json"
    header = json.loads(path.read_text())
    header["format_version"] = 1
    del header["skipped"]
    path.write_text(json.dumps(header))
    assert GradNAP.load(tmp_path / "old").skipped_ == {"nonfinite_rows": 0, "empty_batches": 0}


@pytest.mark.parametrize("skipped, match", [
    ({"nonfinite_rows": -1}, "must be an int >= 0"),
    ([1], "must be a dict"),
    ({"typo": 1}, "unknown kinds"),
])
def test_load_checks_the_skipped_counts(tmp_path, skipped, match):
    x, labels = closed_form_data()
    _fit([(x, labels)], n_groups=3).save(tmp_path / "g")
    path = tmp_path / "g.json"
    header = json.loads(path.read_text())
    header["skipped"] = skipped
    path.write_text(json.dumps(header))
    with pytest.raises(ValueError, match=match):
        GradNAP.load(tmp_path / "g")


# ----------------------------------------------------------------------------------------------
# Item 6: degenerate batches, the same on every backend


@pytest.mark.backend
def test_batches_without_labelled_frames_and_no_group_names():
    x, labels = closed_form_data()
    none = np.full_like(labels, -1)
    gn = _fit([(x, none)])
    assert gn.n_groups_ == 0 and gn.n_frames_ == 0
    # A first batch without labels, then labelled ones: as if the first were not there.
    _assert_same_fit(_fit([(x, none), (x, labels)]), _fit([(x, labels)]))


@pytest.mark.backend
@pytest.mark.parametrize("shape", [(0, 8, 1), (2, 0, 1)], ids=["no rows", "no frames"])
def test_empty_batches_are_skipped_and_counted(shape):
    x, labels = closed_form_data()
    empty = (np.zeros(shape, "float32"), np.zeros(shape[:2], int))
    gn = _fit([empty, (x, labels), empty])
    _assert_same_fit(gn, _fit([(x, labels)]))
    assert gn.skipped_ == {"nonfinite_rows": 0, "empty_batches": 2}
    with pytest.raises(ValueError, match=r"all 2 batches were skipped .*empty_batches"):
        _fit([empty, empty])


@pytest.mark.backend
def test_empty_per_sample_and_ctc_batches_are_skipped():
    x = np.ones((3, 8, 1), "float32")
    gn = _fit([(x[:0], np.zeros(0, int)), (x, np.array([0, 1, 2]))])
    assert gn.skipped_["empty_batches"] == 1 and gn.n_frames_ == 3
    packed = pack_ctc_targets([8, 8], [np.array([1]), np.array([2])])
    x, labels = closed_form_data()
    gn = _fit([(x[:, :0], labels[:, :0], packed), (x, labels, packed)], target="ctc_loss")
    assert gn.skipped_["empty_batches"] == 1


# ----------------------------------------------------------------------------------------------
# Item 7: group labels without a bound


def test_a_stray_large_label_is_refused_without_n_groups():
    x, labels = closed_form_data()
    big = labels.copy()
    big[0, 0] = 2_000_000
    with pytest.raises(ValueError, match=r"Batch 0: frame label 2000000 .*pass n_groups"):
        _gn().fit([(x, big)])
    with pytest.raises(ValueError, match=r"Batch 0: label 2000000 .*group_names"):
        _gn().fit([(np.ones((2, 8, 1), "float32"), np.array([0, 2_000_000]))])
    # n_groups lifts the bound to itself.
    bigger = labels.copy()
    bigger[0, 0] = batch_checks.MAX_GROWN_GROUPS + 10
    gn = _fit([(x, bigger)], n_groups=batch_checks.MAX_GROWN_GROUPS + 20)
    assert gn.n_groups_ == batch_checks.MAX_GROWN_GROUPS + 20


@pytest.mark.backend
def test_growing_group_counts_reuse_a_few_compiled_steps():
    x, labels = closed_form_data()
    batches = []
    for i in range(60):  # batch i holds labels up to i
        grown = labels.copy()
        grown[0, 0] = i
        batches.append((x, grown))
    gn = _fit(batches)
    assert gn.n_groups_ == 60 and gn.profiles_["h"].shape == (60, 2)
    assert len(gn._steps) == 3  # buckets of 16, 32 and 64 groups
    assert batch_checks.group_bucket(0) == 16 and batch_checks.group_bucket(17) == 32
    # The bucketed steps give the profiles of a fit that knows every group from the start.
    _assert_same_fit(gn, _fit(batches, n_groups=60))


# ----------------------------------------------------------------------------------------------
# Item 12: the ctc_loss target checks its transcripts


@pytest.mark.backend
@pytest.mark.parametrize("packed, match", [
    ([[8, 1, 3], [4, 1, 1]], r"Batch 0, utterance 0: label id 3 .*3 classes"),
    ([[8, 1, 1], [4, 3, 2]], r"Batch 0, utterance 1: label length 3 .*1 packed label"),
    ([[8, -1, 1], [4, 1, 2]], r"Batch 0, utterance 0: label length -1"),
], ids=["id >= classes", "length > packed", "negative length"])
def test_ctc_targets_are_checked(packed, match):
    x, labels = closed_form_data()
    with pytest.raises(ValueError, match=match):
        _gn(target="ctc_loss").fit([(x, labels, np.array(packed))])
