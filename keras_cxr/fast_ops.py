"""Faster torch kernels for Keras convolution and batch normalization.

Measured with the torch profiler on EfficientNetV2-S (128 px, batch 8, two
CPU threads; see `benchmarks/`), Keras 3.15's torch backend spends time
that plain PyTorch does not:

- Convolution on channels-last tensors: Keras permutes the input to NCHW and
  calls `.contiguous()` (a full copy), then copies it again into the
  `channels_last` memory format for oneDNN. A permuted NHWC tensor already
  *is* an NCHW tensor in `channels_last` memory format, so `conv` here hands
  that view to `conv2d` directly: no activation copy in the forward pass,
  the same oneDNN kernel, bit-identical outputs. (Running stride-1 1x1
  convolutions as one matrix multiplication on the NHWC tensor was measured
  too: no faster than oneDNN, so not used.) Kernels of the models
  `keras_cxr.models.build` makes are also stored in torch's `(out, in, kh,
  kw)` memory order behind Keras's shape (`relayout_conv_kernels`), so the
  kernel is not reordered every forward pass and its gradient not copied
  back every backward pass.
- `Dense` runs a matrix multiplication and then a separate bias addition
  over the whole output; `torch.nn.functional.linear` fuses the two
  (`addmm`), which is what timm's `nn.Linear` runs. On Swin-T at 224 px the
  separate additions were 13% of the inference time.
- `BatchNormalization` computes the moments and the normalization as about a
  dozen separate elementwise kernels (and as many in the backward pass). Here
  a 4-D channels-last batch norm is one fused call in training (the kernel
  torch's `BatchNorm2d` picks: cuDNN on a GPU, on float16 activations too)
  and one `batch_norm` call in inference, with the moving statistics updated
  exactly as Keras does (biased variance, the layer's momentum).
- Under `mixed_float16`, Keras's `LossScaleOptimizer` checks and unscales
  each gradient with three separate ops; here it is one multi-tensor finite
  check and one multi-tensor division (the same arithmetic).

Inference additionally runs through a TorchScript trace of the model
(`inference_call`, used by `keras_cxr.predict`): Keras's per-layer Python
dispatch costs about as much as the arithmetic of a small network's forward
pass, and a trace replays only the torch operations. Each input shape is
traced once and checked against the eager forward before it is trusted.

- Keras's Adam/AdamW update on torch is seven `torch._foreach_*` passes
  over every weight (one kernel per tensor per pass on CPU); here it is one
  `torch._fused_adam_` pass, with epsilon rescaled so that the update is
  Keras's formula exactly (`lr * sqrt(1 - b2^t) / (1 - b1^t) * m /
  (sqrt(v) + eps)`); weight decay stays Keras's own step.

`install()` replaces `keras.src.backend.torch.nn.conv`,
`keras.layers.Dense.call`, `keras.layers.BatchNormalization.call`, the
torch backend's Adam/AdamW update and `LossScaleOptimizer`'s apply step for
the whole process, and installs `keras_cxr.fast_graph`,
`keras_cxr.fast_random`, `keras_cxr.fast_alloc` (glibc keeps freed memory
for the next step; this one stays after `uninstall`) and (once keras_hub is
imported; see `prepare`) `keras_cxr.fast_swin` (it is called when
`keras_cxr` is imported); everything outside those cases (other ranks,
channels-first data, masks, renormalization, dilation with "same" padding)
goes to Keras's own code. Results match Keras's to float32 rounding (tests
compare predictions, gradients and moving statistics). Set
``KERAS_CXR_FAST_OPS=0`` before importing `keras_cxr` to keep Keras's
implementations.
"""

import os
import threading
import warnings
import weakref

import keras
import torch
import torch.nn.functional as F
from keras import ops
from keras.src import backend
from keras.src.backend.common.stateless_scope import in_stateless_scope
from keras.src.backend.torch import nn as torch_nn
from keras.src.backend.torch.core import convert_to_tensor, to_torch_dtype
from keras.src.utils.argument_validation import standardize_tuple

from keras_cxr import fast_alloc, fast_graph, fast_random, fast_swin

_installed = False


def _switched_on(variable):
    """Whether the environment leaves `variable` on (unset, or not 0/false/off/no)."""
    return os.environ.get(variable, "1").strip().lower() not in ("0", "false", "off", "no")


