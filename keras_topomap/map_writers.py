"""Where :class:`~keras_topomap.TopoMapCallback`'s maps go: TensorBoard, PNG, GIF and npz files.

The callback computes an epoch's maps and hands them over as plain numpy arrays (an
:class:`EpochMaps`); :class:`MapWriters` turns them into

- TensorBoard summaries (``log_dir``): images ``topomap/<layer>`` and ``nap/<layer>/<group>``,
  scalars ``topo_score/<layer>`` and ``penalty/<layer>``, at step = epoch index, written by
  :class:`keras_topomap.summaries.SummaryWriter` (the ``tensorboard`` package, no TensorFlow);
- files (``out_dir``): ``<layer>/epoch_NNN.png`` (and ``groups_epoch_NNN.png``), the history as
  ``topomaps.npz``, and at train end one GIF per layer from the PNGs' pixels.

Both are written in one background thread, at most one epoch in flight, so that the next epoch
trains meanwhile; an error there is raised at the next epoch or at train end.

File names: a layer's folder and GIFs are named by :func:`layer_file_names`, which keeps
letters, digits and ``._-`` and percent-escapes every other character (``"a b"`` ->
``a%20b``, ``"a_b"`` stays ``a_b``), so two layers never share a folder or a GIF; where two
names would still meet (names differing only in case, on a case-insensitive file system, or a
layer ``x_groups`` beside the group GIF of ``x``) the later layer's name gets ``~`` and 6 hex
digits of a hash. :func:`layer_name_from_file` reverses the mapping. Every PNG, GIF and the
``.npz`` is written to a hidden temporary file and renamed into place, so a reader (or a
crash) never finds half a file. Files in ``out_dir`` left by an earlier run that this run did
not write again are named in one warning at train end.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
import urllib.parse
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from keras_topomap import summaries
from keras_topomap import visualization as vis
from keras_topomap._files import replace_atomically, savez_atomically
from keras_topomap.visualization import new_figure, plot_grid_maps, plot_grid_mosaic

__all__ = ["EpochMaps", "MapWriters", "annotate_image", "layer_file_names",
           "layer_name_from_file"]


class EpochMaps(NamedTuple):
    """One logged epoch's results, as plain arrays (what the writers receive).

    Attributes:
        epoch: epoch index (0-based, as Keras passes it).
        layers: watched layer names, in order.
        maps: ``{layer: (H, W)}`` smoothed overall maps.
        limits: ``{layer: (lo, hi)}`` the colour range (the running range over epochs).
        group_maps: ``{layer: (G, H, W)}`` smoothed group maps (empty without groups).
        group_limits: ``{layer: float}`` their symmetric colour limit.
        group_names: the names of the ``G`` groups.
        scores: ``{layer: float}`` topography scores (layers with a kernel).
        penalties: ``{layer: float}`` regularizer penalties (regularized layers).
        raw_maps: ``{layer: (H, W)}`` the overall maps before smoothing (what is tested, and
            what the PNGs and GIFs show by default).
        raw_limits: ``{layer: (lo, hi)}`` their running colour range.
        raw_group_maps: ``{layer: (G, H, W)}`` the group maps before smoothing.
        raw_group_limits: ``{layer: float}`` their symmetric colour limit.
    """

    epoch: int
    layers: list
    maps: dict
    limits: dict
    group_maps: dict
    group_limits: dict
    group_names: list
    scores: dict
    penalties: dict
    raw_maps: dict
    raw_limits: dict
    raw_group_maps: dict
    raw_group_limits: dict


class MapWriters:
    """Writes :class:`EpochMaps` to TensorBoard (``log_dir``) and files (``out_dir``).

    Args:
        log_dir: where TensorBoard summaries go (None: none are written).
        out_dir: where PNG, GIF and npz files go (None: none are written).
        cmap: colormap of the overall maps.
        interpolation: ``imshow`` interpolation of the overall maps.
        image_size: TensorBoard images are enlarged to at least this many pixels.
        fps: frames per second of the GIFs.
        group_pngs: draw group maps every epoch (and a GIF of them), not only at the end.
        background: write in a background thread (at most one epoch in flight).
        show_smoothed: draw the smoothed map as a second panel beside the raw one.
        threshold: z below which a map is marked "not topographic"
            (:func:`keras_topomap.visualization.map_verdict` of the raw map).
        n_permutations: permuted layouts per test.
    """

    def __init__(self, log_dir, out_dir, *, cmap, interpolation, image_size, fps, group_pngs,
                 background, show_smoothed=False, threshold=vis.TOPOGRAPHY_THRESHOLD,
                 n_permutations=99):
        self.show_smoothed, self.threshold = bool(show_smoothed), float(threshold)
        self.n_permutations = int(n_permutations)
        self.log_dir, self.out_dir = log_dir, out_dir
        self.cmap, self.interpolation = cmap, interpolation
        self.image_size, self.fps = image_size, fps
        self.group_pngs, self.background = group_pngs, background
        self._writer = None
        self._executor = self._pending = None
        self._figures = {}
        self._stems = {}
        self._found = set()
        self.reset()

    def reset(self):
        """Forgets the GIF frames, the previous maps and the files written (a new history
        starts)."""
        self._gif_frames = {}
        self._previous = {}
        self._written = set()

    def _verdict(self, grid_map):
        return vis.map_verdict(grid_map, threshold=self.threshold,
                               n_permutations=self.n_permutations)

    def open(self, layers=()):
        """Train begin: names the files of ``layers`` (:func:`layer_file_names`), notes the map
        files ``out_dir`` already holds, and opens the TensorBoard writer."""
        self._stems = layer_file_names(layers)
        self._found = set(_map_files(self.out_dir)) - self._written
        self._writer = None
        if self.log_dir is None:
            return
        if summaries.tensorboard_available("TopoMapCallback"):
            self._writer = summaries.SummaryWriter(self.log_dir)

    def write(self, maps, history, on_done):
        """Writes one epoch: ``maps`` (:class:`EpochMaps`), ``history`` (the arrays of
        ``topomaps.npz``); ``on_done(cpu_seconds)`` is called when written."""
        jobs = []
        if self._writer is not None:
            jobs.append(self._summary_job(maps))
        if self.out_dir is not None:
            jobs.append(self._file_job(maps, history))
        if not jobs:
            return

        def run():
            start = time.thread_time()
            for job in jobs:
                job()
            on_done(time.thread_time() - start)

        if not self.background:
            run()
            return
        self.wait()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="topomap")
        self._pending = self._executor.submit(run)

    def wait(self):
        """Waits for the epoch in flight; re-raises an error of the writer thread here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def finish(self, last):
        """Train end: waits, draws ``last``'s group maps (when not drawn every epoch) and the
        GIFs, and closes the writers (also after an error)."""
        try:
            self.wait()
            if self.out_dir is not None and last is not None:
                if last.group_maps and not self.group_pngs:
                    self._write_group_pngs(last)
                self._write_gifs()
                self._warn_stale()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._figures = {}

    # ------------------------------------------------------------------------------------------
    # TensorBoard

    def _summary_job(self, maps):
        """A function writing this epoch's TensorBoard summaries (one event)."""
        image_tags, pictures, scalars = [], [], {}
        for name in maps.layers:
            image_tags.append(f"topomap/{name}")
            pictures.append((maps.raw_maps[name], self.cmap, *maps.raw_limits[name]))
            if name in maps.raw_group_maps:
                limit = maps.raw_group_limits[name]
                image_tags.extend(f"nap/{name}/{group}" for group in maps.group_names)
                pictures.append((maps.raw_group_maps[name], "RdBu_r", -limit, limit))
            if name in maps.scores:
                scalars[f"topo_score/{name}"] = maps.scores[name]
            if name in maps.penalties:
                scalars[f"penalty/{name}"] = maps.penalties[name]

        def job():
            images = []
            for values, cmap, lo, hi in pictures:
                # each raw map drawn as it is, with its verdict in a strip under it
                rgb = colorize(values, cmap, lo, hi, self.image_size)
                flat = values.reshape((-1,) + values.shape[-2:])
                tiles = rgb.reshape((-1,) + rgb.shape[-3:])
                images.extend(annotate_image(tile, self._verdict(grid_map))
                              for grid_map, tile in zip(flat, tiles))
            writer = self._writer
            values = [writer.image_value(tag, image) for tag, image in zip(image_tags, images)]
            writer.write_values(values + writer.scalar_values(scalars), maps.epoch)
            writer.flush()

        return job

    # ------------------------------------------------------------------------------------------
    # Files

    def _file_job(self, maps, history):
        """A function writing this epoch's files (it may run in the writer thread while the
        next epoch trains: ``maps`` and ``history`` are not changed afterwards)."""
        number = maps.epoch + 1

        def job():
            for name in maps.layers:
                raw = maps.raw_maps[name]
                readout = self._change_readout(name, raw, number)
                self._render(
                    ("map", name), raw, None, nonempty(*maps.raw_limits[name]),
                    f"{name} - epoch {number}\n{readout}",
                    path=self._png_path(name, "epoch", number), smoothed=maps.maps[name],
                    smoothed_limits=nonempty(*maps.limits[name]),
                )
                if self.group_pngs and name in maps.group_maps:
                    self._render_groups(maps, name, frame=True)
            # Written beside, then renamed: a crash mid-write never leaves a broken history.
            savez_atomically(self._out_path("topomaps.npz"), history)

        return job

    def _change_readout(self, name, raw, number):
        """"change since epoch k: 3.1% of the map's spread (r = 0.998)" for the animation, so
        that a reader sees whether the map is still forming; the previous logged map is kept."""
        previous = self._previous.get(name)
        self._previous[name] = (number, np.array(raw, dtype=np.float64))
        if previous is None:
            return "first logged epoch"
        before, old = previous
        spread = float(old.std())
        change = float(np.sqrt(np.mean((raw - old) ** 2)))
        relative = change / spread if spread > 0 else float("inf")
        if float(raw.std()) > 0 and spread > 0:
            r = float(np.corrcoef(raw.ravel(), old.ravel())[0, 1])
            return f"change since epoch {before}: {relative:.1%} of the map's spread (r = {r:.3f})"
        return f"change since epoch {before}: {change:.3g}"

    def _render_groups(self, maps, name, frame):
        number = maps.epoch + 1
        limit = maps.raw_group_limits[name] or 1.0
        self._render(
            ("groups", name), maps.raw_group_maps[name], list(maps.group_names), (-limit, limit),
            f"{name} - epoch {number}: group mean - mean over groups",
            path=self._png_path(name, "groups_epoch", number), frame=frame,
        )

    def _stem(self, name):
        if name not in self._stems:  # writers used without open(layers)
            self._stems = layer_file_names([*self._stems, name])
        return self._stems[name]

    def _out_path(self, relative):
        """``out_dir / relative``, remembered as written by this run."""
        self._written.add(relative)
        return os.path.join(self.out_dir, relative)

    def _png_path(self, name, stem, number):
        folder = self._stem(name)
        os.makedirs(os.path.join(self.out_dir, folder), exist_ok=True)
        return self._out_path(f"{folder}/{stem}_{number:03d}.png")

    def _warn_stale(self):
        """Warns about map files of an earlier run in ``out_dir`` that this run did not write
        again (a longer run's later epochs, layers not watched now), which would otherwise sit
        beside this run's as if they belonged to it. A layer's PNGs numbered before the first
        one this run wrote are left unmentioned: they may be the earlier part of a resumed
        run."""
        first = {}
        for relative in self._written:
            folder, number = _png_number(relative)
            if number is not None:
                first[folder] = min(first.get(folder, number), number)
        stale = []
        for relative in sorted(self._found - self._written):
            folder, number = _png_number(relative)
            if number is not None and folder in first and number < first[folder]:
                continue
            stale.append(relative)
        if stale:
            shown = ", ".join(stale[:6]) + (", ..." if len(stale) > 6 else "")
            warnings.warn(
                f"TopoMapCallback: out_dir {self.out_dir} holds {len(stale)} map files of an "
                f"earlier run that this run did not write: {shown}. They are not this run's "
                "maps; use a new out_dir (or empty this one) to keep runs apart.",
                stacklevel=3,
            )

    def _render(self, key, maps, titles, limits, suptitle, path, frame=True, smoothed=None,
                smoothed_limits=None):
        """Draws one layer's raw overall map (``key = ("map", layer)``, maps ``(H, W)``; with
        ``show_smoothed`` the smoothed map beside it) or raw group maps (``("groups", layer)``,
        ``(G, H, W)``) into its figure -- built on first use, then updated in place -- with the
        verdict of each raw map (:func:`keras_topomap.visualization.mark_verdict`), saves it as
        the PNG ``path`` and, with ``frame``, keeps the same pixels as a frame of the GIF."""
        kind, _ = key
        entry = self._figures.get(key)
        if kind == "groups":
            if entry is None:
                n, h, w = maps.shape
                ncols = min(n, 8)
                nrows = -(-n // ncols)
                fig = new_figure(figsize=(ncols * 1.0 + 1.4, nrows * 1.3 * h / w + 0.6))
                entry = self._figures[key] = {"figure": fig, "ax": fig.add_subplot()}
            plot_grid_mosaic(
                entry["ax"], maps, titles, ncols=8, diverging=True, vmax=limits[1], label="NAP",
                threshold=self.threshold,
            )
        else:
            panels = [maps, smoothed] if self.show_smoothed and smoothed is not None else [maps]
            if entry is None:
                fig = plot_grid_maps(
                    panels, diverging=False, label="mean activation", panel_size=3.0,
                    test=False, shared_scale=False,
                    titles=["raw", "smoothed"] if len(panels) == 2 else None,
                )
                images = [ax.images[0] for ax in fig.axes if ax.images]
                for image in images:
                    image.set_cmap(self.cmap)
                    image.set_interpolation(self.interpolation)
                entry = self._figures[key] = {"figure": fig, "images": images}
            verdict = self._verdict(maps)
            for image, values, lims in zip(entry["images"], panels, [limits, smoothed_limits]):
                image.set_data(values)
                image.set_clim(*lims)
                vis.clear_marks(image.axes)
                vis.mark_verdict(image.axes, verdict, fontsize=8)
        fig = entry["figure"]
        fig.suptitle(suptitle, fontsize=10)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        with replace_atomically(path) as tmp:
            Path(tmp).write_bytes(buffer.getvalue())
        if frame:
            from PIL import Image

            # Palette-quantized here, in the writer thread, so that the GIF at train end is
            # only a concatenation; ~50 kB per frame.
            buffer.seek(0)
            with Image.open(buffer) as image:
                self._gif_frames.setdefault(key, []).append(image.convert("RGB").quantize())
        if not entry.get("frozen"):
            # Freeze the layout solved by the first save: re-solving it on every later save
            # would cost more than drawing the maps.
            fig.set_layout_engine("none")
            entry["frozen"] = True

    def _write_group_pngs(self, last):
        """The last logged epoch's group maps, when they were not drawn every epoch."""
        for name in last.layers:
            if name in last.group_maps:
                self._render_groups(last, name, frame=False)

    def _write_gifs(self):
        """One GIF per layer (and per layer's groups, with ``group_pngs``): the frames drawn
        for the PNGs, in epoch order."""
        duration = max(int(round(1000 / self.fps)), 20)
        for (kind, name), frames in self._gif_frames.items():
            suffix = "_groups" if kind == "groups" else ""
            path = self._out_path(f"{self._stem(name)}{suffix}.gif")
            with replace_atomically(path) as tmp:
                frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                               duration=duration, loop=0)


