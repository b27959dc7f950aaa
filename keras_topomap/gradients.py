"""Gradients of a scalar target w.r.t. intermediate activations (and the input), compiled once.

This module (with the fast-convolution kernels of :mod:`keras_topomap.fast_conv`) is the
backend-specific part of keras-topomap. Everything else (GradNAP, optimal inputs) describes
*what* to differentiate with backend-agnostic ``keras.ops`` code; this module says *how*, per
backend:

- **TensorFlow**: a ``tf.function`` around a ``tf.GradientTape``. The tape watches the input,
  so every activation is on the tape and ``tape.gradient(target, activations)`` returns
  ``d target / d activation`` for all requested layers from one backward pass; weight gradients
  are never requested (and graph pruning drops them). The function is traced once with every
  axis but the last of each argument left dynamic (``None``), so batches of any size and length
  reuse one graph.
- **JAX**: activations are not differentiable inputs of a pure function, so the model graph is
  replayed with a zero "probe" tensor added to each requested layer's output:
  ``d target / d probe == d target / d activation`` (the probe enters additively, with weight 1),
  and ``jax.value_and_grad`` w.r.t. all probes (and the input) gives every layer in one backward
  pass. Weights go in as arguments of ``model.stateless_call`` (not as baked-in constants) and
  the step is ``jax.jit``-compiled. XLA compiles once per distinct argument *shape*; callers keep
  that number small by padding batches to a few bucketed shapes (GradNAP pads the time axis to a
  multiple of ``time_bucket`` and the batch to a fixed size).
- **PyTorch**: eager autograd; ``torch.autograd.grad(target, activations)`` computes only what
  the requested activations (and the input) need -- no ``.grad`` fields are touched.

On all backends the model graph is first *flattened*: a new Functional model sharing the
original layers (and weights) is built whose outputs are the requested layers' activations plus
the model output; nested Functional/Sequential models are inlined, so layers inside them can be
addressed by name too.

Example:

>>> from keras import ops
>>> def target(output, activations):
...     return ops.sum(ops.max(output, axis=-1))
>>> fn = ActivationGradients(model, ["conv_1", "conv_2"], target)
>>> result = fn(x)
>>> result.gradients["conv_1"].shape == result.activations["conv_1"].shape
True

A ``reduce`` function (``keras.ops``, runs inside the compiled step) shrinks what comes back to
the host, e.g. per-group sums instead of full ``(batch, time, filters)`` arrays.

Distributions: a step can spread each batch over the replicas of the distribution that is active
when it is called (``replica_reduce`` says how per-replica results combine):

- **JAX** with a ``keras.distribution`` distribution set (e.g. ``DataParallel``): the batch
  arguments are laid out along the distribution's batch axis, the weights by its variable layouts,
  and the same jitted step runs as one SPMD program over the device mesh; XLA inserts the
  cross-device reductions (a sum over frames becomes a sum over all devices' frames).
- **TensorFlow** inside ``tf.distribute.Strategy.scope()`` with more than one replica: the batch
  is split into one slice per replica, the step runs on each with ``strategy.run``, and the
  per-replica results are summed (``"sum"``) or concatenated along the batch axis
  (``"concat"``) with ``strategy.reduce`` / ``strategy.gather``.
- **PyTorch** has no such engine in Keras; the step runs on the default device.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
from keras import ops, tree

from keras_topomap import _keras_internals as internals
from keras_topomap import checks, fast_conv
from keras_topomap._arrays import to_numpy

__all__ = ["GradientResult", "ActivationGradients", "flatten_model", "find_layer"]


class GradientResult(NamedTuple):
    """What one step computes (tensors inside ``reduce``, numpy arrays when returned).

    Attributes:
        value: the target (scalar; per-sample targets are summed).
        output: the model output (None when ``include_output=False``).
        activations: ``{layer_name: activation}``.
        gradients: ``{layer_name: d value / d activation}`` (empty with ``layer_gradients=False``).
        input_gradient: ``d value / d input`` (None unless ``input_gradient=True``).
    """

    value: Any
    output: Any
    activations: dict
    gradients: dict
    input_gradient: Any


# ----------------------------------------------------------------------------------------------
# Model flattening


def find_layer(model, name):
    """The layer called ``name`` anywhere in ``model`` (nested models searched).

    Raises:
        ValueError: naming the available layers when there is none.
    """
    for layer in internals.graph_layers(model):
        if layer.name == name:
            return layer
    raise ValueError(
        f"Layer '{name}' is not in model '{model.name}'. Available layers: "
        f"{[layer.name for layer in internals.graph_layers(model)]}"
    )


def flatten_model(model, layers, probes=False, include_output=True, layer_override=None):
    """A Functional model sharing ``model``'s layers whose outputs are the requested activations.

    Args:
        model: a Functional or Sequential model built on ``keras.Input`` with one input and one
            output (nested models are inlined).
        layers: layer names to tap.
        probes: if True, the model gets one extra input per tapped layer (shaped like that
            layer's output) that is *added* to the layer's output before the rest of the graph
            uses it. Feeding zeros changes nothing; differentiating w.r.t. the probes gives the
            gradients w.r.t. the activations (used on JAX).
        include_output: append the model output to the outputs.
        layer_override: optional ``fn(layer) -> layer or None``; a returned layer is called in
            place of ``layer`` (same inputs, same outputs; it must share ``layer``'s weights).

    Returns:
        ``keras.Model`` with inputs ``[x, probe_1, ...]`` (or ``x``) and outputs
        ``[activation_1, ..., output]``.
    """
    if not internals.is_graph_model(model):
        raise ValueError(
            "Gradients need a Functional or Sequential model built on keras.Input (so its graph "
            f"is known). Received: {type(model).__name__} '{getattr(model, 'name', model)}'"
        )
    layers = list(layers)
    for name in layers:
        find_layer(model, name)  # clear error for unknown names
    if len(set(layers)) != len(layers):
        raise ValueError(f"Layer names must be unique. Received: layers={layers}")
    graph_inputs, graph_outputs = internals.graph_inputs(model), internals.graph_outputs(model)
    if len(graph_inputs) != 1 or len(graph_outputs) != 1:
        raise ValueError(
            f"Model '{model.name}' has {len(graph_inputs)} inputs and {len(graph_outputs)} "
            "outputs; the gradient adapter handles models with one input and one output."
        )
    source = graph_inputs[0]
    x = keras.Input(shape=source.shape[1:], batch_size=source.shape[0], dtype=source.dtype,
                    name="x")
    taps, probe_inputs = {}, []

    def tap(layer, value):
        if layer.name not in layers:
            return value
        if layer.name in taps:
            raise ValueError(
                f"Layer '{layer.name}' is called more than once in the model; its activation is "
                "ambiguous. Tap a layer that is used once."
            )
        if not isinstance(value, keras.KerasTensor):
            raise ValueError(
                f"Layer '{layer.name}' has several outputs; tap a single-output layer."
            )
        taps[layer.name] = value
        if not probes:
            return value
        probe = keras.Input(shape=value.shape[1:], batch_size=value.shape[0], dtype=value.dtype,
                            name=f"probe_{len(probe_inputs)}")
        probe_inputs.append(probe)
        return keras.layers.Add(name=f"{layer.name}_probe")([value, probe])

    (out,) = internals.replay(model, [x], tap, layer_override)
    missing = [name for name in layers if name not in taps]
    if missing:
        raise ValueError(
            f"Layers {missing} are not on the path from the input to the output of model "
            f"'{model.name}'."
        )
    outputs = [taps[name] for name in layers] + ([out] if include_output else [])
    # Keep the probe inputs in the order of `layers`.
    if probes:
        order = [list(taps).index(name) for name in layers]
        probe_inputs = [probe_inputs[i] for i in order]
    inputs = [x, *probe_inputs] if probes else x
    return keras.Model(inputs, outputs, name=f"{model.name}_taps")


# ----------------------------------------------------------------------------------------------
# The adapter


def _identity_reduce(result, *extras):
    return result


def _scalar(value):
    value = ops.convert_to_tensor(value)
    return ops.sum(value) if len(value.shape) else value


class ActivationGradients:
    """A compiled function ``x, *extras -> GradientResult`` for one model, layer set and target.

    Args:
        model: Functional or Sequential Keras model (one input, one output).
        layers: names of the layers whose activations (and gradients) are wanted.
        target: ``target(output, activations, *extras) -> scalar`` in ``keras.ops``; ``output``
            is the model output (None with ``include_output=False``), ``activations`` a dict
            ``{layer: tensor}``, ``extras`` the extra arguments of the call (masks, labels...).
            A per-sample vector is summed.
        reduce: optional ``reduce(result, *extras)`` in ``keras.ops``, run inside the compiled
            step on the :class:`GradientResult` of tensors; whatever it returns (any nest of
            tensors) is converted to numpy. Default: the full result.
        layer_gradients: compute ``d target / d activation`` (False: activations only, e.g. when
            only the input gradient is wanted).
        input_gradient: also compute ``d target / d input``.
        include_output: run the model to its output (False stops at the deepest tapped layer).
        jit: compile (``tf.function`` / ``jax.jit``); False runs eagerly (debugging).
        replica_reduce: how results of replicas combine when a distribution is active (see the
            module doc): a nest shaped like what ``reduce`` returns, with the leaf ``"sum"``
            (add the replicas' values) or ``"concat"`` (join them along axis 0, the batch). The
            default ``reduce`` has one built in; a step with a custom ``reduce`` and no
            ``replica_reduce`` ignores an active distribution and runs as without one.
            Arguments whose first axis is the batch of ``x`` are split over the replicas, other
            arguments are passed to each replica whole.
        fast_conv_grad: compute the input gradient of every stride-1 ``Conv1D`` as a
            *forward* convolution of the output gradient with the flipped kernel (reversed in time,
            input and output channels swapped, laid out contiguously). The backends' own rules are
            slower on CPU (XLA convolves with a transposed *view* of the kernel; figures in
            ``docs/benchmarks.md``). Kernels in :mod:`keras_topomap.fast_conv`. JAX: a
            ``jax.custom_vjp`` with the flipped kernel kept as a weight (refreshed when the kernel
            changes); TensorFlow: a ``tf.custom_gradient`` that flips inside the compiled step;
            PyTorch: an ``autograd.Function`` with a cached flipped kernel. The forward pass is the
            layer's own. Same values, fewer seconds, one extra copy of those kernels in memory; the
            weights are constants of this path (the adapter never asks for weight gradients).
        fft_conv_grad: on JAX and TensorFlow, compute the input gradient of wide stride-1
            ``Conv1D`` layers (see ``fft_min_kernel``) by FFT, overlap-save: the output gradient is
            cut into overlapping blocks, each block's spectrum is multiplied by the kernel's
            spectrum (precomputed once and kept as a weight, refreshed like the flipped kernel) and
            transformed back. That costs ``O(log n_fft)`` per output value instead of
            ``O(kernel_size)``, at a relative error of about 1e-6 (speed in ``docs/benchmarks.md``).
            The kernel spectrum takes about ``n_fft / kernel_size`` (here 4) times the kernel's
            memory, plus one copy of the kernel to notice weight changes. ``"auto"`` (default): only
            on the CPU, where the direct convolution is the bottleneck (GPU convolution libraries
            pick FFT or Winograd algorithms themselves); True: on any device; False: never. Needs
            ``fast_conv_grad``; ignored on PyTorch.
        fft_min_kernel: the smallest kernel width that takes the FFT path (narrower kernels
            are cheaper directly).

    Attributes:
        trace_count: how many times the step was traced (TensorFlow: 1 for any shapes; JAX: one
            per distinct argument shape; PyTorch: 0, eager).
        flat_model: the flattened model (see :func:`flatten_model`).
    """

    def __init__(self, model, layers, target, reduce=None, layer_gradients=True,
                 input_gradient=False, include_output=True, jit=True, fast_conv_grad=True,
                 replica_reduce=None, fft_conv_grad="auto", fft_min_kernel=16):
        if not callable(target):
            raise ValueError(f"target must be callable. Received: target={target!r}")
        self.model = model
        self.layers = list(layers)
        self.target = target
        self.reduce = reduce or _identity_reduce
        if replica_reduce is None and reduce is None:
            replica_reduce = GradientResult("sum", "concat", "concat", "concat", "concat")
        if replica_reduce is not None:
            bad = [leaf for leaf in tree.flatten(replica_reduce) if leaf not in ("sum", "concat")]
            if bad:
                raise ValueError(
                    "replica_reduce leaves must be 'sum' or 'concat'. Received: "
                    f"{sorted(set(map(repr, bad)))}"
                )
        self.replica_reduce = replica_reduce
        self.layer_gradients = bool(layer_gradients)
        self.input_gradient = bool(input_gradient)
        self.include_output = bool(include_output)
        if not self.layers and not self.include_output:
            raise ValueError("Nothing to compute: give layers or include_output=True.")
        self.jit = bool(jit)
        self.backend = keras.backend.backend()
        self.trace_count = 0
        use_probes = self.backend == "jax" and self.layer_gradients and bool(self.layers)
        checks.choice(fft_conv_grad, "fft_conv_grad", (True, False, "auto"))
        fft_min_kernel = checks.integer(fft_min_kernel, "fft_min_kernel", minimum=2)
        override = None
        if fast_conv_grad and (self.layer_gradients or input_gradient):
            on_cpu = fft_conv_grad == "auto" and fast_conv.on_cpu(self.backend)
            use_fft = self.backend in ("jax", "tensorflow") and (fft_conv_grad is True or on_cpu)
            override = fast_conv.fast_conv_override(fft_min_kernel if use_fft else None)
        self.flat_model = flatten_model(model, self.layers, probes=use_probes,
                                        include_output=self.include_output,
                                        layer_override=override)
        builders = {
            "tensorflow": self._build_tf, "jax": self._build_jax, "torch": self._build_torch
        }
        if self.backend not in builders:
            raise ValueError(
                f"ActivationGradients supports the tensorflow, jax and torch backends. "
                f"Received: backend={self.backend!r}"
            )
        self._tf_dist_fns = {}
        self._fast_layers = [layer for layer in self.flat_model.layers
                             if isinstance(layer, fast_conv.FastGradConv1D)]
        self._step = builders[self.backend]()

    # -- shared pieces (backend tensors in, GradientResult out) --------------------------------

    def _split(self, outputs):
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        acts = dict(zip(self.layers, outputs[: len(self.layers)]))
        out = outputs[len(self.layers)] if self.include_output else None
        return acts, out

    def _value(self, out, acts, extras):
        if not (self.layer_gradients or self.input_gradient or self.include_output):
            # Activations only: nothing to differentiate, and the target may need the output.
            return ops.zeros(())
        return _scalar(self.target(out, acts, *extras))

    def n_replicas(self):
        """How many replicas a call made now would split its batch over (1: no distribution).

        JAX: the size of the batch axis of the ``keras.distribution`` device mesh;
        TensorFlow: ``num_replicas_in_sync`` of the strategy whose scope is entered. Always 1
        for a step that does not know how to combine replicas (see ``replica_reduce``) and on
        PyTorch.
        """
        if self.replica_reduce is None:
            return 1
        if self.backend == "jax":
            distribution = keras.distribution.distribution()
            if distribution is None:
                return 1
            mesh = distribution.device_mesh
            return int(mesh.shape[mesh.axis_names.index(distribution.batch_dim_name)])
        if self.backend == "tensorflow":
            strategy = _tf_strategy()
            return 1 if strategy is None else int(strategy.num_replicas_in_sync)
        return 1

    def __call__(self, x, *extras):
        """Runs the step on one batch; returns numpy (a :class:`GradientResult` by default).

        Raises:
            ValueError: under a distribution, when the batch does not split evenly over the
                replicas (JAX).
        """
        return self.fetch(self.dispatch(x, *extras))

    def dispatch(self, x, *extras):
        """Starts the step on one batch and returns its result as backend tensors.

        On JAX the call returns as soon as the work is queued (XLA runs it asynchronously),
        so the caller can prepare the next batch meanwhile; :meth:`fetch` waits for it.
        ``step(x)`` is ``step.fetch(step.dispatch(x))``.
        """
        for layer in self._fast_layers:
            layer.refresh()  # the kernels' caches follow weight changes between calls
        if self.backend == "tensorflow" and self.replica_reduce is not None:
            strategy = _tf_strategy()
            if strategy is not None:
                return self._tf_distributed(strategy, x, extras)
        x = ops.convert_to_tensor(x, dtype=self.flat_model.inputs[0].dtype)
        extras = [ops.convert_to_tensor(e) for e in extras]
        return self._step(x, *extras)

    @staticmethod
    def fetch(out):
        """Waits for a :meth:`dispatch` result and converts it to numpy."""
        return _convert_output(out)

    def _tf_distributed(self, strategy, x, extras):
        """One call spread over the replicas of ``strategy`` (TensorFlow), results combined."""
        import numpy as np
        import tensorflow as tf

        x = np.asarray(x, dtype=self.flat_model.inputs[0].dtype)
        extras = [np.asarray(e) for e in extras]
        n = int(strategy.num_replicas_in_sync)
        rows = x.shape[0]
        # Even slices of the batch axis (the last ones shorter when it does not divide).
        bounds = np.linspace(0, rows, n + 1).round().astype(int)

        def slices(value):
            if value.ndim and value.shape[0] == rows:
                return [value[bounds[i]: bounds[i + 1]] for i in range(n)]
            return [value] * n

        parts = [slices(v) for v in (x, *extras)]
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda ctx: tuple(tf.constant(p[ctx.replica_id_in_sync_group]) for p in parts)
        )
        key = id(strategy)
        if key not in self._tf_dist_fns:
            # The strategy is kept with its function, so its id cannot be reused by another.
            self._tf_dist_fns[key] = (strategy, self._build_tf_distributed(strategy))
        return self._tf_dist_fns[key][1](per_replica)

    def _build_tf_distributed(self, strategy):
        import tensorflow as tf

        step = self._step
        plan = self.replica_reduce

        def combine(how, value):
            if value is None:
                return None
            if isinstance(value, dict):
                return {k: combine(how, v) for k, v in value.items()}
            if how == "sum":
                return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            return strategy.gather(value, axis=0)

        def run(per_replica):
            outputs = strategy.run(lambda args: step(*args), args=(per_replica,))
            return _map_plan(combine, plan, outputs)

        # One trace per distinct shape at first; then shapes are generalised (fewer traces).
        return tf.function(run, reduce_retracing=True) if self.jit else run

    # -- TensorFlow ---------------------------------------------------------------------------

    def _build_tf(self):
        import tensorflow as tf

        model = self.flat_model

        def step(x, *extras):
            self.trace_count += 1
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)  # puts every activation on the tape; weights stay unwatched
                outputs = model(x, training=False)
                acts, out = self._split(outputs)
                value = self._value(out, acts, extras)
            sources = [acts[name] for name in self.layers] if self.layer_gradients else []
            if self.input_gradient:
                sources = sources + [x]
            grads = tape.gradient(value, sources) if sources else []
            grads = [tf.zeros_like(s) if g is None else g for s, g in zip(sources, grads)]
            layer_grads = dict(zip(self.layers, grads)) if self.layer_gradients else {}
            x_grad = grads[-1] if self.input_gradient else None
            result = GradientResult(value, out, acts, layer_grads, x_grad)
            return self.reduce(result, *extras)

        if not self.jit:
            return step
        compiled = {}

        def call(x, *extras):
            if "fn" not in compiled:
                # One trace for every batch: all axes but the last of 3+D arguments are dynamic.
                signature = [_dynamic_spec(t) for t in (x, *extras)]
                compiled["fn"] = tf.function(step, input_signature=signature)
            return compiled["fn"](x, *extras)

        return call

    # -- JAX ----------------------------------------------------------------------------------

    def _build_jax(self):
        import jax
        import jax.numpy as jnp

        model = self.flat_model
        use_probes = len(model.inputs) > 1
        if use_probes:
            taps_model = flatten_model(self.model, self.layers, include_output=False)

        def forward(probes, x, trainable, non_trainable, extras):
            inputs = [x, *probes] if use_probes else x
            outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=False)
            acts, out = self._split(outputs)
            value = self._value(out, acts, extras)
            return value, (acts, out)

        def step(trainable, non_trainable, x, *extras):
            self.trace_count += 1
            if use_probes:
                # Shapes are static under jit: infer the activations' shapes symbolically.
                specs = taps_model.compute_output_spec(keras.KerasTensor(x.shape, dtype=x.dtype))
                specs = specs if isinstance(specs, (list, tuple)) else [specs]
                probes = [jnp.zeros(spec.shape, spec.dtype) for spec in specs]
            else:
                probes = []
            argnums = ([0] if use_probes else []) + ([1] if self.input_gradient else [])
            if argnums:
                (value, (acts, out)), grads = jax.value_and_grad(
                    forward, argnums=tuple(argnums), has_aux=True
                )(probes, x, trainable, non_trainable, extras)
                grads = list(grads)
            else:
                value, (acts, out) = forward(probes, x, trainable, non_trainable, extras)
                grads = []
            layer_grads = dict(zip(self.layers, grads.pop(0))) if use_probes else {}
            x_grad = grads.pop(0) if self.input_gradient else None
            result = GradientResult(value, out, acts, layer_grads, x_grad)
            return self.reduce(result, *extras)

        compiled = jax.jit(step) if self.jit else step

        placed = {}

        def weights(variables, distribution):
            if distribution is None:
                return [v.value for v in variables]
            # Weights made before the distribution was set sit on one device; lay them out as
            # the distribution says (replicated for DataParallel), once per weight array.
            values = []
            for v in variables:
                key = (id(v), id(distribution))
                if key not in placed or placed[key][0] is not v.value:
                    layout = distribution.get_variable_layout(v)
                    placed[key] = (v.value, internals.jax_distribute_tensor(v.value, layout))
                values.append(placed[key][1])
            return values

        # The variable lists are fixed once the model is built; walking the layers for them
        # on every batch costs more than a small model's step.
        trainable_variables = model.trainable_variables
        non_trainable_variables = model.non_trainable_variables

        def call(x, *extras):
            distribution = keras.distribution.distribution()
            if self.replica_reduce is None:
                distribution = None  # it would not know how to combine replicas
            trainable = weights(trainable_variables, distribution)
            non_trainable = weights(non_trainable_variables, distribution)
            if distribution is not None:
                x, *extras = _jax_distribute_batch(distribution, [x, *extras])
            return compiled(trainable, non_trainable, x, *extras)

        return call

    # -- PyTorch ------------------------------------------------------------------------------

    def _build_torch(self):
        import torch

        model = self.flat_model

        def step(x, *extras):
            with torch.enable_grad():
                if self.input_gradient or self.layer_gradients:
                    # Also when only activations are differentiated: a weightless path from the
                    # input must still be on the autograd tape. Unrequested input gradients are
                    # pruned by the engine.
                    x = x.detach().requires_grad_(True)
                outputs = model(x, training=False)
                acts, out = self._split(outputs)
                value = self._value(out, acts, extras)
                sources = [acts[name] for name in self.layers] if self.layer_gradients else []
                if self.input_gradient:
                    sources = sources + [x]
                if sources:
                    grads = torch.autograd.grad(value, sources, allow_unused=True)
                    grads = [
                        torch.zeros_like(s) if g is None else g for s, g in zip(sources, grads)
                    ]
                else:
                    grads = []
            acts = {k: v.detach() for k, v in acts.items()}
            out = out.detach() if out is not None else None
            layer_grads = dict(zip(self.layers, grads)) if self.layer_gradients else {}
            x_grad = grads[-1] if self.input_gradient else None
            result = GradientResult(value.detach(), out, acts, layer_grads, x_grad)
            with torch.no_grad():
                return self.reduce(result, *extras)

        return step


def _tf_strategy():
    """The ``tf.distribute`` strategy whose scope is entered, if it has several replicas."""
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return None
    strategy = tf.distribute.get_strategy()
    return strategy if strategy.num_replicas_in_sync > 1 else None


def _map_plan(fn, plan, values):
    """``fn(leaf_of_plan, value)`` over ``values`` following the nest ``plan`` (a prefix)."""
    if isinstance(plan, str):
        return fn(plan, values)
    if isinstance(plan, dict):
        return {k: _map_plan(fn, plan[k], values[k]) for k in plan}
    mapped = [_map_plan(fn, p, v) for p, v in zip(plan, values)]
    if isinstance(plan, tuple) and hasattr(plan, "_fields"):
        return type(values)(*mapped)
    return type(plan)(mapped)


def _jax_distribute_batch(distribution, arrays):
    """Lays the batch arguments out along the distribution's batch axis (other ones are
    replicated); the batch must split evenly over that axis."""
    import jax

    mesh = distribution.device_mesh
    n = int(mesh.shape[mesh.axis_names.index(distribution.batch_dim_name)])
    rows = arrays[0].shape[0]
    if rows % n:
        raise ValueError(
            f"Under {type(distribution).__name__} the batch ({rows} rows) must split evenly over "
            f"the {n} devices of the batch axis '{distribution.batch_dim_name}'. Received: batch "
            f"of {rows}"
        )
    placed = []
    for value in arrays:
        if len(value.shape) and value.shape[0] == rows:
            layout = distribution.get_data_layout(value.shape).backend_layout
            # Every process holds the same host batch here (one process: the whole batch).
            placed.append(jax.device_put(value, layout))
        else:
            replicated = keras.distribution.TensorLayout(
                [None] * len(value.shape), mesh
            ).backend_layout
            placed.append(jax.device_put(value, replicated))
    return placed


def _convert_output(out):
    if keras.backend.backend() == "jax":
        import jax

        # One transfer for the whole result (waits once) instead of one per array.
        out = jax.device_get(out)
    if isinstance(out, GradientResult):
        return _result_to_numpy(out)
    return tree.map_structure(to_numpy, out)


def _dynamic_spec(tensor):
    import tensorflow as tf

    shape = list(tensor.shape)
    dynamic = [None] * len(shape)
    if len(shape) >= 3:
        dynamic[-1] = shape[-1]
    return tf.TensorSpec(dynamic, tensor.dtype)


def _result_to_numpy(result):
    def conv(t):
        return None if t is None else to_numpy(t)

    return GradientResult(
        value=float(conv(result.value)),
        output=conv(result.output),
        activations={k: conv(v) for k, v in result.activations.items()},
        gradients={k: conv(v) for k, v in result.gradients.items()},
        input_gradient=conv(result.input_gradient),
    )

