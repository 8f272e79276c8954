"""torchvision / torchxrayvision DenseNet keys -> keras.applications DenseNet layers (`densenet121`, `densenet121_xrv`).

Keys: ``features.conv0``, ``features.denseblockB.denselayerL.norm1``, ...,
``features.norm5``, also under a ``densenet.`` prefix and in torchvision's
old ``norm.1`` spelling; torchxrayvision's `op_threshs` buffer is ignored.
"""

import re

from keras_cxr.models import torch_weights

PREFIXES = ("densenet.",)
HEAD = re.compile(r"^classifier\.")
IGNORED = re.compile(r"^op_threshs$")
_OLD_DENSE_LAYER = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")


def canonical(key):
    """torchvision's old ``norm.1`` spelling -> ``norm1``."""
    match = _OLD_DENSE_LAYER.match(key)
    return match.group(1) + match.group(2) if match else key


def _module(layer_name):
    """The torch module path of a keras.applications DenseNet layer."""
    if layer_name == "conv1_conv":
        return "features.conv0"
    if layer_name == "conv1_bn":
        return "features.norm0"
    if layer_name == "bn":
        return "features.norm5"
    if (m := re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", layer_name)):
        part = {("0", "bn"): "norm1", ("1", "conv"): "conv1", ("1", "bn"): "norm2", ("2", "conv"): "conv2"}
        return f"features.denseblock{int(m[1]) - 1}.denselayer{m[2]}.{part[m[3], m[4]]}"
    if (m := re.fullmatch(r"pool(\d)_(conv|bn)", layer_name)):
        return f"features.transition{int(m[1]) - 1}.{'conv' if m[2] == 'conv' else 'norm'}"
    raise ValueError(f"DenseNet layer {layer_name!r} has no PyTorch counterpart")


def targets(backbone):
    """torch key -> `Target` for every weight of a keras.applications DenseNet backbone."""
    import keras

    out = {}
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            out.update(torch_weights.conv2d(_module(layer.name), layer))
        elif isinstance(layer, keras.layers.BatchNormalization):
            out.update(torch_weights.batch_norm(_module(layer.name), layer))
        elif layer.weights:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no PyTorch conversion")
    return out


def hint(mismatched):
    """Which model takes a conv0 with this many input channels."""
    for key, got, want in mismatched:
        if key == "features.conv0.weight" and got[1] != want[1]:
            return ("A 1-channel conv0 is torchxrayvision's layout: use model densenet121_xrv" if got[1] == 1
                    else "A 3-channel conv0 is torchvision's layout: use model densenet121")
    return ""
