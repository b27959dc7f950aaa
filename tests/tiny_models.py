"""Tiny models with known activations, and plain-loop references, shared by the tests.

The references loop over sequences and frames: slow and obvious, and independent of the
vectorised code they check (GradNAP, TopoMapCallback, GroupSums, LayerTiming).
"""

import keras
import numpy as np

from keras_topomap import TopographicRegularizer
from keras_topomap import grid as grid_lib

L = keras.layers


# ----------------------------------------------------------------------------------------------
# A model whose activations and gradients are known in closed form.
#
#   x (B, T, 1) -> h = [x, -x] (Dense, "h") -> logits = [0, 2 h0, -3 h0] (Dense, "out")
#
# target "prediction" (blank 0): x > 0 predicts class 1 (logit 2x), x < 0 class 2 (logit -3x),
# x == 0 predicts the blank (skipped). So d target / d h = [2, 0] where x > 0, [-3, 0] where
# x < 0, [0, 0] where x == 0; d target / d logits = one-hot of the predicted class.


def closed_form_model():
    x = keras.Input((None, 1))
    h = L.Dense(2, use_bias=False, name="h")(x)
    out = L.Dense(3, use_bias=False, name="out")(h)
    model = keras.Model(x, out)
    model.get_layer("h").kernel.assign(np.array([[1.0, -1.0]], "float32"))
    model.get_layer("out").kernel.assign(np.array([[0.0, 2.0, -3.0], [0.0, 0.0, 0.0]], "float32"))
    return model


def closed_form_data():
    x = np.array(
        [
            [0.5, -1.0, 2.0, 0.0, -0.5, 1.5, 3.0, 0.0],
            [-2.0, 1.0, 0.25, -0.75, 0.0, 0.0, 0.0, 0.0],
        ],
        "float32",
    )[..., None]
    labels = np.array(
        [
            [0, 0, 1, 1, -1, 2, 0, -1],  # the last frame is unlabelled
            [2, 2, 1, 0, -1, -1, -1, -1],  # padding after frame 3
        ]
    )
    return x, labels


def hand_adjusted(x, adjust):
    """Per-frame adjusted activations of layers h and out, from the closed form."""
    x = x[..., 0]
    h = np.stack([x, -x], axis=-1)
    logits = np.stack([np.zeros_like(x), 2 * x, -3 * x], axis=-1)
    g_h = np.where(x[..., None] > 0, [2.0, 0.0], np.where(x[..., None] < 0, [-3.0, 0.0], 0.0))
    cls = np.where(x > 0, 1, np.where(x < 0, 2, 0))
    g_out = np.eye(3)[cls] * (cls > 0)[..., None]
    if adjust == "none":
        return {"h": h, "out": logits}
    if adjust == "abs_gradient":
        g_h, g_out = np.abs(g_h), np.abs(g_out)
    return {"h": h * g_h, "out": logits * g_out}


def hand_profiles(adjusted, labels, n_groups, baseline):
    means, counts = [], []
    for g in range(n_groups):  # plain loops: an independent reference
        frames = [adjusted[b, t] for b in range(labels.shape[0]) for t in range(labels.shape[1])
                  if labels[b, t] == g]
        counts.append(len(frames))
        means.append(np.mean(frames, axis=0) if frames else np.zeros(adjusted.shape[-1]))
    means, counts = np.array(means), np.array(counts)
    present = counts > 0
    if baseline == "group_mean":
        base = means[present].mean(axis=0)
    else:
        base = sum(means[g] * counts[g] for g in range(n_groups)) / counts.sum()
    return np.where(present[:, None], means - base, 0.0), counts


def stride2_model():
    """Conv1D kernel 2, stride 2, 'valid', kernel of ones: frame t = x[2t] + x[2t + 1]; its
    receptive-field centre is input frame 2t + 0.5 -> it carries the label of frame 2t."""
    x = keras.Input((None, 1))
    c = L.Conv1D(1, 2, strides=2, use_bias=False, name="c")(x)
    model = keras.Model(x, c)
    model.get_layer("c").kernel.assign(np.ones((2, 1, 1), "float32"))
    return model


