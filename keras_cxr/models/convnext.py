"""ConvNeXt-T/S/B/L from `keras.applications` (and a tiny test variant).

keras.applications' ConvNeXt standardises 0-255 input itself
(`include_preprocessing=True`: ImageNet mean and std, as timm's ConvNeXt
expects). Its `pooling="avg"` output is global average pooling followed by
LayerNormalization, as in the original ConvNeXt head (timm's ``head.norm``).
A timm `convnext_*` `state_dict` file as `weights` is converted by
`keras_cxr.models.from_torch.convnext`.
"""

from keras_cxr.models import applications
from keras_cxr.models import weights as weights_lib
from keras_cxr.models.registry import register_family

_APPLICATIONS = {
    "convnext_t": "ConvNeXtTiny",
    "convnext_s": "ConvNeXtSmall",
    "convnext_b": "ConvNeXtBase",
    "convnext_l": "ConvNeXtLarge",
}

TINY_DEPTHS = [1, 1, 1, 1]
TINY_PROJECTION_DIMS = [16, 24, 32, 48]


def _tiny_convnext(**kwargs):
    from keras.src.applications.convnext import ConvNeXt

    return ConvNeXt(
        depths=TINY_DEPTHS,
        projection_dims=TINY_PROJECTION_DIMS,
        default_size=64,
        name="convnext_mini",
        **kwargs,
    )


def convnext_backbone(name, image_size, source=weights_lib.WeightsSource("none")):
    """The `keras.applications` ConvNeXt feature extractor of a name.

    Args:
        name: `"convnext_t"`, `"convnext_s"`, `"convnext_b"`, `"convnext_l"`
            or `"tiny_convnext"`.
        image_size: input side in pixels.
        source: a `weights.WeightsSource` (none, imagenet, file, or torch:
            a timm ConvNeXt `state_dict`).

    Returns:
        A functional `keras.Model` named `"backbone"`: 0-255 images to pooled,
        layer-normalised features `(batch, channels)`.

    Example:
    ```python
    backbone = convnext_backbone("tiny_convnext", 64)
    ```
    """
    backbone = applications.backbone(name, image_size, source, _APPLICATIONS, _tiny_convnext, pooling="avg")
    if source.kind == weights_lib.TORCH:  # built random above, then converted into
        from keras_cxr.models import torch_weights

        torch_weights.load_torch_state_dict(backbone, source.path, "convnext")
    return backbone


def _features(images, name, image_size, source):
    return convnext_backbone(name, image_size, source)(images)


_SUFFIX = "(keras.applications), ImageNet weights."

register_family(
    "convnext",
    _features,
    [
        # name, default image size, default dropout, params, description
        ("convnext_t", 384, 0.2, "27.8M", f"ConvNeXt-Tiny {_SUFFIX}"),
        ("convnext_s", 384, 0.2, "49.5M", f"ConvNeXt-Small {_SUFFIX}"),
        ("convnext_b", 384, 0.2, "87.6M", f"ConvNeXt-Base {_SUFFIX}"),
        ("convnext_l", 384, 0.2, "196.2M", f"ConvNeXt-Large {_SUFFIX}"),
        ("tiny_convnext", 64, 0.2, "52.3k", "Four-stage, one-block-per-stage ConvNeXt for tests."),
    ],
    pretrained=applications.pretrained_labels(_APPLICATIONS),
    accelerated=True,
)
