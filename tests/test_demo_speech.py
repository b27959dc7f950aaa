"""The speech demo (`make demo`): the whole pipeline on the tiny config, and its parts."""

import html
import json
import wave

import numpy as np
import pytest

from keras_topomap import demo
from keras_topomap.report import referenced_files
from keras_topomap.visualization import (
    filter_images,
    local_similarity,
    pick_neighborhoods,
    plot_filter_neighborhoods,
)
from tests.browser import Chromium, chromium_or_skip


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = demo.run_demo(
        out=out, config="tiny", minutes=1, epochs=1, steps=4, max_train=8, max_eval=6,
        n_permutations=5, phonemes=["/S/"], verbose=0,
    )
    return out, summary


def test_demo_writes_every_output_and_the_page_links_only_existing_files(tiny_demo):
    out, summary = tiny_demo
    layout = summary["metrics_data"]["layout"]
    assert layout["kind"] in demo.LAYOUTS
    says = "a layout fitted after training" in (out / "index.html").read_text()
    assert says == (layout["kind"] == "fitted")
    for name in ("figure1.png", "figure1a.png", "figure1b.png", "dendrogram.png",
                 "gradnap_eeg.png", "training.png", "maps.gif", "metrics.json", "metrics.md",
                 "index.html", "gradnap.npz", "training/model.keras"):
        assert (out / name).is_file(), name
    page = (out / "index.html").read_text()
    links = referenced_files(page)
    assert links, "index.html links nothing"
    assert all((out / link).is_file() for link in links), links
    assert not any(link.startswith(("/", "http")) for link in links)
    for name in ("figure1.png", "figure1a.png", "figure1b.png", "dendrogram.png", "maps.gif",
                 "metrics.json"):
        assert name in links, name
    # the WAVs of every shown phoneme are linked and are real audio
    wavs = [link for link in links if link.endswith(".wav")]
    shown = summary["metrics_data"]["phonemes"]
    assert {w.split("/")[1].split("_")[0] for w in wavs} == set(shown)
    with wave.open(str(out / wavs[0])) as f:
        assert f.getnframes() > 0 and f.getframerate() == 16000


@pytest.fixture(scope="module")
def browser():
    with Chromium(chromium_or_skip()) as chromium:
        yield chromium


