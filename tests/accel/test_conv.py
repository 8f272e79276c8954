"""`keras_cxr.accel.conv` gives Keras's convolution results, kernels relaid or not."""

import keras
import numpy as np
import pytest
import torch

from keras_cxr import models
from keras_cxr.accel import conv
from keras_cxr.seeding import set_seed
from tests.accel.helpers import both


@pytest.mark.parametrize(
    "layer",
    [
        lambda: keras.layers.Conv2D(8, 3, padding="same"),
        lambda: keras.layers.Conv2D(8, 3, strides=2, padding="same"),
        lambda: keras.layers.Conv2D(8, 5, strides=2, padding="valid", use_bias=False),
        lambda: keras.layers.Conv2D(8, 1),
        lambda: keras.layers.Conv2D(8, 3, dilation_rate=2, padding="same"),
        lambda: keras.layers.Conv2D(8, 3, groups=2, padding="same"),
        lambda: keras.layers.DepthwiseConv2D(3, strides=2, padding="same"),
        lambda: keras.layers.SeparableConv2D(8, 3, padding="same"),
        lambda: keras.layers.Conv1D(8, 3, padding="same"),
    ],
)
def test_convolutions_match_keras_forward_and_backward(layer):
    rank = 3 if "Conv1D" in repr(layer()) else 4
    shape = (2, 9, 4) if rank == 3 else (2, 9, 11, 4)
    x0 = np.random.default_rng(0).normal(size=shape).astype("float32")

    def run():
        set_seed(0)
        conv = layer()
        x = torch.tensor(x0, requires_grad=True)
        y = conv(x)
        (y * torch.arange(y.numel()).reshape(y.shape).float().sin()).sum().backward()
        return y.detach().numpy(), x.grad.numpy(), [v.value.grad.numpy() for v in conv.trainable_variables]

    reference, fast = both(run)
    np.testing.assert_allclose(fast[0], reference[0], atol=1e-5)
    np.testing.assert_allclose(fast[1], reference[1], atol=1e-5)
    for a, b in zip(fast[2], reference[2]):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cxr_resnet", "tiny_effv2"])
def test_conv_kernels_in_torch_order_train_exactly_like_keras_order(name, monkeypatch, accelerated):
    """Kernels stored (out, in, kh, kw) behind Keras's shape: same losses, weights and optimizer state."""
    def train(relayout):
        if not relayout:
            monkeypatch.setattr(conv, "relayout_kernels", lambda model: 0)
        set_seed(0)
        model = models.build(name, image_size=64, dropout=0.0)
        monkeypatch.undo()
        model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05), loss="categorical_crossentropy")
        rng = np.random.default_rng(2)
        x = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
        y = np.eye(4, dtype="float32")[rng.integers(0, 4, 6)]
        losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
        return model, losses, [v.numpy() for v in model.variables + model.optimizer.variables]

    plain, relaid = train(False), train(True)
    kernels = [layer.kernel for layer in relaid[0]._flatten_layers(recursive=True)
               if isinstance(layer, keras.layers.Conv2D)]
    assert kernels and all(k.value.permute(3, 2, 0, 1).is_contiguous() for k in kernels)
    assert all(v.value.is_contiguous() for v in plain[0].trainable_variables)
    assert relaid[1] == plain[1]
    for a, b in zip(relaid[2], plain[2]):
        np.testing.assert_array_equal(a, b)
    # The optimizer's moments follow their kernel's layout (one fused pass over all four tensors).
    optimizer = relaid[0].optimizer
    for k in kernels:
        assert optimizer._momentums[optimizer._get_variable_index(k)].value.stride() == k.value.stride()

