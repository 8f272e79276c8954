"""PyTorch `state_dict` files into keras-cxr backbones: read safely, map keys, report mismatches by name.

A checkpoint is read with ``torch.load(path, map_location="cpu",
weights_only=True)``: tensors and plain containers only, never pickled code.
Its keys are mapped onto the backbone's Keras layers (convolutions OIHW ->
HWIO; BatchNorm weight / bias / running_mean / running_var -> gamma / beta /
moving_mean / moving_variance). Everything must fit: missing, unexpected and
mis-shaped keys are named in one `CheckpointMismatch`. Ignored: BN's
`num_batches_tracked` and torchxrayvision's `op_threshs` buffer. Dropped,
with a note in the returned `Conversion`: the checkpoint's classifier
(`classifier.*`); keras-cxr's head is trained anew for your classes.

Families: `densenet` (`densenet121`, `densenet121_xrv`): torchvision's
`densenet121` and torchxrayvision's `DenseNet` keys (``features.conv0``,
``features.denseblockB.denselayerL.norm1``, ..., ``features.norm5``), also
under a ``module.`` / ``model.`` / ``densenet.`` prefix and in
torchvision's old ``norm.1`` spelling.

Importing this module imports neither Keras nor torch.

Example:
```python
backbone = densenet.densenet_backbone(224, in_channels=1)
conversion = load_torch_state_dict(backbone, "xrv_densenet121.pt", "densenet")
print(conversion.summary())  # converted 604 tensors ...; dropped classifier.weight (18, 1024), ...
```
"""

import dataclasses
import os
import re
from collections.abc import Mapping

from keras_cxr.errors import FieldError, listing

_PREFIXES = ("module.", "model.", "densenet.")
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$|^op_threshs$")
_HEAD = re.compile(r"^classifier\.")
_OLD_DENSE_LAYER = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")
_BN = ("weight", "bias", "running_mean", "running_var")  # Keras's order: gamma, beta, moving_mean, moving_variance


class CheckpointError(FieldError):
    """A PyTorch checkpoint cannot be used: not a weights-only `state_dict`, or a model without a conversion."""


class CheckpointMismatch(CheckpointError):
    """A `state_dict` does not fit the backbone: its keys, named.

    Attributes:
        missing: backbone keys absent from the checkpoint.
        unexpected: checkpoint keys the backbone has no place for.
        mismatched: `(key, checkpoint shape, backbone shape)` triples.
    """

    def __init__(self, template, missing=(), unexpected=(), mismatched=()):
        super().__init__(template)
        self.missing, self.unexpected, self.mismatched = tuple(missing), tuple(unexpected), tuple(mismatched)


@dataclasses.dataclass(frozen=True)
class Conversion:
    """What `load_torch_state_dict` did.

    Attributes:
        family: the family converted, e.g. `"densenet"`.
        tensors: how many checkpoint tensors were loaded.
        dropped: `(key, shape)` of the checkpoint's classifier tensors, not loaded.
    """

    family: str
    tensors: int
    dropped: tuple = ()

    def summary(self):
        """One line: tensors converted and what was dropped."""
        text = f"converted {self.tensors} tensors ({self.family})"
        if self.dropped:
            shown = listing([f"{key} {tuple(shape)}" for key, shape in self.dropped], quote=False)
            text += f"; dropped the checkpoint's classifier ({shown}): keras-cxr's head is trained for your classes"
        return text