def test_the_page_check_finds_what_does_not_load(browser, tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    with wave.open(str(tmp_path / "ok.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(b"\0\0" * 1600)
    (tmp_path / "bad.wav").write_text("not audio")
    (tmp_path / "page.html").write_text(
        '<html><body id="top"><img src="ok.png"><img src="missing.png">'
        '<audio preload="none" src="ok.wav"></audio><audio preload="none" src="bad.wav"></audio>'
        '<a href="ok.png">a</a><a href="nope.json">b</a><a href="#top">c</a>'
        '<a href="#nowhere">d</a></body></html>')
    found = browser.inspect(tmp_path / "page.html")
    assert (found["images"], found["audio"]) == (2, 2)
    assert [src.rsplit("/", 1)[1] for src in found["broken_images"]] == ["missing.png"]
    assert [src.rsplit("/", 1)[1] for src in found["broken_audio"]] == ["bad.wav"]
    assert found["broken_links"] == ["nope.json", "#nowhere"]
    assert [url.rsplit("/", 1)[1] for url, _ in found["failed_requests"]] == ["missing.png"]


def test_the_page_loads_in_headless_chromium(tiny_demo, browser):
    out, summary = tiny_demo
    found = browser.inspect(out / "index.html")
    page = (out / "index.html").read_text()
    assert found["images"] == page.count("<img ") >= 5
    assert found["audio"] == page.count("<audio ") >= 1
    assert found["broken_images"] == found["broken_audio"] == []
    assert found["failed_requests"] == [] and found["broken_links"] == []
    assert "metrics.json" in found["links"]


def test_demo_metrics(tiny_demo):
    out, summary = tiny_demo
    metrics = json.loads((out / "metrics.json").read_text())
    layers = list(metrics["topography"])
    assert layers[:2] == ["conv_1", "conv_2"] and metrics["figure_layer"] == "conv_2"
    assert set(metrics["gradnap"]) == set(layers)
    for layer in layers:
        topo = metrics["topography"][layer]
        assert np.isfinite([topo["score"], topo["z"]]).all()
        mean = metrics["gradnap"][layer]["mean"]
        assert 0.0 <= mean["localization"] <= 1.0
        assert mean["blur_error_auc"] >= 0.0
        assert -1.5 < mean["morans_i"] < 1.5
    # AE, AA, T come first, then the phoneme asked for (folded to the 39-phone set)
    requested = ["ae", "aa", "t", "s"]
    assert metrics["phonemes"] + metrics["phonemes_without_frames"] == [
        p for p in requested if p in metrics["phonemes"] + metrics["phonemes_without_frames"]
    ]
    assert "s" in metrics["phonemes"] + metrics["phonemes_without_frames"]
    assert metrics["recognizer"]["epochs_done"] == 1
    table = (out / "metrics.md").read_text()
    assert all(f"| {layer} |" in table for layer in layers)
    # one verdict line per layer, from the raw maps' tests, shown on the page as well
    page = (out / "index.html").read_text()
    assert list(metrics["verdicts"]) == layers
    for layer, line in metrics["verdicts"].items():
        gn = metrics["gradnap"][layer]
        assert line.startswith(f"{layer}: kernel S ")
        assert f"{gn['n_topographic']} of {gn['n_maps']} smoother than chance" in line
        assert html.escape(line) in page
        for group in gn["groups"].values():
            assert group["topographic"] == (group["morans_i_z"] is not None
                                            and group["morans_i_z"] >= 3)


def test_layer_verdicts_read_the_median_z():
    def layer(z):
        return {"n_maps": 3, "n_topographic": int(z >= 3),
                "median": {"morans_i": 0.5 if z >= 3 else 0.01, "morans_i_z": z}}

    metrics = {"topography": {"a": {"score": 0.4, "z": 9.0}, "b": {"score": 0.01, "z": 0.5}},
               "gradnap": {"a": layer(6.0), "b": layer(1.2)}}
    lines = demo.layer_verdicts(metrics)
    assert "kernel S 0.400 (z 9.0, ordered); GradNAP maps topographic: 1 of 3" in lines["a"]
    assert "(z 0.5, not ordered); GradNAP maps not topographic: 0 of 3" in lines["b"]
    assert "median z 1.2" in lines["b"]
    assert "not topographic" in demo.layer_verdicts(metrics, threshold=10)["a"]


def test_demo_on_a_saved_model_skips_training(tiny_demo, tmp_path):
    out, trained = tiny_demo
    summary = demo.run_demo(out=tmp_path, model=out / "training" / "model.keras", steps=2,
                            max_eval=4, n_permutations=3, verbose=0)
    assert not (tmp_path / "training").exists()
    # the metrics.json that train wrote beside the model: its run's numbers, said to be its
    rec, first = summary["metrics_data"]["recognizer"], trained["metrics_data"]["recognizer"]
    assert rec["source"] == "the saved model's training run"
    assert first["source"] == "this demo's training"
    assert {k: rec[k] for k in ("epochs_done", "best_epoch", "test_cer")} == {
        k: first[k] for k in ("epochs_done", "best_epoch", "test_cer")}
    assert summary["metrics_data"]["config"] == "tiny"
    page = (tmp_path / "index.html").read_text()
    assert all((tmp_path / link).is_file() for link in referenced_files(page))
    assert "that run&#x27;s test split" in page or "that run's test split" in page


def test_a_model_without_its_run_is_analysed_without_recognizer_numbers(tiny_demo, tmp_path):
    import shutil

    out, _ = tiny_demo
    alone = tmp_path / "alone" / "model.keras"
    alone.parent.mkdir()
    shutil.copyfile(out / "training" / "model.keras", alone)
    assert demo.saved_training_run(alone) is None
    (alone.parent / "metrics.json").write_text("{truncated")
    assert demo.saved_training_run(alone) is None  # unreadable: not quoted, not fatal
    summary = demo.run_demo(out=tmp_path / "out", model=alone, steps=2, max_eval=4,
                            n_permutations=3, verbose=0)
    assert "recognizer" not in summary["metrics_data"]
    assert summary["metrics_data"]["config"] is None


def test_demo_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="Unknown phoneme"):
        demo.run_demo(out=tmp_path, phonemes=["xyz"], verbose=0)
    with pytest.raises(ValueError, match="no such file"):
        demo.run_demo(out=tmp_path, model=tmp_path / "missing.keras", verbose=0)
    with pytest.raises(ValueError, match="layout"):
        demo.run_demo(out=tmp_path, layout="sorted", verbose=0)
    assert demo.main(["--out", str(tmp_path), "--phonemes", "qq"]) == 2


def test_demo_refuses_data_without_phone_alignments(tmp_path):
    import soundfile as sf

    # LibriSpeech as read without alignments: transcripts only
    chapter = tmp_path / "LibriSpeech" / "19" / "198"
    chapter.mkdir(parents=True)
    words = ["A TONE", "ANOTHER TONE", "THE THIRD", "FOUR", "FIVE TONES", "SIX"]
    lines = [f"19-198-{k:04d} {text}" for k, text in enumerate(words)]
    (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    t = np.arange(16000) / 16000
    for k in range(len(words)):
        tone = 0.3 * np.sin(2 * np.pi * (200 + 20 * k) * t)
        sf.write(chapter / f"19-198-{k:04d}.flac", tone.astype("float32"), 16000, format="FLAC")
    with pytest.raises(ValueError, match="no phone alignments"):
        demo.run_demo(out=tmp_path / "out", config="tiny", verbose=0,
                      data=f"librispeech:{tmp_path / 'LibriSpeech'}")


def test_parse_phonemes_folds_and_deduplicates():
    assert demo.parse_phonemes(["/AE/", "aa", "T", "ao", "ae"]) == ["ae", "aa", "t"]


def test_synthetic_demo_stays_reachable(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--synthetic", "--help"])
    assert exit_info.value.code == 0
    assert "keras-topomap demo --synthetic" in capsys.readouterr().out


def test_local_similarity_and_neighbourhood_choice():
    rng = np.random.default_rng(0)
    same = np.repeat(rng.normal(size=(5, 3, 1)), 36, axis=2)  # every filter equal
    np.testing.assert_allclose(local_similarity(same, grid=(6, 6)), 1.0, atol=1e-6)
    noise = local_similarity(rng.normal(size=(48, 40, 64)), grid=(8, 8))
    assert noise.shape == (8, 8) and np.abs(noise).max() < 0.2
    # a coherent top-left block: picked first; the second pick does not overlap it
    sim = np.zeros((8, 8))
    sim[1, 1], sim[2, 2], sim[5, 5] = 0.9, 0.8, 0.5
    assert pick_neighborhoods(sim, n=2) == [(1, 1), (5, 5)]
    # a grid too small for two disjoint blocks still gives two centres
    assert len(pick_neighborhoods(np.arange(16.0).reshape(4, 4), n=2)) == 2


def test_filter_images_and_figure_1a():
    kernel = np.random.default_rng(1).normal(size=(12, 5, 16))
    assert filter_images(kernel).shape == (16, 5, 12)
    assert filter_images(np.ones((3, 3, 2, 4))).shape == (4, 3, 3)
    with pytest.raises(ValueError, match="Received: shape"):
        filter_images(np.ones((4, 4)))
    fig = plot_filter_neighborhoods(kernel, grid=(4, 4), layer="conv_1")
    assert len(fig.axes) >= 1 + 2 * 9
    # each close-up is read against the same choice on permuted filter orders, the rule is
    # stated, one tile per close-up has labelled axes, and tiles keep their aspect
    titles = [sub.get_suptitle() for sub in fig.subfigs]
    assert "most coherent non-overlapping full 3x3 blocks" in titles[0]
    assert all("(permuted filter order: " in t for t in titles[1:])
    labelled = [ax for ax in fig.axes if ax.get_xlabel() == "input frame"]
    assert len(labelled) == 2 and labelled[0].get_ylabel() == "input feature"
    assert all(ax.get_aspect() == 1.0 for ax in fig.axes if ax.images and ax not in
               fig.subfigs[0].axes)
    # on the model's input: frames with their hop and mel bands, stated on the overview too
    from keras_topomap.datasets import FeatureConfig

    fig = plot_filter_neighborhoods(kernel, grid=(4, 4), feature_config=FeatureConfig(n_mels=5))
    labelled = [ax for ax in fig.axes if ax.get_xlabel() == "frame (10 ms)"]
    assert len(labelled) == 2 and {ax.get_ylabel() for ax in labelled} == {"mel band"}
    assert [t.get_text() for t in labelled[0].get_xticklabels()] == ["0", "11"]
    assert "mel band upwards, frame (10 ms) to the right" in fig.subfigs[0].get_suptitle()
    with pytest.raises(ValueError, match="reads 5 input features, the feature_config gives 40"):
        plot_filter_neighborhoods(kernel, grid=(4, 4), feature_config=FeatureConfig())
    with pytest.raises(ValueError, match="off the 4x4 grid"):
        plot_filter_neighborhoods(kernel, grid=(4, 4), centers=[(5, 0)])


def test_permuted_neighborhoods_is_the_chance_level_of_the_chosen_close_ups():
    from keras_topomap.visualization import permuted_neighborhoods

    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(20, 64))
    mean, std = permuted_neighborhoods(kernel, (8, 8), n=2, n_permutations=40)
    assert mean.shape == std.shape == (2,) and mean[0] >= mean[1] > 0  # chosen: above 0
    similarity = local_similarity(kernel, (8, 8))
    best = similarity[pick_neighborhoods(similarity, n=1)[0]]
    assert abs(best - mean[0]) < 4 * std[0]  # a random kernel is its own permutation
    given, _ = permuted_neighborhoods(kernel, (8, 8), n=1, centers=[(3, 3)], n_permutations=40)
    assert abs(given[0]) < mean[1]  # no selection at a fixed centre: about 0


def test_training_time_limit_stops_mid_epoch():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((40, 3), "float32"), np.zeros((40, 1), "float32")
    limit = demo.TrainingTimeLimit(1e-9)
    history = model.fit(x, y, batch_size=4, epochs=5, callbacks=[limit], verbose=0)
    assert limit.stopped and len(history.history["loss"]) == 1
    assert not demo.TrainingTimeLimit(3600).stopped
    with pytest.raises(ValueError, match="seconds must be a finite number > 0"):
        demo.TrainingTimeLimit(0)
