"""`LossScaleOptimizer`'s step as two multi-tensor passes.

Under `mixed_float16`, Keras's `LossScaleOptimizer` checks and unscales each
gradient with three separate ops; here it is one multi-tensor finite check
and one multi-tensor division (the same arithmetic, tested against Keras
including steps with inf/NaN gradients and scale growth). Gradients on
several devices or dtypes, and variables that are overwritten with their
gradient, go to Keras's own step.
"""

import inspect

import torch
from keras import ops

_keras_apply = None
# Private Keras objects, bound by `install` (never at import).
LossScaleOptimizer = convert_to_tensor = None
_ATTRIBUTES = ("_stateful_handle_non_finite_grads", "_overwrite_variable_with_gradient")


def probe():
    from keras.src.optimizers.loss_scale_optimizer import LossScaleOptimizer as optimizer

    params = list(inspect.signature(optimizer._common_apply).parameters)
    if params != ["self", "grads", "trainable_variables"]:
        return f"LossScaleOptimizer._common_apply takes {params}"
    missing = [a for a in _ATTRIBUTES if not hasattr(optimizer, a)]
    if missing:
        return f"LossScaleOptimizer has no {', '.join(missing)}"
    if not hasattr(torch, "_amp_foreach_non_finite_check_and_unscale_"):
        return "torch has no _amp_foreach_non_finite_check_and_unscale_"
    return None


def _apply(self, grads, trainable_variables=None):
    variables = trainable_variables or self._trainable_variables
    tensors = [g for g in grads if g is not None]
    if (not self.built or not tensors
            or any(g is not None and self._overwrite_variable_with_gradient(v) for g, v in zip(grads, variables))
            or len({(g.device, g.dtype) for g in tensors}) != 1):
        return _keras_apply(self, grads, trainable_variables)
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


def install():
    global _keras_apply, LossScaleOptimizer, convert_to_tensor
    from keras.src.backend.torch import core
    from keras.src.optimizers import loss_scale_optimizer

    LossScaleOptimizer, convert_to_tensor = loss_scale_optimizer.LossScaleOptimizer, core.convert_to_tensor
    _keras_apply = LossScaleOptimizer._common_apply
    LossScaleOptimizer._common_apply = _apply


def uninstall():
    global _keras_apply
    LossScaleOptimizer._common_apply = _keras_apply
    _keras_apply = None
