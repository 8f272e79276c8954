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

Families, one module each in `keras_cxr.models.from_torch` (`FAMILIES`):
`densenet` (`densenet121`, `densenet121_xrv`: torchvision / torchxrayvision
keys), `efficientnet_v2` (`effv2_b0/b1/b2/b3/s/m/l`: timm `tf_efficientnetv2_*`
keys), `convnext` (`convnext_t/s/b/l`: timm `convnext_*`) and `swin`
(`swin_t/s/b/l`: timm `swin_*_patch4_window*`). A family module says which
torch key feeds which Keras variable (`targets(backbone)`, built from
`conv2d`, `batch_norm`, ... here), which keys
are the classifier (`HEAD`), and optionally how to spell keys canonically
(`canonical`) and a layout hint for mis-shaped keys (`hint`).

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

_PREFIXES = ("module.", "model.")  # DataParallel / training wrappers
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")
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


FAMILIES = {
    "densenet": "keras_cxr.models.from_torch.densenet",
    "efficientnet_v2": "keras_cxr.models.from_torch.efficientnet_v2",
    "convnext": "keras_cxr.models.from_torch.convnext",
    "swin": "keras_cxr.models.from_torch.swin",
}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one torch tensor goes: `variable` (a Keras variable) gets `to_keras(array)`; `shape` is torch's."""

    variable: object
    shape: tuple
    to_keras: object = None

    def assign(self, array):
        self.variable.assign(array if self.to_keras is None else self.to_keras(array))


def _oihw_to_hwio(array):
    return array.transpose(2, 3, 1, 0)


def _depthwise_to_keras(array):  # torch (C, 1, H, W) -> Keras (H, W, C, 1)
    return array.transpose(2, 3, 0, 1)


def _transpose(array):
    return array.T


def conv2d(module, layer):
    """`{module}.weight` (and `.bias`) of a torch Conv2d -> Keras `Conv2D` `layer`."""
    h, w, i, o = layer.kernel.shape
    out = {f"{module}.weight": Target(layer.kernel, (o, i, h, w), _oihw_to_hwio)}
    if layer.use_bias:
        out[f"{module}.bias"] = Target(layer.bias, (o,))
    return out


def depthwise_conv2d(module, layer):
    """A torch depthwise Conv2d (groups = channels, multiplier 1) -> Keras `DepthwiseConv2D` or grouped `Conv2D`."""
    import keras

    kernel = layer.kernel if isinstance(layer, keras.layers.DepthwiseConv2D) else None
    if kernel is None:  # Conv2D(groups=channels): kernel (H, W, 1, C) is torch's (C, 1, H, W) transposed as usual
        return conv2d(module, layer)
    h, w, c, m = kernel.shape
    out = {f"{module}.weight": Target(kernel, (c * m, 1, h, w), _depthwise_to_keras)}
    if layer.use_bias:
        out[f"{module}.bias"] = Target(layer.bias, (c * m,))
    return out


def batch_norm(module, layer):
    """torch BatchNorm weight / bias / running_mean / running_var -> Keras gamma / beta / moving statistics."""
    variables = (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)
    return {f"{module}.{suffix}": Target(v, tuple(v.shape)) for suffix, v in zip(_BN, variables) if v is not None}


def dense(module, layer):
    """torch Linear weight (out, in) / bias -> Keras `Dense` kernel (in, out) / bias."""
    i, o = layer.kernel.shape
    out = {f"{module}.weight": Target(layer.kernel, (o, i), _transpose)}
    if layer.use_bias:
        out[f"{module}.bias"] = Target(layer.bias, (o,))
    return out


def layer_norm(module, layer):
    """torch LayerNorm weight / bias -> Keras `LayerNormalization` gamma / beta."""
    return {f"{module}.{suffix}": Target(v, tuple(v.shape))
            for suffix, v in (("weight", layer.gamma), ("bias", layer.beta)) if v is not None}


def family_module(family):
    """The conversion module of `family` (a key of `FAMILIES`), imported."""
    import importlib

    if family not in FAMILIES:
        raise ValueError(f"no PyTorch conversion for family {family!r}; families with one: {', '.join(FAMILIES)} "
                         "(keras_cxr.models.spec(name).family)")
    return importlib.import_module(FAMILIES[family])


def _canonical(key, family):
    """A key without wrapper prefixes, in the family's canonical spelling."""
    changed = True
    prefixes = _PREFIXES + tuple(getattr(family, "PREFIXES", ()))
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    canonical = getattr(family, "canonical", None)
    return key if canonical is None else canonical(key)


def _mismatch(source, family, missing, unexpected, mismatched):
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''} ({listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''} ({listing(unexpected)})")
    if mismatched:
        shown = listing([f"{k}: checkpoint {tuple(a)}, model {tuple(b)}" for k, a, b in mismatched], quote=False)
        parts.append(f"{len(mismatched)} mis-shaped tensor{'s' if len(mismatched) > 1 else ''} ({shown})")
    hint = getattr(family_module(family), "hint", lambda mismatched: "")(mismatched)
    return CheckpointMismatch(f"{source} does not fit the {family} backbone: " + "; ".join(parts) + "." + (" " + hint if hint else ""),
                              missing, unexpected, mismatched)


def load_torch_state_dict(model_or_backbone, path_or_state_dict, family):
    """Load a PyTorch `state_dict` into a keras-cxr backbone, converting layouts.

    Args:
        model_or_backbone: a model from `keras_cxr.models.build` (its
            `"backbone"` layer is loaded) or a backbone itself.
        path_or_state_dict: a `state_dict` file (`.pt`, `.pth`, `.bin`) or
            mapping; see `read_state_dict`.
        family: a family with a conversion, a key of `FAMILIES`: `"densenet"`
            (the family of `densenet121` and `densenet121_xrv`) or
            `"efficientnet_v2"` (`effv2_b0` ... `effv2_l`, `tiny_effv2`); see
            `keras_cxr.models.spec(name).family`.

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

    module = family_module(family)
    try:
        backbone = model_or_backbone.get_layer("backbone")
    except ValueError:
        backbone = model_or_backbone
    source = "the state_dict" if isinstance(path_or_state_dict, Mapping) else \
        f"PyTorch checkpoint {os.fspath(path_or_state_dict)}"
    state, dropped, unexpected = {}, [], []
    targets = module.targets(backbone)
    ignored = getattr(module, "IGNORED", None)
    for key, tensor in read_state_dict(path_or_state_dict).items():
        key = _canonical(key, module)
        if _IGNORED.search(key) or (ignored is not None and ignored.search(key)):
            continue
        if module.HEAD.match(key):
            dropped.append((key, tuple(tensor.shape)))
        elif key in targets:
            state[key] = tensor
        else:
            unexpected.append(key)
    missing = [key for key in targets if key not in state]
    mismatched = [(k, tuple(t.shape), targets[k].shape) for k, t in state.items() if tuple(t.shape) != targets[k].shape]
    if missing or unexpected or mismatched:
        raise _mismatch(source, family, missing, unexpected, mismatched)
    for key, tensor in state.items():
        targets[key].assign(tensor.detach().to("cpu").float().numpy())
    return Conversion(family, len(state), tuple(dropped))
