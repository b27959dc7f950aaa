"""The Wav2Letter-style character recognizer of Krug & Stober, with optional topographic layers.

A fully convolutional network (Collobert et al., 2016) over a sequence of feature frames
``(time, n_features)``: one strided convolution, a stack of narrow convolutions, two wide
"big" convolutions and a 1-wide output convolution giving per-frame character logits for CTC
(no softmax: :func:`keras.ops.ctc_loss` and :func:`keras.ops.ctc_decode` take logits).

Layer names are stable, so the analysis tools can address layers by name:

===============  ====================================================================
name             layer (``"paper"`` config)
===============  ====================================================================
``features``     the input, shape ``(None, n_features)`` -- any number of frames
``conv_1``       Conv1D 256 x 48, stride 2 (the only strided layer)
``conv_2`` ...   seven Conv1D 256 x 7 (``conv_2`` to ``conv_8``)
``conv_big_1``   Conv1D 2048 x 32
``conv_big_2``   Conv1D 2048 x 1
``logits``       Conv1D n_classes x 1, linear
===============  ====================================================================

All hidden layers use ReLU and ``"same"`` padding, so ``T`` input frames give ``ceil(T / 2)``
output frames. The strided first layer has an *even* width in every config: with ``"same"``
padding an odd width at stride 2 would shift the frame grid by one input frame between odd and
even ``T``, so an utterance's transcript would depend on how much it was padded in a batch.
Zero padding after an utterance still changes the outputs of its last frames (those whose
receptive field reaches into the padding), as for any convolutional recognizer.

With ``norm="batch"`` or ``norm="layer"`` every hidden convolution is a :class:`NormConv1D`:
convolution (no bias), then batch or layer normalization, then the activation, inside the one
layer that keeps the convolution's name -- so the named layer's output is still the activation
the analysis tools read, and its ``kernel`` the one the topographic constraint orders.
``norm=None`` (the default) builds the paper's plain ``Conv1D`` + ReLU layers exactly as before.
``augment`` inserts a :class:`~keras_topomap.augment.SpecAugment` layer named ``spec_augment``
after the input (active only in training). With ``mask_padding`` (on with the activity
regularizer) both carry the padding mask: batch normalization then computes its moments over
real frames only, and padded frames are 0 in every layer, with or without ``norm`` and
``augment``.

With ``dropout > 0`` a ``Dropout`` layer named ``<conv name>_dropout`` follows every hidden
convolution. With ``topographic=True`` every hidden convolution carries a
:class:`~keras_topomap.TopographicRegularizer` on its kernel; its grid is in :data:`CONFIGS`
(``paper``: 16 x 16 for the 256-filter layers, 64 x 32 for the 2048-filter ones).

Configurations (:data:`CONFIGS`):

- ``"paper"``: the seed paper's sizes (24.7 M parameters).
- ``"small"``: the same shape scaled to train on a laptop CPU: 64-filter layers on 8 x 8 grids,
  256-filter big layers on 16 x 16 grids; the same kernel widths and stride, so the same
  receptive field (194 input frames) as the paper's model.
- ``"tiny"``: a few thousand parameters for tests and smoke runs (two inner layers).

:func:`receptive_fields` (re-exported from :mod:`keras_topomap.receptive_field`) gives every
layer's cumulative stride and receptive field.

Example:

>>> from keras_topomap import models
>>> model = models.wav2letter("small", n_features=40, topographic=True, strength=0.01)
>>> model.get_layer("conv_big_1").output.shape
(None, None, 256)
"""

from __future__ import annotations

import dataclasses
import json
import random

import keras

from keras_topomap import checks
from keras_topomap import grid as grid_lib
from keras_topomap.activity import TopographicActivityRegularizer
from keras_topomap.masking import (
    MaskedConv1D,
    attached_mask,
    check_same_padding,
    strided_mask,
    zero_padded_frames,
)
from keras_topomap.receptive_field import receptive_fields
from keras_topomap.regularizers import TopographicRegularizer