def enabled():
    """Whether `install` will patch (``KERAS_CXR_FAST_OPS`` is not 0/false/off/no)."""
    return _switched_on("KERAS_CXR_FAST_OPS")


def _conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    inputs = convert_to_tensor(inputs)
    kernel = convert_to_tensor(kernel)
    if inputs.ndim != 4 or backend.standardize_data_format(data_format) != "channels_last":
        return _keras_conv(inputs, kernel, strides, padding, data_format, dilation_rate)
    strides = standardize_tuple(strides, 2, "strides")
    dilation = standardize_tuple(dilation_rate, 2, "dilation_rate")
    kh, kw, kernel_in, _ = kernel.shape
    in_channels = inputs.shape[-1]
    if in_channels % kernel_in:
        return _keras_conv(inputs, kernel, strides, padding, data_format, dilation_rate)
    x = inputs.permute(0, 3, 1, 2)  # NCHW view with channels_last strides: no copy
    weight = kernel.permute(3, 2, 0, 1)
    if padding == "same":
        x, padding = torch_nn._apply_same_padding(x, (kh, kw), strides, "channels_last", "conv", dilation)
    else:
        padding = 0
    out = F.conv2d(x, weight, stride=strides, padding=padding, dilation=dilation, groups=in_channels // kernel_in)
    return out.permute(0, 2, 3, 1)


def _dense_call(self, inputs, training=None):
    inputs = convert_to_tensor(inputs)
    kernel = convert_to_tensor(self.kernel)  # the LoRA-adjusted, autocast kernel
    if self.bias is None or inputs.dtype != kernel.dtype or not inputs.is_floating_point():
        return _keras_dense_call(self, inputs, training=training)
    bias = convert_to_tensor(self.bias)
    if bias.dtype != kernel.dtype:
        return _keras_dense_call(self, inputs, training=training)
    x = F.linear(inputs, kernel.t(), bias)
    return x if self.activation is None else self.activation(x)


def _dense_order(tensor):
    """The permutation that makes `tensor` contiguous, or None if it already is (or none does)."""
    if tensor.is_contiguous():
        return None
    order = sorted(range(tensor.ndim), key=lambda d: -tensor.stride(d))
    return order if tensor.permute(order).is_contiguous() else False


def _slot_like(slot, param):
    """`slot`'s value in `param`'s memory layout (relaid once, values kept), so one fused pass fits both."""
    value = slot.value
    if value.stride() != param.stride():
        relaid = torch.empty_like(param).copy_(value)  # empty_like keeps a dense layout's strides
        slot._value = torch.nn.Parameter(relaid, requires_grad=False)
        value = slot._value
    return value


# optimizer -> (tensors the plan was built from, plan): what `_adam_update` hands the fused kernel.
_ADAM_PLANS = weakref.WeakKeyDictionary()


def _adam_plan(self, variables, params):
    """(memory orders, momentums, velocities) laid out like each parameter, or None (Keras's path).

    Built once per optimizer and reused while the same tensors back the
    variables and their slots (a load that replaces a tensor rebuilds it).
    """
    slots = [(self._momentums[i], self._velocities[i]) for i in map(self._get_variable_index, variables)]

    def backing_tensors():
        return params + [slot._value for pair in slots for slot in pair]

    cached = _ADAM_PLANS.get(self)
    if cached is not None and len(cached[0]) == len(params) * 3 and all(
            a is b for a, b in zip(cached[0], backing_tensors())):
        return cached[1]
    # The fused kernel walks memory linearly: hand it each parameter with its
    # gradient and moments in the parameter's memory order (conv kernels are
    # stored (out, in, kh, kw); see `relayout_conv_kernels`), all contiguous alike.
    orders = [_dense_order(p) for p in params]
    if any(order is False for order in orders):
        plan = None
    else:  # the views are made per step: a view kept across steps would outlive in-place updates of its base
        plan = (orders, [_slot_like(m, p) for p, (m, _) in zip(params, slots)],
                [_slot_like(v, p) for p, (_, v) in zip(params, slots)])
    _ADAM_PLANS[self] = (backing_tensors(), plan)  # after `_slot_like`, which may relay a slot
    return plan


def _adam_update(self, grads, variables, learning_rate):
    params = [v.value for v in variables]
    dtype, device = params[0].dtype, params[0].device
    if self.amsgrad or any(p.dtype != dtype or p.device != device or g.dtype != dtype
                           for p, g in zip(params, grads)):
        return _keras_adam_update(self, grads, variables, learning_rate)
    plan = _adam_plan(self, list(variables), params)
    if plan is None:
        return _keras_adam_update(self, grads, variables, learning_rate)
    orders, momentums, velocities = plan
    params, grads, momentums, velocities = (
        [t if order is None else t.permute(order) for t, order in zip(tensors, orders)]
        for tensors in (params, grads, momentums, velocities))
    grads = [g.contiguous() for g in grads]
    step = float(self.iterations.value.item()) + 1.0
    # torch divides sqrt(v) by sqrt(1 - b2^t) before adding eps; Keras adds
    # eps to sqrt(v). Scaling eps by the same factor gives Keras's update.
    eps = float(self.epsilon) / (1.0 - float(self.beta_2) ** step) ** 0.5
    steps = [torch.tensor(step, dtype=torch.float32, device=device)] * len(params)
    torch._fused_adam_(
        params, grads, momentums, velocities, [], steps,
        lr=float(learning_rate), beta1=float(self.beta_1), beta2=float(self.beta_2),
        weight_decay=0.0, eps=eps, amsgrad=False, maximize=False,
    )


def prepare(model):
    """Ready a freshly built or loaded keras-cxr model for the fast path.

    Stores its convolution kernels in torch's memory order
    (`relayout_conv_kernels`) and, once keras_hub is imported, installs
    `keras_cxr.fast_swin`. `keras_cxr.models.build` and the predictor's
    model loading call it; outputs are unchanged. A no-op when the fast ops
    are disabled.
    """
    if _installed:
        fast_swin.install()
    relayout_conv_kernels(model)


def relayout_conv_kernels(model):
    """Store the `Conv2D` kernels of `model` in torch's memory order (CPU only).

    Keras keeps a convolution kernel as `(kh, kw, in, out)`; torch convolves
    with `(out, in, kh, kw)`. `_conv` hands torch a permuted view, so on the
    CPU every forward pass reorders the kernel from that strided view and every
    backward pass copies its gradient back into Keras's order (about 14% of an
    EfficientNetV2-S training step at 128 px). Here each kernel keeps its
    Keras shape but its memory is laid out as `(out, in, kh, kw)`, so both
    copies disappear; values, saving, loading and `assign` are unchanged.
    Adam's fused update follows the layout (`_adam_update`). `keras_cxr.models.build`
    calls this for every model it builds when the fast ops are installed.

    Returns:
        The number of kernels relaid.
    """
    if not _installed:
        return 0
    relaid = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        variable = getattr(layer, "_kernel", None)
        if (not isinstance(layer, keras.layers.Conv2D) or variable is None or len(variable.shape) != 4
                or layer.data_format != "channels_last"):
            continue
        value = variable._value
        if value.device.type != "cpu" or not value.is_contiguous():
            continue
        oihw = value.detach().permute(3, 2, 0, 1).contiguous()
        variable._value = torch.nn.Parameter(oihw.permute(2, 3, 1, 0), requires_grad=value.requires_grad)
        relaid += 1
    if relaid:  # the torch parameter lists still hold the old tensors
        for layer in model._flatten_layers(include_self=True, recursive=True):
            if hasattr(layer, "_torch_params"):
                layer._track_variables()
    return relaid


def _fast_batch_norm_applies(layer, inputs, mask):
    return (
        mask is None
        and not layer.renorm
        and not layer.synchronized
        and len(inputs.shape) == 4
        and layer.axis in (3, -1)
    )


_BATCH_NORM_DTYPES = ("float16", "bfloat16", "float32")


def _float32(variable):
    value = variable.value  # batch norm's variables are never autocast
    return value if value.dtype == torch.float32 else value.float()


def _batch_norm_call(self, inputs, training=None, mask=None):
    if not _fast_batch_norm_applies(self, inputs, mask) or self.compute_dtype not in _BATCH_NORM_DTYPES:
        return _keras_batch_norm_call(self, inputs, training=training, mask=mask)
    x = inputs
    # On a GPU, cuDNN normalizes float16/bfloat16 activations with float32
    # statistics and weights itself (as torch's BatchNorm2d does under
    # autocast); elsewhere the activations are cast to float32 as Keras does.
    if x.dtype != torch.float32 and not (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)):
        x = x.float()
    x = x.permute(0, 3, 1, 2)
    gamma = _float32(self.gamma) if self.scale else None
    beta = _float32(self.beta) if self.center else None
    if training and self.trainable:
        out, mean, invstd = torch._batch_norm_impl_index(
            x, gamma, beta, None, None, True, 0.0, self.epsilon, torch.backends.cudnn.enabled
        )[:3]
        with torch.no_grad():
            # Keras's update: biased batch variance, `momentum` weighting the old value.
            variance = invstd.pow(-2) - self.epsilon
            momentum = self.momentum
            for variable, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
                value = variable.value
                if value.dtype != torch.float32 or in_stateless_scope():
                    variable.assign(_float32(variable) * momentum + batch * (1.0 - momentum))
                elif fast_graph.running():
                    _defer_moving_update(value, batch, momentum)
                else:
                    value.mul_(momentum).add_(batch * (1.0 - momentum))  # `assign`'s arithmetic, in place
    else:
        out = F.batch_norm(x, _float32(self.moving_mean), _float32(self.moving_variance), gamma, beta,
                           training=False, eps=self.epsilon)
    out = out.permute(0, 2, 3, 1)
    dtype = to_torch_dtype(self.compute_dtype)
    return out if out.dtype == dtype else out.to(dtype)


