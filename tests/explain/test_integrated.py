"""Integrated gradients: exact on a linear model, complete on a network."""

import keras
import numpy as np

from keras_cxr import models
from keras_cxr.explain.integrated import integrated_gradients
from keras_cxr.seeding import set_seed


def test_a_linear_model_gets_weight_times_pixel_with_any_number_of_steps():
    set_seed(0)
    dense = keras.layers.Dense(3)
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 2)).astype(np.float32)
    flat = keras.layers.Flatten()
    dense(flat(images))  # builds the weights
    kernel, _ = dense.get_weights()
    for steps in (1, 5):
        attributions = integrated_gradients(lambda x: dense(flat(x)), images, targets=[2, 0], steps=steps)
        expected = (images.reshape(2, -1) * kernel[:, [2, 0]].T).reshape(2, 4, 4, 2).sum(axis=-1)
        np.testing.assert_allclose(attributions.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_attributions_sum_to_the_logit_change_from_a_black_image():
    set_seed(0)
    model = models.build("cxr_resnet", image_size=32)
    logits = keras.Model(model.inputs, model.get_layer("logits").output)
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    targets = np.array([0, 1, 3])
    attributions = integrated_gradients(logits, images, targets, steps=256).numpy()
    change = (logits.predict(images, verbose=0) - logits.predict(np.zeros_like(images), verbose=0))[range(3), targets]
    assert np.abs(change).min() > 0.05  # a change big enough to check against
    np.testing.assert_allclose(attributions.sum(axis=(1, 2)), change, rtol=0.01, atol=1e-2)
    coarse = integrated_gradients(logits, images, targets, steps=2).numpy().sum(axis=(1, 2))
    assert np.abs(coarse - change).max() > np.abs(attributions.sum(axis=(1, 2)) - change).max()
