"""EfficientNetV2-S/M/L from `keras.applications` (and a tiny test variant).

keras.applications' EfficientNetV2 rescales 0-255 input itself
(`include_preprocessing=True`), so no normalisation layer is added here.
"""

import keras

from keras_cxr.models import weights as weights_lib
from keras_cxr.models.registry import ModelSpec, register

_APPLICATIONS = {
    "effv2_s": "EfficientNetV2S",
    "effv2_m": "EfficientNetV2M",
    "effv2_l": "EfficientNetV2L",
}

# A three-stage EfficientNetV2 (fused, fused, MBConv+SE) for fast tests.
TINY_BLOCKS_ARGS = [
    {"kernel_size": 3, "num_repeat": 1, "input_filters": 16, "output_filters": 16,
     "expand_ratio": 1, "se_ratio": 0.0, "strides": 1, "conv_type": 1},
    {"kernel_size": 3, "num_repeat": 1, "input_filters": 16, "output_filters": 24,
     "expand_ratio": 2, "se_ratio": 0.0, "strides": 2, "conv_type": 1},
    {"kernel_size": 3, "num_repeat": 2, "input_filters": 24, "output_filters": 32,
     "expand_ratio": 2, "se_ratio": 0.25, "strides": 2, "conv_type": 0},
]


def efficientnet_v2_backbone(name, image_size, source=weights_lib.WeightsSource("none")):
    """The `keras.applications` EfficientNetV2 feature extractor of a name.

    Args:
        name: `"effv2_s"`, `"effv2_m"`, `"effv2_l"` or `"tiny_effv2"`.
        image_size: input side in pixels.
        source: a `weights.WeightsSource` (none, imagenet or file).

    Returns:
        A functional `keras.Model` named `"backbone"`: 0-255 images to the
        last feature map `(batch, h, w, channels)`.

    Example:
    ```python
    backbone = efficientnet_v2_backbone("tiny_effv2", 64)
    ```
    """
    if source.kind == weights_lib.PRESET_DIR or (
        source.kind == weights_lib.IMAGENET and name not in _APPLICATIONS
    ):
        pretrained = ["'imagenet'"] if name in _APPLICATIONS else []
        raise weights_lib.unsupported(source, name, ["None", *pretrained, "a .weights.h5 file"])
    shape = (image_size, image_size, 3)
    if name in _APPLICATIONS:
        constructor = getattr(keras.applications, _APPLICATIONS[name])
        # The model keeps its keras.applications name: that name selects the
        # ImageNet weights file and the input rescaling.
        model = constructor(
            include_top=False,
            weights="imagenet" if source.kind == weights_lib.IMAGENET else None,
            input_shape=shape,
            include_preprocessing=True,
        )
    else:
        from keras.src.applications.efficientnet_v2 import EfficientNetV2

        model = EfficientNetV2(
            width_coefficient=0.5,
            depth_coefficient=1.0,
            default_size=64,
            blocks_args=TINY_BLOCKS_ARGS,
            name="efficientnetv2-tiny",
            include_top=False,
            weights=None,
            input_shape=shape,
        )
    if source.kind == weights_lib.FILE:
        weights_lib.load_file(model, source.path, name)
    return keras.Model(model.inputs[0], model.outputs[0], name="backbone")


def _features(images, name, image_size, source):
    x = efficientnet_v2_backbone(name, image_size, source)(images)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


for _name, _size, _dropout, _params, _what in [
    ("effv2_s", 384, 0.25, "20.3M", "EfficientNetV2-S"),
    ("effv2_m", 384, 0.2, "53.2M", "EfficientNetV2-M"),
    ("effv2_l", 512, 0.40, "117.8M", "EfficientNetV2-L"),
]:
    register(
        ModelSpec(
            name=_name,
            family="efficientnet_v2",
            default_image_size=_size,
            default_dropout=_dropout,
            description=f"{_what} (keras.applications), ImageNet weights.",
            params=_params,
            pretrained=f"keras.applications.{_APPLICATIONS[_name]}",
        ),
        _features,
    )

register(
    ModelSpec(
        name="tiny_effv2",
        family="efficientnet_v2",
        default_image_size=64,
        default_dropout=0.2,
        description="Three-stage EfficientNetV2 (keras.applications code) for tests.",
        params="21.6k",
    ),
    _features,
)
