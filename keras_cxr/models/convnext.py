"""ConvNeXt-T/S/B/L from `keras.applications` (and a tiny test variant).

keras.applications' ConvNeXt standardises 0-255 input itself
(`include_preprocessing=True`). Its `pooling="avg"` output is global average
pooling followed by LayerNormalization, as in the original ConvNeXt head.
"""

import keras

from keras_cxr.models import weights as weights_lib
from keras_cxr.models.registry import ModelSpec, register

_APPLICATIONS = {
    "convnext_t": "ConvNeXtTiny",
    "convnext_s": "ConvNeXtSmall",
    "convnext_b": "ConvNeXtBase",
    "convnext_l": "ConvNeXtLarge",
}

TINY_DEPTHS = [1, 1, 1, 1]
TINY_PROJECTION_DIMS = [16, 24, 32, 48]


def convnext_backbone(name, image_size, source=weights_lib.WeightsSource("none")):
    """The `keras.applications` ConvNeXt feature extractor of a name.

    Args:
        name: `"convnext_t"`, `"convnext_s"`, `"convnext_b"`, `"convnext_l"`
            or `"tiny_convnext"`.
        image_size: input side in pixels.
        source: a `weights.WeightsSource` (none, imagenet or file).

    Returns:
        A functional `keras.Model` named `"backbone"`: 0-255 images to pooled,
        layer-normalised features `(batch, channels)`.

    Example:
    ```python
    backbone = convnext_backbone("tiny_convnext", 64)
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
        # Keep the keras.applications model name: it must contain the weights
        # variant for weights="imagenet".
        model = constructor(
            include_top=False,
            include_preprocessing=True,
            weights="imagenet" if source.kind == weights_lib.IMAGENET else None,
            input_shape=shape,
            pooling="avg",
        )
    else:
        from keras.src.applications.convnext import ConvNeXt

        model = ConvNeXt(
            depths=TINY_DEPTHS,
            projection_dims=TINY_PROJECTION_DIMS,
            default_size=64,
            name="convnext_mini",
            include_top=False,
            weights=None,
            input_shape=shape,
            pooling="avg",
        )
    if source.kind == weights_lib.FILE:
        weights_lib.load_file(model, source.path, name)
    return keras.Model(model.inputs[0], model.outputs[0], name="backbone")


def _features(images, name, image_size, source):
    return convnext_backbone(name, image_size, source)(images)


for _name, _params, _what in [
    ("convnext_t", "27.8M", "ConvNeXt-Tiny"),
    ("convnext_s", "49.5M", "ConvNeXt-Small"),
    ("convnext_b", "87.6M", "ConvNeXt-Base"),
    ("convnext_l", "196.2M", "ConvNeXt-Large"),
]:
    register(
        ModelSpec(
            name=_name,
            family="convnext",
            default_image_size=384,
            default_dropout=0.2,
            description=f"{_what} (keras.applications), ImageNet weights.",
            params=_params,
            pretrained=f"keras.applications.{_APPLICATIONS[_name]}",
        ),
        _features,
    )

register(
    ModelSpec(
        name="tiny_convnext",
        family="convnext",
        default_image_size=64,
        default_dropout=0.2,
        description="Four-stage, one-block-per-stage ConvNeXt for tests.",
        params="52.3k",
    ),
    _features,
)
