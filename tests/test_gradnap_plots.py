"""GradNAP figures: Figures (never pyplot state), shared diverging scales, regions, titles."""

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from keras_topomap import visualization as viz  # noqa: E402
from keras_topomap.gradnap import GradNAP  # noqa: E402

L = keras.layers


@pytest.fixture(scope="module")
def fitted():
    keras.utils.set_random_seed(0)
    x_in = keras.Input((None, 4))
    topo = L.Conv1D(16, 3, padding="same", activation="relu", name="topo")(x_in)
    model = keras.Model(x_in, L.Conv1D(5, 1, name="out")(topo))
    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 4, size=(3, 8)), 5, axis=1)
    x = rng.normal(size=(3, 40, 4)).astype("float32") + np.eye(4)[labels]
    gn = GradNAP(model, ["topo"], grids={"topo": (4, 4)}, group_names=["aa", "ae", "t", "s"],
                 window=2, verbose=0)
    return gn.fit([(x, labels)])


def test_plot_gradnap_layout_scale_and_regions(fitted):
    import matplotlib.pyplot as plt

    fig = fitted.plot("topo", groups=["ae", "t"])
    assert isinstance(fig, Figure) and plt.get_fignums() == []
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 4
    raw_limits = {im.get_clim() for im in images[:2]}
    smooth_limits = {im.get_clim() for im in images[2:]}
    assert len(raw_limits) == 1 and len(smooth_limits) == 1  # shared per row
    for lo, hi in raw_limits | smooth_limits:
        assert lo == -hi and hi > 0  # centred at 0
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles[:2] == ["/ae/ topo", "/t/ topo"]
    def outlines(ax):
        return [p for p in ax.patches if isinstance(p, Rectangle)
                and p.get_gid() != "topography-mark"]

    outlined = [ax for ax in fig.axes if outlines(ax)]
    assert len(outlined) == 2  # the smoothed row
    region = fitted.most_responsive_region("topo", "ae")
    patch = outlines(outlined[0])[0]
    assert patch.get_x() == max(region.center[1] - 1, 0) - 0.5
    n_colorbars = len(fig.axes) - 4
    assert n_colorbars == 2


def test_eeg_view_dendrogram_and_time(fitted):
    fig = viz.plot_gradnap_eeg(fitted, "topo", groups=["aa", "s"], upsample=4, force=True)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    assert panels[0].images[0].get_array().shape == (16, 16)
    assert all(ax.collections for ax in panels)  # contour lines
    assert {ax.images[0].get_clim() for ax in panels} == {panels[0].images[0].get_clim()}

    fig = viz.plot_gradnap_dendrogram(fitted, "topo")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == fitted.cluster("topo").names

    fig = viz.plot_gradnap_time(fitted, "topo", "t", offsets=[-2, 0, 2])
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["-2", "+0", "+2"]


def test_smooth_to_image_and_errors(fitted):
    image = viz.smooth_to_image(np.arange(16.0).reshape(4, 4), upsample=3)
    assert image.shape == (12, 12) and np.all(np.isfinite(image))
    with pytest.raises(ValueError, match="one \\(H, W\\) map"):
        viz.smooth_to_image(np.zeros(4))
    with pytest.raises(ValueError, match="upsample must be"):
        viz.smooth_to_image(np.zeros((4, 4)), upsample=0)
    with pytest.raises(ValueError, match="Unknown group 'zz'"):
        fitted.plot("topo", groups=["zz"])
    with pytest.raises(ValueError, match="Offsets must lie in"):
        viz.plot_gradnap_time(fitted, "topo", "t", offsets=[5])
    plain = GradNAP.__new__(GradNAP)
    plain.__dict__.update(fitted.__dict__, time_profiles_={})
    with pytest.raises(ValueError, match="window=w"):
        viz.plot_gradnap_time(plain, "topo", "t")


# --- every drawn map carries its topography verdict -------------------------------------------


def _planted_maps(h=8, w=8):
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ramp = (rows + 0.5 * cols) / (h + w)
    bump = np.exp(-((rows - 2.0) ** 2 + (cols - 5.0) ** 2) / 6.0) - 0.3
    noise = np.random.default_rng(11).normal(size=(2, h, w))
    maps = np.stack([ramp, bump, *noise])
    z = [viz.map_verdict(m).test.z for m in maps]
    assert z[0] > 3 and z[1] > 3 and max(z[2:]) < 3  # what the test plants
    return maps


class _PlantedGradNAP:
    """Just enough of a fitted GradNAP to draw: given profiles on one layer ``"L"``."""

    adjust = "gradient"

    def __init__(self, maps, names=("ramp", "bump", "noise", "hiss")):
        self._maps, self.names = np.asarray(maps, dtype=float), list(names)
        self.counts_ = {"L": np.ones(len(maps), int)}
        self.grids_ = {"L": self._maps.shape[1:]}
        self.time_profiles_ = {"L": np.repeat(self._maps.reshape(len(maps), 1, -1), 3, axis=1)}

    def _check_layer(self, layer):
        assert layer == "L"

    def group_index(self, group):
        return self.names.index(group) if isinstance(group, str) else int(group)

    def group_name(self, index):
        return self.names[index]

    def maps(self, layer, smooth=False, size=3):
        from keras_topomap import grid

        return grid.smooth(self._maps, size) if smooth else self._maps.copy()

    def most_responsive_region(self, layer, group, size=3, inside=True):
        from keras_topomap import grid

        return grid.most_responsive_region(self._maps[self.group_index(group)], size, inside)


