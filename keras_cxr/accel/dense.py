"""`Dense` as one fused `addmm`.

Keras's `Dense.call` runs a matrix multiplication and then a separate bias
addition over the whole output; `torch.nn.functional.linear` fuses the two,
as timm's `nn.Linear` does (on Swin-T at 224 px the separate additions were
13% of the inference time). Layers without a bias, with mixed input and
kernel dtypes or integer inputs go to Keras's own `call`; the LoRA-adjusted,
autocast kernel is read through the layer's `kernel` property as Keras does.
"""

import inspect

import keras
import torch.nn.functional as F

_keras_dense_call = None
_convert = None  # Keras's torch `convert_to_tensor`, bound by `install`


def probe():
    params = list(inspect.signature(keras.layers.Dense.call).parameters)
    if params != ["self", "inputs", "training"]:
        return f"Dense.call takes {params}"
    layer = keras.layers.Dense(1)
    layer.build((None, 2))
    missing = [a for a in ("bias", "activation", "kernel") if not hasattr(layer, a)]
    return f"Dense has no {', '.join(missing)}" if missing else None


def _dense_call(self, inputs, training=None):
    inputs = _convert(inputs)
    kernel = _convert(self.kernel)  # the LoRA-adjusted, autocast kernel
    if self.bias is None or inputs.dtype != kernel.dtype or not inputs.is_floating_point():
        return _keras_dense_call(self, inputs, training=training)
    bias = _convert(self.bias)
    if bias.dtype != kernel.dtype:
        return _keras_dense_call(self, inputs, training=training)
    x = F.linear(inputs, kernel.t(), bias)
    return x if self.activation is None else self.activation(x)


def install():
    global _keras_dense_call, _convert
    from keras.src.backend.torch.core import convert_to_tensor

    _convert = convert_to_tensor
    _keras_dense_call = keras.layers.Dense.call
    keras.layers.Dense.call = _dense_call


def uninstall():
    global _keras_dense_call
    keras.layers.Dense.call = _keras_dense_call
    _keras_dense_call = None
