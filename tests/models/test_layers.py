"""keras-cxr's own layers: ImageNet normalisation values, registration for safe loading."""


import keras
import numpy as np

import keras_cxr
from keras_cxr import models
from keras_cxr.models import dinov2


def test_imagenet_normalization():
    mean = np.array(models.layers.IMAGENET_MEAN) * 255
    std = np.array(models.layers.IMAGENET_STD) * 255
    x = np.stack([mean, mean + std]).reshape(1, 1, 2, 3).astype("float32")
    y = keras.ops.convert_to_numpy(models.ImageNetNormalization()(x))
    np.testing.assert_allclose(y[0, 0], [[0, 0, 0], [1, 1, 1]], atol=1e-5)


def test_keras_cxr_registers_custom_layers():
    for cls in (models.ImageNetNormalization, models.ClassTokenPooling):
        name = keras.saving.get_registered_name(cls)
        assert name == f"keras_cxr>{cls.__name__}"
        assert keras.saving.get_registered_object(name) is cls
    assert keras.saving.get_registered_name(models.DINOV2Features) == "keras_cxr>DINOV2Features"
    assert dinov2.DINOV2Features is models.DINOV2Features is models.layers.DINOV2Features
    assert keras_cxr.models is models
