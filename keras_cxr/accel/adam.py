"""Keras's Adam / AdamW update as one fused torch pass.

Keras's Adam update on torch is seven `torch._foreach_*` passes over every
weight (one kernel per tensor per pass on the CPU); here it is one
`torch._fused_adam_` pass (65 -> 15 ms per EfficientNetV2-S step), with
epsilon rescaled so that the update is Keras's formula exactly
(`lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`). AdamW's
decoupled weight decay, a separate pass over every weight in Keras
(`torch._foreach_mul_` by `1 - weight_decay * lr`, just before the update),
runs inside the same kernel (`torch._fused_adamw_`, as `torch.optim.AdamW(
fused=True)` does): its decay rate is chosen so that the kernel multiplies by
Keras's own factor, which gives the same bits (4 ms of a 530 ms Swin-T step
at 128 px on the CPU). AMSGrad, mixed dtypes or devices, and weights whose
memory no permutation makes dense go to Keras's own update (and weight decay).
"""

import inspect
import weakref

import torch

_keras_adam_update = None
_keras_weight_decay = None
_torch_adam = _torch_optimizer = None  # Keras's torch optimizer modules, bound by `install`

# optimizer -> the variables whose weight decay Keras asked for and `_adam_update` owes.
_PENDING_DECAY = weakref.WeakKeyDictionary()

# optimizer -> (tensors the plan was built from, plan): what `_adam_update` hands the fused kernel.
_PLANS = weakref.WeakKeyDictionary()


def probe():
    from keras.src.backend.torch.optimizers import torch_adam

    params = list(inspect.signature(torch_adam.Adam._parallel_update_step).parameters)
    if params != ["self", "grads", "variables", "learning_rate"]:
        return f"torch Adam._parallel_update_step takes {params}"
    if not hasattr(torch_adam.Adam, "_get_variable_index"):
        return "Adam has no _get_variable_index"
    if not hasattr(torch, "_fused_adam_") or not hasattr(torch, "_fused_adamw_"):
        return "torch has no _fused_adam_ / _fused_adamw_"
    from keras.src.backend.torch.optimizers import torch_optimizer

    params = list(inspect.signature(torch_optimizer.TorchOptimizer._apply_weight_decay).parameters)
    if params != ["self", "variables"]:
        return f"TorchOptimizer._apply_weight_decay takes {params}"
    if not hasattr(torch_adam.Adam, "_use_weight_decay") or not hasattr(torch_adam.Adam, "_get_current_learning_rate"):
        return "Adam has no _use_weight_decay / _get_current_learning_rate"
    return None


def _dense_order(tensor):
    """The permutation that makes `tensor` contiguous, or None if it already is (False if none does)."""
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


def _plan(self, variables, params):
    """(memory orders, momentums, velocities) laid out like each parameter, or None (Keras's path).

    Built once per optimizer and reused while the same tensors back the
    variables and their slots (a load that replaces a tensor rebuilds it).
    """
    slots = [(self._momentums[i], self._velocities[i]) for i in map(self._get_variable_index, variables)]

    def backing_tensors():
        return params + [slot._value for pair in slots for slot in pair]

    cached = _PLANS.get(self)
    if cached is not None and len(cached[0]) == len(params) * 3 and all(
            a is b for a, b in zip(cached[0], backing_tensors())):
        return cached[1]
    # The fused kernel walks memory linearly: hand it each parameter with its
    # gradient and moments in the parameter's memory order (conv kernels are
    # stored (out, in, kh, kw); see `conv.relayout_kernels`), all contiguous alike.
    orders = [_dense_order(p) for p in params]
    if any(order is False for order in orders):
        plan = None
    else:  # the views are made per step: a view kept across steps would outlive in-place updates of its base
        plan = (orders, [_slot_like(m, p) for p, (m, _) in zip(params, slots)],
                [_slot_like(v, p) for p, (_, v) in zip(params, slots)])
    _PLANS[self] = (backing_tensors(), plan)  # after `_slot_like`, which may relay a slot
    return plan


