"""keras-hub backbones from a weights source, shared by the keras-hub families.

The families (DINOv2, EfficientNet-rw, Swin) import keras_hub inside the
functions that build a backbone and pass the class here; this module does
not import keras_hub, so `import keras_cxr` does not either.
"""

from keras_cxr.models import pretrained
from keras_cxr.models import weights as weights_lib


def backbone(backbone_class, name, source, presets, config, /, **preset_kwargs):
    """A keras-hub backbone of a registry name, initialised from `source`.

    Args:
        backbone_class: a `keras_hub.models` backbone class, e.g.
            `keras_hub.models.SwinTransformerBackbone`.
        name: the registry name.
        source: a `weights.WeightsSource`: none, imagenet (the name's preset
            in `presets`, from Kaggle), a local preset directory, or a
            weights file.
        presets: registry name -> keras-hub preset with ImageNet weights.
        config: constructor arguments for a new backbone (weights none or a
            file).
        **preset_kwargs: `from_preset` arguments (imagenet or a preset
            directory), e.g. `image_shape` or `name` (the arguments above
            are positional-only, so these names are free).

    Returns:
        The `backbone_class` instance.

    Raises:
        ValueError: imagenet weights for a name without a preset, or a
            weights file that does not load.
        pretrained.WeightsUnavailable: the preset is neither cached nor
            downloadable.

    Example:
    ```python
    swin = backbone(
        keras_hub.models.SwinTransformerBackbone, "tiny_swin",
        weights_lib.resolve(None), {},
        {"image_shape": (64, 64, 3), "patch_size": 4, "embed_dim": 16,
         "depths": (2, 2), "num_heads": (1, 2), "window_size": 4},
    )
    ```
    """
    if source.kind == weights_lib.IMAGENET and name not in presets:
        accepted = ["None", "a preset directory", "a .weights.h5 file"]
        raise weights_lib.unsupported(source, name, accepted)
    if source.kind in (weights_lib.IMAGENET, weights_lib.PRESET_DIR):
        # The preset's folder in kagglehub's cache (fetched there first if
        # missing), so a copied cache works offline.
        preset = pretrained.ensure(name) if source.kind == weights_lib.IMAGENET else source.path
        return backbone_class.from_preset(preset, **preset_kwargs)
    model = backbone_class(**config)
    if source.kind == weights_lib.FILE:
        weights_lib.load_file(model, source.path, name)
    return model


def pretrained_labels(presets):
    """The `ModelSpec.pretrained` of each name: `"keras-hub preset <preset>"`."""
    return {name: f"keras-hub preset {preset}" for name, preset in presets.items()}
