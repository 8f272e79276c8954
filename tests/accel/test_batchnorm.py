"""`keras_cxr.accel.batchnorm` gives Keras's batch-norm outputs, gradients and statistics."""

import keras
import numpy as np
import pytest
import torch

from keras_cxr import models
from keras_cxr.accel import batchnorm
from tests.accel.helpers import both


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_batch_norm_matches_keras_in_training_and_inference(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    x0 = np.random.default_rng(1).normal(2.0, 3.0, size=(4, 5, 6, 8)).astype("float32")

    def run():
        bn = keras.layers.BatchNormalization(momentum=0.9)
        bn.build(x0.shape)
        bn.gamma.assign(np.linspace(0.5, 1.5, 8))
        bn.beta.assign(np.linspace(-1, 1, 8))
        x = torch.tensor(x0, requires_grad=True)
        y = bn(x, training=True)
        (y.float() * torch.linspace(-1, 1, 8)).square().sum().backward()
        inference = bn(torch.tensor(x0), training=False)
        return (y.detach().float().numpy(), x.grad.numpy(), bn.gamma.value.grad.numpy(), bn.beta.value.grad.numpy(),
                bn.moving_mean.numpy(), bn.moving_variance.numpy(), inference.detach().float().numpy(), y.dtype)

    reference, fast = both(run)
    # bfloat16 keeps 8 bits of mantissa: one rounding of a value near 3 is up to 0.016
    atol, rtol = {"float32": (1e-5, 1e-3), "mixed_float16": (1e-2, 1e-3), "mixed_bfloat16": (5e-2, 2e-2)}[policy]
    for a, b in zip(fast[:7], reference[:7]):
        np.testing.assert_allclose(a, b, atol=atol, rtol=rtol)
    assert fast[7] == reference[7]
    # The moving statistics moved by (1 - momentum) toward the batch's biased moments.
    # (of the activations as the layer sees them: rounded to bfloat16 under mixed_bfloat16)
    stats_rtol = 2e-3 if policy == "mixed_bfloat16" else 1e-4
    np.testing.assert_allclose(fast[4], 0.1 * x0.mean(axis=(0, 1, 2)), rtol=stats_rtol)
    np.testing.assert_allclose(fast[5], 0.9 + 0.1 * x0.var(axis=(0, 1, 2)), rtol=stats_rtol)


def test_batch_norm_with_a_mask_or_renorm_uses_keras_code():
    bn = keras.layers.BatchNormalization(renorm=True)
    x = torch.randn(2, 3, 4, 5)
    assert not batchnorm._applies(bn, x, None)
    assert not batchnorm._applies(keras.layers.BatchNormalization(), x, torch.ones(2, 3, 4))
    assert not batchnorm._applies(keras.layers.BatchNormalization(axis=1), x, None)
    assert batchnorm._applies(keras.layers.BatchNormalization(), x, None)


def test_moving_statistics_updates_are_batched_per_model_call(monkeypatch, accelerated):
    """All batch norms' moving-statistics updates of one training call land as multi-tensor ops at its end."""
    model = models.build("tiny_effv2", image_size=64, dropout=0.0)
    norms = [layer for layer in model._flatten_layers(recursive=True)
             if isinstance(layer, keras.layers.BatchNormalization)]
    calls = []
    foreach_mul_ = torch._foreach_mul_
    monkeypatch.setattr(torch, "_foreach_mul_", lambda tensors, scalar: (calls.append(len(tensors)),
                                                                          foreach_mul_(tensors, scalar)))
    before = norms[0].moving_mean.numpy().copy()
    model(torch.zeros(2, 64, 64, 3, dtype=torch.uint8) + 100, training=True)
    assert calls == [2 * len(norms)]  # one pass over every moving mean and variance
    assert not np.array_equal(norms[0].moving_mean.numpy(), before)


def test_a_batch_norm_deferred_twice_updates_in_order():
    statistic = torch.tensor([1.0, 2.0])
    expected = statistic.clone()
    for batch in (torch.tensor([3.0, 5.0]), torch.tensor([-1.0, 0.5])):
        expected = expected * 0.9 + batch * (1.0 - 0.9)
        batchnorm._defer_moving_update(statistic, batch, 0.9)
    batchnorm.apply_moving_updates()
    torch.testing.assert_close(statistic, expected, rtol=0, atol=0)

