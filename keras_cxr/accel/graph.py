"""Run marked keras-cxr models without Keras's per-layer call overhead.

Keras's `Layer.__call__` does a lot of Python on every call: it binds the
arguments to the call signature (`inspect`), flattens them with pytree,
resolves `training` through the call context, checks input specs and
masks, and opens name scopes. On the torch backend this runs eagerly on
every layer of every step. Profiled on EfficientNetV2-S (about 500 layers)
it cost more than the arithmetic at small inputs on the CPU, and made a
training step CPU-bound on a GPU (273 ms per step for 60 ms of GPU kernels
at 384 px, batch 32, mixed_float16; timm: 53 ms).

`install()` makes `Functional.call` of marked models (`keras_cxr.accel.marks`)
walk the graph itself and, for each plain layer (no sublayers, no activity
regularizer, no custom `__call__`), do exactly the parts of `__call__` that
change the result:

- floating-point inputs are cast to the layer's input dtype (mixed
  precision), as `DTypePolicy.convert_input` does;
- the layer runs inside the autocast scope `__call__` would open;
- `training` is passed the way `Functional.call` passes it (the outer value
  when it is not None, else the node's own argument).

Nested models are walked recursively. While a marked model runs, every
other call of a plain layer takes the same short path when it is called
with tensors and no Keras masks, `training` then coming from the call
context as Keras resolves it: sublayers called from inside another layer's
`call`, and layers with sublayers of their own (keras-hub's Swin blocks,
their attention and MLP; about 45 calls per Swin-T step, 4% of a training
step at 128 px on the CPU). A layer with sublayers takes it only inside the
call context an outer Keras call opened, which its sublayers read, and may
be handed an explicit `mask` tensor, which Keras too passes to `call` as it
is. Symbolic inputs, masks, extra call arguments
and unmarked models go to Keras's own code. Outputs, gradients and variable
updates are identical to Keras's (tests compare them for every family, in
training and inference, under float32 and mixed_float16).
"""

import contextlib
import inspect
import threading
import weakref

import keras
import torch

from keras_cxr.accel import marks

_GRAPH, _LEAF, _LAYER = "graph", "leaf", "layer"

# Functional model -> list of (node, operation, kind, filler), or None where Keras's path is kept.
_PLANS = weakref.WeakKeyDictionary()
# Layer -> how `_layer_call` may shorten its calls (`_short_kind`; decided once per layer).
_SHORT = weakref.WeakKeyDictionary()
_running = threading.local()  # .depth > 0 while a marked model's graph runs in this thread

# Called, in this thread, when the outermost marked model call returns or raises.
end_of_run_callbacks = []

_keras_functional_call = None
_keras_layer_call = None
# Private Keras objects, bound by `install` (never at import).
Functional = backend = tree = global_state = to_torch_dtype = distribution_lib = None


def running():
    """Whether a marked model's graph is being run in this thread."""
    return bool(getattr(_running, "depth", 0))


def probe():
    from keras.src.backend.common import global_state as state
    from keras.src.models.functional import Functional as functional

    params = list(inspect.signature(functional.call).parameters)
    if params != ["self", "inputs", "training", "mask", "kwargs"]:
        return f"Functional.call takes {params}"
    if not hasattr(functional, "_standardize_inputs"):
        return "Functional has no _standardize_inputs"
    layer = keras.layers.Dense(1)
    missing = [a for a in ("_call_has_training_arg", "_call_has_mask_arg", "_call_context_args", "_call_signature",
                           "_convert_input_args", "autocast", "input_dtype", "_flatten_layers")
               if not hasattr(layer, a)]
    if missing:
        return f"Layer has no {', '.join(missing)}"
    if not hasattr(state, "get_global_attribute"):
        return "keras.src.backend.common.global_state has no get_global_attribute"
    return None


def _is_plain(op):
    """A built layer whose `__call__` is Keras's and adds nothing but bookkeeping (no regularizer, remat, quantization)."""
    return (
        isinstance(op, keras.layers.Layer)
        and type(op).__call__ is keras.layers.Layer.__call__
        and op.built
        and op.activity_regularizer is None
        and not getattr(op, "_remat_mode", None)
        and getattr(op, "quantization_mode", None) is None
    )


