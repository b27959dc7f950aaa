"""Plotting: grid maps, regions and the figures built from them.

Every figure in keras-topomap is drawn here, with matplotlib's object API (no pyplot state is
left behind and ``plt.show()`` is never called): functions return a ``matplotlib.figure.Figure``
or draw into an ``Axes`` they are given.

Example:

>>> fig = plot_grid_maps(maps, titles=["/AE/", "/AA/"], diverging=True)
>>> fig.savefig("maps.png")
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from keras_topomap import checks

__all__ = [
    "TOPOGRAPHY_THRESHOLD", "MapVerdict", "map_verdict", "map_verdicts", "mark_verdict",
    "new_figure", "plot_grid_map", "plot_grid_maps", "outline_region", "symmetric_limit",
    "plot_gradnap", "plot_gradnap_eeg", "plot_gradnap_dendrogram", "plot_gradnap_time",
    "smooth_to_image", "plot_optimal_input", "plot_optimal_inputs", "plot_input_image",
    "input_axis_labels", "filter_images",
    "local_similarity", "pick_neighborhoods", "permuted_neighborhoods",
    "plot_filter_neighborhoods", "plot_figure1b",
    "plot_correlation_by_distance",
]


def new_figure(figsize=(6, 4), **kwargs):
    """A matplotlib Figure not registered with pyplot (safe in scripts, threads and tests)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained", **kwargs)


def symmetric_limit(*maps):
    """Largest absolute finite value over the maps (1.0 if all are zero): a shared colour scale."""
    values = [np.abs(np.asarray(m, dtype=np.float64)) for m in maps if np.size(m)]
    vmax = max((float(np.nanmax(v)) for v in values), default=0.0)
    return vmax if vmax > 0 else 1.0


# ----------------------------------------------------------------------------------------------
# Is a drawn map topographic? One test and one mark for every function that draws grid maps.

#: A map whose Moran's I lies fewer than this many permutation standard deviations above its
#: permuted layouts is drawn with a "not topographic" mark (every drawing function's
#: ``threshold``).
TOPOGRAPHY_THRESHOLD = 3.0
_MARK_COLOR = "#c00000"


class MapVerdict(NamedTuple):
    """What :func:`map_verdict` found for one map.

    Attributes:
        test: the :class:`keras_topomap.metrics.MoransITest` of the raw map (None for a
            constant map, where Moran's I is undefined).
        threshold: the z a map needs to count as topographic.
    """

    test: object
    threshold: float

    @property
    def topographic(self):
        """True when the raw map is smoother than chance (``z >= threshold``)."""
        return self.test is not None and self.test.is_topographic(self.threshold)

    @property
    def label(self):
        """The short readout drawn on a map: ``"I 0.42, z 5.1"``."""
        if self.test is None:
            return "constant map"
        return f"I {self.test.morans_i:.2f}, z {self.test.z:.1f}"

    @property
    def text(self):
        """The readout with the verdict, e.g. ``"I 0.01, z 0.4: not topographic (z < 3)"``."""
        if self.topographic:
            return f"{self.label}: topographic (z >= {self.threshold:g})"
        return f"{self.label}: not topographic (z < {self.threshold:g})"


def map_verdict(grid_map, threshold=TOPOGRAPHY_THRESHOLD, n_permutations=199, seed=0,
                neighborhood=3):
    """Tests one RAW ``(H, W)`` map for topography (:func:`keras_topomap.metrics.morans_i_test`).

    Smoothing or interpolating a map for display makes noise look smooth, so the test always
    runs on the values before any of that.

    Returns:
        :class:`MapVerdict`.
    """
    from keras_topomap.metrics import is_constant_map, morans_i_test

    if is_constant_map(grid_map):
        return MapVerdict(None, float(threshold))
    test = morans_i_test(grid_map, n_permutations=n_permutations, seed=seed,
                         neighborhood=neighborhood)
    return MapVerdict(test, float(threshold))


def map_verdicts(maps, threshold=TOPOGRAPHY_THRESHOLD, n_permutations=199, seed=0):
    """:func:`map_verdict` of every map of ``(N, H, W)`` maps (or a list of ``(H, W)`` maps)."""
    return [map_verdict(m, threshold=threshold, n_permutations=n_permutations, seed=seed)
            for m in maps]


def mark_verdict(ax, verdict, tile=None, fontsize=6):
    """Shows a :class:`MapVerdict` on a drawn map: Moran's I and z under it and, for a map that
    is not smoother than chance, a red frame and the words "not topographic".

    Args:
        ax: the Axes the map is drawn in.
        verdict: :class:`MapVerdict` of the RAW map.
        tile: ``(left, top, width, height)`` in data coordinates when the map is one tile of a
            mosaic; default: the whole axes.
        fontsize: size of the readout.

    Returns:
        list of the artists added (texts and patches, ``gid="topography-mark"``).
    """
    from matplotlib.patches import Rectangle

    artists = []
    color = "0.15" if verdict.topographic else _MARK_COLOR
    if tile is None:
        kwargs = {"transform": ax.transAxes, "clip_on": False}
        frame = (0.0, 0.0, 1.0, 1.0)
        below, middle = (0.5, -0.02), (0.5, 0.5)
    else:
        left, top, width, height = tile
        kwargs = {"clip_on": False}
        frame = (left - 0.5, top - 0.5, width, height)
        below, middle = (left - 0.5 + width / 2, top - 0.5 + height), (
            left - 0.5 + width / 2, top - 0.5 + height / 2)
    artists.append(ax.text(*below, verdict.label, ha="center", va="top", fontsize=fontsize,
                           color=color, gid="topography-mark", **kwargs))
    if not verdict.topographic:
        artists.append(ax.add_patch(Rectangle(
            frame[:2], frame[2], frame[3], fill=False, edgecolor=_MARK_COLOR, linewidth=1.6,
            linestyle="--", gid="topography-mark", **kwargs)))
        artists.append(ax.text(
            *middle, "not topographic", ha="center", va="center", fontsize=fontsize + 1,
            color=_MARK_COLOR, fontweight="bold", gid="topography-mark", rotation=0,
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1.0},
            **kwargs))
    return artists


def clear_marks(ax):
    """Removes what :func:`mark_verdict` drew on ``ax`` (to draw a new verdict there)."""
    for artist in [*ax.texts, *ax.patches]:
        if artist.get_gid() == "topography-mark":
            artist.remove()


def _verdicts_for(maps, raw, test, threshold):
    """Verdicts of the raw maps behind drawn ``maps`` (None entries when ``test`` is off)."""
    if not test:
        return [None] * len(maps)
    raw = maps if raw is None else raw
    if len(raw) != len(maps):
        raise ValueError(f"Got {len(maps)} maps to draw but {len(raw)} raw maps to test.")
    return map_verdicts(raw, threshold=threshold)


