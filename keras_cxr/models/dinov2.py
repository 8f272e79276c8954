"""DINOv2 ViT-S/B/L (patch 14) on keras-hub's `DINOV2Backbone`.

Classification uses the final CLS token; `image_size` must be a multiple of
14. Position embeddings pretrained at 518 px are interpolated to `image_size`
once, when the model is built, and the model nests a `DINOV2Features`: a
`DINOV2Backbone` re-based to that size, which saves and reloads exactly
(keras-hub's own does not once its position embeddings are trained; the
class lives in `keras_cxr.models.layers`). keras, keras_hub and the custom
layers are imported only when a backbone is built.
"""

from keras_cxr.models import hub
from keras_cxr.models import weights as weights_lib
from keras_cxr.models.registry import register_family

PATCH_SIZE = 14

# As keras-hub converts the Hugging Face checkpoints (utils/transformers/
# convert_dinov2.py), so that their weights files also load offline builds.
_PRETRAINED = {
    "patch_size": PATCH_SIZE,
    "layer_scale_init_value": 1.0,
    "use_mask_token": True,
    "position_embedding_shape": (518, 518, 3),
}

ARCHS = {
    "dinov2_s": {**_PRETRAINED, "num_layers": 12, "hidden_dim": 384, "num_heads": 6,
                 "intermediate_dim": 1536},
    "dinov2_b": {**_PRETRAINED, "num_layers": 12, "hidden_dim": 768, "num_heads": 12,
                 "intermediate_dim": 3072},
    "dinov2_l": {**_PRETRAINED, "num_layers": 24, "hidden_dim": 1024, "num_heads": 16,
                 "intermediate_dim": 4096},
    # Position embeddings for 112 px used at 56 px: re-basing interpolates.
    "tiny_dinov2": {"patch_size": PATCH_SIZE, "num_layers": 2, "hidden_dim": 32, "num_heads": 2,
                    "intermediate_dim": 64, "use_mask_token": False,
                    "position_embedding_shape": (112, 112, 3)},
}

PRESETS = {"dinov2_s": "dinov2_small", "dinov2_b": "dinov2_base", "dinov2_l": "dinov2_large"}


def check_image_size(name, image_size):
    """Raise ValueError unless `image_size` is a multiple of the patch size."""
    if image_size % PATCH_SIZE:
        raise ValueError(
            f"{name} needs image_size to be a multiple of {PATCH_SIZE}, got "
            f"{image_size} (try {image_size // PATCH_SIZE * PATCH_SIZE} or "
            f"{(image_size // PATCH_SIZE + 1) * PATCH_SIZE})"
        )


def rebase(backbone):
    """A `DINOV2Features` named "backbone" with the weights of a `DINOV2Backbone`.

    Its position embeddings are the backbone's interpolated ones, so both
    compute the same tokens.

    Example:
    ```python
    features = rebase(dinov2_hub_backbone("tiny_dinov2", 56))
    ```
    """
    from keras_cxr.models.layers import DINOV2Features

    features = DINOV2Features(backbone.get_config(), name="backbone")
    source_embeddings = backbone.embeddings
    if len(backbone.weights) != len(features.weights):
        raise ValueError("cannot re-base a DINOV2Backbone: its weights do not match")
    for source, target in zip(backbone.weights, features.weights):
        if target is features.embeddings.position_embeddings:
            source = source_embeddings.interpolated_position_embeddings
        target.assign(source)
    return features


def _arch(name, image_size, rebased=False):
    arch = {**ARCHS[name], "image_shape": (image_size, image_size, 3)}
    if rebased:
        arch["position_embedding_shape"] = arch["image_shape"]
    return arch


def dinov2_hub_backbone(name, image_size, source=weights_lib.WeightsSource("none")):
    """The keras-hub `DINOV2Backbone` of a name (imports keras_hub).

    Args:
        name: `"dinov2_s"`, `"dinov2_b"`, `"dinov2_l"` or `"tiny_dinov2"`.
        image_size: input side in pixels, a multiple of 14.
        source: a `weights.WeightsSource`: none, imagenet (keras-hub preset
            from Kaggle), a local preset directory, or a weights file of a
            `DINOV2Backbone` (e.g. a preset's `model.weights.h5`).

    Returns:
        The backbone, with the architecture's own position-embedding size:
        `{"images": ImageNet-normalised images}` to tokens. Do not nest it in
        a model you will fine-tune and save; `dinov2_backbone` returns the
        nestable form.

    Example:
    ```python
    hub_backbone = dinov2_hub_backbone("tiny_dinov2", 56)
    hub_backbone.save_to_preset("/tmp/tiny_dinov2_preset")
    ```
    """
    import keras_hub

    check_image_size(name, image_size)
    return hub.backbone(
        keras_hub.models.DINOV2Backbone, name, source, PRESETS, _arch(name, image_size),
        image_shape=(image_size, image_size, 3),
    )


def dinov2_backbone(name, image_size, source=weights_lib.WeightsSource("none")):
    """The nestable DINOv2 feature extractor of a name: a `DINOV2Features`.

    Same arguments as `dinov2_hub_backbone`; a weights file may also be one
    written by `DINOV2Features.save_weights` (e.g.
    `model.get_layer("backbone").save_weights(path)`) at this `image_size`.

    Returns:
        A `DINOV2Features` named `"backbone"`: ImageNet-normalised images to
        tokens `(batch, 1 + patches, hidden_dim)`, CLS token first.

    Example:
    ```python
    backbone = dinov2_backbone("tiny_dinov2", 56)
    ```
    """
    from keras_cxr.models.layers import DINOV2Features

    check_image_size(name, image_size)
    if source.kind == weights_lib.NONE:
        return DINOV2Features(_arch(name, image_size, rebased=True), name="backbone")
    if source.kind == weights_lib.FILE:
        # A file saved from a DINOV2Features has position embeddings of this
        # image size; try that layout when the pretrained layout does not fit.
        try:
            return rebase(dinov2_hub_backbone(name, image_size, source))
        except ValueError as pretrained_layout_error:
            features = DINOV2Features(_arch(name, image_size, rebased=True), name="backbone")
            try:
                features.load_weights(source.path)
            except Exception:
                raise pretrained_layout_error from None
            return features
    return rebase(dinov2_hub_backbone(name, image_size, source))


def _features(images, name, image_size, source):
    check_image_size(name, image_size)  # before the slow keras_hub import
    from keras_cxr.models.layers import ClassTokenPooling, ImageNetNormalization

    x = ImageNetNormalization(name="normalize")(images)
    tokens = dinov2_backbone(name, image_size, source)(x)
    return ClassTokenPooling(name="pool")(tokens)


_SUFFIX = "(keras-hub DINOV2Backbone), CLS token."

register_family(
    "dinov2",
    _features,
    [
        # name, default image size, default dropout, params, description
        ("dinov2_s", 448, 0.2, "22.3M", f"DINOv2 ViT-S/14 {_SUFFIX}"),
        ("dinov2_b", 448, 0.2, "87.1M", f"DINOv2 ViT-B/14 {_SUFFIX}"),
        ("dinov2_l", 448, 0.2, "305.1M", f"DINOv2 ViT-L/14 {_SUFFIX}"),
        ("tiny_dinov2", 56, 0.2, "37.4k", "Two-layer DINOv2 ViT (patch 14) for tests."),
    ],
    pretrained=hub.pretrained_labels(PRESETS),
    accelerated=True,
)


def __getattr__(name):
    # DINOV2Features moved to keras_cxr.models.layers; keep the old name working.
    if name == "DINOV2Features":
        from keras_cxr.models import layers

        return layers.DINOV2Features
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