def _marks(container):
    """Texts saying "not topographic" and the readouts, per axes of a figure (or one axes)."""
    from matplotlib.axes import Axes

    axes = [container] if isinstance(container, Axes) else container.axes
    return [[t.get_text() for t in ax.texts if t.get_gid() == "topography-mark"] for ax in axes]


def _not_topographic(texts):
    return any("not topographic" in t for t in texts)


def test_noise_maps_are_marked_and_planted_smooth_maps_are_not_on_every_map_plot():
    maps = _planted_maps()
    gn = _PlantedGradNAP(maps)
    # plot_gradnap: raw and smoothed row, each panel with I and z, noise marked on both rows
    fig = viz.plot_gradnap(gn, "L")
    panels = [marks for marks in _marks(fig) if marks]
    assert len(panels) == 8
    assert [_not_topographic(m) for m in panels] == [False, False, True, True] * 2
    assert all(any(t.startswith("I ") and ", z " in t for t in m) for m in panels)
    # plot_grid_maps (raw maps) and plot_grid_mosaic (smoothed drawn, raw tested)
    fig = viz.plot_grid_maps(maps)
    assert [_not_topographic(m) for m in _marks(fig) if m] == [False, False, True, True]
    fig = viz.new_figure()
    ax = fig.add_subplot()
    viz.plot_grid_mosaic(ax, gn.maps("L", smooth=True), raw=maps, titles=gn.names)
    texts = _marks(ax)[0]
    assert sum("not topographic" in t for t in texts) == 2
    assert sum(t.startswith("I ") for t in texts) == 4
    # updating the mosaic in place (animations) replaces the marks instead of piling them up
    viz.plot_grid_mosaic(ax, maps[::-1], titles=gn.names[::-1])
    assert sum("not topographic" in t for t in _marks(ax)[0]) == 2
    viz.plot_grid_mosaic(ax, maps[:1].repeat(4, axis=0), titles=gn.names)
    assert not _not_topographic(_marks(ax)[0])
    # time-resolved maps
    fig = viz.plot_gradnap_time(gn, "L", "noise", offsets=[-1, 0, 1])
    assert all(_not_topographic(m) for m in _marks(fig) if m)
    fig = viz.plot_gradnap_time(gn, "L", "bump", offsets=[-1, 0, 1])
    assert not any(_not_topographic(m) for m in _marks(fig))
    # the threshold is a parameter: at z >= 1000 nothing is topographic
    fig = viz.plot_grid_maps(maps[:2], threshold=1000)
    assert all(_not_topographic(m) for m in _marks(fig) if m)


def test_eeg_view_greys_out_maps_that_are_not_topographic_unless_forced():
    gn = _PlantedGradNAP(_planted_maps())
    fig = viz.plot_gradnap_eeg(gn, "L", upsample=4)
    panels = [ax for ax in fig.axes if ax.images]
    marked = [_not_topographic(_marks(ax)[0]) for ax in panels]
    assert marked == [False, False, True, True]
    for ax, bad in zip(panels, marked):
        assert (ax.images[0].get_cmap().name == "Greys") == bad
        assert bool(ax.collections) == (not bad)  # contour lines on topographic maps only
    assert "not smoother than chance" in fig.get_suptitle()
    forced = viz.plot_gradnap_eeg(gn, "L", upsample=4, force=True)
    panels = [ax for ax in forced.axes if ax.images]
    assert all(ax.images[0].get_cmap().name == "RdBu_r" for ax in panels)
    assert [_not_topographic(_marks(ax)[0]) for ax in panels] == marked  # still marked
    smooth_only = viz.plot_gradnap_eeg(gn, "L", groups=["ramp", "bump"], upsample=4)
    assert not smooth_only.get_suptitle()


def test_figure1b_marks_noise_maps():
    gn = _PlantedGradNAP(_planted_maps())
    groups = ["ramp", "noise"]
    regions = [gn.most_responsive_region("L", g) for g in groups]
    single = [np.random.default_rng(0).normal(size=(len(r.filters), 6, 5)) for r in regions]
    joint = [s[0] for s in single]
    fig = viz.plot_figure1b(gn, "L", groups, single, joint)
    marked = [_not_topographic(m) for m in _marks(fig) if m]
    assert marked == [False, True, False, True]  # on grid, then smoothed, per group


def test_figure1b_optimal_inputs_have_axes_and_square_cells():
    from keras_topomap.datasets import FeatureConfig

    gn = _PlantedGradNAP(_planted_maps())
    groups = ["ramp", "bump"]
    regions = [gn.most_responsive_region("L", g) for g in groups]
    single = [np.random.default_rng(0).normal(size=(len(r.filters), 6, 5)) for r in regions]
    fig = viz.plot_figure1b(gn, "L", groups, single, [s[0] for s in single],
                            feature_config=FeatureConfig(n_mels=5, hop_ms=12.5))
    inputs = [ax for ax in fig.axes if ax.images and ax.images[0].get_array().shape == (5, 6)]
    assert len(inputs) == 2 * (9 + 1)  # per group: 3x3 single-filter panels and the joint
    assert all(ax.get_aspect() == 1.0 for ax in inputs)  # one frame as wide as a band is tall
    labelled = [ax for ax in inputs if ax.get_xlabel()]
    # per group: the bottom-left single-filter panel and the joint input
    assert len(labelled) == 4 and {ax.get_xlabel() for ax in labelled} == {"frame (12.5 ms)"}
    assert [ax.get_ylabel() for ax in labelled] == [
        "single-filter\nmel band", "joint\nmel band", "mel band", "mel band"]
    assert [t.get_text() for t in labelled[0].get_yticklabels()] == ["0", "4"]
    fig = viz.plot_figure1b(gn, "L", groups, single, [s[0] for s in single])
    assert {ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()} >= {"input frame"}
