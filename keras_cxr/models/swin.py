"""Swin Transformer T/S/B/L as keras-hub `SwinTransformerBackbone`s.

The model nests the `SwinTransformerBackbone` object itself: its config is
complete, whereas a plain functional copy of its graph cannot be saved
(keras-hub's `PatchEmbedding.get_config()` fails). keras, keras_hub and the
custom layers are imported only inside the functions that build a backbone.
"""

from keras_cxr.models import hub
from keras_cxr.models import weights as weights_lib
from keras_cxr.models.registry import register_family

# The architectures of the keras-hub presets below (patch 4, MLP ratio 4).
ARCHS = {
    "swin_t": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24),
               "window_size": 7},
    "swin_s": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24),
               "window_size": 7},
    "swin_b": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32),
               "window_size": 7},
    "swin_l": {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48),
               "window_size": 12},
    "tiny_swin": {"embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "window_size": 4,
                  "drop_path": 0.0},
}

PRESETS = {
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "swin_l": "swin_large_patch4_window12_384",
}

PATCH_SIZE = 4


def _stride(name):
    """Input pixels per token of the last stage of Swin variant `name`."""
    return PATCH_SIZE * 2 ** (len(ARCHS[name]["depths"]) - 1)


def window_size(name, image_size, source=weights_lib.WeightsSource("none")):
    """The attention window of Swin variant `name` at `image_size`.

    The variant's own window (7, or 12 for Swin-L) when the image is large
    enough for it; from scratch, a smaller image gets a window as wide as its
    last stage (4 for Swin-T at 128 px, as with timm's `window_size=4`).
    Pretrained weights fix the window (its relative-position tables).
    """
    stride, window = _stride(name), ARCHS[name]["window_size"]
    if source.kind == weights_lib.NONE and image_size % stride == 0 and 0 < image_size // stride < window:
        return image_size // stride
    return window


def check_image_size(name, image_size, source=weights_lib.WeightsSource("none")):
    """Raise ValueError unless `image_size` fits the Swin variant `name`.

    keras-hub's Swin needs every stage's resolution to halve exactly, and the
    last stage to be at least one window wide (it fails otherwise).
    """
    stride = _stride(name)
    window = window_size(name, image_size, source)
    smallest = stride * window
    if image_size % stride or image_size < smallest:
        fixed = " (pretrained weights fix the window)" if source.kind != weights_lib.NONE else ""
        raise ValueError(
            f"{name} needs image_size to be a multiple of {stride} and at least "
            f"{smallest} (window {window}{fixed}), got {image_size}"
        )


def swin_backbone(name, image_size, source=weights_lib.WeightsSource("none")):
    """The keras-hub `SwinTransformerBackbone` of a name, named "backbone".

    Args:
        name: `"swin_t"`, `"swin_s"`, `"swin_b"`, `"swin_l"` or `"tiny_swin"`.
        image_size: input side in pixels (see `check_image_size`).
        source: a `weights.WeightsSource`: none, imagenet (keras-hub preset
            from Kaggle), a local preset directory, a weights file, or a
            timm PyTorch `state_dict` file (see
            `keras_cxr.models.from_torch.swin`).

    Returns:
        The backbone: ImageNet-normalised images to tokens
        `(batch, tokens, channels)`.

    Example:
    ```python
    backbone = swin_backbone("tiny_swin", 64)
    backbone.save_to_preset("/tmp/tiny_swin_preset")
    ```
    """
    import keras_hub

    check_image_size(name, image_size, source)
    shape = (image_size, image_size, 3)
    config = {"image_shape": shape, "patch_size": PATCH_SIZE, "name": "backbone", **ARCHS[name],
              "window_size": window_size(name, image_size, source)}
    backbone = hub.backbone(
        keras_hub.models.SwinTransformerBackbone, name, source, PRESETS, config,
        image_shape=shape, name="backbone",
    )
    if source.kind == weights_lib.TORCH:
        from keras_cxr.models import torch_weights

        torch_weights.load_torch_state_dict(backbone, source.path, "swin")
    return backbone


def _features(images, name, image_size, source):
    check_image_size(name, image_size, source)  # before the slow keras_hub import
    import keras

    from keras_cxr.models.layers import ImageNetNormalization

    x = ImageNetNormalization(name="normalize")(images)
    x = swin_backbone(name, image_size, source)(x)
    return keras.layers.GlobalAveragePooling1D(name="pool")(x)


_SUFFIX = "(keras-hub SwinTransformerBackbone), mean-pooled tokens."

register_family(
    "swin",
    _features,
    [
        # name, default image size, default dropout, params, description
        ("swin_t", 224, 0.2, "27.5M", f"Swin-T (window 7) {_SUFFIX}"),
        ("swin_s", 224, 0.2, "48.8M", f"Swin-S (window 7) {_SUFFIX}"),
        ("swin_b", 224, 0.2, "86.7M", f"Swin-B (window 7) {_SUFFIX}"),
        ("swin_l", 384, 0.2, "195.2M", f"Swin-L (window 12) {_SUFFIX}"),
        ("tiny_swin", 64, 0.2, "35.5k", "Two-stage Swin Transformer (window 4) for tests."),
    ],
    pretrained=hub.pretrained_labels(PRESETS),
    accelerated=True,
)