# Moving-statistics updates of the batch norms that ran in this thread's keras-cxr model call,
# applied when the call ends: .groups {(momentum, device): ([statistics], [batch values])} and
# .ids, the ids of those statistics.
_pending = threading.local()


def _defer_moving_update(statistic, batch, momentum):
    if id(statistic) in getattr(_pending, "ids", ()):
        _apply_moving_updates()  # a layer called twice: its first update lands first
    if not getattr(_pending, "groups", None):
        _pending.groups, _pending.ids = {}, set()
    targets, batches = _pending.groups.setdefault((momentum, statistic.device), ([], []))
    targets.append(statistic)
    batches.append(batch)
    _pending.ids.add(id(statistic))


def _apply_moving_updates():
    """`statistic * momentum + batch * (1 - momentum)`, in place, as multi-tensor ops per group.

    On a GPU the per-layer form was six kernel launches per batch norm (660
    per EfficientNetV2-S step, in a step bound by the host); the arithmetic
    is the same elementwise, so the statistics are bit-identical.
    """
    groups = getattr(_pending, "groups", None)
    _pending.groups, _pending.ids = {}, set()
    if not groups:
        return
    with torch.no_grad():
        for (momentum, _), (targets, batches) in groups.items():
            torch._foreach_mul_(targets, momentum)
            torch._foreach_add_(targets, torch._foreach_mul(batches, 1.0 - momentum))


