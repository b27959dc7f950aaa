"""Plotting: grid maps, regions and the figures built from them.

Every figure in keras-topomap is drawn here, with matplotlib's object API (no pyplot state is
left behind and ``plt.show()`` is never called): functions return a ``matplotlib.figure.Figure``
or draw into an ``Axes`` they are given.

Example:

>>> fig = plot_grid_maps(maps, titles=["/AE/", "/AA/"], diverging=True)
>>> fig.savefig("maps.png")
"""

from __future__ import annotations

import numpy as np

__all__ = ["new_figure", "plot_grid_map", "plot_grid_maps", "outline_region", "symmetric_limit"]


def new_figure(figsize=(6, 4), **kwargs):
    """A matplotlib Figure not registered with pyplot (safe in scripts, threads and tests)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained", **kwargs)


def symmetric_limit(*maps):
    """Largest absolute finite value over the maps (1.0 if all are zero): a shared colour scale."""
    values = [np.abs(np.asarray(m, dtype=np.float64)) for m in maps if np.size(m)]
    vmax = max((float(np.nanmax(v)) for v in values), default=0.0)
    return vmax if vmax > 0 else 1.0


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
):
    """Draws one ``(H, W)`` grid map into ``ax``.

    Args:
        ax: matplotlib Axes.
        grid_map: array ``(H, W)``.
        title: axes title.
        diverging: centre the colour scale at 0 with a diverging colormap (for profiles that are
            positive or negative); otherwise a sequential colormap over the data range.
        vmin, vmax: colour limits; for ``diverging`` only ``vmax`` is used (``[-vmax, vmax]``).
        cmap: colormap name overriding the default (``"RdBu_r"`` / ``"viridis"``).
        colorbar: add a colorbar next to the axes.
        region: optional :class:`keras_topomap.grid.Region` to outline.
        interpolation: passed to ``imshow`` (``"bicubic"`` gives an EEG-like continuous look).
        label: colorbar label.

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
):
    """Several ``(H, W)`` maps side by side with a shared colour scale.

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

    Returns:
        matplotlib Figure.
    """
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    n = len(maps)
    if n == 0:
        raise ValueError("plot_grid_maps needs at least one map.")
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
    colorbar=True, label=None, fontsize=7,
):
    """Many ``(H, W)`` maps tiled into one image on one axes, with a title above each tile.

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
        diverging, vmin, vmax, cmap, label: as for :func:`plot_grid_map`.
        colorbar: add one colorbar for all tiles (first call only).
        fontsize: size of the titles.

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
    ncols = int(ncols or min(n, 8))
    nrows = -(-n // ncols)
    rows, cols = np.divmod(np.arange(n), ncols)
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
        for text, title in zip(ax.texts, titles or ()):
            text.set_text(title)
        return image
    image = ax.imshow(mosaic, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    for i, title in enumerate(titles or ()):
        ax.text(left[i] + (w - 1) / 2, top[i] - 0.6, title, ha="center", va="bottom",
                fontsize=fontsize)
    if colorbar:
        cbar = ax.figure.colorbar(image, ax=ax, shrink=0.8)
        if label:
            cbar.set_label(label, fontsize=8)
        cbar.ax.tick_params(labelsize=7)
    return image