def read_state_dict(path_or_state_dict):
    """A `{key: tensor}` dict from a PyTorch file (weights only) or a mapping.

    Args:
        path_or_state_dict: a path to a file written by
            ``torch.save(model.state_dict(), path)`` (a training checkpoint
            holding it under ``"state_dict"`` or ``"model"`` works too), or
            such a mapping itself.

    Returns:
        A dict of key -> `torch.Tensor`.

    Raises:
        CheckpointError: the file is missing, is no torch file, needs code to
            unpickle (a whole saved model), or holds no tensors.

    Example:
    ```python
    state = read_state_dict("densenet121.pth")
    state["features.conv0.weight"].shape  # torch.Size([64, 3, 7, 7])
    ```
    """
    import torch

    name = "the state_dict"
    state = path_or_state_dict
    if not isinstance(state, Mapping):
        name = os.fspath(path_or_state_dict)
        if not os.path.isfile(name):
            raise CheckpointError(f"PyTorch checkpoint {name} does not exist")
        try:
            state = torch.load(name, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and torch errors of several types
            reason = " ".join(str(e).split("\n")[0].split())[:200]
            raise CheckpointError(
                f"PyTorch checkpoint {name} cannot be read as a state_dict without running code "
                f"(torch.load(weights_only=True): {reason}). If it holds a whole pickled model "
                "(torchxrayvision's downloaded .pt files do), save its weights where that model's code is "
                "installed: torch.save(model.state_dict(), 'state_dict.pt')"
            ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"PyTorch checkpoint {name} holds a {type(state).__name__}, not a state_dict")
    others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others or not state:
        raise CheckpointError(f"PyTorch checkpoint {name} is not a state_dict of tensors"
                              + (f": {listing(others)} are not tensors" if others else ": it is empty"))
    return dict(state)


def _canonical(key):
    """A key without wrapper prefixes, in torchvision's current spelling."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    match = _OLD_DENSE_LAYER.match(key)
    return match.group(1) + match.group(2) if match else key


def _densenet_module(layer_name):
    """The torch module path of a keras.applications DenseNet layer, or None for layers without weights."""
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
    return None


FAMILIES = {"densenet": _densenet_module}


def _targets(backbone, module_of):
    """torch key -> (layer, slot, expected torch shape) for every weight of `backbone`."""
    import keras

    targets = {}
    for layer in backbone.layers:
        if not layer.weights:
            continue
        module = module_of(layer.name)
        if module is None:
            raise ValueError(f"layer {layer.name!r} of {backbone.name!r} has no PyTorch counterpart")
        if isinstance(layer, keras.layers.Conv2D):
            h, w, i, o = layer.kernel.shape
            targets[f"{module}.weight"] = (layer, 0, (o, i, h, w))
        elif isinstance(layer, keras.layers.BatchNormalization):
            for slot, suffix in enumerate(_BN):
                targets[f"{module}.{suffix}"] = (layer, slot, tuple(layer.weights[slot].shape))
        else:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no PyTorch conversion")
    return targets


def _family(family):
    if family not in FAMILIES:
        raise ValueError(f"no PyTorch conversion for family {family!r}; families with one: {', '.join(FAMILIES)} "
                         "(keras_cxr.models.spec(name).family)")
    return family


def _mismatch(source, family, missing, unexpected, mismatched):
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''} ({listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''} ({listing(unexpected)})")
    if mismatched:
        shown = listing([f"{k}: checkpoint {tuple(a)}, model {tuple(b)}" for k, a, b in mismatched], quote=False)
        parts.append(f"{len(mismatched)} mis-shaped tensor{'s' if len(mismatched) > 1 else ''} ({shown})")
    hint = ""
    for key, got, want in mismatched:
        if key == "features.conv0.weight" and got[1] != want[1]:
            hint = (" A 1-channel conv0 is torchxrayvision's layout: use model densenet121_xrv"
                    if got[1] == 1 else " A 3-channel conv0 is torchvision's layout: use model densenet121")
    return CheckpointMismatch(f"{source} does not fit the {family} backbone: " + "; ".join(parts) + "." + hint,
                              missing, unexpected, mismatched)


def load_torch_state_dict(model_or_backbone, path_or_state_dict, family):
    """Load a PyTorch `state_dict` into a keras-cxr backbone, converting layouts.

    Args:
        model_or_backbone: a model from `keras_cxr.models.build` (its
            `"backbone"` layer is loaded) or a backbone itself.
        path_or_state_dict: a `state_dict` file (`.pt`, `.pth`, `.bin`) or
            mapping; see `read_state_dict`.
        family: a family with a conversion, a key of `FAMILIES`: `"densenet"`
            (the family of `densenet121` and `densenet121_xrv`, see
            `keras_cxr.models.spec(name).family`).

    Returns:
        A `Conversion`: tensors loaded and classifier keys dropped.

    Raises:
        CheckpointError: the file is no weights-only `state_dict`.
        CheckpointMismatch: missing, unexpected or mis-shaped keys (all
            named, the first five of each in the message); nothing is loaded.
        ValueError: a family without a conversion.

    Example:
    ```python
    model = keras_cxr.models.build("densenet121_xrv", num_classes=4)
    load_torch_state_dict(model, "xrv_densenet121.pt", "densenet").tensors  # 604
    ```
    """
    import numpy as np

    family = _family(family)
    try:
        backbone = model_or_backbone.get_layer("backbone")
    except ValueError:
        backbone = model_or_backbone
    source = "the state_dict" if isinstance(path_or_state_dict, Mapping) else \
        f"PyTorch checkpoint {os.fspath(path_or_state_dict)}"
    state, dropped, unexpected = {}, [], []
    targets = _targets(backbone, FAMILIES[family])
    for key, tensor in read_state_dict(path_or_state_dict).items():
        key = _canonical(key)
        if _IGNORED.search(key):
            continue
        if _HEAD.match(key):
            dropped.append((key, tuple(tensor.shape)))
        elif key in targets:
            state[key] = tensor
        else:
            unexpected.append(key)
    missing = [key for key in targets if key not in state]
    mismatched = [(k, tuple(t.shape), targets[k][2]) for k, t in state.items() if tuple(t.shape) != targets[k][2]]
    if missing or unexpected or mismatched:
        raise _mismatch(source, family, missing, unexpected, mismatched)
    values = {}
    for key, tensor in state.items():
        layer, slot, _ = targets[key]
        array = tensor.detach().to("cpu").float().numpy()
        values.setdefault(layer.name, [None] * len(layer.weights))[slot] = (
            np.transpose(array, (2, 3, 1, 0)) if array.ndim == 4 else array
        )
    for layer in backbone.layers:
        if layer.name in values:
            layer.set_weights(values[layer.name])
    return Conversion(family, len(state), tuple(dropped))