def colorize(grid_map, cmap, lo, hi, image_size):
    """``(..., H, W)`` maps as RGB uint8 images ``(..., h, w, 3)``, enlarged by pixel
    repetition to at least ``image_size`` pixels on the longer side."""
    from matplotlib import colormaps

    lo, hi = nonempty(lo, hi)
    scaled = np.clip((np.asarray(grid_map, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    colormap = colormaps[cmap] if isinstance(cmap, str) else cmap
    rgb = colormap(scaled, bytes=True)[..., :3]
    factor = max(1, -(-image_size // max(grid_map.shape[-2:])))
    return np.repeat(np.repeat(rgb, factor, axis=-3), factor, axis=-2)


def annotate_image(rgb, verdict):
    """An RGB uint8 map image with its verdict written in a white strip under it: Moran's I and
    z, and for a map not smoother than chance "not topographic" in red with a red frame."""
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    width = max(w, 100)
    canvas = Image.new("RGB", (width, h + 24), "white")
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), ((width - w) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    red = (192, 0, 0)
    draw.text((2, h + 1), verdict.label, fill=(30, 30, 30) if verdict.topographic else red)
    if not verdict.topographic:
        draw.text((2, h + 12), "not topographic", fill=red)
        draw.rectangle([0, 0, width - 1, h + 23], outline=red, width=2)
    return np.asarray(canvas)


def nonempty(lo, hi):
    """``(lo, hi)`` widened slightly where ``hi <= lo`` (a constant map still gets a scale)."""
    lo, hi = float(lo), float(hi)
    if hi > lo:
        return lo, hi
    pad = max(abs(lo) * 1e-3, 1e-6)
    return lo - pad, hi + pad


_KEPT = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"


def _escape(name):
    """Percent-escapes (UTF-8) every character of ``name`` outside ``[A-Za-z0-9._-]``, and a
    leading ``.`` (no hidden files, no ``.`` or ``..`` folder)."""
    escaped = urllib.parse.quote(str(name), safe=_KEPT)
    if escaped.startswith("."):
        escaped = "%2E" + escaped[1:]
    return escaped


def layer_file_names(names):
    """``{layer name: file stem}`` for the folders and GIFs of ``names``, all different.

    A stem is the name with every character outside ``[A-Za-z0-9._-]`` (and a leading ``.``)
    percent-escaped: ``"conv_1"`` -> ``conv_1``, ``"a b"`` -> ``a%20b``. A stem whose folder
    or GIFs (``<stem>.gif``, ``<stem>_groups.gif``) would meet an earlier layer's, compared
    without case (as a case-insensitive file system does), gets ``~`` and 6 hex digits of the
    name's SHA-256 appended (neither ``~`` nor ``%`` survives escaping, so no other name can
    produce it). :func:`layer_name_from_file` reverses it.

    Args:
        names: the layer names, in the order the callback watches them (an earlier layer
            keeps its plain stem).

    Returns:
        dict ``{name: stem}``.

    Example:

    >>> layer_file_names(["a b", "a_b", "A_B"])
    {'a b': 'a%20b', 'a_b': 'a_b', 'A_B': 'A_B~6c1908'}
    """
    stems, taken = {}, set()
    for name in names:
        name = str(name)
        stem = _escape(name)
        claims = {stem.lower(), f"{stem}.gif".lower(), f"{stem}_groups.gif".lower()}
        if claims & taken:
            stem += "~" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:6]
            claims = {stem.lower(), f"{stem}.gif".lower(), f"{stem}_groups.gif".lower()}
        taken |= claims
        stems[name] = stem
    return stems


def layer_name_from_file(stem):
    """The layer name of a file stem made by :func:`layer_file_names` (folder name, or GIF
    name without ``.gif`` / ``_groups.gif``).

    Args:
        stem: the file stem.

    Example:

    >>> layer_name_from_file("a%20b"), layer_name_from_file("A_B~6c1908")
    ('a b', 'A_B')
    """
    return urllib.parse.unquote(re.sub(r"~[0-9a-f]{6}$", "", str(stem)))


_PNG = re.compile(r"^([^/]+)/(?:groups_)?epoch_(\d+)\.png$")


def _png_number(relative):
    """``(folder, epoch number)`` of an epoch PNG's relative path, else ``(None, None)``."""
    match = _PNG.match(relative)
    return (match.group(1), int(match.group(2))) if match else (None, None)


def _map_files(out_dir):
    """Relative paths of the map files in ``out_dir`` (what these writers write: GIFs,
    ``topomaps.npz``, epoch PNGs in layer folders; hidden temporary files left out)."""
    if out_dir is None or not os.path.isdir(out_dir):
        return []
    found = []
    for entry in os.scandir(out_dir):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and (entry.name.endswith(".gif") or entry.name == "topomaps.npz"):
            found.append(entry.name)
        elif entry.is_dir():
            found.extend(
                f"{entry.name}/{inner.name}" for inner in os.scandir(entry.path)
                if _PNG.match(f"{entry.name}/{inner.name}") and inner.is_file()
            )
    return found