def _loss_scale_apply(self, grads, trainable_variables=None):
    """`LossScaleOptimizer`'s step with two multi-tensor passes instead of three ops per gradient."""
    variables = trainable_variables or self._trainable_variables
    tensors = [g for g in grads if g is not None]
    if (not self.built or not tensors
            or any(g is not None and self._overwrite_variable_with_gradient(v) for g, v in zip(grads, variables))
            or len({(g.device, g.dtype) for g in tensors}) != 1):
        return _keras_loss_scale_apply(self, grads, trainable_variables)
    found_inf = torch.zeros(1, device=tensors[0].device)
    # A check only: the gradients are multiplied by exactly 1.
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found_inf, torch.ones(1, device=found_inf.device))
    if found_inf.item():
        return self._stateful_handle_non_finite_grads()
    unscaled = iter(torch._foreach_div(tensors, convert_to_tensor(self.dynamic_scale).to(tensors[0].dtype)))
    self.inner_optimizer.apply([None if g is None else next(unscaled) for g in grads],
                               trainable_variables=trainable_variables)
    if int(self.step_counter.value.item()) == self.dynamic_growth_steps - 1:
        self.step_counter.assign(0)
        self.dynamic_scale.assign(ops.multiply(self.dynamic_scale, 2.0))
    else:
        self.step_counter.assign_add(1)


