"""Custom layers of keras-cxr models.

Registered under the ``keras_cxr`` package (``keras_cxr>ClassName``) when
this module is imported, so that ``keras.saving.load_model`` finds them; see
`keras_cxr.register_serializables`. It imports Keras, so `keras_cxr.models`
imports it only on first use (builders, or its `ImageNetNormalization` /
`ClassTokenPooling` / `DINOV2Features` attributes). It does not import
``keras_hub`` at module level: `DINOV2Features` imports it when built.
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
class XRVNormalization(keras.layers.Layer):
    """0-255 RGB pixels to torchxrayvision's input: one gray channel on [-1024, 1024].

    Averages the three channels (torchxrayvision's ``img.mean(2)``), then
    maps 0-255 linearly onto [-1024, 1024] (``xrv.datasets.normalize(img,
    255)``: ``(x / 255 * 2 - 1) * 1024``), the input its DenseNet-121
    checkpoints were trained on.

    Example:
    ```python
    x = keras.Input((224, 224, 3))
    y = XRVNormalization()(x)  # (batch, 224, 224, 1)
    ```
    """

    def call(self, inputs):
        x = ops.mean(ops.cast(inputs, self.compute_dtype), axis=-1, keepdims=True)
        return x * (2048.0 / 255.0) - 1024.0

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


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


@keras.saving.register_keras_serializable(package="keras_cxr")
class DINOV2Features(keras.Model):
    """A keras-hub `DINOV2Backbone` fixed at one input size that saves exactly.

    keras-hub's `DINOV2Embedding` holds `position_embeddings` at the
    pretraining size and the trainable `interpolated_position_embeddings` that
    it uses. Saving writes the first (resized back from the second, and only
    when a signed sum of differences is positive); loading recomputes the
    second from the first. Fine-tuned position embeddings thus change on
    reload. Here `position_embedding_shape` equals `image_shape`, so the two
    have one size, and the used embeddings are copied into
    `position_embeddings` before every save: reloading is exact.

    It is a functional model over the layers of a `DINOV2Backbone` built from
    `backbone_config` (same weights layout), called on an images tensor (not
    a dict), returning tokens `(batch, 1 + patches, hidden_dim)`.

    Args:
        backbone_config: `DINOV2Backbone` arguments, e.g. its `get_config()`;
            `position_embedding_shape` is replaced by `image_shape`.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Example:
    ```python
    features = DINOV2Features(
        {"patch_size": 14, "num_layers": 2, "hidden_dim": 32, "num_heads": 2,
         "intermediate_dim": 64, "image_shape": (56, 56, 3)},
        name="backbone",
    )
    tokens = features(np.zeros((1, 56, 56, 3)))  # (1, 17, 32)
    ```
    """

    def __init__(self, backbone_config, **kwargs):
        import keras_hub

        config = {k: v for k, v in backbone_config.items() if k not in ("name", "trainable")}
        config["image_shape"] = tuple(config["image_shape"])
        config["position_embedding_shape"] = config["image_shape"]
        backbone = keras_hub.models.DINOV2Backbone(**config)
        super().__init__(inputs=backbone.inputs[0], outputs=backbone.outputs[0], **kwargs)
        self.backbone_config = config
        self.embeddings = backbone.embeddings
        if config.get("use_mask_token", True):
            # Only masked-image pretraining uses it; frozen, it gets no
            # "gradients do not exist" warning at every training step.
            self.embeddings.mask_token.trainable = False

    def save_own_variables(self, store):
        # Keras saves a model's own variables before its layers' variables.
        self.embeddings.position_embeddings.assign(
            self.embeddings.interpolated_position_embeddings
        )
        super().save_own_variables(store)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone_config": self.backbone_config,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
