"""timm `tf_efficientnetv2_*` keys -> keras.applications EfficientNetV2 layers (`effv2_b0` ... `effv2_l`,
`tiny_effv2`).

timm's ``tf_`` variants are Keras's network: TF 'same' padding, BatchNorm
epsilon 1e-3, SiLU, squeeze-excite with SiLU and a sigmoid gate, the same
stages and blocks. Keras block ``block{S+1}{letter B}_`` is timm's
``blocks.S.B``; its layers are named by block type:

- fused, expansion 1 (timm ``ConvBnAct``): ``project_conv/bn`` -> ``conv``, ``bn1``;
- fused (timm ``EdgeResidual``): ``expand_conv/bn`` -> ``conv_exp``, ``bn1``;
  ``project_conv/bn`` -> ``conv_pwl``, ``bn2``;
- MBConv (timm ``InvertedResidual``): ``expand_conv/bn`` -> ``conv_pw``,
  ``bn1``; ``dwconv2``, ``bn`` -> ``conv_dw``, ``bn2``; ``project_conv/bn``
  -> ``conv_pwl``, ``bn3``;
- MBConv, expansion 1 (timm ``DepthwiseSeparableConv``): ``dwconv2``, ``bn``
  -> ``conv_dw``, ``bn1``; ``project_conv/bn`` -> ``conv_pw``, ``bn2``;
- squeeze-excite: ``se_reduce``, ``se_expand`` -> ``se.conv_reduce``, ``se.conv_expand``.

Stem and head: ``stem_conv``, ``stem_bn``, ``top_conv``, ``top_bn`` ->
``conv_stem``, ``bn1``, ``conv_head``, ``bn2``. ``classifier.*`` is the head.
"""

import re

from keras_cxr.models import torch_weights

HEAD = re.compile(r"^classifier\.")
_STEM_TOP = {"stem_conv": "conv_stem", "stem_bn": "bn1", "top_conv": "conv_head", "top_bn": "bn2"}
_SE = {"se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand"}
_CONV = {"project_conv": "conv", "project_bn": "bn1"}
_FUSED = {"expand_conv": "conv_exp", "expand_bn": "bn1", "project_conv": "conv_pwl", "project_bn": "bn2", **_SE}
_MBCONV = {"expand_conv": "conv_pw", "expand_bn": "bn1", "dwconv2": "conv_dw", "bn": "bn2",
           "project_conv": "conv_pwl", "project_bn": "bn3", **_SE}
_SEPARABLE = {"dwconv2": "conv_dw", "bn": "bn1", "project_conv": "conv_pw", "project_bn": "bn2", **_SE}
_BLOCK_LAYER = re.compile(r"block(\d+)([a-z])_(\w+)")


def _modules(layer_names):
    """Keras layer name -> timm module path, for every layer of an EfficientNetV2."""
    blocks = {}
    for name in layer_names:
        if (m := _BLOCK_LAYER.fullmatch(name)):
            blocks.setdefault(f"blocks.{int(m[1]) - 1}.{ord(m[2]) - ord('a')}", {})[m[3]] = name
    out = {keras_name: module for keras_name, module in _STEM_TOP.items() if keras_name in layer_names}
    for block, layers in blocks.items():
        if "dwconv2" in layers:
            table = _MBCONV if "expand_conv" in layers else _SEPARABLE
        else:
            table = _FUSED if "expand_conv" in layers else _CONV
        out.update({name: f"{block}.{table[part]}" for part, name in layers.items() if part in table})
    return out


def targets(backbone):
    """torch key -> `Target` for every weight of a keras.applications EfficientNetV2 backbone."""
    import keras

    modules = _modules([layer.name for layer in backbone.layers])
    out = {}
    for layer in backbone.layers:
        if not layer.weights:
            continue
        if layer.name not in modules:
            raise ValueError(f"EfficientNetV2 layer {layer.name!r} ({type(layer).__name__}) has no timm counterpart")
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            out.update(torch_weights.depthwise_conv2d(modules[layer.name], layer))
        elif isinstance(layer, keras.layers.Conv2D):
            out.update(torch_weights.conv2d(modules[layer.name], layer))
        elif isinstance(layer, keras.layers.BatchNormalization):
            out.update(torch_weights.batch_norm(modules[layer.name], layer))
        else:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no PyTorch conversion")
    return out
