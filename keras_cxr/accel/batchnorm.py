"""`BatchNormalization` as one fused torch kernel, forward and backward.

Keras computes the moments and the normalization as about a dozen separate
elementwise kernels (and as many in the backward pass). Here a 4-D
channels-last batch norm is one fused call in training (the kernel torch's
`BatchNorm2d` picks: cuDNN on a GPU, on float16 activations too) and one
`batch_norm` call in inference, with the moving statistics updated exactly as
Keras does (biased variance, the layer's momentum). While a marked model
runs (`keras_cxr.accel.graph`), the moving-statistics updates of its batch
norms are applied together when the call ends, as multi-tensor ops (on a GPU
a few launches instead of six per layer; the same elementwise arithmetic).
Masks, renormalization, synchronized batch norm (Keras's or keras-cxr's
data-parallel one) and other ranks go to
Keras's own `call`.
"""

import inspect
import threading

import keras
import torch
import torch.nn.functional as F

from keras_cxr.accel import graph

_keras_batch_norm_call = None
# Private Keras functions, bound by `install` (never at import).
in_stateless_scope = to_torch_dtype = None

_DTYPES = ("float16", "bfloat16", "float32")
# Set on a `BatchNormalization._moments` replacement whose moments are not the local batch's
# (`keras_cxr.distributed.synchronized_batch_norm`): the fused kernel would compute local ones.
GLOBAL_MOMENTS_MARK = "keras_cxr_global_moments"
_ATTRIBUTES = ("renorm", "synchronized", "momentum", "epsilon", "axis", "center", "scale")


def probe():
    params = list(inspect.signature(keras.layers.BatchNormalization.call).parameters)
    if params != ["self", "inputs", "training", "mask"]:
        return f"BatchNormalization.call takes {params}"
    layer = keras.layers.BatchNormalization()
    missing = [a for a in _ATTRIBUTES if not hasattr(layer, a)]
    if missing:
        return f"BatchNormalization has no {', '.join(missing)}"
    if not hasattr(torch, "_batch_norm_impl_index"):
        return "torch has no _batch_norm_impl_index"
    return None


def _applies(layer, inputs, mask):
    return (
        mask is None
        and not layer.renorm
        and not layer.synchronized
        and not getattr(type(layer)._moments, GLOBAL_MOMENTS_MARK, False)
        and len(inputs.shape) == 4
        and layer.axis in (3, -1)
        and layer.compute_dtype in _DTYPES
    )


def _float32(variable):
    value = variable.value  # batch norm's variables are never autocast
    return value if value.dtype == torch.float32 else value.float()


def _batch_norm_call(self, inputs, training=None, mask=None):
    if not _applies(self, inputs, mask):
        return _keras_batch_norm_call(self, inputs, training=training, mask=mask)
    x = inputs
    # Torch normalizes bfloat16 activations (CPU and GPU) and float16 ones on a
    # GPU (cuDNN) with float32 statistics and weights itself, as BatchNorm2d
    # does under autocast: no float32 copy of the activations (on a 2-core
    # bfloat16 CPU, 11% of an EfficientNetV2-S training step). CPU float16 is
    # cast to float32 as Keras does.
    if x.dtype != torch.float32 and not (x.dtype == torch.bfloat16 or (x.is_cuda and x.dtype == torch.float16)):
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
                elif graph.running():
                    _defer_moving_update(value, batch, momentum)
                else:
                    value.mul_(momentum).add_(batch * (1.0 - momentum))  # `assign`'s arithmetic, in place
    else:
        out = F.batch_norm(x, _float32(self.moving_mean), _float32(self.moving_variance), gamma, beta,
                           training=False, eps=self.epsilon)
    out = out.permute(0, 2, 3, 1)
    dtype = to_torch_dtype(self.compute_dtype)
    return out if out.dtype == dtype else out.to(dtype)


# Moving-statistics updates of the batch norms that ran in this thread's marked model call,
# applied when the call ends: .groups {(momentum, device): ([statistics], [batch values])} and
# .ids, the ids of those statistics.
_pending = threading.local()


def _defer_moving_update(statistic, batch, momentum):
    if id(statistic) in getattr(_pending, "ids", ()):
        apply_moving_updates()  # a layer called twice: its first update lands first
    if not getattr(_pending, "groups", None):
        _pending.groups, _pending.ids = {}, set()
    targets, batches = _pending.groups.setdefault((momentum, statistic.device), ([], []))
    targets.append(statistic)
    batches.append(batch)
    _pending.ids.add(id(statistic))


def apply_moving_updates():
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


def install():
    global _keras_batch_norm_call, in_stateless_scope, to_torch_dtype
    from keras.src.backend.common import stateless_scope
    from keras.src.backend.torch import core

    in_stateless_scope, to_torch_dtype = stateless_scope.in_stateless_scope, core.to_torch_dtype
    _keras_batch_norm_call = keras.layers.BatchNormalization.call
    keras.layers.BatchNormalization.call = _batch_norm_call
    graph.end_of_run_callbacks.append(apply_moving_updates)


def uninstall():
    global _keras_batch_norm_call
    apply_moving_updates()
    keras.layers.BatchNormalization.call = _keras_batch_norm_call
    _keras_batch_norm_call = None
    graph.end_of_run_callbacks.remove(apply_moving_updates)