__all__ = [
    "CONFIGS",
    "NORMS",
    "NormConv1D",
    "Wav2LetterConfig",
    "available_pretrained",
    "get_config",
    "layer_grids",
    "pretrained",
    "pretrained_info",
    "receptive_fields",
    "total_stride",
    "wav2letter",
]


@dataclasses.dataclass(frozen=True)
class Wav2LetterConfig:
    """Sizes of one Wav2Letter-style network.

    Attributes:
        name: the configuration's name.
        first_filters, first_width, stride: the strided first convolution ``conv_1``.
        n_inner, inner_filters, inner_width: the narrow convolutions ``conv_2`` ...
        big_filters, big_width: ``conv_big_1`` (``conv_big_2`` has the same filters, width 1).
        grid: ``(H, W)`` grid of the ``conv_1`` / inner layers (``H * W == first_filters``).
        big_grid: ``(H, W)`` grid of the two big layers.
    """

    name: str
    first_filters: int
    first_width: int
    stride: int
    n_inner: int
    inner_filters: int
    inner_width: int
    big_filters: int
    big_width: int
    grid: tuple
    big_grid: tuple

    def layer_names(self):
        """Names of the hidden convolutions, input to output (``logits`` excluded)."""
        inner = [f"conv_{i}" for i in range(2, self.n_inner + 2)]
        return ["conv_1", *inner, "conv_big_1", "conv_big_2"]

    def layer_grids(self):
        """``{layer_name: (H, W)}`` for every hidden convolution."""
        names = self.layer_names()
        grids = {name: tuple(self.grid) for name in names[:-2]}
        grids.update({name: tuple(self.big_grid) for name in names[-2:]})
        return grids


CONFIGS = {
    "paper": Wav2LetterConfig("paper", 256, 48, 2, 7, 256, 7, 2048, 32, (16, 16), (64, 32)),
    "small": Wav2LetterConfig("small", 64, 48, 2, 7, 64, 7, 256, 32, (8, 8), (16, 16)),
    "tiny": Wav2LetterConfig("tiny", 16, 12, 2, 2, 16, 5, 32, 7, (4, 4), (8, 4)),
}


#: Normalizations of :func:`wav2letter` (``norm=``): ``None`` is the paper's plain convolution.
NORMS = (None, "batch", "layer")