def _kind(op):
    if isinstance(op, Functional):
        # A subclass with its own `call` (some keras-hub backbones) keeps it.
        return _GRAPH if type(op).call is Functional.call else _LAYER
    plain = _is_plain(op) and not list(op._flatten_layers(include_self=False, recursive=False))
    return _LEAF if plain else _LAYER


def _argument_filler(node):
    """A cheaper `node.arguments.fill_in` for the usual argument shapes, or None.

    Keras's `fill_in` maps a pytree over the arguments of every node that is
    not called with a single tensor (batch norm's recorded `mask=None`,
    dropout's `training`, the lists of `Add`); here each argument is, once,
    a tensor reference, a list or tuple of tensor references, or a constant.
    """
    def spec(x):
        if isinstance(x, keras.KerasTensor):
            return lambda values: values.get(id(x))
        if isinstance(x, (list, tuple)) and x and all(isinstance(i, keras.KerasTensor) for i in x):
            kind, ids = type(x), [id(i) for i in x]
            return lambda values: kind(values.get(i) for i in ids)
        if tree.is_nested(x):
            raise ValueError("nested")
        return lambda values: x

    try:
        args = [spec(a) for a in node.arguments.args]
        kwargs = {k: spec(v) for k, v in node.arguments.kwargs.items()}
    except ValueError:
        return None
    return lambda values: ([a(values) for a in args], {k: v(values) for k, v in kwargs.items()})


def _build_plan(model):
    steps = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation and not node.is_input:
                steps.append((node, node.operation, _kind(node.operation), _argument_filler(node)))
    return steps


def _plan(model, nested=False):
    """The steps of `model`, or None for models Keras runs itself.

    Only marked models are walked here, and the models nested inside them
    (their backbones).
    """
    if model not in _PLANS:
        _PLANS[model] = _build_plan(model) if nested or marks.is_marked(model) else None
    return _PLANS[model]


def _autocast_scope(layer):
    """The scope `Layer.__call__` would enter for `layer` (a null context to keep the current one)."""
    current = backend.get_autocast_scope()
    if current is not None:
        if not layer.autocast or not backend.is_float_dtype(layer.compute_dtype):
            return backend.AutocastScope(None)
        if current.dtype != layer.compute_dtype:
            return backend.AutocastScope(layer.compute_dtype)
        return contextlib.nullcontext()
    if layer.compute_dtype != layer.variable_dtype:
        return backend.AutocastScope(layer.compute_dtype)
    return contextlib.nullcontext()


def _cast_input(x, dtype):
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x
    if isinstance(x, (list, tuple)):
        return type(x)(_cast_input(item, dtype) for item in x)
    return x


def _call_leaf(layer, args, kwargs):
    if layer._convert_input_args and layer.autocast and backend.is_float_dtype(layer.input_dtype):
        dtype = to_torch_dtype(layer.input_dtype)
        args = [_cast_input(a, dtype) for a in args]
        kwargs = {k: _cast_input(v, dtype) for k, v in kwargs.items()}
    with _autocast_scope(layer):
        return layer.call(*args, **kwargs)


def _run(model, steps, inputs, training):
    values = {id(ref): value for ref, value in zip(model.inputs, inputs)}
    for node, op, kind, filler in steps:
        if any(id(x) not in values for x in node.input_tensors):
            continue  # not computable from these inputs (as Keras skips it)
        args, kwargs = node.arguments.fill_in(values) if filler is None else filler(values)
        if training is not None and "training" in getattr(op, "_call_context_args", ()):
            kwargs = {**kwargs, "training": training}
        if kind == _LEAF:
            if not op._call_has_training_arg:
                kwargs.pop("training", None)
            outputs = _call_leaf(op, args, kwargs)
        elif kind == _GRAPH and len(args) == 1 and kwargs.get("mask") is None and set(kwargs) <= {"training", "mask"}:
            with _autocast_scope(op):
                outputs = _run_plan(op, op._standardize_inputs(args[0]), kwargs.get("training"))
        else:
            outputs = op(*args, **kwargs)
        for ref, value in zip(node.outputs, (outputs,) if isinstance(outputs, torch.Tensor) else tree.flatten(outputs)):
            values[id(ref)] = value
    outputs = [values[id(ref)] for ref in model.outputs]
    return tree.pack_sequence_as(model._outputs_struct, outputs)


