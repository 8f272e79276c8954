"""`keras_cxr.accel.dense` gives Keras's `Dense` results."""

import keras
import numpy as np
import pytest
import torch

from keras_cxr.seeding import set_seed
from tests.accel.helpers import both


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
@pytest.mark.parametrize("shape, kwargs", [((5, 6), {}), ((2, 7, 6), {"activation": "gelu"}),
                                            ((5, 6), {"use_bias": False}), ((3, 6), {"lora": 2})])
def test_dense_matches_keras_forward_and_backward(policy, shape, kwargs):
    keras.mixed_precision.set_dtype_policy(policy)
    kwargs = dict(kwargs)
    lora = kwargs.pop("lora", None)
    x0 = np.random.default_rng(3).normal(size=shape).astype("float32")

    def run():
        set_seed(0)
        dense = keras.layers.Dense(4, bias_initializer="glorot_uniform", **kwargs)
        dense.build(shape)
        if lora:
            dense.enable_lora(lora, b_initializer="ones")
        x = torch.tensor(x0, requires_grad=True)
        y = dense(x)
        (y.float() * torch.linspace(-1, 1, 4)).square().sum().backward()
        return y.detach().float().numpy(), x.grad.numpy(), [v.value.grad.numpy() for v in dense.trainable_variables]

    reference, fast = both(run)
    atol = 1e-2 if policy == "mixed_float16" else 1e-5
    np.testing.assert_allclose(fast[0], reference[0], atol=atol, rtol=1e-3)
    np.testing.assert_allclose(fast[1], reference[1], atol=atol, rtol=1e-3)
    for a, b in zip(fast[2], reference[2]):
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-3)