@keras.saving.register_keras_serializable(package="keras_topomap")
class NormConv1D(keras.layers.Conv1D):
    """``Conv1D`` -> normalization -> activation, as one layer with the convolution's name.

    One layer, not three, so that the layer a name addresses still outputs the activation
    (what GradNAP and the activity metrics read) and still owns the ``kernel`` (what the
    topographic constraint orders). The convolution has no bias: the normalization's offset
    takes its place.

    Padding masks: like :class:`~keras_topomap.masking.MaskedConv1D`, the layer carries a
    Keras frame mask on its input (from a ``Masking`` layer or a previous masked layer) through
    -- batch normalization computes its batch moments (and so its moving statistics) over the
    real frames only, padded output frames are set to 0 after the activation, and the strided
    mask is attached to the output (before Keras runs the layer's activity regularizer, which
    therefore leaves padded frames out too). So neither the outputs of real frames, nor the
    statistics, nor an activity penalty depend on how much padding a batch adds. Layer
    normalization works per frame, so the mask only zeroes the padded frames. A masked input
    needs ``padding="same"``. Without a mask the layer behaves as before.

    Args:
        filters: as for ``keras.layers.Conv1D``.
        kernel_size: as for ``keras.layers.Conv1D``.
        norm: ``"batch"`` (``BatchNormalization`` over batch and time; over the real frames
            when the input carries a mask) or ``"layer"`` (``LayerNormalization`` over the
            channels of each frame, the same in training and inference).
        norm_momentum: the batch normalization's moving-average momentum.
        **kwargs: the other ``keras.layers.Conv1D`` arguments (``activation`` is applied after
            the normalization; ``use_bias`` is always False).

    Example:

    >>> inputs = keras.Input((None, 3))
    >>> masked = keras.layers.Masking(0.0)(inputs)
    >>> outputs = NormConv1D(4, 3, norm="batch", padding="same", activation="relu")(masked)
    >>> model = keras.Model(inputs, outputs)
    >>> x = np.concatenate([np.ones((1, 5, 3)), np.zeros((1, 3, 3))], axis=1)
    >>> bool((model(x, training=True)[0, 5:] == 0).all())  # padded frames are 0
    True
    """

    def __init__(self, filters, kernel_size, norm="layer", norm_momentum=0.99, **kwargs):
        if norm not in NORMS[1:]:
            raise ValueError(
                f"NormConv1D: norm must be one of {NORMS[1:]}. Received: norm={norm!r}"
            )
        activation = kwargs.pop("activation", None)
        kwargs["use_bias"] = False
        super().__init__(filters, kernel_size, activation=None, **kwargs)
        self.supports_masking = True
        self.norm = norm
        self.norm_momentum = float(norm_momentum)
        self.post_activation = keras.activations.get(activation)
        if norm == "batch":
            self.normalization = keras.layers.BatchNormalization(
                momentum=self.norm_momentum, name="batch_norm"
            )
        else:
            self.normalization = keras.layers.LayerNormalization(name="layer_norm")

    def build(self, input_shape):
        super().build(input_shape)
        self.normalization.build(super().compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        # As in MaskedConv1D, the mask is read from the input tensor (not a ``mask`` argument),
        # so its computation stays out of the model's graph.
        mask = attached_mask(inputs)
        x = super().call(inputs)
        if mask is None:
            x = self.normalization(x, training=training)
            return self.post_activation(x)
        check_same_padding(self)
        frames = strided_mask(mask, self.strides[0])
        if self.norm == "batch":  # batch moments over the real frames only
            x = self.normalization(x, training=training, mask=frames)
        else:  # per-frame statistics: the mask changes none of them
            x = self.normalization(x, training=training)
        return zero_padded_frames(self.post_activation(x), frames)

    def compute_mask(self, inputs, mask=None):
        return None if mask is None else strided_mask(mask, self.strides[0])

    def get_config(self):
        config = super().get_config()
        config.pop("use_bias", None)
        config.update({
            "activation": keras.activations.serialize(self.post_activation),
            "norm": self.norm,
            "norm_momentum": self.norm_momentum,
        })
        return config


def get_config(config):
    """The :class:`Wav2LetterConfig` for a name in :data:`CONFIGS` (or a config, returned as is).

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(config, Wav2LetterConfig):
        return config
    if config not in CONFIGS:
        raise ValueError(
            f"Unknown Wav2Letter config; expected one of {sorted(CONFIGS)}. Received: {config!r}"
        )
    return CONFIGS[config]


def _check_config(cfg):
    checks.positive_int(cfg.stride, "stride", owner=f"Wav2Letter config {cfg.name!r}")
    grid_lib.validate_grid(cfg.grid, cfg.first_filters, what=f"{cfg.name} grid of conv_1")
    grid_lib.validate_grid(cfg.grid, cfg.inner_filters, what=f"{cfg.name} grid of inner layers")
    grid_lib.validate_grid(cfg.big_grid, cfg.big_filters, what=f"{cfg.name} grid of big layers")


def wav2letter(
    config="small",
    n_features=40,
    n_classes=29,
    topographic=True,
    strength=0.01,
    dropout=0.0,
    neighborhood=3,
    seed=None,
    name=None,
    norm=None,
    activation="relu",
    augment=None,
    global_strength=0.0,
    activity_strength=0.0,
    activity_global_strength=0.0,
    mask_padding=None,
    input_strength=0.0,
):
    """Build a Wav2Letter-style CTC recognizer (logits out, no softmax).

    Args:
        config: ``"paper"``, ``"small"``, ``"tiny"`` (see :data:`CONFIGS`) or a
            :class:`Wav2LetterConfig`.
        n_features: features per input frame (40 log-mel bands by default).
        n_classes: output classes including the CTC blank at index 0 (29: blank, a-z, space,
            apostrophe).
        topographic: put a :class:`~keras_topomap.TopographicRegularizer` on every hidden
            convolution's kernel.
        strength: the regularizer's strength (ignored when ``topographic=False``).
        dropout: rate of a ``Dropout`` after every hidden convolution (0 adds none).
        neighborhood: the regularizer's odd neighbourhood side.
        seed: seed of the dropout masks (layer ``k`` gets ``seed + k``). ``None`` draws one
            from Python's ``random`` (seeded by ``keras.utils.set_random_seed``). Explicit
            seeds also make the PyTorch backend draw its masks from the saved seed state
            (unseeded, it uses torch's global generator), so resumed runs replay them.
        name: the model's name (default ``"wav2letter_<config>"``).
        norm: ``None`` (plain ``Conv1D`` with bias and activation, the paper's layers),
            ``"batch"`` or ``"layer"``: every hidden convolution becomes a :class:`NormConv1D`
            (convolution -> normalization -> activation). ``logits`` is never normalized.
        activation: the hidden layers' activation (any ``keras.activations`` name).
        augment: ``None``, or a :class:`~keras_topomap.augment.SpecAugment` (or a dict of its
            arguments) inserted after the input as ``spec_augment``; a dict without ``seed``
            gets one from ``seed``.
        global_strength: the weight regularizer's global term (see
            :class:`~keras_topomap.TopographicRegularizer`); ignored when
            ``topographic=False``.
        activity_strength: local strength of a
            :class:`~keras_topomap.TopographicActivityRegularizer` on every hidden convolution
            (on the same grid) when it or ``activity_global_strength`` is > 0.
        activity_global_strength: that regularizer's global strength.
        mask_padding: mark the real frames with a ``Masking`` layer (``padding_mask``, after the
            input) and carry that mask through every layer -- the plain convolutions become
            :class:`~keras_topomap.masking.MaskedConv1D`, a :class:`NormConv1D` (``norm``)
            and the ``SpecAugment`` layer (``augment``) carry it themselves -- so padded frames
            are 0 in every layer and stay out of the activity statistics and of the batch
            normalization's moments. ``None``: on exactly when the activity regularizer is.
        input_strength: the input side of the weight regularizer (see
            :class:`~keras_topomap.TopographicRegularizer`): every layer above a hidden
            convolution -- the next hidden convolution, and ``logits`` for the last one --
            reads neighbouring channels of that convolution's grid alike, which makes the
            gradient at that grid, and so its GradNAP maps, smooth. Independent of
            ``topographic`` (with ``topographic=False`` the kernels carry only this side).

    Returns:
        A functional ``keras.Model`` mapping ``(batch, T, n_features)`` to
        ``(batch, ceil(T / stride), n_classes)`` logits.

    Example:

    >>> model = wav2letter("tiny", n_features=40)
    >>> model(np.zeros((1, 101, 40), "float32")).shape
    (1, 51, 29)
    """
    cfg = get_config(config)
    _check_config(cfg)
    n_features = checks.positive_int(n_features, "n_features")
    # The CTC blank plus at least one label.
    n_classes = checks.integer(n_classes, "n_classes", minimum=2)
    dropout = checks.fraction(dropout, "dropout")
    norm = checks.choice(norm, "norm", NORMS)
    keras.activations.get(activation)  # an unknown name raises here, naming it

    grids = cfg.layer_grids()
    with_activity = float(activity_strength) > 0 or float(activity_global_strength) > 0
    mask_padding = with_activity if mask_padding is None else bool(mask_padding)
    if seed is None:
        seed = random.randrange(2**31 - 64)
    dropout_seeds = iter(range(int(seed), int(seed) + 64))

    input_strength = checks.number(input_strength, "input_strength", minimum=0)
    below = dict(zip(list(grids)[1:] + ["logits"], grids.values()))  # layer -> grid it reads

    def weight_regularizer(layer_name, grid):
        """``logits`` (``grid=None``) gets only the input side; None where nothing is on."""
        input_grid = below.get(layer_name) if input_strength > 0 else None
        outputs = topographic and grid is not None
        if not outputs and input_grid is None:
            return None
        return TopographicRegularizer(
            grid=grid, neighborhood=neighborhood,
            strength=strength if outputs else 0.0,
            global_strength=global_strength if outputs else 0.0,
            input_strength=input_strength if input_grid is not None else 0.0,
            input_grid=input_grid,
        )

    def regularizers(layer_name):
        """The layer's kernel and activity regularizers (None where that constraint is off)."""
        common = {"grid": grids[layer_name], "neighborhood": neighborhood}
        weight = weight_regularizer(layer_name, grids[layer_name])
        activity = (TopographicActivityRegularizer(strength=activity_strength,
                                                   global_strength=activity_global_strength,
                                                   **common) if with_activity else None)
        return {"kernel_regularizer": weight, "activity_regularizer": activity}

    conv_class = MaskedConv1D if mask_padding else keras.layers.Conv1D

    def conv(x, layer_name, filters, width, stride=1):
        options = {"strides": stride, "padding": "same", "activation": activation,
                   "name": layer_name, **regularizers(layer_name)}
        if norm is None:
            x = conv_class(filters, width, **options)(x)
        else:
            x = NormConv1D(filters, width, norm=norm, **options)(x)
        if dropout > 0:
            x = keras.layers.Dropout(
                float(dropout), seed=next(dropout_seeds), name=f"{layer_name}_dropout"
            )(x)
        return x

    names = cfg.layer_names()
    inputs = keras.Input(shape=(None, n_features), name="features")
    x = keras.layers.Masking(0.0, name="padding_mask")(inputs) if mask_padding else inputs
    if augment is not None:
        from keras_topomap.augment import SpecAugment

        if isinstance(augment, dict):
            augment = SpecAugment(**{"seed": int(seed) + 64, **augment}, name="spec_augment")
        elif not isinstance(augment, SpecAugment):
            raise ValueError(
                "augment must be None, a SpecAugment layer or a dict of its arguments. "
                f"Received: {type(augment).__name__}"
            )
        x = augment(x)
    x = conv(x, names[0], cfg.first_filters, cfg.first_width, cfg.stride)
    for layer_name in names[1:-2]:
        x = conv(x, layer_name, cfg.inner_filters, cfg.inner_width)
    x = conv(x, "conv_big_1", cfg.big_filters, cfg.big_width)
    x = conv(x, "conv_big_2", cfg.big_filters, 1)
    if mask_padding:  # the output carries no mask: Keras would weight the CTC loss by it
        outputs = MaskedConv1D(
            n_classes, 1, padding="same", propagate_mask=False, name="logits",
            kernel_regularizer=weight_regularizer("logits", None),
        )(x)
    else:
        outputs = keras.layers.Conv1D(n_classes, 1, padding="same", name="logits",
                                      kernel_regularizer=weight_regularizer("logits", None))(x)
    return keras.Model(inputs, outputs, name=name or f"wav2letter_{cfg.name}")


def layer_grids(model_or_config):
    """``{layer_name: (H, W)}`` of the hidden convolutions.

    For a config name / :class:`Wav2LetterConfig`: the grids of that configuration. For a model:
    the grids of its topographic layers, or -- for a model built with ``topographic=False`` --
    the grids its configuration would use, read from the layer sizes (so an unconstrained model's
    filters can be scored on the same grids).

    Raises:
        ValueError: for a model whose hidden layers match no configuration.
    """
    if isinstance(model_or_config, (str, Wav2LetterConfig)):
        return get_config(model_or_config).layer_grids()
    model = model_or_config
    from keras_topomap.regularizers import topographic_layers

    found = {name: tuple(info["grid"]) for name, info in topographic_layers(model).items()}
    if found:
        return found
    for cfg in CONFIGS.values():
        grids = cfg.layer_grids()
        try:
            sizes = {n: model.get_layer(n).kernel.shape[-1] for n in grids}
        except ValueError:
            continue
        if all(sizes[n] == h * w for n, (h, w) in grids.items()) and len(
            [layer for layer in model.layers
             if layer.name.startswith("conv_") and hasattr(layer, "kernel")]
        ) == len(grids):
            return grids
    raise ValueError(
        f"Model {model.name!r} has no topographic layers and matches no Wav2Letter config "
        f"({sorted(CONFIGS)}); pass the config name instead."
    )


def total_stride(model):
    """The model's cumulative stride: input frames per output frame (2 for every config)."""
    fields = receptive_fields(model)
    return int(fields[model.layers[-1].name].stride)


# ------------------------------------------------------------------------- pretrained models

#: What each shipped model is (``available_pretrained()`` lists those actually installed).
PRETRAINED = {
    "small": "the small config with the package's default topographic constraint",
    "small-plain": "its unconstrained twin (same recipe, seed and epochs)",
}


def pretrained_dir(name):
    """The folder of the shipped model ``name`` (the one place that knows where they live).

    Raises:
        ValueError: an unknown name (listing the known ones), or a known one not installed.
    """
    if name not in PRETRAINED:
        raise ValueError(
            f"Unknown pretrained model; expected one of {sorted(PRETRAINED)}. Received: {name!r}"
        )
    try:
        import keras_topomap_corpus
    except ImportError:
        raise ValueError(
            f"The pretrained model {name!r} is shipped in the keras-topomap-corpus "
            'distribution, which is not installed: pip install "keras-topomap[corpus]".'
        ) from None
    folder = keras_topomap_corpus.data_dir() / keras_topomap_corpus.PRETRAINED / name
    if not (folder / "model.keras").is_file():
        raise ValueError(
            f"The pretrained model {name!r} is not installed (no {folder / 'model.keras'})."
        )
    return folder


def available_pretrained():
    """Names of the pretrained models installed with the package (for :func:`pretrained`)."""
    found = []
    for name in sorted(PRETRAINED):
        try:
            pretrained_dir(name)
        except ValueError:
            continue
        found.append(name)
    return found


def pretrained_info(name):
    """What is known about a shipped model: a dict with

    - ``name``, ``description``, ``path`` (the ``model.keras`` file);
    - ``features``: the :class:`~keras_topomap.datasets.FeatureConfig` it was trained on, as
      a dict (``FeatureConfig.from_dict(info["features"])``), to compute inputs for it;
    - ``metrics``: the training run's ``metrics.json`` (test CER/WER greedy and beam search,
      validation, topography, history by epoch);
    - ``train_config``: the :class:`~keras_topomap.train.TrainConfig` fields of the run;
    - ``command``: the command that trained it.

    Raises:
        ValueError: an unknown name (listing the known ones).
    """
    folder = pretrained_dir(name)
    config = json.loads((folder / "config.json").read_text())
    return {
        "name": name,
        "description": PRETRAINED[name],
        "path": str(folder / "model.keras"),
        "features": dict(config["features"]),
        "metrics": json.loads((folder / "metrics.json").read_text()),
        "train_config": dict(config["train"]),
        "command": (folder / "command.txt").read_text().strip(),
    }


def pretrained(name="small"):
    """The shipped recognizer ``name`` as a ``keras.Model`` (uncompiled: ready to predict).

    Inputs are features of :func:`pretrained_info` ``(name)["features"]``; outputs are CTC
    logits, as for :func:`wav2letter`.

    Example:

    >>> from keras_topomap import ctc, models
    >>> from keras_topomap.datasets import FeatureConfig
    >>> model = models.pretrained("small")
    >>> features = FeatureConfig.from_dict(models.pretrained_info("small")["features"])
    >>> ctc.transcribe(model, "speech.wav", feature_config=features)

    Raises:
        ValueError: an unknown name (listing the known ones).
    """
    return keras.saving.load_model(pretrained_dir(name) / "model.keras", compile=False)
