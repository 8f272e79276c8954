"""EfficientNetV2-B0/B1/B2/B3/S/M/L from `keras.applications` (and a tiny test variant).

keras.applications' EfficientNetV2 rescales 0-255 input itself
(`include_preprocessing=True`: ``x / 128 - 1`` for S/M/L, ImageNet mean and
std for B0-B3), so no normalisation layer is added here. `weights` may also
be a timm `tf_efficientnetv2_*` PyTorch `state_dict`
(`keras_cxr.models.from_torch.efficientnet_v2` maps its keys); timm's own
preprocessing for the S/M/L weights is ``x / 127.5 - 1`` (mean and std 0.5),
at most 0.0078 from Keras's, which is kept for every weights source; for
B0-B3 timm and Keras both use ImageNet mean and std.
"""

from keras_cxr.models import applications
from keras_cxr.models import weights as weights_lib
from keras_cxr.models.registry import register_family

_APPLICATIONS = {
    "effv2_b0": "EfficientNetV2B0",
    "effv2_b1": "EfficientNetV2B1",
    "effv2_b2": "EfficientNetV2B2",
    "effv2_b3": "EfficientNetV2B3",
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


def _tiny_efficientnet_v2(**kwargs):
    from keras.src.applications.efficientnet_v2 import EfficientNetV2

    return EfficientNetV2(
        width_coefficient=0.5,
        depth_coefficient=1.0,
        default_size=64,
        blocks_args=TINY_BLOCKS_ARGS,
        name="efficientnetv2-tiny",
        **kwargs,
    )


def efficientnet_v2_backbone(name, image_size, source=weights_lib.WeightsSource("none")):
    """The `keras.applications` EfficientNetV2 feature extractor of a name.

    Args:
        name: `"effv2_b0"` ... `"effv2_b3"`, `"effv2_s"`, `"effv2_m"`,
            `"effv2_l"` or `"tiny_effv2"`.
        image_size: input side in pixels.
        source: a `weights.WeightsSource`: none, imagenet (all but the tiny one), a
            `.weights.h5` file or a timm PyTorch `state_dict` file.

    Returns:
        A functional `keras.Model` named `"backbone"`: 0-255 images to the
        last feature map `(batch, h, w, channels)`.

    Example:
    ```python
    backbone = efficientnet_v2_backbone("tiny_effv2", 64)
    ```
    """
    from keras_cxr.models import torch_weights

    backbone = applications.backbone(name, image_size, source, _APPLICATIONS, _tiny_efficientnet_v2)
    if source.kind == weights_lib.TORCH:
        torch_weights.load_torch_state_dict(backbone, source.path, "efficientnet_v2")
    return backbone


def _features(images, name, image_size, source):
    import keras

    x = efficientnet_v2_backbone(name, image_size, source)(images)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


_SUFFIX = "(keras.applications), ImageNet weights or timm tf_efficientnetv2 .pt checkpoints."

register_family(
    "efficientnet_v2",
    _features,
    [
        # name, default image size, default dropout, params, description
        ("effv2_b0", 224, 0.2, "5.92M", f"EfficientNetV2-B0 {_SUFFIX}"),
        ("effv2_b1", 240, 0.2, "6.94M", f"EfficientNetV2-B1 {_SUFFIX}"),
        ("effv2_b2", 260, 0.2, "8.78M", f"EfficientNetV2-B2 {_SUFFIX}"),
        ("effv2_b3", 300, 0.2, "12.9M", f"EfficientNetV2-B3 {_SUFFIX}"),
        ("effv2_s", 384, 0.25, "20.3M", f"EfficientNetV2-S {_SUFFIX}"),
        ("effv2_m", 384, 0.2, "53.2M", f"EfficientNetV2-M {_SUFFIX}"),
        ("effv2_l", 512, 0.40, "117.8M", f"EfficientNetV2-L {_SUFFIX}"),
        ("tiny_effv2", 64, 0.2, "21.6k",
         "Three-stage EfficientNetV2 (keras.applications code) for tests."),
    ],
    pretrained=applications.pretrained_labels(_APPLICATIONS),
    accelerated=True,
)