def plot_grid_map(
    ax,
    grid_map,
    title=None,
    diverging=True,
    vmin=None,
    vmax=None,
    cmap=None,
    colorbar=True,
    region=None,
    interpolation="nearest",
    label=None,
    verdict=None,
):
    """Draws one ``(H, W)`` grid map into ``ax``.

    Args:
        ax: matplotlib Axes.
        grid_map: array ``(H, W)``.
        title: axes title.
        diverging: centre the colour scale at 0 with a diverging colormap (for profiles that are
            positive or negative); otherwise a sequential colormap over the data range.
        vmin: lower colour limit (ignored when ``diverging``).
        vmax: upper colour limit; with ``diverging`` the scale is ``[-vmax, vmax]``.
        cmap: colormap name overriding the default (``"RdBu_r"`` / ``"viridis"``).
        colorbar: add a colorbar next to the axes.
        region: optional :class:`keras_topomap.grid.Region` to outline.
        interpolation: passed to ``imshow`` (``"bicubic"`` gives an EEG-like continuous look).
        label: colorbar label.
        verdict: optional :class:`MapVerdict` of the raw map to show on it
            (:func:`mark_verdict`); drawing a smoothed map, pass the raw map's verdict.

    Returns:
        The ``AxesImage``.
    """
    grid_map = np.asarray(grid_map, dtype=np.float64)
    if grid_map.ndim != 2:
        raise ValueError(f"plot_grid_map expects an (H, W) map. Received: shape={grid_map.shape}")
    if diverging:
        limit = vmax if vmax is not None else symmetric_limit(grid_map)
        vmin, vmax = -limit, limit
        cmap = cmap or "RdBu_r"
    else:
        cmap = cmap or "viridis"
    image = ax.imshow(
        grid_map, cmap=cmap, vmin=vmin, vmax=vmax, interpolation=interpolation, origin="upper"
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if region is not None:
        outline_region(ax, region)
    if verdict is not None:
        mark_verdict(ax, verdict)
    if colorbar:
        cbar = ax.figure.colorbar(image, ax=ax, shrink=0.8)
        if label:
            cbar.set_label(label, fontsize=8)
        cbar.ax.tick_params(labelsize=7)
    return image


def outline_region(ax, region, color="black", linewidth=1.5):
    """Outlines a :class:`~keras_topomap.grid.Region` (clipped to the grid) on a map's axes."""
    from matplotlib.patches import Rectangle

    h, w = region.grid
    r = region.size // 2
    row, col = region.center
    top, left = max(row - r, 0), max(col - r, 0)
    bottom, right = min(row + r, h - 1), min(col + r, w - 1)
    patch = Rectangle(
        (left - 0.5, top - 0.5),
        right - left + 1,
        bottom - top + 1,
        fill=False,
        edgecolor=color,
        linewidth=linewidth,
    )
    ax.add_patch(patch)
    return patch


def plot_grid_maps(
    maps,
    titles=None,
    ncols=None,
    diverging=True,
    shared_scale=True,
    suptitle=None,
    label=None,
    regions=None,
    panel_size=2.2,
    raw=None,
    test=True,
    threshold=TOPOGRAPHY_THRESHOLD,
):
    """Several ``(H, W)`` maps side by side with a shared colour scale, each with its
    topography verdict (:func:`map_verdict` of the raw map, shown by :func:`mark_verdict`).

    Args:
        maps: array ``(N, H, W)`` or a list of ``(H, W)`` maps.
        titles: one title per map.
        ncols: columns of the panel grid (default: all in one row up to 6).
        diverging: see :func:`plot_grid_map`.
        shared_scale: one colour scale for all maps (one colorbar); otherwise one per map.
        suptitle: figure title.
        label: colorbar label.
        regions: optional list of regions (or None entries) to outline per map.
        panel_size: inches per panel.
        raw: the raw maps the drawn ones were computed from (e.g. before smoothing), tested
            instead of ``maps``; default: ``maps`` are raw.
        test: test and mark every map (off: draw the maps only).
        threshold: z below which a map is marked "not topographic".

    Returns:
        matplotlib Figure.
    """
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    n = len(maps)
    if n == 0:
        raise ValueError("plot_grid_maps needs at least one map.")
    verdicts = _verdicts_for(maps, raw, test, threshold)
    ncols = ncols or min(n, 6)
    nrows = int(np.ceil(n / ncols))
    fig = new_figure(figsize=(panel_size * ncols + 1.0, panel_size * nrows + 0.4))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    if shared_scale:
        if diverging:
            vmin, vmax = None, symmetric_limit(*maps)
        else:
            vmin = min(float(m.min()) for m in maps)
            vmax = max(float(m.max()) for m in maps)
    else:
        vmin = vmax = None
    image = None
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_visible(False)
            continue
        image = plot_grid_map(
            ax,
            maps[i],
            title=titles[i] if titles is not None else None,
            diverging=diverging,
            vmin=vmin,
            vmax=vmax,
            colorbar=not shared_scale,
            region=regions[i] if regions is not None else None,
            label=label,
            verdict=verdicts[i],
        )
    if shared_scale and image is not None:
        cbar = fig.colorbar(image, ax=list(axes[:n]), shrink=0.8)
        if label:
            cbar.set_label(label, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_grid_mosaic(
    ax, maps, titles=None, ncols=None, gap=1, diverging=True, vmin=None, vmax=None, cmap=None,
    colorbar=True, label=None, fontsize=7, raw=None, test=True, threshold=TOPOGRAPHY_THRESHOLD,
):
    """Many ``(H, W)`` maps tiled into one image on one axes, with a title above each tile and
    each tile's topography verdict (:func:`map_verdict` of its raw map) below it.

    Far cheaper to draw than one axes per map (:func:`plot_grid_maps`) when there are dozens
    of maps, e.g. one per phone. Calling it again on the same axes with maps of the same shape
    updates the image, its colour limits and the titles in place (for animations and
    per-epoch exports) instead of drawing anew.

    Args:
        ax: matplotlib Axes.
        maps: array ``(N, H, W)``.
        titles: one title per map.
        ncols: tiles per row (default: up to 8).
        gap: empty cells between tiles.
        diverging: as for :func:`plot_grid_map`.
        vmin: as for :func:`plot_grid_map`.
        vmax: as for :func:`plot_grid_map`.
        cmap: as for :func:`plot_grid_map`.
        label: as for :func:`plot_grid_map`.
        colorbar: add one colorbar for all tiles (first call only).
        fontsize: size of the titles.
        raw: the raw maps behind ``maps`` (e.g. before smoothing), tested instead of them.
        test: test and mark every tile.
        threshold: z below which a tile is marked "not topographic".

    Returns:
        The ``AxesImage``.

    Example:

    >>> fig = new_figure(figsize=(9, 6))
    >>> plot_grid_mosaic(fig.add_subplot(), naps, titles=phones)
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"plot_grid_mosaic expects maps (N, H, W). Received: shape={maps.shape}")
    n, h, w = maps.shape
    verdicts = _verdicts_for(maps, None if raw is None else np.asarray(raw), test, threshold)
    ncols = int(ncols or min(n, 8))
    nrows = -(-n // ncols)
    rows, cols = np.divmod(np.arange(n), ncols)
    gap = max(gap, 2) if test else gap  # room for the readout under each tile
    top, left = rows * (h + gap), cols * (w + gap)
    mosaic = np.full((nrows * (h + gap) - gap, ncols * (w + gap) - gap), np.nan)
    tile_rows = (top[:, None] + np.arange(h))[:, :, None]
    tile_cols = (left[:, None] + np.arange(w))[:, None, :]
    mosaic[tile_rows, tile_cols] = maps
    if diverging:
        limit = vmax if vmax is not None else symmetric_limit(maps)
        vmin, vmax, cmap = -limit, limit, cmap or "RdBu_r"
    else:
        vmin = float(np.nanmin(maps)) if vmin is None else vmin
        vmax = float(np.nanmax(maps)) if vmax is None else vmax
        cmap = cmap or "viridis"
    if ax.images and ax.images[0].get_array().shape == mosaic.shape:
        image = ax.images[0]
        image.set_data(mosaic)
        image.set_clim(vmin, vmax)
        clear_marks(ax)
        for text, title in zip(ax.texts, titles or ()):
            text.set_text(title)
        _mark_tiles(ax, verdicts, top, left, h, w, fontsize)
        return image
    image = ax.imshow(mosaic, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    for i, title in enumerate(titles or ()):
        ax.text(left[i] + (w - 1) / 2, top[i] - 0.6, title, ha="center", va="bottom",
                fontsize=fontsize)
    _mark_tiles(ax, verdicts, top, left, h, w, fontsize)
    if colorbar:
        cbar = ax.figure.colorbar(image, ax=ax, shrink=0.8)
        if label:
            cbar.set_label(label, fontsize=8)
        cbar.ax.tick_params(labelsize=7)
    return image


def _mark_tiles(ax, verdicts, top, left, h, w, fontsize):
    for i, verdict in enumerate(verdicts):
        if verdict is not None:
            mark_verdict(ax, verdict, tile=(left[i], top[i], w, h), fontsize=max(4, fontsize - 2))


# ----------------------------------------------------------------------------------------------
# GradNAP figures (the paper's Figure 1B, top)


def _gradnap_groups(gradnap, layer, groups):
    """Group indices to plot: the given names/indices, else every group with frames."""
    gradnap.maps(layer)  # refuses an unfitted GradNAP and a layer it does not profile
    if groups is None:
        indices = [int(i) for i in np.nonzero(gradnap.counts_[layer] > 0)[0]]
    else:
        indices = [gradnap.group_index(g) for g in groups]
    if not indices:
        raise ValueError(f"No groups to plot for layer '{layer}' (no group has frames).")
    return indices


def _group_title(gradnap, index):
    return f"/{gradnap.group_name(index)}/"


def plot_gradnap(gradnap, layer, groups=None, size=3, panel_size=2.0, label=None, cmap=None,
                 threshold=TOPOGRAPHY_THRESHOLD):
    """GradNAPs of chosen groups on a layer's grid: raw values, smoothed map, responsive region.

    One column per group. Top row: the values on the grid ("on grid"); bottom row: the
    ``size x size`` smoothed map with the most responsive region outlined. Each row has one
    diverging colour scale centred at 0, shared by all its panels, and one colorbar. Both rows
    show Moran's I and z of the raw map (:func:`map_verdict`); a map not smoother than chance
    is marked "not topographic".

    Args:
        gradnap: a fitted :class:`keras_topomap.GradNAP`.
        layer: layer name.
        groups: group names or indices (default: every group with frames).
        size: smoothing / region size.
        panel_size: inches per panel.
        label: colorbar label (default: what the values are).
        cmap: diverging colormap (default ``"RdBu_r"``).
        threshold: z below which a map is marked "not topographic".

    Returns:
        matplotlib Figure.

    Example:

    >>> fig = plot_gradnap(gn, "conv_1", groups=["ae", "aa", "t"])
    >>> fig.savefig("gradnap_conv_1.png")
    """
    indices = _gradnap_groups(gradnap, layer, groups)
    raw = gradnap.maps(layer)[indices]
    smoothed = gradnap.maps(layer, smooth=True, size=size)[indices]
    regions = [gradnap.most_responsive_region(layer, i, size=size) for i in indices]
    verdicts = map_verdicts(raw, threshold=threshold)
    label = label or ("GradNAP" if gradnap.adjust != "none" else "NAP")
    n = len(indices)
    fig = new_figure(figsize=(panel_size * n + 1.2, 2 * panel_size + 0.6))
    axes = fig.subplots(2, n, squeeze=False)
    for row, (maps, what) in enumerate(((raw, "on grid"), (smoothed, "smoothed"))):
        limit = symmetric_limit(*maps)
        image = None
        for col, index in enumerate(indices):
            ax = axes[row, col]
            image = plot_grid_map(
                ax, maps[col], title=f"{_group_title(gradnap, index)} {layer}" if row == 0 else
                None, vmax=limit, cmap=cmap, colorbar=False,
                region=regions[col] if row == 1 else None, verdict=verdicts[col],
            )
            if col == 0:
                ax.set_ylabel(what, fontsize=9)
        cbar = fig.colorbar(image, ax=list(axes[row]), shrink=0.85)
        cbar.set_label(f"{label} ({what})", fontsize=8)
        cbar.ax.tick_params(labelsize=7)
    fig.suptitle(f"{label} of layer {layer}; most responsive {size}x{size} region outlined",
                 fontsize=10)
    return fig


def smooth_to_image(grid_map, size=3, upsample=8):
    """A smoothed ``(H, W)`` grid map interpolated (cubic) to a continuous
    ``(H * upsample, W * upsample)`` image, for EEG-style scalp-map views."""
    from scipy import ndimage

    from keras_topomap import grid as grid_lib

    grid_map = np.asarray(grid_map, dtype=np.float64)
    if grid_map.ndim != 2:
        raise ValueError(
            f"smooth_to_image expects one (H, W) map. Received: shape={grid_map.shape}"
        )
    upsample = checks.positive_int(upsample, "upsample")
    smoothed = grid_lib.smooth(grid_map, size) if size > 1 else grid_map
    return ndimage.zoom(smoothed, upsample, order=3, mode="nearest", grid_mode=True)


def plot_gradnap_eeg(gradnap, layer, groups=None, size=3, upsample=8, levels=8, panel_size=2.2,
                     cmap=None, threshold=TOPOGRAPHY_THRESHOLD, force=False):
    """EEG-style view: each group's smoothed GradNAP as a continuous image with contour lines.

    The smoothed grid map is interpolated (cubic) to a fine image, drawn with a diverging colour
    scale centred at 0 shared by all panels, and overlaid with ``levels`` contour lines (solid
    for positive, dashed for negative values), like a scalp map.

    Smoothing and interpolation make any map look like a smooth landscape, noise included, so
    every panel is tested on its raw map first (:func:`map_verdict`) and shows Moran's I and z.
    A map not smoother than chance is drawn greyed, without contour lines, under a
    "not topographic" mark, unless ``force=True`` (then it is drawn in colour, still marked).

    Args:
        gradnap: a fitted :class:`keras_topomap.GradNAP`.
        layer: layer name.
        groups: group names or indices (default: every group with frames).
        size: smoothing size.
        upsample: interpolation factor.
        levels: number of contour lines.
        panel_size: inches per panel.
        cmap: diverging colormap (default ``"RdBu_r"``).
        threshold: z below which a map is "not topographic".
        force: draw maps that are not topographic in colour with contours as well.

    Returns:
        matplotlib Figure.
    """
    indices = _gradnap_groups(gradnap, layer, groups)
    maps = gradnap.maps(layer)[indices]
    verdicts = map_verdicts(maps, threshold=threshold)
    images = [smooth_to_image(m, size=size, upsample=upsample) for m in maps]
    limit = symmetric_limit(*images)
    h, w = maps.shape[1:]
    n = len(indices)
    ncols = min(n, 6)
    nrows = -(-n // ncols)
    fig = new_figure(figsize=(panel_size * ncols * max(w / h, 0.5) + 1.2, panel_size * nrows + 0.7))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # image pixels line up with the grid cells
    contour_levels = np.linspace(-limit, limit, 2 * (levels // 2) + 3)[1:-1]
    image = None
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_visible(False)
            continue
        shown = verdicts[i].topographic or force
        drawn = ax.imshow(images[i], cmap=(cmap or "RdBu_r") if shown else "Greys",
                          vmin=-limit, vmax=limit, extent=extent, interpolation="bilinear",
                          alpha=1.0 if shown else 0.35)
        if shown:
            image = drawn
        ys = np.linspace(-0.5, h - 0.5, images[i].shape[0])
        xs = np.linspace(-0.5, w - 0.5, images[i].shape[1])
        if shown and np.ptp(images[i]) > 0:
            ax.contour(xs, ys, images[i], levels=contour_levels, colors="k", linewidths=0.6)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{_group_title(gradnap, indices[i])} {layer}", fontsize=9)
        mark_verdict(ax, verdicts[i], fontsize=7)
    if image is not None:
        cbar = fig.colorbar(image, ax=list(axes[:n]), shrink=0.85)
        cbar.set_label("GradNAP (smoothed)" if gradnap.adjust != "none" else "NAP (smoothed)",
                       fontsize=8)
    if not all(v.topographic for v in verdicts):
        fig.suptitle(f"greyed: not smoother than chance on the raw map (z < {threshold:g})"
                     + ("; drawn anyway (force=True)" if force else ""), fontsize=8,
                     color=_MARK_COLOR)
    return fig


def plot_gradnap_dendrogram(gradnap, layer, ax=None, metric="cosine", method="average"):
    """Dendrogram of the group profiles of ``layer`` (average linkage, cosine distance).

    Args:
        gradnap: a fitted :class:`keras_topomap.GradNAP`.
        layer: layer name.
        ax: Axes to draw into (default: a new Figure).

    Returns:
        matplotlib Figure.
    """
    from scipy.cluster.hierarchy import dendrogram

    clustering = gradnap.cluster(layer, metric=metric, method=method)
    names = [gradnap.group_name(i) for i in clustering.groups]
    if ax is None:
        fig = new_figure(figsize=(max(4.0, 0.25 * len(names) + 1.5), 3.2))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    dendrogram(clustering.linkage, labels=names, ax=ax, color_threshold=0,
               above_threshold_color="0.3", leaf_font_size=8)
    ax.set_ylabel(f"{metric} distance", fontsize=8)
    ax.set_title(f"Profiles of layer {layer} ({method} linkage)", fontsize=9)
    return fig


def plot_gradnap_time(gradnap, layer, group, size=3, offsets=None, panel_size=1.8,
                      threshold=TOPOGRAPHY_THRESHOLD):
    """Time-resolved GradNAP of one group: the smoothed grid map at each layer-frame offset
    around the group's occurrences (needs ``GradNAP(window=w)``), one shared colour scale, each
    with the verdict of its raw map (:func:`map_verdict`).

    Args:
        threshold: z below which a map is marked "not topographic".

    Returns:
        matplotlib Figure.
    """
    gradnap.maps(layer)  # refuses an unfitted GradNAP and a layer it does not profile
    if layer not in gradnap.time_profiles_:
        raise ValueError("Time-resolved profiles need GradNAP(window=w). Received: window=None")
    index = gradnap.group_index(group)
    profiles = gradnap.time_profiles_[layer][index]  # (2w + 1, F)
    w = (profiles.shape[0] - 1) // 2
    offsets = list(range(-w, w + 1)) if offsets is None else list(offsets)
    bad = [o for o in offsets if not -w <= o <= w]
    if bad:
        raise ValueError(f"Offsets must lie in [-{w}, {w}]. Received: {bad}")
    from keras_topomap import grid as grid_lib

    raw = grid_lib.to_grid(profiles, gradnap.grids_[layer])
    maps = grid_lib.smooth(raw, size)
    return plot_grid_maps(
        [maps[o + w] for o in offsets], raw=[raw[o + w] for o in offsets], threshold=threshold,
        titles=[f"{o:+d}" for o in offsets],
        ncols=min(len(offsets), 9), label="GradNAP (smoothed)", panel_size=panel_size,
        suptitle=f"{_group_title(gradnap, index)} {layer}: layer frames around the centre",
    )


# ----------------------------------------------------------------------------------------------
# Optimal inputs (keras_topomap.optimal_inputs)


def input_axis_labels(feature_config=None):
    """``(time label, feature label)`` of a speech model's input axes.

    Args:
        feature_config: the :class:`~keras_topomap.datasets.FeatureConfig` of the inputs:
            frames with their hop (``"frame (10 ms)"``) and ``"mel band"`` or ``"MFCC"``;
            None: ``("input frame", "input feature")``.

    Returns:
        ``(str, str)``.

    Example:

    >>> input_axis_labels(FeatureConfig())
    ('frame (10 ms)', 'mel band')
    """
    if feature_config is None:
        return "input frame", "input feature"
    features = "mel band" if feature_config.kind == "logmel" else "MFCC"
    return f"frame ({feature_config.hop_ms:g} ms)", features


def _feature_axes(feature_config):
    """specshow keyword arguments for a FeatureConfig (frames and bins without one)."""
    if feature_config is None:
        return {"x_axis": None, "y_axis": None}
    axes = {"x_axis": "time", "sr": feature_config.sample_rate,
            "hop_length": feature_config.hop_length}
    if feature_config.kind == "logmel":
        axes.update(y_axis="mel", fmax=feature_config.sample_rate / 2)
    else:
        axes.update(y_axis=None)
    return axes


def plot_optimal_input(ax, features, title=None, feature_config=None, vmax=None, cmap="RdBu_r"):
    """Draws one ``(T, n_features)`` input as a feature x time image (librosa ``specshow``),
    with labelled axes and square cells (one frame as wide as one feature bin is tall).

    Args:
        ax: matplotlib Axes.
        features: array ``(T, n_features)``.
        title: axes title.
        feature_config: the :class:`~keras_topomap.datasets.FeatureConfig` of the features: gives
            a time axis in seconds and, for log-mel, a mel frequency axis (frames and feature
            bins without one).
        vmax: colour limit (``[-vmax, vmax]``, 0 = the mean of normalised features); default:
            the largest absolute value.
        cmap: colormap.

    Returns:
        The ``QuadMesh`` drawn.
    """
    from librosa import display

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(
            f"plot_optimal_input expects one (T, n_features) input. Received: shape="
            f"{features.shape}"
        )
    limit = vmax if vmax is not None else symmetric_limit(features)
    mesh = display.specshow(features.T, ax=ax, cmap=cmap, vmin=-limit, vmax=limit,
                            **_feature_axes(feature_config))
    if feature_config is None:
        ax.set_xlabel("frame", fontsize=7)
        ax.set_ylabel("feature", fontsize=7)
    else:
        ax.set_xlabel("time (s)", fontsize=7)
        ax.set_ylabel("mel frequency (Hz)" if feature_config.kind == "logmel" else "MFCC",
                      fontsize=7)
    # undistorted: one frame as wide as one feature bin is tall
    ax.set_box_aspect(features.shape[1] / features.shape[0])
    if title:
        ax.set_title(title, fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(3))  # small panels: a few time ticks stay legible
    ax.tick_params(labelsize=6)
    return mesh


def _image_for_display(image, vmax=None, value_range=None):
    """``(H, W, C)`` model input -> (what imshow draws, vmin, vmax): RGB mapped to [0, 1] (0 at
    mid-grey on a symmetric scale, or ``value_range`` stretched to black..white), one channel
    as ``(H, W)`` values with their colour limits, other channel counts averaged."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3:
        raise ValueError(
            f"plot_input_image expects one (H, W, channels) image. Received: shape={image.shape}"
        )
    if image.shape[-1] == 3:
        if value_range is not None:
            low, high = (float(v) for v in value_range)
            rgb = (image - low) / (high - low)
        else:
            limit = vmax if vmax is not None else symmetric_limit(image)
            rgb = 0.5 + 0.5 * image / limit
        return np.clip(rgb, 0.0, 1.0), None, None
    plane = image[..., 0] if image.shape[-1] == 1 else image.mean(axis=-1)
    if value_range is not None:
        return plane, float(value_range[0]), float(value_range[1])
    limit = vmax if vmax is not None else symmetric_limit(plane)
    return plane, -limit, limit


def plot_input_image(ax, image, title=None, vmax=None, value_range=None, cmap="RdBu_r"):
    """Draws one ``(H, W, channels)`` input image (an optimal input of an image model) into ``ax``.

    Three channels are drawn in colour, as RGB: on a symmetric scale by default (0 is mid-grey,
    ``+vmax`` full intensity of a channel, ``-vmax`` none), or with ``value_range=(low, high)``
    from black to white (inputs in pixel units, e.g. ``(0, 1)``). One channel is drawn with
    ``cmap``; other channel counts are averaged over the channels.

    Args:
        ax: matplotlib Axes.
        image: array ``(H, W, channels)``.
        title: axes title.
        vmax: symmetric colour limit; default: the largest absolute value.
        value_range: ``(low, high)`` of the input's values; overrides ``vmax``.
        cmap: colormap for single-channel images.

    Returns:
        The ``AxesImage`` drawn.
    """
    shown, low, high = _image_for_display(image, vmax=vmax, value_range=value_range)
    kwargs = {} if shown.ndim == 3 else {"cmap": cmap, "vmin": low, "vmax": high}
    drawn = ax.imshow(shown, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return drawn


def plot_optimal_inputs(inputs, region=None, joint=None, filters=None, feature_config=None,
                        titles=None, suptitle=None, panel_size=(1.9, 1.5), cmap="RdBu_r",
                        value_range=None):
    """Single-filter optimal inputs laid out as their filters sit on the grid, the joint beside.

    The paper's Figure 1B (bottom): for a region of a topographic layer, the input that drives
    each filter of the region most (one panel per filter, placed at the filter's row and column
    within the region) and, in a tall panel on the right, the input that drives the region as a
    whole. All panels share one diverging colour scale.

    Args:
        inputs: ``(n, T, n_features)`` single-filter inputs (``OptimalInputs(..., region=r)``'s
            ``inputs_``), in the order of ``region.filters`` (or ``filters``); or images
            ``(n, H, W, channels)`` of an image model, drawn with :func:`plot_input_image`
            (three channels in colour).
        region: the :class:`~keras_topomap.grid.Region` (None: the panels go in one row).
        joint: optional ``(T, n_features)`` (or ``(1, T, n_features)``) joint input, shaped
            like one single-filter input.
        filters: filter index per input for the titles (default ``region.filters``).
        feature_config: see :func:`plot_optimal_input`.
        titles: one title per single-filter panel (default ``"filter i (r, c)"``).
        suptitle: figure title.
        panel_size: ``(width, height)`` of one panel in inches.
        cmap: colormap.
        value_range: for images: ``(low, high)`` of the pixel values (see
            :func:`plot_input_image`); default: one symmetric scale around 0 for all panels.

    Returns:
        matplotlib Figure.

    Example:

    >>> opt = OptimalInputs(model, "conv_big_1", region=region).fit()
    >>> joint = optimal_inputs(model, "conv_big_1", region=region, joint=True)
    >>> fig = plot_optimal_inputs(opt.inputs_, region, joint, feature_config=FeatureConfig())
    >>> fig.savefig("optimal_inputs.png")
    """
    inputs = np.asarray(inputs, dtype=np.float64)
    if inputs.ndim not in (3, 4) or inputs.shape[0] == 0:
        raise ValueError(
            f"plot_optimal_inputs expects inputs (n, T, n_features) or images (n, H, W, "
            f"channels). Received: shape={inputs.shape}"
        )
    images = inputs.ndim == 4
    n = inputs.shape[0]
    if filters is None and region is not None:
        filters = np.asarray(region.filters)
    if filters is not None and len(filters) != n:
        raise ValueError(
            f"plot_optimal_inputs got {n} inputs but {len(filters)} filters (one input per "
            f"filter of the region, in region order). Received: filters={list(filters)}"
        )
    if joint is not None:
        joint = np.asarray(joint, dtype=np.float64)
        joint = joint[0] if joint.ndim == inputs.ndim and joint.shape[0] == 1 else joint
        if joint.shape != inputs.shape[1:]:
            raise ValueError(
                f"The joint input must be shaped like one single-filter input {inputs.shape[1:]}"
                f". Received: shape={joint.shape}"
            )
    if region is not None:
        w = region.grid[1]
        rows, cols = np.divmod(np.asarray(filters), w)
        rows, cols = rows - rows.min(), cols - cols.min()
    else:
        rows, cols = np.zeros(n, int), np.arange(n)
    n_rows, n_cols = int(rows.max()) + 1, int(cols.max()) + 1
    extra = 1 if joint is not None else 0
    fig = new_figure(figsize=(panel_size[0] * (n_cols + 1.4 * extra) + 0.8,
                              panel_size[1] * n_rows + 0.6))
    spec = fig.add_gridspec(n_rows, n_cols + extra,
                            width_ratios=[1.0] * n_cols + [1.4] * extra)
    limit = symmetric_limit(inputs, *([joint] if joint is not None else []))
    mesh = None
    for i in range(n):
        ax = fig.add_subplot(spec[int(rows[i]), int(cols[i])])
        if titles is not None:
            title = titles[i]
        elif filters is not None and region is not None:
            title = f"filter {int(filters[i])} {divmod(int(filters[i]), region.grid[1])}"
        elif filters is not None:
            title = f"filter {int(filters[i])}"
        else:
            title = None
        if images:
            mesh = plot_input_image(ax, inputs[i], title=title, vmax=limit,
                                    value_range=value_range, cmap=cmap)
            continue
        mesh = plot_optimal_input(ax, inputs[i], title=title, feature_config=feature_config,
                                  vmax=limit, cmap=cmap)
        if int(rows[i]) != n_rows - 1:  # axis labels and tick labels on the outer panels only
            ax.set_xlabel("")
            ax.tick_params(labelbottom=False)
        if int(cols[i]) != 0:
            ax.set_ylabel("")
            ax.tick_params(labelleft=False)
    if joint is not None:
        ax = fig.add_subplot(spec[:, -1])
        if images:
            mesh = plot_input_image(ax, joint, title="joint (region sum)", vmax=limit,
                                    value_range=value_range, cmap=cmap)
        else:
            mesh = plot_optimal_input(ax, joint, title="joint (region sum)",
                                      feature_config=feature_config, vmax=limit, cmap=cmap)
    if not images:
        fig.colorbar(mesh, ax=fig.axes, shrink=0.8, label="feature value (normalised)")
    elif inputs.shape[-1] != 3:  # colour images carry their scale in the caption instead
        fig.colorbar(mesh, ax=fig.axes, shrink=0.8, label="input value")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


# ----------------------------------------------------------------------------------------------
# Filters on the grid (the paper's Figure 1A) and the combined Figure 1B


def filter_images(kernel, rgb=None):
    """One small image per filter of a convolution kernel: ``(F, rows, columns)``.

    Conv1D kernels ``(width, in_features, F)`` become ``in_features x width`` images (input
    feature upwards, time to the right: a spectro-temporal patch for speech features); Conv2D
    kernels ``(kh, kw, in_channels, F)`` become ``kh x kw`` images averaged over the input
    channels, or, for kernels on 3 input channels (RGB), ``(F, kh, kw, 3)`` colour images.

    Args:
        kernel: the layer's kernel (filters on the last axis).
        rgb: keep the 3 input channels of a Conv2D kernel as colour; default (None): whenever
            the kernel has exactly 3 input channels. False averages them.

    Raises:
        ValueError: for a kernel of another rank, or ``rgb=True`` without 3 input channels.
    """
    from keras_topomap._arrays import to_numpy

    k = np.asarray(to_numpy(kernel), dtype=np.float64)
    if k.ndim == 3:
        if rgb:
            raise ValueError(
                f"rgb=True needs a Conv2D kernel on 3 input channels. Received: shape={k.shape}"
            )
        return np.transpose(k, (2, 1, 0))
    if k.ndim == 4:
        if rgb is None:
            rgb = k.shape[2] == 3
        if rgb and k.shape[2] != 3:
            raise ValueError(
                f"rgb=True needs a Conv2D kernel on 3 input channels. Received: shape={k.shape}"
            )
        if rgb:
            return np.transpose(k, (3, 0, 1, 2))
        return np.transpose(k.mean(axis=2), (2, 0, 1))
    raise ValueError(
        "filter_images expects a Conv1D (width, in, F) or Conv2D (kh, kw, in, F) kernel. "
        f"Received: shape={k.shape}"
    )


def local_similarity(kernel, grid=None, size=3):
    """Mean cosine similarity of each filter to the other filters of its ``size x size`` block.

    Unweighted (every in-grid neighbour counts the same), so the value reads directly as "how
    alike is this neighbourhood": about 0 for randomly ordered filters, 1 when all filters of the
    block are equal.

    Args:
        kernel: the layer's kernel (filters on the last axis).
        grid: ``(H, W)``; default: inferred from the number of filters.
        size: odd block side.

    Returns:
        ``(H, W)`` float array.

    Example:

    >>> local_similarity(model.get_layer("conv_1").kernel, grid=(8, 8)).mean()
    """
    from keras_topomap import grid as grid_lib
    from keras_topomap.metrics import unit_filters

    units = unit_filters(kernel)  # (D, F)
    h, w = grid_lib.resolve_grid(grid, units.shape[1], what="local_similarity grid")
    grid_lib.validate_neighborhood(size, (h, w), what="local_similarity size")
    u = units.reshape(units.shape[0], h, w)  # (D, H, W), row-major like to_grid
    r = size // 2
    rows = np.minimum(np.arange(h) + r, h - 1) - np.maximum(np.arange(h) - r, 0) + 1
    cols = np.minimum(np.arange(w) + r, w - 1) - np.maximum(np.arange(w) - r, 0) + 1
    count = rows[:, None] * cols[None, :]
    # block mean of the unit vectors (in-grid cells) times the count = block sum
    block_sum = grid_lib.smooth(u, size) * count
    self_dot = (u * u).sum(axis=0)
    return ((block_sum * u).sum(axis=0) - self_dot) / np.maximum(count - 1, 1)


def pick_neighborhoods(similarity, n=2, size=3):
    """Centres of the ``n`` most coherent ``size x size`` neighbourhoods of a similarity map.

    Prefers blocks that lie wholly inside the grid and do not overlap the ones already picked;
    on grids too small for that it falls back to overlapping (then to border) blocks.

    Args:
        similarity: ``(H, W)`` map, e.g. :func:`local_similarity`.
        n: number of neighbourhoods.
        size: block side.

    Returns:
        list of ``(row, col)`` centres, best first.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2:
        raise ValueError(f"pick_neighborhoods expects an (H, W) map. Received: {similarity.shape}")
    h, w = similarity.shape
    r = size // 2
    rows, cols = np.unravel_index(np.argsort(-similarity, axis=None, kind="stable"), (h, w))
    inside = (rows >= r) & (rows < h - r) & (cols >= r) & (cols < w - r)
    candidates = list(zip(rows[inside].tolist(), cols[inside].tolist()))
    candidates += list(zip(rows[~inside].tolist(), cols[~inside].tolist()))
    picked = []
    for allow_overlap in (False, True):
        for row, col in candidates:
            if len(picked) == n:
                return picked
            if (row, col) in picked:
                continue
            apart = all(abs(row - a) >= size or abs(col - b) >= size for a, b in picked)
            if apart or allow_overlap:
                picked.append((row, col))
    return picked


def permuted_neighborhoods(kernel, grid=None, n=2, size=3, n_permutations=50, seed=0,
                           centers=None):
    """What :func:`pick_neighborhoods` would find without topography: the neighbour cosine of
    the ``k``-th picked neighbourhood when the layer's filters are randomly re-ordered.

    The close-ups of Figure 1A are chosen as the most coherent blocks of the map, so even a
    random filter order would show some similarity there; this is the value to read them
    against. With ``centers`` given (not chosen from the map), the values at those centres.

    Returns:
        ``(mean, std)``: float arrays ``(n,)``, one entry per picked neighbourhood (best first).
    """
    from keras_topomap import grid as grid_lib
    from keras_topomap.metrics import unit_filters

    units = unit_filters(kernel)
    h, w = grid_lib.resolve_grid(grid, units.shape[1], what="permuted_neighborhoods grid")
    rng = np.random.default_rng(seed)
    picked = np.zeros((int(n_permutations), n))
    for i in range(int(n_permutations)):  # figure-time only; each is one vectorised pass
        similarity = local_similarity(units[:, rng.permutation(units.shape[1])], (h, w), size)
        chosen = centers if centers is not None else pick_neighborhoods(similarity, n, size)
        picked[i, :len(chosen)] = [similarity[tuple(c)] for c in chosen]
    return picked.mean(axis=0), picked.std(axis=0, ddof=1)


def _normalized_filters(images):
    limit = np.abs(images).reshape(len(images), -1).max(axis=1)
    limit = np.where(limit > 0, limit, 1.0).reshape((-1,) + (1,) * (images.ndim - 1))
    return images / limit


def plot_filter_neighborhoods(kernel, grid=None, centers=None, size=3, n=2, fig=None,
                              layer=None, overview=True, cmap="RdBu_r", feature_config=None):
    """Figure 1A: close-ups of ``size x size`` neighbourhoods of a layer's filter map.

    Every filter is drawn as a small image (:func:`filter_images`; in colour for Conv2D kernels
    on 3 input channels), each on its own symmetric colour scale (the topographic constraint
    compares directions, not norms, so every filter is scaled to its largest absolute weight).
    With ``overview`` the whole map comes first, all filters tiled at their grid positions, with
    the close-up neighbourhoods outlined; then one ``size x size`` panel block per
    neighbourhood, titled with its centre and its :func:`local_similarity`. Tiles keep their
    aspect (one weight per square cell); one tile per close-up has labelled axes.

    Args:
        kernel: the layer's kernel (Conv1D or Conv2D, filters on the last axis).
        grid: ``(H, W)``; default: inferred from the number of filters.
        centers: ``(row, col)`` centres; default: :func:`pick_neighborhoods` of the local
            similarity (the ``n`` most coherent, non-overlapping where the grid allows).
        size: neighbourhood side.
        n: number of neighbourhoods when ``centers`` is not given.
        fig: a matplotlib ``Figure`` or ``SubFigure`` to draw into (default: a new Figure).
        layer: the layer's name, for the titles.
        overview: also draw the whole filter map.
        cmap: diverging colormap.
        feature_config: for a Conv1D layer on the model's input, the
            :class:`~keras_topomap.datasets.FeatureConfig` of the features: the tiles' axes are
            then frames (with their hop) and mel bands (:func:`input_axis_labels`); None:
            input frames and input features (channels of the previous layer).

    Returns:
        the Figure (or the SubFigure drawn into).

    Example:

    >>> fig = plot_filter_neighborhoods(model.get_layer("conv_1").kernel, layer="conv_1")
    >>> fig.savefig("figure1a.png")
    """
    from matplotlib.patches import Rectangle

    from keras_topomap import grid as grid_lib

    images = _normalized_filters(filter_images(kernel))
    n_filters, ih, iw = images.shape[:3]
    # Conv2D filters keep image orientation (row 0 at the top) and RGB kernels their colour
    # (0 is mid-grey, +1 a channel's full intensity); Conv1D patches put the lowest input
    # feature at the bottom.
    image_like = np.ndim(kernel) == 4
    color = images.ndim == 4
    x_label, y_label = input_axis_labels(feature_config)
    if feature_config is not None and not image_like and ih != feature_config.n_features:
        raise ValueError(
            f"plot_filter_neighborhoods: the kernel reads {ih} input features, the "
            f"feature_config gives {feature_config.n_features} (pass feature_config only for a "
            f"layer on the model's input). Received: kernel shape={tuple(np.shape(kernel))}"
        )
    if color:
        images = np.clip(0.5 + 0.5 * images, 0.0, 1.0)
    h, w = grid_lib.resolve_grid(grid, n_filters, what="plot_filter_neighborhoods grid")
    similarity = local_similarity(kernel, (h, w), size)
    chosen = centers is None
    if chosen:
        centers = pick_neighborhoods(similarity, n=n, size=size)
    centers = [(int(a), int(b)) for a, b in centers]
    for row, col in centers:
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"Neighbourhood centre {(row, col)} is off the {h}x{w} grid.")
    # read each close-up against the same choice made on randomly re-ordered filters
    null_mean, null_std = permuted_neighborhoods(kernel, (h, w), n=len(centers), size=size,
                                                 centers=None if chosen else centers)
    name = f"{layer} " if layer else ""
    if fig is None:
        fig = new_figure(figsize=(3.2 * (len(centers) + overview) + 0.8, 3.6))
    parts = fig.subfigures(1, len(centers) + int(overview), wspace=0.02,
                           width_ratios=[1.25] * int(overview) + [1.0] * len(centers))
    parts = np.atleast_1d(parts)
    r = size // 2
    image = None
    if overview:
        gap = max(1, ih // 8)
        mosaic = np.full((h * (ih + gap) - gap, w * (iw + gap) - gap, *images.shape[3:]),
                         1.0 if color else np.nan)  # gaps: white in colour, blank otherwise
        rows, cols = np.divmod(np.arange(n_filters), w)
        tile_rows = (rows[:, None] * (ih + gap) + np.arange(ih))[:, :, None]
        tile_cols = (cols[:, None] * (iw + gap) + np.arange(iw))[:, None, :]
        mosaic[tile_rows, tile_cols] = images if image_like else images[:, ::-1, :]
        ax = parts[0].add_subplot()
        shown = ax.imshow(mosaic, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        image = None if color else shown
        ax.set_axis_off()
        for k, (row, col) in enumerate(centers):
            top, left = max(row - r, 0), max(col - r, 0)
            bottom, right = min(row + r, h - 1), min(col + r, w - 1)
            ax.add_patch(Rectangle(
                (left * (iw + gap) - gap / 2 - 0.5, top * (ih + gap) - gap / 2 - 0.5),
                (right - left + 1) * (iw + gap), (bottom - top + 1) * (ih + gap),
                fill=False, edgecolor="black", linewidth=1.6, clip_on=False,
            ))
            ax.text(left * (iw + gap) - gap, top * (ih + gap) - gap, str(k + 1), ha="right",
                    va="bottom", fontsize=9, fontweight="bold")
        rule = (f"close-ups: the {len(centers)} most coherent non-overlapping full {size}x{size} "
                "blocks" if chosen else "close-ups: the given centres")
        axes_note = ("" if image_like else
                     f"\neach tile: {y_label} upwards, {x_label} to the right")
        parts[0].suptitle(f"{name}filter map ({h}x{w}, {n_filters} filters)\n{rule}"
                          f"{axes_note}", fontsize=8)
    for k, (row, col) in enumerate(centers):
        part = parts[k + int(overview)]
        axes = part.subplots(size, size, gridspec_kw={"wspace": 0.06, "hspace": 0.06})
        axes = np.asarray(axes).reshape(size, size)
        for dr in range(size):
            for dc in range(size):
                ax = axes[dr, dc]
                ax.set_xticks([])
                ax.set_yticks([])
                rr, cc = row + dr - r, col + dc - r
                if not (0 <= rr < h and 0 <= cc < w):
                    ax.set_axis_off()
                    continue
                shown = ax.imshow(images[rr * w + cc], cmap=cmap, vmin=-1, vmax=1,
                                  origin="upper" if image_like else "lower", aspect="equal",
                                  interpolation="nearest")
                image = None if color else shown
                if dr == size - 1 and dc == 0:  # one labelled tile: what the axes are
                    ax.set_xticks([0, iw - 1])
                    ax.set_yticks([0, ih - 1])
                    ax.tick_params(labelsize=5, length=2, pad=1)
                    ax.set_xlabel("column" if image_like else x_label, fontsize=6, labelpad=1)
                    ax.set_ylabel("row" if image_like else y_label, fontsize=6, labelpad=1)
                if (dr, dc) == (r, r):
                    for spine in ax.spines.values():
                        spine.set_linewidth(2.0)
        part.suptitle(f"{k + 1}: centre {(row, col)}, neighbour cos {similarity[row, col]:.2f}\n"
                      f"(permuted filter order: {null_mean[k]:.2f} ± {null_std[k]:.2f})",
                      fontsize=8)
    if image is not None:
        cbar = fig.colorbar(image, ax=parts[-1].axes, shrink=0.7, ticks=[-1, 0, 1])
        cbar.set_label("weight / max |weight|", fontsize=7)
        cbar.ax.tick_params(labelsize=6)
    elif color:
        fig.supxlabel("RGB weight / max |weight| (mid-grey = 0)", fontsize=7)
    return fig


def plot_figure1b(gradnap, layer, groups, single, joint, regions=None, size=3, fig=None,
                  cmap="RdBu_r", panel_width=1.9, threshold=TOPOGRAPHY_THRESHOLD,
                  feature_config=None):
    """Figure 1B: for each group, its GradNAP on the grid, smoothed with the most responsive
    region outlined, and the region's single-filter and joint optimal inputs.

    One column per group; rows: "on grid" (raw profile), "smoothed" (``size x size`` average,
    region outlined), the single-filter optimal inputs placed as their filters sit in the region,
    and the joint input. The maps of a row share one diverging colour scale centred at 0, and all
    optimal inputs share one; each row has a colorbar. The optimal inputs keep their aspect (one
    frame as wide as one feature bin is tall); each group's bottom-left single-filter panel and
    its joint panel have labelled axes (frames and features).

    Args:
        gradnap: a fitted :class:`keras_topomap.GradNAP`.
        layer: layer name.
        groups: group names or indices, one column each.
        single: per group, ``(n, T, n_features)`` single-filter inputs in ``region.filters``
            order.
        joint: per group, ``(T, n_features)`` or ``(1, T, n_features)`` joint input.
        regions: per group, the :class:`~keras_topomap.grid.Region` (default: the group's most
            responsive region).
        size: smoothing / region side.
        fig: a ``Figure`` or ``SubFigure`` to draw into (default: a new Figure).
        cmap: diverging colormap.
        panel_width: inches per column.
        threshold: z below which a group's map is marked "not topographic" (tested on the raw
            map, shown on both map rows).
        feature_config: the :class:`~keras_topomap.datasets.FeatureConfig` of the inputs, for
            the axis labels (:func:`input_axis_labels`).

    Returns:
        the Figure (or the SubFigure drawn into).

    Example:

    >>> fig = plot_figure1b(gn, "conv_2", ["ae"], [opt.inputs_], [joint], [region])
    >>> fig.savefig("figure1b.png")
    """
    indices = _gradnap_groups(gradnap, layer, groups)
    n_groups = len(indices)
    if len(single) != n_groups or len(joint) != n_groups:
        raise ValueError(
            f"plot_figure1b needs single and joint inputs for each of the {n_groups} groups. "
            f"Received: {len(single)} single, {len(joint)} joint"
        )
    if regions is None:
        regions = [gradnap.most_responsive_region(layer, i, size=size) for i in indices]
    raw = gradnap.maps(layer)[indices]
    smoothed = gradnap.maps(layer, smooth=True, size=size)[indices]
    verdicts = map_verdicts(raw, threshold=threshold)
    single = [np.asarray(s, dtype=np.float64) for s in single]
    joint = [np.asarray(j, dtype=np.float64).reshape(np.shape(s)[1:]) for j, s in
             zip(joint, single)]
    h, w = raw.shape[1:]
    n_frames, n_features = single[0].shape[-2:]
    # row heights in units of one grid column's width (maps and the joint input are size columns
    # wide, a single-filter input one), each panel at its own aspect, plus room for the labels
    tall = n_features / n_frames
    heights = ([size * h / w + 0.4] * 2 + [tall + 0.1] * (size - 1) + [tall + 0.4]
               + [size * tall + 0.45])
    if fig is None:
        column = panel_width / (size + 0.3)
        fig = new_figure(figsize=(panel_width * n_groups + 1.3, column * sum(heights) + 0.5))
    # one block of size columns per group and a narrow empty column between blocks, so that the
    # single-filter panels of neighbouring groups do not run into each other
    widths = ([1.0] * size + [0.3]) * n_groups
    spec = fig.add_gridspec(len(heights), len(widths) - 1, width_ratios=widths[:-1],
                            height_ratios=heights, wspace=0.08, hspace=0.02)
    x_label, y_label = input_axis_labels(feature_config)

    def label_input_axes(ax, row_name=None):
        ax.set_xticks([0, n_frames - 1])
        ax.set_yticks([0, n_features - 1])
        ax.tick_params(labelsize=5, length=2, pad=1)
        ax.set_xlabel(x_label, fontsize=6, labelpad=1)
        ax.set_ylabel(f"{row_name}\n{y_label}" if row_name else y_label, fontsize=6,
                      labelpad=1)

    def block(g, row, col=None):
        first = g * (size + 1)
        return spec[row, first:first + size] if col is None else spec[row, first + col]

    label = "GradNAP" if gradnap.adjust != "none" else "NAP"
    images = {}
    rows_axes = {"on grid": [], "smoothed": [], "inputs": []}
    for row, (maps, what) in enumerate(((raw, "on grid"), (smoothed, "smoothed"))):
        limit = symmetric_limit(*maps)
        for g, index in enumerate(indices):
            ax = fig.add_subplot(block(g, row))
            images[what] = plot_grid_map(
                ax, maps[g], vmax=limit, cmap=cmap, colorbar=False,
                title=f"/{gradnap.group_name(index).upper()}/" if row == 0 else None,
                region=regions[g] if row == 1 else None, verdict=verdicts[g],
            )
            if g == 0:
                ax.set_ylabel(what, fontsize=8)
            rows_axes[what].append(ax)
    limit = symmetric_limit(*single, *joint)
    r = size // 2
    for g in range(n_groups):
        region = regions[g]
        positions = np.divmod(np.asarray(region.filters), w)
        if len(region.filters) != len(single[g]):
            raise ValueError(
                f"Group {_group_title(gradnap, indices[g])}: {len(single[g])} single-filter inputs "
                f"for a region of {len(region.filters)} filters."
            )
        for k, (rr, cc) in enumerate(zip(*positions)):
            dr, dc = int(rr) - region.center[0] + r, int(cc) - region.center[1] + r
            ax = fig.add_subplot(block(g, 2 + dr, dc))
            rows_axes["inputs"].append(ax)
            images["inputs"] = ax.imshow(single[g][k].T, cmap=cmap, vmin=-limit, vmax=limit,
                                         origin="lower", aspect="equal", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            row_name = "single-filter" if g == 0 and dc == 0 and dr == size - 1 else None
            if dc == 0 and dr == size - 1:  # one labelled panel per group: what the axes are
                label_input_axes(ax, row_name)
        ax = fig.add_subplot(block(g, 2 + size))
        rows_axes["inputs"].append(ax)
        ax.imshow(joint[g].T, cmap=cmap, vmin=-limit, vmax=limit, origin="lower",
                  aspect="equal", interpolation="nearest")
        label_input_axes(ax, "joint" if g == 0 else None)
    for what, text in (("on grid", f"{label} (on grid)"), ("smoothed", f"{label} (smoothed)"),
                       ("inputs", "optimal input\n(normalised features)")):
        cbar = fig.colorbar(images[what], ax=rows_axes[what], shrink=0.9, aspect=12, pad=0.02)
        cbar.set_label(text, fontsize=7)
        cbar.ax.tick_params(labelsize=6)
        cbar.formatter.set_powerlimits((-4, 4))
    fig.suptitle(f"{label} of layer {layer} and optimal inputs of the most responsive "
                 f"{size}x{size} region", fontsize=9)
    return fig


def plot_correlation_by_distance(curves, ncols=5, panel_size=(2.4, 2.0), fig=None):
    """Channel correlation against grid distance, one panel per layer, with the random layout.

    Args:
        curves: ``{layer_name: curve}``, each a
            :class:`~keras_topomap.metrics.CorrelationCurve` or a dict with ``distance``,
            ``mean``, ``sem``, ``null_mean`` (as in ``metrics.json``'s ``activity`` entries,
            ``falloff`` and ``falloff_z`` go into the titles when present).
        ncols: panels per row.
        panel_size: ``(width, height)`` of one panel in inches.
        fig: an existing figure to draw into.

    Returns:
        the matplotlib figure.
    """
    if not curves:
        raise ValueError("plot_correlation_by_distance needs at least one layer's curve.")
    names = list(curves)
    ncols = min(ncols, len(names))
    nrows = -(-len(names) // ncols)
    if fig is None:
        fig = new_figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.ravel(), names):
        c = curves[name]
        if isinstance(c, dict) and "curve" in c:  # a layer entry of train.layer_activity
            c = c["curve"]
        get = c.get if isinstance(c, dict) else lambda key, c=c: getattr(c, key, None)
        d, mean = np.asarray(get("distance")), np.asarray(get("mean"))
        sem = np.asarray(get("sem"))
        ax.fill_between(d, mean - sem, mean + sem, color="C0", alpha=0.3, linewidth=0)
        ax.plot(d, mean, "o-", color="C0", markersize=3, label="grid layout")
        ax.plot(d, np.asarray(get("null_mean")), "--", color="0.4", label="random layout")
        title = name
        if get("falloff") is not None:
            title += f"\nfalloff {get('falloff'):+.2f} (z {get('falloff_z'):+.0f})"
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.axhline(0.0, color="0.8", linewidth=0.5)
    for ax in axes[-1]:
        ax.set_xlabel("grid distance", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean correlation", fontsize=8)
    axes.ravel()[0].legend(fontsize=6, loc="upper right")
    return fig
