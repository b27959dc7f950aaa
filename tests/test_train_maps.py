"""``keras-topomap train --maps``: the maps in TensorBoard, the start and end banners, resume."""

import dataclasses
import json
import os

import numpy as np
import pytest

from keras_topomap import train
from keras_topomap.datasets import PHONES_39, text_to_labels
from tests.test_train import FAST, fake_data

pytest.importorskip("tensorboard")

MAPPED = {**FAST, "tensorboard": True, "patience": 0, "verbose": 2}


def with_phones(feature_set):
    """The fake set with a made-up phone label on every frame (one per character)."""
    labels = []
    for text, x in zip(feature_set.transcripts, feature_set.features):
        chars = np.asarray(text_to_labels(text))
        labels.append(np.repeat(chars % len(PHONES_39), len(x) // len(chars)).astype(np.int32))
    return dataclasses.replace(feature_set, frame_labels=labels)


def image_tags(log_dir):
    """``{tag: sorted steps}`` of every image summary under ``log_dir``, through TensorBoard's
    own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = {}
    for folder, _, files in os.walk(log_dir):
        if not any(name.startswith("events.out.tfevents.") for name in files):
            continue
        accumulator = EventAccumulator(folder, size_guidance={"tensors": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["tensors"]:
            if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "images":
                found.setdefault(tag, set()).update(e.step for e in accumulator.Tensors(tag))
    return {tag: sorted(steps) for tag, steps in found.items()}


def test_maps_banners_and_resume(tmp_path, capsys):
    data = tuple(with_phones(subset) for subset in fake_data())
    out = tmp_path / "run"
    config = train.TrainConfig(**MAPPED, epochs=1, out=str(out))
    assert config.maps  # on by default
    results = train.train(config, data=data)
    printed = capsys.readouterr().out
    tags = image_tags(out / "logs")
    layers = sorted(results["topography"])
    assert {f"topomap/{name}" for name in layers} <= set(tags)
    assert any(tag.startswith("nap/conv_1/") for tag in tags)  # the probe's phones
    assert all(tag.startswith(("topomap/", "nap/")) for tag in tags)
    assert tags["topomap/conv_1"] == [0]
    assert any((out / "logs" / "maps").glob("events.out.tfevents.*"))
    # The start banner: data sizes, parameters, grids, output folder, TensorBoard command.
    start, end = printed.split("keras-topomap train: wrote")
    frames = sum(len(x) for x in data[0].features)
    assert "train data" in start and f"{len(data[0])} utterances" in start
    assert f"{frames:,} frames" in start
    assert f"{len(data[1])} utterances" in start and f"{len(data[2])} utterances" in start
    assert f"{results['parameters']:,}" in start
    assert "conv_1 4x4" in start and "conv_big_1 8x4" in start
    assert str(out) in start
    assert f"tensorboard --logdir {out / 'logs'}" in start
    # The end banner: every file and what it holds.
    assert f"best validation CER (epoch {results['best_epoch']} of 1)" in end
    for name in ("model.keras", "checkpoint.keras", "metrics.json", "logs/", "logs/maps/",
                 "topomap/<layer>", "nap/<layer>/<phone>"):
        assert name in end, name
    assert "the last epoch (1)" in end
    assert json.loads((out / "config.json").read_text())["train"]["maps"] is True

    # Resumed: the maps go on at the next epoch's step.
    more = train.train(config, data=data, resume=True, epochs=2)
    assert more["epochs_done"] == 2
    assert image_tags(out / "logs")["topomap/conv_1"] == [0, 1]
    assert "(epoch" in capsys.readouterr().out.split("wrote")[1]


def test_no_maps_no_topographic_layers_and_quiet(tmp_path, capsys):
    data = fake_data()  # no phone labels: overall maps only
    off = tmp_path / "off"
    train.train(train.TrainConfig(**MAPPED, epochs=1, maps=False, out=str(off)),
                data=data)
    assert "maps            off (--no-maps)" in capsys.readouterr().out
    assert any((off / "logs").rglob("events.out.tfevents.*"))  # the scalars still
    assert image_tags(off / "logs") == {}
    assert not (off / "logs" / "maps").exists()

    plain = tmp_path / "plain"
    train.train(train.TrainConfig(**MAPPED, epochs=1, topographic=False, out=str(plain)),
                data=data)
    printed = capsys.readouterr().out
    assert printed.count("no topographic layer") == 1
    assert image_tags(plain / "logs") == {}

    quiet = tmp_path / "quiet"
    train.train(train.TrainConfig(**{**MAPPED, "verbose": 0}, epochs=1, out=str(quiet)),
                data=data)
    assert capsys.readouterr().out == ""
    tags = image_tags(quiet / "logs")
    assert "topomap/conv_1" in tags and not any(tag.startswith("nap/") for tag in tags)


def test_maps_flag():
    parser = train.build_parser()
    assert parser.parse_args([]).maps is True
    assert parser.parse_args(["--no-maps"]).maps is False
    assert "--no-maps" in parser.format_help()
    assert "maps" in train._RESUMABLE_CHANGES  # like --tensorboard: logging only
