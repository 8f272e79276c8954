"""`keras_cxr.accel.graph` walks marked models bit-identically to Keras's `Layer.__call__`."""

import keras
import numpy as np
import pytest
import torch

from keras_cxr import models
from keras_cxr.accel import graph


FAMILIES = [("tiny_effv2", 64), ("tiny_effv2_rw", 64), ("tiny_swin", 64), ("tiny_dinov2", 56),
            ("tiny_convnext", 64), ("cxr_resnet", 64)]


@pytest.mark.slow
@pytest.mark.parametrize("name, size", FAMILIES)
@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_graph_runner_gives_keras_outputs_gradients_and_updates(name, size, policy, accelerated):
    """The fast graph walk is bit-identical to Keras's `Layer.__call__` path, dropout included."""
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = models.build(name, image_size=size, dropout=0.4)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    x = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (3, size, size, 3), dtype=np.uint8))
    start = [v.numpy().copy() for v in model.non_trainable_variables]  # moving statistics, dropout seeds

    def run(training):
        for variable, value in zip(model.non_trainable_variables, start):
            variable.assign(value)
        torch.manual_seed(0)  # unseeded Dropout draws from torch's global generator
        for w in model.trainable_variables:
            w.value.grad = None
        out = model(x, training=training)
        out.float().square().sum().backward()
        return (out.detach().float().numpy(), [w.value.grad.numpy().copy() for w in model.trainable_variables],
                [v.numpy().copy() for v in model.non_trainable_variables])

    for training in (False, True):
        fast = run(training)
        graph.uninstall()  # Keras's Layer.__call__ path, the same kernels
        try:
            reference = run(training)
        finally:
            graph.install()
        np.testing.assert_array_equal(fast[0], reference[0])
        for a, b in zip(fast[1] + fast[2], reference[1] + reference[2]):
            np.testing.assert_array_equal(a, b)
    assert graph._PLANS[model] is not None  # the fast walk really ran
    # Dropout is live in training: another generator state gives other outputs.
    torch.manual_seed(1)
    assert not np.array_equal(model(x, training=True).detach().float().numpy(), fast[0])


def test_graph_runner_leaves_other_models_to_keras(accelerated):
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model(np.ones((2, 8), "float32"))
    assert graph._PLANS[model] is None
    # A keras-cxr model nested in a user's model is still walked fast, and the user's model builds.
    inner = models.build("cxr_resnet", image_size=32)
    images = keras.Input((32, 32, 3))
    outer = keras.Model(images, keras.layers.Dense(2)(inner(images)))
    out = outer(np.zeros((2, 32, 32, 3), "uint8"))
    assert tuple(out.shape) == (2, 2) and graph._PLANS[inner] is not None



@pytest.mark.slow
def test_layers_with_sublayers_skip_keras_call_inside_a_marked_model(accelerated, monkeypatch):
    """Swin's blocks, attention and MLP run their `call` directly; only the model's own entry uses Keras's."""
    model = models.build("tiny_swin", image_size=64)
    x = torch.from_numpy(np.zeros((2, 64, 64, 3), dtype=np.uint8))
    model(x, training=True)  # builds every layer
    through_keras = []
    keras_call = graph._keras_layer_call

    def counting(self, *args, **kwargs):
        through_keras.append(type(self).__name__)
        return keras_call(self, *args, **kwargs)

    monkeypatch.setattr(graph, "_keras_layer_call", counting)
    with torch.enable_grad():
        model(x, training=True)
    assert through_keras == [type(model).__name__]
    # Outside a marked model's run, the same layer goes through Keras's `__call__`.
    block = next(layer for layer in model._flatten_layers() if type(layer).__name__ == "SwinTransformerBlock")
    tokens = torch.zeros((2,) + tuple(block.input_resolution) + (block.dim,)).reshape(2, -1, block.dim)
    before = len(through_keras)
    block(tokens)
    assert through_keras[before] == "SwinTransformerBlock"
