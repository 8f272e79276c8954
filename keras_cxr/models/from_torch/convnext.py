"""timm ConvNeXt keys -> keras.applications ConvNeXt layers (`convnext_t/s/b/l`, `tiny_convnext`).

timm's `convnext_tiny` / `_small` / `_base` / `_large` state_dicts: ``stem.0``
(4x4/4 conv) and ``stem.1`` (LayerNorm), ``stages.S.downsample.0`` / ``.1``
(LayerNorm, 2x2/2 conv; stages 1-3), ``stages.S.blocks.B.conv_dw`` (7x7
depthwise conv), ``.norm``, ``.mlp.fc1``, ``.mlp.fc2`` (Linear) and ``.gamma``
(layer scale), and ``head.norm``: the LayerNorm after global average pooling,
which keras-cxr's ConvNeXt (`pooling="avg"`) has too. ``head.fc`` is the
classifier, dropped.
"""

import re

from keras_cxr.models import torch_weights

HEAD = re.compile(r"^head\.fc\.")
_LAYER = re.compile(
    r".*_(?:(stem)_(conv|layernorm)|downsampling_(conv|layernorm)_(\d)"
    r"|stage_(\d)_block_(\d+)_(depthwise_conv|layernorm|pointwise_conv_1|pointwise_conv_2|layer_scale))$"
)
_STEM = {"conv": "stem.0", "layernorm": "stem.1"}
_DOWNSAMPLE = {"layernorm": "0", "conv": "1"}
_BLOCK = {"depthwise_conv": "conv_dw", "layernorm": "norm", "pointwise_conv_1": "mlp.fc1",
          "pointwise_conv_2": "mlp.fc2", "layer_scale": "gamma"}


def _module(layer_name):
    """The timm module path of a keras.applications ConvNeXt layer (``gamma`` for a LayerScale)."""
    m = _LAYER.fullmatch(layer_name)
    if m is None:
        raise ValueError(f"ConvNeXt layer {layer_name!r} has no PyTorch counterpart")
    if m[1]:
        return _STEM[m[2]]
    if m[3]:  # keras.applications counts downsampling blocks 0-2; timm's belong to stages 1-3
        return f"stages.{int(m[4]) + 1}.downsample.{_DOWNSAMPLE[m[3]]}"
    return f"stages.{m[5]}.blocks.{m[6]}.{_BLOCK[m[7]]}"


def _layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):  # the stem and downsampling blocks are nested Sequentials
            yield from _layers(layer)
        else:
            yield layer


def targets(backbone):
    """torch key -> `Target` for every weight of a keras.applications ConvNeXt backbone (`pooling="avg"`)."""
    import keras

    layers = list(_layers(backbone))
    out = {}
    for layer in layers:
        if not layer.weights:
            continue
        if layer is layers[-1] and isinstance(layer, keras.layers.LayerNormalization):
            out.update(torch_weights.layer_norm("head.norm", layer))  # the pooled features' LayerNorm
        elif isinstance(layer, keras.layers.Conv2D) and layer.groups > 1:
            out.update(torch_weights.depthwise_conv2d(_module(layer.name), layer))
        elif isinstance(layer, keras.layers.Conv2D):
            out.update(torch_weights.conv2d(_module(layer.name), layer))
        elif isinstance(layer, keras.layers.LayerNormalization):
            out.update(torch_weights.layer_norm(_module(layer.name), layer))
        elif isinstance(layer, keras.layers.Dense):
            out.update(torch_weights.dense(_module(layer.name), layer))
        elif layer.name.endswith("_layer_scale"):
            out[_module(layer.name)] = torch_weights.Target(layer.gamma, tuple(layer.gamma.shape))
        else:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no PyTorch conversion")
    return out


def hint(mismatched):
    """Which model a stem of this width belongs to."""
    widths = {96: "convnext_t or convnext_s", 128: "convnext_b", 192: "convnext_l"}
    for key, got, want in mismatched:
        if key == "stem.0.weight" and got[0] != want[0] and got[0] in widths:
            return f"A {got[0]}-channel stem is timm's layout for {widths[got[0]]}"
    return ""