def _defer_weight_decay(self, variables):
    """Keras's weight decay, left to the fused update that follows it where that update is ours."""
    if self.weight_decay is None or type(self)._parallel_update_step is not _adam_update:
        return _keras_weight_decay(self, variables)
    _PENDING_DECAY[self] = list(variables)


def _decay_factor(self):
    """What Keras multiplies decayed weights by: `1 - weight_decay * lr`, computed as Keras computes it."""
    factor = 1 - self.weight_decay * self._get_current_learning_rate()
    return float(factor.item() if isinstance(factor, torch.Tensor) else factor)


def _adam_update(self, grads, variables, learning_rate):
    decayed = _PENDING_DECAY.pop(self, None)
    params = [v.value for v in variables]
    dtype, device = params[0].dtype, params[0].device
    plan = None
    if not self.amsgrad and all(p.dtype == dtype and p.device == device and g.dtype == dtype
                                for p, g in zip(params, grads)):
        plan = _plan(self, list(variables), params)
    if plan is None:
        if decayed is not None:
            _keras_weight_decay(self, decayed)
        return _keras_adam_update(self, grads, variables, learning_rate)
    orders, momentums, velocities = plan
    params, grads, momentums, velocities = (
        [t if order is None else t.permute(order) for t, order in zip(tensors, orders)]
        for tensors in (params, grads, momentums, velocities))
    grads = [g.contiguous() for g in grads]
    step = float(self.iterations.value.item()) + 1.0
    lr = float(learning_rate)
    # torch divides sqrt(v) by sqrt(1 - b2^t) before adding eps; Keras adds
    # eps to sqrt(v). Scaling eps by the same factor gives Keras's update.
    eps = float(self.epsilon) / (1.0 - float(self.beta_2) ** step) ** 0.5
    steps = [torch.tensor(step, dtype=torch.float32, device=device)] * len(params)
    decay = [False] * len(params)
    rate = 0.0
    if decayed is not None:
        factor = _decay_factor(self)
        if factor != 1.0 and lr != 0.0 and dtype == torch.float32:  # the type whose bits the tests compare
            # The kernel multiplies by `1 - lr * rate` rounded to the weights'
            # type: with this rate that is Keras's factor exactly.
            rate = (1.0 - factor) / lr
            ids = {id(v) for v in decayed if self._use_weight_decay(v)}
            decay = [id(v) in ids for v in variables]
        else:
            _keras_weight_decay(self, decayed)
    for fused, wanted in ((torch._fused_adamw_, True), (torch._fused_adam_, False)):
        group = [i for i, d in enumerate(decay) if d is wanted]
        if group:
            fused(
                [params[i] for i in group], [grads[i] for i in group], [momentums[i] for i in group],
                [velocities[i] for i in group], [], [steps[i] for i in group],
                lr=lr, beta1=float(self.beta_1), beta2=float(self.beta_2),
                weight_decay=rate if wanted else 0.0, eps=eps, amsgrad=False, maximize=False,
            )


def install():
    global _keras_adam_update, _keras_weight_decay, _torch_adam, _torch_optimizer
    from keras.src.backend.torch.optimizers import torch_adam, torch_optimizer

    _torch_adam, _torch_optimizer = torch_adam, torch_optimizer
    _keras_adam_update = torch_adam.Adam._parallel_update_step
    _keras_weight_decay = torch_optimizer.TorchOptimizer._apply_weight_decay
    torch_adam.Adam._parallel_update_step = _adam_update
    torch_optimizer.TorchOptimizer._apply_weight_decay = _defer_weight_decay


def uninstall():
    global _keras_adam_update, _keras_weight_decay
    _torch_adam.Adam._parallel_update_step = _keras_adam_update
    _torch_optimizer.TorchOptimizer._apply_weight_decay = _keras_weight_decay
    _keras_adam_update = _keras_weight_decay = None
    _PENDING_DECAY.clear()
