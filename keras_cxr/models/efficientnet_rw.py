"""Ross Wightman's EfficientNetV2 variants (rw_t/s/m) as keras-hub backbones.

keras-hub's `EfficientNetBackbone.get_config()` omits `num_features` and
`stackwise_nores_option`, so a saved `EfficientNetBackbone` comes back with
the wrong top width (1280 instead of rw_s/rw_m's 1792). Two workarounds:

- the model nests a plain functional copy of the backbone's graph (not the
  `EfficientNetBackbone` object); it serialises layer by layer, and those
  layers' configs are complete;
- presets are loaded with the two fields passed explicitly.

keras, keras_hub and the custom layers are imported only inside the
functions that build a backbone.
"""

from keras_cxr.models import hub
from keras_cxr.models import weights as weights_lib
from keras_cxr.models.registry import register_family

# Hyper-parameters of keras-hub's timm conversion
# (keras_hub/src/utils/timm/convert_efficientnet.py): base kwargs + variant.
_BASE = {
    "min_depth": None,
    "include_stem_padding": True,
    "use_depth_divisor_as_min_depth": True,
    "cap_round_filter_decrease": True,
    "stem_conv_padding": "valid",
    "batch_norm_momentum": 0.9,
    "batch_norm_epsilon": 1e-5,
    "dropout": 0,
    "projection_activation": None,
    "activation": "silu",
    "stackwise_kernel_sizes": [3, 3, 3, 3, 3, 3],
    "stackwise_num_repeats": [2, 4, 4, 6, 9, 15],
    "stackwise_input_filters": [24, 24, 48, 64, 128, 160],
    "stackwise_expansion_ratios": [1, 4, 4, 4, 6, 6],
    "stackwise_strides": [1, 2, 2, 2, 1, 2],
    "stackwise_squeeze_and_excite_ratios": [0, 0, 0, 0.25, 0.25, 0.25],
    "stackwise_force_input_filters": [0, 0, 0, 0, 0, 0],
    "stackwise_nores_option": [False] * 6,
}

ARCHS = {
    "effv2_rw_t": {
        **_BASE,
        "stackwise_width_coefficients": [0.8] * 6,
        "stackwise_depth_coefficients": [0.9] * 6,
        "stackwise_output_filters": [24, 48, 64, 128, 160, 256],
        "stackwise_block_types": ["cba"] + ["fused"] * 2 + ["unfused"] * 3,
        "num_features": 1280,
    },
    "effv2_rw_s": {
        **_BASE,
        "stackwise_width_coefficients": [1.0] * 6,
        "stackwise_depth_coefficients": [1.0] * 6,
        "stackwise_output_filters": [24, 48, 64, 128, 160, 272],
        "stackwise_block_types": ["fused"] * 3 + ["unfused"] * 3,
        "num_features": 1792,
    },
    "effv2_rw_m": {
        **_BASE,
        "stackwise_width_coefficients": [1.2] * 6,
        "stackwise_depth_coefficients": [1.2] * 4 + [1.6] * 2,
        "stackwise_output_filters": [24, 48, 64, 128, 160, 272],
        "stackwise_block_types": ["fused"] * 3 + ["unfused"] * 3,
        "num_features": 1792,
    },
    # Three stages (CBA, fused, MBConv+SE) with a non-default num_features
    # and a no-residual stage: exercises both fields get_config() drops.
    "tiny_effv2_rw": {
        **_BASE,
        "stackwise_width_coefficients": [1.0] * 3,
        "stackwise_depth_coefficients": [1.0] * 3,
        "stackwise_kernel_sizes": [3, 3, 3],
        "stackwise_num_repeats": [1, 1, 2],
        "stackwise_input_filters": [8, 8, 16],
        "stackwise_output_filters": [8, 16, 24],
        "stackwise_expansion_ratios": [1, 2, 2],
        "stackwise_strides": [1, 2, 2],
        "stackwise_squeeze_and_excite_ratios": [0, 0, 0.25],
        "stackwise_block_types": ["cba", "fused", "unfused"],
        "stackwise_force_input_filters": [0, 0, 0],
        "stackwise_nores_option": [True, False, False],
        "num_features": 96,
    },
}

PRESETS = {
    "effv2_rw_t": "efficientnet2_rw_t_ra2_imagenet",
    "effv2_rw_s": "efficientnet2_rw_s_ra2_imagenet",
    "effv2_rw_m": "efficientnet2_rw_m_agc_imagenet",
}


def efficientnet_rw_hub_backbone(name, image_size, source=weights_lib.WeightsSource("none")):
    """The keras-hub `EfficientNetBackbone` of a name (imports keras_hub).

    Args:
        name: `"effv2_rw_t"`, `"effv2_rw_s"`, `"effv2_rw_m"` or
            `"tiny_effv2_rw"`.
        image_size: input side in pixels.
        source: a `weights.WeightsSource`: none, imagenet (keras-hub preset
            from Kaggle), a local preset directory, or a weights file.

    Returns:
        A `keras_hub.models.EfficientNetBackbone` taking ImageNet-normalised
        images. Do not nest it in a saved model (see the module docstring);
        `efficientnet_rw_backbone` returns the nestable form.

    Example:
    ```python
    hub_backbone = efficientnet_rw_hub_backbone("tiny_effv2_rw", 64)
    hub_backbone.save_to_preset("/tmp/tiny_rw_preset")
    ```
    """
    import keras_hub

    arch = ARCHS[name]
    shape = (image_size, image_size, 3)
    config = {**arch, "input_shape": shape}
    return hub.backbone(
        keras_hub.models.EfficientNetBackbone, name, source, PRESETS, config,
        input_shape=shape,
        # Missing from saved configs (keras-hub bug): supply them.
        num_features=arch["num_features"],
        stackwise_nores_option=arch["stackwise_nores_option"],
    )


def efficientnet_rw_backbone(name, image_size, source=weights_lib.WeightsSource("none")):
    """The nestable EfficientNet-rw feature extractor of a name.

    Same arguments as `efficientnet_rw_hub_backbone`.

    Returns:
        A plain functional `keras.Model` named `"backbone"` over the keras-hub
        backbone's layers: ImageNet-normalised images to the last feature map.

    Example:
    ```python
    backbone = efficientnet_rw_backbone("tiny_effv2_rw", 64)
    ```
    """
    import keras

    hub_backbone = efficientnet_rw_hub_backbone(name, image_size, source)
    return keras.Model(hub_backbone.inputs[0], hub_backbone.outputs[0], name="backbone")


def _features(images, name, image_size, source):
    import keras

    from keras_cxr.models.layers import ImageNetNormalization

    x = ImageNetNormalization(name="normalize")(images)
    x = efficientnet_rw_backbone(name, image_size, source)(x)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


_SUFFIX = "(keras-hub EfficientNetBackbone, timm weights)."

register_family(
    "efficientnet_rw",
    _features,
    [
        # name, default image size, default dropout, params, description
        ("effv2_rw_t", 384, 0.2, "12.7M", f"EfficientNetV2-rw-T {_SUFFIX}"),
        ("effv2_rw_s", 384, 0.2, "22.3M", f"EfficientNetV2-rw-S {_SUFFIX}"),
        ("effv2_rw_m", 384, 0.2, "51.4M", f"EfficientNetV2-rw-M {_SUFFIX}"),
        ("tiny_effv2_rw", 64, 0.2, "11.5k", "Three-stage keras-hub EfficientNetBackbone for tests."),
    ],
    pretrained=hub.pretrained_labels(PRESETS),
    accelerated=True,
)
