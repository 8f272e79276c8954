"""Backbones from `keras.applications`, shared by the ConvNeXt and EfficientNetV2 families.

A family maps its pretrained names to `keras.applications` constructors and
builds its tiny test variant with the same Keras code; `backbone` builds
either one from a weights source and wraps it as the nested "backbone".
The tables hold constructor names, not functions, so that registering the
families does not import Keras; `backbone` imports it.
"""

from keras_cxr.models import pretrained
from keras_cxr.models import weights as weights_lib


def backbone(name, image_size, source, constructors, build_tiny, /, **kwargs):
    """The `keras.applications` feature extractor of a registry name.

    Args:
        name: a key of `constructors`, or the family's tiny variant.
        image_size: input side in pixels.
        source: a `weights.WeightsSource`: none, imagenet (names in
            `constructors` only) or file; torch builds it random, for the
            caller to load the converted checkpoint into.
        constructors: registry name -> `keras.applications` constructor name.
        build_tiny: builds the tiny variant (any name not in `constructors`)
            from the keyword arguments `include_top`, `weights`,
            `input_shape` and `**kwargs`.
        **kwargs: more arguments for either constructor, e.g. `pooling="avg"`
            (the arguments above are positional-only).

    Returns:
        A functional `keras.Model` named `"backbone"` over the built model's
        graph: 0-255 images to its output.

    Raises:
        ValueError: a weights kind the name cannot use, or a weights file
            that does not load.
        pretrained.WeightsUnavailable: ImageNet weights neither cached nor
            downloadable.

    Example:
    ```python
    model = backbone("effv2_s", 384, weights_lib.resolve("imagenet"),
                     {"effv2_s": "EfficientNetV2S"}, None)
    ```
    """
    if source.kind == weights_lib.PRESET_DIR or (
        source.kind == weights_lib.IMAGENET and name not in constructors
    ):
        imagenet = ["'imagenet'"] if name in constructors else []
        raise weights_lib.unsupported(source, name, ["None", *imagenet, "a .weights.h5 file"])
    # ImageNet weights come from keras-cxr's look-up of Keras's cache (fetched
    # there first if missing), so a copied cache works offline and a failed
    # download is one clear error.
    path = pretrained.ensure(name) if source.kind == weights_lib.IMAGENET else None
    import keras

    common = {"include_top": False, "input_shape": (image_size, image_size, 3), **kwargs}
    if name in constructors:
        constructor = getattr(keras.applications, constructors[name])
        # Keep the keras.applications model name: it names the layers of the
        # ImageNet weights file (and, for EfficientNetV2, the input rescaling).
        model = constructor(include_preprocessing=True, weights=None, **common)
    else:
        model = build_tiny(weights=None, **common)
    if source.kind == weights_lib.FILE:
        weights_lib.load_file(model, source.path, name)
    if path is not None:
        weights_lib.load_file(model, path, name)
    return keras.Model(model.inputs[0], model.outputs[0], name="backbone")


def pretrained_labels(constructors):
    """The `ModelSpec.pretrained` of each name: `"keras.applications.<constructor>"`."""
    return {name: f"keras.applications.{constructor}" for name, constructor in constructors.items()}