def _run_plan(model, inputs, training):
    outputs = _run(model, _plan(model, nested=True), inputs, training)
    return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs


def _functional_call(self, inputs, training=None, mask=None, **kwargs):
    if mask is None and not kwargs and _plan(self) is not None and distribution_lib.distribution() is None:
        standardized = self._standardize_inputs(inputs)
        if all(isinstance(x, torch.Tensor) for x in standardized):
            _running.depth = getattr(_running, "depth", 0) + 1
            try:
                return _run_plan(self, standardized, training)
            finally:
                _running.depth -= 1
                if not _running.depth:
                    for callback in end_of_run_callbacks:
                        callback()
    return _keras_functional_call(self, inputs, training=training, mask=mask, **kwargs)


def _short_kind(layer):
    """How `_layer_call` may shorten `layer`'s calls: `_LEAF`, `_LAYER` (plain, with sublayers) or None (never)."""
    kind = _SHORT.get(layer, False)
    if kind is False:
        kind = _SHORT[layer] = _decide_short_kind(layer)
    return kind


def _decide_short_kind(layer):
    if isinstance(layer, Functional) or not _is_plain(layer) or layer._call_context_args != {"training"}:
        return None
    if layer.supports_masking and type(layer).compute_mask is not keras.layers.Layer.compute_mask:
        return None  # it makes output masks, which the short path does not attach
    if not list(layer._flatten_layers(include_self=False, recursive=False)):
        return None if layer._call_has_mask_arg else _LEAF
    # A layer with sublayers may take an explicit `mask` tensor (keras-hub's
    # window attention), which Keras hands to `call` unchanged; not when it
    # supports masking (Keras would attach that mask to the outputs).
    mask = layer._call_signature.parameters.get("mask")
    if mask is not None and (mask.default is not None or layer.supports_masking):
        return None
    return _LAYER


def _training_default(layer):
    parameter = layer._call_signature.parameters.get("training")
    return None if parameter is None or parameter.default is parameter.empty else parameter.default


def _layer_call(self, *args, **kwargs):
    """`Layer.__call__`, shortened for plain sublayers while a marked model runs."""
    kind = getattr(_running, "depth", 0) and args and _short_kind(self)
    if not (kind and all(isinstance(a, torch.Tensor) and backend.get_keras_mask(a) is None for a in args)
            and all(not isinstance(v, torch.Tensor) or (kind == _LAYER and k == "mask") for k, v in kwargs.items())):
        return _keras_layer_call(self, *args, **kwargs)
    # `training` as `Layer.__call__` resolves it: passed, else the call
    # context's, else the signature's default; stashed in the context for the
    # layers called after this one; dropped where `call` does not take it.
    context = global_state.get_global_attribute("current_call_ctx")
    if context is None and kind == _LAYER:
        return _keras_layer_call(self, *args, **kwargs)  # Keras opens the context its sublayers read
    if "training" in kwargs:
        training = kwargs["training"]
    elif context is not None and context.get_value("training") is not None:
        training = context.get_value("training")
    else:
        training = _training_default(self)
    if context is not None:
        context.set_value("training", training)
    if self._call_has_training_arg:
        kwargs = {**kwargs, "training": training}
    else:
        kwargs = {k: v for k, v in kwargs.items() if k != "training"}
    return _call_leaf(self, args, kwargs)


def install():
    global _keras_functional_call, _keras_layer_call
    global Functional, backend, tree, global_state, to_torch_dtype, distribution_lib
    from keras.src import backend as keras_backend
    from keras.src import tree as keras_tree
    from keras.src.backend.common import global_state as state
    from keras.src.backend.torch.core import to_torch_dtype as dtype_of
    from keras.src.distribution import distribution_lib as distribution
    from keras.src.models.functional import Functional as functional

    Functional, backend, tree, global_state = functional, keras_backend, keras_tree, state
    to_torch_dtype, distribution_lib = dtype_of, distribution
    _keras_functional_call = Functional.call
    Functional.call = _functional_call
    _keras_layer_call = keras.layers.Layer.__call__
    keras.layers.Layer.__call__ = _layer_call


def uninstall():
    global _keras_functional_call, _keras_layer_call
    Functional.call = _keras_functional_call
    keras.layers.Layer.__call__ = _keras_layer_call
    _keras_functional_call = _keras_layer_call = None
