"""The Keras internals keras-topomap relies on, in one place.

Keras 3's public API has no way to walk a Functional graph node by node, to attach a mask to a
tensor, to tell a convolution from a pooling layer by its base class, or to lay a weight out for
a distribution by hand. Those few things read private attributes or import ``keras.src``; every
such access lives here, behind a named function, and the rest of the package calls these
functions. :data:`PRIVATE_SYMBOLS` names each private symbol this module uses;
``tests/test_keras_internals.py`` checks every one against the installed Keras (and that no
other module touches them), so a Keras upgrade that moves one fails there first.

The module imports nothing from ``keras.src`` at import time: each function imports what it
needs when called.
"""

from __future__ import annotations

import keras
from keras import tree

#: Every private Keras symbol used below: ``(where, name)``. ``where`` is a ``keras.src``
#: module (the name is imported from it) or a kind of object (the name is an attribute of it;
#: "on TensorFlow": only the TensorFlow backend's trainer has it, and only it is patched).
PRIVATE_SYMBOLS = (
    ("keras.src.backend", "set_keras_mask"),
    ("keras.src.backend", "get_keras_mask"),
    ("keras.src.layers.convolutional.base_conv", "BaseConv"),
    ("keras.src.layers.merging.base_merge", "Merge"),
    ("keras.src.layers.pooling.base_pooling", "BasePooling"),
    ("keras.src.backend.jax.distribution_lib", "distribute_tensor"),
    ("Sequential", "_functional"),
    ("Functional", "_nodes_by_depth"),
    ("KerasTensor", "_keras_history"),
    ("Layer", "_flatten_layers"),
    ("Layer", "_get_regularization_losses"),
    ("Model", "_symbolic_build"),
    ("Model on TensorFlow", "_maybe_symbolic_build"),
    ("Optimizer", "_clip_gradients"),
    ("Optimizer", "_model_variables_moving_average"),
)

#: Keras versions (``(major, minor)``, both ends included) whose TensorFlow ``fit`` needs the
#: ``MultiWorkerMirroredStrategy`` workarounds of
#: :meth:`keras_topomap.distribute.DistributionContext.prepare_model`
#: (keras-team/keras#20585). The upper end is the newest Keras they were checked on; widen it
#: when the tests pass on a newer one.
KERAS_20585_VERSIONS = ((3, 0), (3, 15))


def keras_version(version=None):
    """``(major, minor)`` of ``version`` (default: the installed Keras), e.g. ``(3, 15)``."""
    parts = (version or keras.version()).split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def needs_multi_worker_fit_workaround(version=None):
    """Whether Keras ``version`` (default: the installed one) is one known to need the
    keras-team/keras#20585 workarounds (:data:`KERAS_20585_VERSIONS`)."""
    first, last = KERAS_20585_VERSIONS
    return first <= keras_version(version) <= last


# ----------------------------------------------------------------------------------- graphs


def graph(model):
    """The Functional graph that runs ``model``: a Sequential's inner Functional model, else
    the model itself."""
    return getattr(model, "_functional", None) or model


def is_unbuilt_sequential(model):
    """Whether ``model`` is a Sequential model without a graph yet (defined without
    ``keras.Input`` and not built)."""
    return isinstance(model, keras.Sequential) and getattr(model, "_functional", None) is None


def is_graph_model(layer):
    """Whether ``layer`` is a model with a known graph (Functional, or Sequential built on
    ``keras.Input``)."""
    if not isinstance(layer, keras.Model):
        return False
    g = graph(layer)
    return getattr(g, "_nodes_by_depth", None) is not None and bool(getattr(g, "inputs", None))


def graph_inputs(model):
    """The symbolic inputs of ``model``'s graph (a list)."""
    return list(graph(model).inputs)


def graph_outputs(model):
    """The symbolic outputs of ``model``'s graph (a list)."""
    return list(graph(model).outputs)