# model -> {(shape, dtype): traced module, or None when tracing failed or disagreed}
_TRACES = weakref.WeakKeyDictionary()
_TRACE_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def _trace(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values baked into the graph
        try:
            traced = torch.jit.trace(model, (x,), check_trace=False)
        except Exception:  # noqa: BLE001  - any failure means: stay eager
            return None
    expected, got = model(x, training=False), traced(x)
    same = (isinstance(got, torch.Tensor) and got.shape == expected.shape
            and torch.allclose(got.float(), expected.float(), **_TRACE_TOLERANCE))
    return traced if same else None


def _is_keras_cxr_model(model):
    from keras_cxr import models

    if not isinstance(model, keras.Model) or model.name not in models.names():
        return False
    try:
        model.get_layer("backbone")
    except ValueError:
        return False
    return True


def inference_call(model, x):
    """`model(x, training=False)` through a cached, verified trace when possible.

    Call it under `torch.no_grad()` with the model in eval mode (as
    `keras_cxr.predict.inference_mode` does). A trace replays the operations
    of one forward pass, so a layer whose Python code branches on tensor
    values would be replayed wrongly on other inputs; only keras-cxr's own
    architectures (`keras_cxr.models.build`), whose layers branch on shapes
    only, are traced (a test traces every family and compares it with the
    eager model on fresh inputs). Other models, disabled fast ops, and traces
    that fail or disagree with the eager output on their first batch run
    eagerly.
    """
    if not _installed or not _is_keras_cxr_model(model):
        return model(x, training=False)
    x = keras.ops.convert_to_tensor(x)
    key = (tuple(x.shape), str(x.dtype))
    traces = _TRACES.setdefault(model, {})
    if key not in traces:
        traces[key] = _trace(model, x)
    traced = traces[key]
    return model(x, training=False) if traced is None else traced(x)


_keras_conv = None
_keras_batch_norm_call = None
_keras_dense_call = None
_keras_adam_update = None
_keras_loss_scale_apply = None


def install():
    """Patch Keras's torch conv and BatchNormalization (once; no-op when disabled)."""
    global _installed, _keras_conv, _keras_batch_norm_call, _keras_dense_call, _keras_adam_update
    global _keras_loss_scale_apply
    if _installed or not enabled():
        return
    from keras.src.backend.torch.optimizers import torch_adam
    from keras.src.optimizers.loss_scale_optimizer import LossScaleOptimizer

    _keras_loss_scale_apply = LossScaleOptimizer._common_apply
    LossScaleOptimizer._common_apply = _loss_scale_apply

    _keras_adam_update = torch_adam.Adam._parallel_update_step
    torch_adam.Adam._parallel_update_step = _adam_update
    _keras_dense_call = keras.layers.Dense.call
    keras.layers.Dense.call = _dense_call
    _keras_conv = torch_nn.conv
    _keras_batch_norm_call = keras.layers.BatchNormalization.call
    torch_nn.conv = _conv  # depthwise_conv and separable_conv call it too
    keras.layers.BatchNormalization.call = _batch_norm_call
    fast_graph.install()
    fast_graph.end_of_run_callbacks.append(_apply_moving_updates)
    fast_random.install()
    fast_swin.install()
    if _switched_on("KERAS_CXR_FAST_ALLOC"):
        fast_alloc.install()  # process-wide and permanent: `uninstall` leaves it
    _installed = True


def uninstall():
    """Restore Keras's implementations (for comparisons in tests and benchmarks)."""
    global _installed
    if not _installed:
        return
    torch_nn.conv = _keras_conv
    keras.layers.BatchNormalization.call = _keras_batch_norm_call
    keras.layers.Dense.call = _keras_dense_call
    from keras.src.backend.torch.optimizers import torch_adam

    torch_adam.Adam._parallel_update_step = _keras_adam_update
    from keras.src.optimizers.loss_scale_optimizer import LossScaleOptimizer

    LossScaleOptimizer._common_apply = _keras_loss_scale_apply
    fast_graph.uninstall()
    fast_graph.end_of_run_callbacks.remove(_apply_moving_updates)
    fast_random.uninstall()
    fast_swin.uninstall()
    _installed = False


def installed():
    return _installed
