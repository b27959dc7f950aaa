"""GradNAP under bad input and faults: damaged or edited shard files, interrupted saves, merges
that would overwrite or double-count, NaN/inf inputs, degenerate batches, unbounded labels.

Every case here once ended in a raw traceback, a silently wrong result or lost data; each now
gives a clear error (naming the file, or the batch and utterance) or a counted skip.
"""

import json
import shutil
import warnings
import zipfile

import numpy as np
import pytest

from keras_topomap.gradnap import GradNAP
from keras_topomap.gradnap_cli import merge_main, merge_shard_files
from tests.faults import Crash, crash_before_write
from tests.tiny_models import closed_form_data, closed_form_model

SETTINGS = dict(n_groups=4, grids={"h": (1, 2), "out": (1, 3)}, verbose=0)


def _fit(x=None, labels=None, model=None, **kwargs):
    if x is None:
        x, labels = closed_form_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # group 3 has no frames
        return GradNAP(model or closed_form_model(), ["h", "out"],
                       **{**SETTINGS, **kwargs}).fit([(x, labels)])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A fitted GradNAP, and two shard files of it (the data split in halves)."""
    root = tmp_path_factory.mktemp("gradnap_faults")
    model = closed_form_model()
    gn = _fit(model=model)
    gn.save(root / "full")
    x, labels = closed_form_data()
    for i in range(2):
        part = _fit(x[i:i + 1], labels[i:i + 1], model=model)
        info = {"shard": i, "n_shards": 2, "data": "d", "split": None, "max_utterances": None,
                "features": {}, "n_utterances": 1, "utterance_ids_sha256": f"ids{i}"}
        part.save(root / "shards" / f"gradnap-shard-{i:05d}-of-00002", info=info)
    return root, gn


def _copy(root, dest, stem="full"):
    dest.mkdir(exist_ok=True)
    for ext in (".npz", ".json"):
        shutil.copy(root / f"{stem}{ext}", dest / f"{stem}{ext}")
    return dest / stem


def _rewrite_npz(stem, edit, keep_digest=False):
    """Applies ``edit(arrays)`` to the saved arrays (and drops the header's digest, as in a file
    written before digests were saved, so that the array checks themselves are reached)."""
    with np.load(f"{stem}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    edit(arrays)
    np.savez(f"{stem}.npz", **arrays)
    if not keep_digest:
        _edit_header(stem, arrays_sha256=None)


def _edit_header(stem, **changes):
    path = stem.with_suffix(".json")
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


# ----------------------------------------------------------------------------------------------
# Damaged files: a ValueError naming the file, never a raw traceback


def _truncate(stem):
    data = stem.with_suffix(".npz").read_bytes()
    stem.with_suffix(".npz").write_bytes(data[: len(data) // 2])


def _npy_renamed(stem):
    with open(stem.with_suffix(".npz"), "wb") as f:
        np.save(f, np.zeros(3))


def _truncate_json(stem):
    text = stem.with_suffix(".json").read_text()
    stem.with_suffix(".json").write_text(text[: len(text) // 2])


def _not_a_zip_member(stem):
    # A zip archive whose member starts like an array and then is not one.
    with zipfile.ZipFile(stem.with_suffix(".npz"), "w") as z:
        z.writestr("sums_0.npy", b"\x93NUMPY\x01\x00garbage")


@pytest.mark.parametrize(
    "damage, match",
    [
        (_truncate, r"full\.npz' is not the file .* was saved with"),
        (_npy_renamed, r"full\.npz' is not the file"),
        (_truncate_json, r"full\.json' is not valid JSON \(line \d+"),
        (lambda s: _edit_header(s, layers=None), r"full\.json' lacks the entries \['layers'\]"),
        (lambda s: _edit_header(s, grids=[1, 2]), r"settings in .*full\.json"),
        (lambda s: _edit_header(s, n_filters="x"), r"full\.json' has no valid n_filters"),
    ],
    ids=["truncated npz", "npy renamed npz", "truncated json", "missing header key",
         "grids not a dict", "n_filters not a dict"],
)
def test_load_names_the_damaged_file(saved, tmp_path, damage, match):
    stem = _copy(saved[0], tmp_path)
    damage(stem)
    with pytest.raises(ValueError, match=match):
        GradNAP.load(stem)


@pytest.mark.parametrize(
    "damage, match",
    [
        (_truncate, r"cannot read .*full\.npz"),
        (_npy_renamed, r"full\.npz' is not an \.npz archive"),
        (_not_a_zip_member, r"cannot read the arrays of .*full\.npz"),
    ],
    ids=["truncated npz", "npy renamed npz", "garbage member"],
)
def test_load_wraps_npz_errors_without_a_digest(saved, tmp_path, damage, match):
    """Files written before the digest was saved: the archive errors themselves are wrapped."""
    stem = _copy(saved[0], tmp_path)
    _edit_header(stem, arrays_sha256=None)
    damage(stem)
    with pytest.raises(ValueError, match=match):
        GradNAP.load(stem)


def _set(key, value):
    def edit(arrays):
        arrays[key] = value(arrays[key]) if callable(value) else value
    return edit


@pytest.mark.parametrize(
    "edit, match",
    [
        # (1, F) sums would broadcast over every group
        (_set("sums_0", lambda a: a[:1]), r"layer 'h' has sums of shape \(1, 2\)"),
        (_set("sums_1", lambda a: a[:, :2]), r"layer 'out' has sums of shape \(4, 2\).*\(4, 3\)"),
        (_set("counts_0", lambda a: a[:3]), r"counts of shape \(3,\)"),
        (_set("sums_0", lambda a: np.where(a == a.max(), np.nan, a)), "1 non-finite sums"),
        (_set("sums_1", lambda a: a + np.inf), "12 non-finite sums"),
        (_set("counts_1", lambda a: a - 5), r"negative counts \(min -5\)"),
        (_set("counts_0", lambda a: a.astype(float)), "counts of dtype float64"),
        (_set("sums_0", lambda a: a.astype(str)), "sums of dtype <U"),
        (lambda arrays: arrays.pop("counts_1"), r"no array 'counts_1' for layer 'out'"),
    ],
    ids=["sums broadcast", "filters", "counts length", "nan sum", "inf sums", "negative counts",
         "float counts", "text sums", "missing key"],
)
def test_load_checks_every_array_against_the_header(saved, tmp_path, edit, match):
    stem = _copy(saved[0], tmp_path)
    _rewrite_npz(stem, edit)
    with pytest.raises(ValueError, match=match):
        GradNAP.load(stem)
    # With the digest kept (every file saved now), any change to the arrays is refused first.
    stem = _copy(saved[0], tmp_path / "digest")
    _rewrite_npz(stem, edit, keep_digest=True)
    with pytest.raises(ValueError, match="sha256 differs"):
        GradNAP.load(stem)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"n_groups": 5}, r"expected \(5, 2\) and \(5,\)"),
        ({"n_groups": -1}, r"settings in .*full\.json.*n_groups=-1"),
        ({"grids": {"h": [3, 3], "out": [1, 3]}}, r"give filter counts \{'h': 9"),
        ({"n_filters": {"h": 3, "out": 3}}, r"the saved profiles \{'h': 3"),
        ({"group_names": ["a", "b"]}, r"n_groups=4 but lists 2 group_names"),
        ({"n_frames": -3}, r"n_frames must be an int >= 0"),
        ({"target_total": "nan"}, r"target_total must be a finite number"),
        ({"info": [1]}, "'info' .* must be a dict"),
    ],
    ids=["n_groups", "negative n_groups", "grid product", "n_filters", "group names",
         "n_frames", "target_total", "info"],
)
def test_load_checks_the_header(saved, tmp_path, changes, match):
    stem = _copy(saved[0], tmp_path)
    _edit_header(stem, **changes)
    with pytest.raises(ValueError, match=match):
        GradNAP.load(stem)


def test_load_reads_what_save_wrote(saved, tmp_path):
    _, gn = saved
    again = GradNAP.load(_copy(saved[0], tmp_path))
    for name in ("h", "out"):
        np.testing.assert_array_equal(again.counts_[name], gn.counts_[name])
        np.testing.assert_allclose(again.profiles_[name], gn.profiles_[name])


# ----------------------------------------------------------------------------------------------
# Interrupted saves: the old pair, or a clear error; never a mix read as one


def test_save_interrupted_at_every_write_never_gives_a_mixed_pair(saved, tmp_path):
    root, old = saved
    stem = _copy(root, tmp_path)
    x, labels = closed_form_data()
    new = _fit(x[:1], labels[:1])
    assert not np.array_equal(new.counts_["h"], old.counts_["h"])
    outcomes = []
    for n in range(1, 20):
        shutil.copy(root / "full.npz", stem.with_suffix(".npz"))
        shutil.copy(root / "full.json", stem.with_suffix(".json"))
        with crash_before_write(n) as writes:
            try:
                new.save(stem)
            except Crash:
                pass
            else:
                break
        try:
            read = GradNAP.load(stem)
        except ValueError as e:
            assert "different saves" in str(e), e
            outcomes.append("refused")
            continue
        same_as = [g for g in (old, new) if np.array_equal(read.counts_["h"], g.counts_["h"])]
        assert len(same_as) == 1, f"crash before write {n} ({writes[-1]}): a mixed state"
        outcomes.append("old" if same_as[0] is old else "new")
        # No temporary file is left where a reader looks.
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
            "full.json", "full.npz"]
    else:
        pytest.fail("the save never completed")
    read = GradNAP.load(stem)
    np.testing.assert_array_equal(read.counts_["h"], new.counts_["h"])
    # Writes: the .npz data, its rename, the .json data, its rename.
    assert len(writes) == 4 and outcomes == ["old", "old", "refused", "refused"], (
        writes, outcomes)


# ----------------------------------------------------------------------------------------------
# Merges


def test_merge_refuses_to_overwrite_an_input(saved, tmp_path, capsys):
    root, _ = saved
    shards = tmp_path / "shards"
    shutil.copytree(root / "shards", shards)
    target = shards / "gradnap-shard-00001-of-00002"
    before = target.with_suffix(".npz").read_bytes()
    for out in (target, target.with_suffix(".json"), target.with_suffix(".npz")):
        assert merge_main([str(shards), "--out", str(out)]) == 2
        assert "would overwrite the input shard" in capsys.readouterr().err
    assert target.with_suffix(".npz").read_bytes() == before
    assert merge_main([str(shards), "--out", str(tmp_path / "merged")]) == 0
    merged = GradNAP.load(tmp_path / "merged")
    np.testing.assert_array_equal(merged.counts_["h"], saved[1].counts_["h"])


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"shard": 5}, r"is shard 5 of 2; a shard index runs from 0"),
        ({"shard": -1}, r"is shard -1 of 2"),
        ({"shard": "1"}, r"is shard '1' of 2"),
        ({"n_utterances": -4}, r"n_utterances=-4"),
        # a copy of shard 1 relabelled as shard 0 of its own count
        ({"shard": 0}, "Shard 0 appears twice"),
    ],
)
def test_merge_checks_shard_indices(saved, tmp_path, changes, match):
    root, _ = saved
    shards = tmp_path / "shards"
    shutil.copytree(root / "shards", shards)
    path = shards / "gradnap-shard-00001-of-00002.json"
    config = json.loads(path.read_text())
    config["info"].update(changes)
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        merge_shard_files([shards])


def test_merge_refuses_a_relabelled_copy(saved, tmp_path):
    """A copy of shard 1 renamed and relabelled as shard 2 of 3 (the others relabelled too):
    disjoint shards never hold the same utterances."""
    root, _ = saved
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, source in enumerate([0, 1, 1]):
        for ext in (".npz", ".json"):
            shutil.copy(root / "shards" / f"gradnap-shard-{source:05d}-of-00002{ext}",
                        shards / f"gradnap-shard-{i:05d}-of-00003{ext}")
        path = shards / f"gradnap-shard-{i:05d}-of-00003.json"
        config = json.loads(path.read_text())
        config["info"].update(shard=i, n_shards=3)
        path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hold the same utterances"):
        merge_shard_files([shards])