def producing_layer(tensor):
    """The layer (operation) whose call produced the symbolic ``tensor``."""
    return tensor._keras_history.operation


def graph_nodes(model):
    """The call nodes of ``model``'s graph in the order Keras runs them (input to output),
    input nodes left out.

    Raises:
        ValueError: ``model`` has no graph (see :func:`is_graph_model`).
    """
    g = graph(model)
    by_depth = getattr(g, "_nodes_by_depth", None)
    if by_depth is None or not getattr(g, "inputs", None):
        raise ValueError(
            f"Expected a Functional or Sequential Keras model built on keras.Input. "
            f"Received: {type(model).__name__} '{getattr(model, 'name', model)}'"
        )
    # Decreasing depth is input -> output order (how Keras itself runs a Functional graph).
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]
            if not node.is_input]


def graph_steps(model):
    """``(layer, input tensor ids, output tensor ids)`` in topological order, plus the model's
    input and output tensor ids, for Functional and Sequential models.

    Returns:
        ``("graph", steps, input_ids, output_ids)``, or ``("chain", layers, None, None)`` for a
        Sequential model without a graph yet (its layers are a plain chain).

    Raises:
        ValueError: a model of another kind (subclassed, or not built on ``keras.Input``).
    """
    if type(model).__name__ == "Sequential" and getattr(model, "_functional", None) is None:
        return "chain", list(model.layers), None, None
    steps = [
        (node.operation, [id(t) for t in node.input_tensors], [id(t) for t in node.output_tensors])
        for node in graph_nodes(model)
    ]
    g = graph(model)
    return "graph", steps, [id(t) for t in g.inputs], [id(t) for t in g.outputs]


def graph_layers(model):
    """Every layer reachable in ``model``'s graph, in order: nested models appear, followed by
    their own layers; input layers are left out."""
    found = []
    for op in getattr(graph(model), "operations", getattr(model, "layers", [])):
        if isinstance(op, keras.layers.InputLayer):
            continue
        found.append(op)
        if isinstance(op, keras.Model):
            found.extend(graph_layers(op))
    return found


def all_sublayers(model, include_self=True):
    """Every layer tracked by ``model`` (nested ones too, whether in its graph or not), in
    Keras' own order; ``[model]`` for an object that tracks no layers."""
    if getattr(model, "_flatten_layers", None) is None:
        return [model] if include_self else []
    return list(model._flatten_layers(include_self=include_self, recursive=True))


def replay(model, inputs, tap, layer_override=None):
    """Re-applies ``model``'s layers to new symbolic ``inputs`` (nested graph models inlined).

    Args:
        model: a graph model (see :func:`is_graph_model`).
        inputs: one new symbolic tensor per graph input.
        tap: ``tap(layer, output) -> output``, called after each layer; what it returns is what
            the rest of the graph uses.
        layer_override: optional ``fn(layer) -> layer or None``; a returned layer is called in
            place of ``layer``.

    Returns:
        the new symbolic outputs (a list, one per graph output).
    """
    g = graph(model)
    values = {id(t): v for t, v in zip(g.inputs, inputs)}
    for node in graph_nodes(model):
        if not node.operation or any(id(t) not in values for t in node.input_tensors):
            continue
        op = node.operation
        args, kwargs = node.arguments.fill_in(values)
        if is_graph_model(op):
            outs = replay(op, tree.flatten((args, kwargs)), tap, layer_override)
            outs = outs[0] if len(outs) == 1 else outs
        else:
            replacement = layer_override(op) if layer_override is not None else None
            outs = (replacement or op)(*args, **kwargs)
        outs = tap(op, outs)
        for ref, new in zip(node.outputs, tree.flatten(outs)):
            values[id(ref)] = new
    return [values[id(t)] for t in g.outputs]


# ----------------------------------------------------------------------------- layer kinds