def planted_data(n_batches=3, rng=None):
    """Group k (k = 0..8) frames carry a strong input feature k; labels change every 6 frames."""
    rng = rng or np.random.default_rng(0)
    batches = []
    for _ in range(n_batches):
        labels = np.repeat(rng.integers(0, 9, size=(4, 8)), 6, axis=1)
        x = 0.1 * rng.normal(size=(4, 48, 9)) + 2.0 * np.eye(9)[labels]
        batches.append((x.astype("float32"), labels))
    return batches


def planted_model():
    """'topo' (9 filters on 3x3) passes feature k to filter k; class k + 1 reads filter k."""
    x = keras.Input((None, 9))
    topo = L.Conv1D(9, 1, activation="relu", name="topo",
                    kernel_regularizer=TopographicRegularizer(grid=(3, 3)))(x)
    out = L.Conv1D(10, 1, name="out")(topo)
    model = keras.Model(x, out)
    model.get_layer("topo").kernel.assign(np.eye(9, dtype="float32")[None])
    model.get_layer("topo").bias.assign(np.zeros(9, "float32"))
    readout = np.zeros((1, 9, 10), "float32")
    readout[0, np.arange(9), np.arange(1, 10)] = 1.0
    model.get_layer("out").kernel.assign(readout)
    model.get_layer("out").bias.assign(np.array([0.5] + [0.0] * 9, "float32"))
    return model


# ----------------------------------------------------------------------------------------------
# The callback tests' model

N_FEATURES = 6
T_IN = 20


