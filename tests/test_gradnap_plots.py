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
    outlined = [ax for ax in fig.axes if any(isinstance(p, Rectangle) for p in ax.patches)]
    assert len(outlined) == 2  # the smoothed row
    region = fitted.most_responsive_region("topo", "ae")
    patch = next(p for p in outlined[0].patches if isinstance(p, Rectangle))
    assert patch.get_x() == max(region.center[1] - 1, 0) - 0.5
    n_colorbars = len(fig.axes) - 4
    assert n_colorbars == 2


def test_eeg_view_dendrogram_and_time(fitted):
    fig = viz.plot_gradnap_eeg(fitted, "topo", groups=["aa", "s"], upsample=4)
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