def layer_base_classes():
    """Keras' base classes of the convolution, pooling and merge layers:
    ``(BaseConv, BasePooling, Merge)``."""
    from keras.src.layers.convolutional.base_conv import BaseConv
    from keras.src.layers.merging.base_merge import Merge
    from keras.src.layers.pooling.base_pooling import BasePooling

    return BaseConv, BasePooling, Merge


def _caller_scopes(max_depth):
    """``(code, locals)`` of the callers of the function calling this, nearest first, at most
    ``max_depth + 1`` of them (its own caller is the first)."""
    import inspect

    frame = inspect.currentframe().f_back
    try:
        for _ in range(max_depth + 1):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return
            yield frame.f_code, frame.f_locals
    finally:
        del frame


def regularized_weight(max_depth=3):
    """``(root, variable)`` when a weight regularizer is being called by Keras adding up the
    weight regularization losses of ``root`` (a layer, or a model summing every weight of its
    sublayers), else None.

    Keras calls a weight regularizer with the weight (or, in a stateless JAX step, its value)
    alone; ``root`` and the variable are locals (``self``, ``variable``) of the Keras method
    that calls it, found here by walking at most ``max_depth`` frames up from the caller.
    Called at trace time (once per compiled step on TensorFlow and JAX). ``variable`` is None
    if Keras no longer names it so.
    """
    target = keras.layers.Layer._get_regularization_losses.__code__
    for code, scope in _caller_scopes(max_depth):
        if code is target:
            root, variable = scope.get("self"), scope.get("variable")
            if not isinstance(root, keras.layers.Layer):
                return None
            return root, (variable if isinstance(variable, keras.Variable) else None)
    return None


def calling_layer(owns, max_depth=8):
    """The nearest layer that is ``self`` of one of the callers (at most ``max_depth`` frames
    up) and for which ``owns(layer)`` is true, else None: which layer Keras is calling an
    activity regularizer for (``Layer.__call__`` calls it with the output alone). For error
    messages only; it walks frames.
    """
    for _, scope in _caller_scopes(max_depth):
        layer = scope.get("self")
        if isinstance(layer, keras.layers.Layer) and owns(layer):
            return layer
    return None


# ----------------------------------------------------------------------------------- masks


def set_keras_mask(x, mask):
    """Sets ``mask`` as the Keras mask of tensor ``x`` (None removes it)."""
    from keras.src.backend import set_keras_mask as set_mask

    set_mask(x, mask)


def get_keras_mask(x):
    """The Keras mask attached to tensor ``x`` (None if there is none)."""
    from keras.src.backend import get_keras_mask as get_mask

    return get_mask(x)


# ---------------------------------------------------------------------------- distribution


def jax_distribute_tensor(value, layout):
    """Lays a JAX array out as a ``keras.distribution`` layout says (JAX backend)."""
    from keras.src.backend.jax.distribution_lib import distribute_tensor

    return distribute_tensor(value, layout)


def symbolic_build(model, data_batch):
    """Builds ``model`` (its metrics and optimizer too) from the shapes of one batch, as
    ``fit`` does before its first step."""
    model._symbolic_build(data_batch=data_batch)


def replace_symbolic_build(model, build):
    """Makes ``fit`` call ``build(iterator=None, data_batch=None)`` on this model object where
    it would build the model from its first batch."""
    model._maybe_symbolic_build = build


def gradient_clipping(optimizer):
    """The function ``grads -> grads`` by which ``optimizer`` clips its gradients."""
    return optimizer._clip_gradients


def moving_averages(optimizer):
    """The optimizer's moving averages of the model's trainable variables (``use_ema=True``),
    in the order of the variables it was built with; ``None`` without EMA or before it is
    built."""
    if optimizer is None or not getattr(optimizer, "use_ema", False):
        return None
    return getattr(optimizer, "_model_variables_moving_average", None) or None


def replace_gradient_clipping(optimizer, clip):
    """Makes this optimizer object clip its gradients with ``clip(grads) -> grads``."""
    optimizer._clip_gradients = clip