def two_conv_model(regularize_second=True):
    """c1 (stride 2, 4x4 grid, regularized), c2 (4x3 grid, regularized unless told not to),
    out: a regression model for the callback tests."""
    inputs = keras.Input((None, N_FEATURES), name="frames")
    x = keras.layers.Conv1D(
        16, 5, strides=2, padding="same", activation="relu", name="c1",
        kernel_regularizer=TopographicRegularizer((4, 4), strength=0.05),
    )(inputs)
    x = keras.layers.Conv1D(
        12, 3, padding="same", activation="relu", name="c2",
        kernel_regularizer=TopographicRegularizer((4, 3), strength=0.05)
        if regularize_second else None,
    )(x)
    outputs = keras.layers.Conv1D(3, 1, name="out")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def regression_data(n=16, t=T_IN, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, N_FEATURES)).astype("float32")
    y = rng.normal(size=(n, (t + 1) // 2, 3)).astype("float32")
    return x, y


def layer_outputs(model, name, x):
    extractor = keras.Model(model.input, model.get_layer(name).output)
    return np.asarray(extractor.predict_on_batch(x), dtype=np.float64)


# c1 is a "same" Conv1D of width 5 and stride 2: for 20 input frames Keras pads 3 frames, 1 on
# the left, so its frame t reads input frames 2t-1 .. 2t+3, centred on 2t+1; c2 ("same", width 3,
# stride 1) keeps those centres.
STRIDE, OFFSET = 2, 1


def reference_maps(model, name, x, grid, labels=None, lengths=None, size=3):
    """Frame-by-frame reference: plain loops over sequences and frames (slow, obvious)."""
    acts = layer_outputs(model, name, x)
    b, t_layer, f = acts.shape
    total, count = np.zeros(f), 0
    group_sums, group_counts = {}, {}
    for i in range(b):
        for t in range(t_layer):
            frame = t * STRIDE + OFFSET
            if lengths is not None and frame >= lengths[i]:
                continue
            total += acts[i, t]
            count += 1
            if labels is not None and 0 <= frame < labels.shape[1] and labels[i, frame] >= 0:
                g = int(labels[i, frame])
                group_sums[g] = group_sums.get(g, 0.0) + acts[i, t]
                group_counts[g] = group_counts.get(g, 0) + 1
    overall = grid_lib.smooth(grid_lib.to_grid(total / count, grid), size)
    if labels is None:
        return overall, None
    keys = sorted(group_sums)
    means = np.stack([group_sums[g] / group_counts[g] for g in keys])
    naps = means - means.mean(axis=0)
    return overall, grid_lib.smooth(grid_lib.to_grid(naps, grid), size)


# ----------------------------------------------------------------------------------------------
# An image classifier with per-sample classes in closed form.
#
#   x (B, 2, 3, 3) -> "conv" (1x1 Conv2D, 9 filters on 3x3, no bias): filter k = channel k
#   (k < 3), filters 3..8 = 0 -> "pool" (GlobalAveragePooling2D) -> "out" (Dense 3, no bias):
#   logit k = V[k] * pool[k].
#
# An image of class c holds s * M in channel c (s > 0, M > 0 everywhere) and 0 elsewhere, so it
# predicts c, and d logit_c / d conv[h, w, c] = V[c] / 6 (the 6 positions of the pool).

IMAGE_SHAPE = (2, 3, 3)
IMAGE_V = np.array([1.0, 2.0, 3.0])
IMAGE_M = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # mean 3.5


def image_classifier():
    x = keras.Input(IMAGE_SHAPE)
    conv = L.Conv2D(9, 1, use_bias=False, name="conv")(x)
    pool = L.GlobalAveragePooling2D(name="pool")(conv)
    out = L.Dense(3, use_bias=False, name="out")(pool)
    model = keras.Model(x, out)
    kernel = np.zeros((1, 1, 3, 9), "float32")
    kernel[0, 0, np.arange(3), np.arange(3)] = 1.0
    model.get_layer("conv").kernel.assign(kernel)
    readout = np.zeros((9, 3), "float32")
    readout[np.arange(3), np.arange(3)] = IMAGE_V
    model.get_layer("out").kernel.assign(readout)
    return model


def image_data(classes, scales):
    """Images of ``classes`` (int (N,)) with amplitudes ``scales`` (N,)."""
    x = np.zeros((len(classes),) + IMAGE_SHAPE, "float32")
    for i, (c, s) in enumerate(zip(classes, scales)):
        x[i, :, :, c] = s * IMAGE_M
    return x


def hand_image_adjusted(classes, scales, adjust="gradient"):
    """Per-sample, position-averaged adjusted activations ``{layer: (N, F)}`` of the image
    classifier under target 'prediction' (which is the image's class)."""
    n = len(classes)
    conv, pool, out = np.zeros((n, 9)), np.zeros((n, 9)), np.zeros((n, 3))
    for i, (c, s) in enumerate(zip(classes, scales)):
        pooled = s * IMAGE_M.mean()
        if adjust == "none":
            conv[i, c] = pool[i, c] = pooled
            out[i, c] = IMAGE_V[c] * pooled
        else:  # gradient of logit c: V[c] / 6 at each conv position, V[c] on pool, 1 on out
            conv[i, c] = pooled * IMAGE_V[c] / 6
            pool[i, c] = pooled * IMAGE_V[c]
            out[i, c] = IMAGE_V[c] * pooled
    return {"conv": conv, "pool": pool, "out": out}


def hand_sample_profiles(adjusted, labels, n_groups):
    """Group means over samples (plain loop) minus their mean over groups with samples."""
    means, counts = np.zeros((n_groups, adjusted.shape[1])), np.zeros(n_groups, int)
    for row, g in zip(adjusted, labels):
        if g >= 0:
            means[g] += row
            counts[g] += 1
    present = counts > 0
    means[present] /= counts[present][:, None]
    base = means[present].mean(axis=0)
    return np.where(present[:, None], means - base, 0.0), counts
