"""Custom layers of keras-cxr models.

Registered under the ``keras_cxr`` package so that ``keras.saving.load_model``
finds them after ``import keras_cxr``. This module must stay free of
``keras_hub`` imports: it is imported by ``import keras_cxr``.
"""

import keras
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="keras_cxr")
class ImageNetNormalization(keras.layers.Layer):
    """Standardises 0-255 RGB pixels with ImageNet statistics.

    Computes ``(x / 255 - mean) / std`` per channel (channels last), the input
    convention of ImageNet-pretrained keras-hub backbones.

    Args:
        mean: three per-channel means, on the 0-1 scale.
        std: three per-channel standard deviations, on the 0-1 scale.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    x = keras.Input((224, 224, 3))
    y = ImageNetNormalization()(x)
    ```
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, inputs):
        # Integer (uint8) images are not autocast by Keras; cast them here.
        x = ops.cast(inputs, self.compute_dtype)
        scale = [1.0 / (255.0 * s) for s in self.std]
        offset = [-m / s for m, s in zip(self.mean, self.std)]
        return x * ops.convert_to_tensor(scale, x.dtype) + ops.convert_to_tensor(offset, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mean": list(self.mean), "std": list(self.std)})
        return config


@keras.saving.register_keras_serializable(package="keras_cxr")
class ClassTokenPooling(keras.layers.Layer):
    """Takes the first (CLS) token of a `(batch, tokens, channels)` sequence.

    Example:
    ```python
    tokens = keras.Input((257, 384))
    cls = ClassTokenPooling()(tokens)  # (batch, 384)
    ```
    """

    def call(self, inputs):
        return inputs[:, 0, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])
