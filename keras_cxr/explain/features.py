"""Where a class-activation map is read: a model that also returns a spatial feature tensor.

Every keras-cxr model is a chain (see `keras_cxr.models.registry`):

    images -> [normalize] -> backbone -> [pool] -> head_dropout -> logits -> probs

`feature_model` rebuilds that chain with the backbone swapped for a model
that returns two tensors, the feature tensor a map is read from and the
backbone's usual output, so one forward pass gives the features and the
class logits (the pre-softmax scores Grad-CAM differentiates). The layers
and weights are the model's own.

Which tensor, by what the backbone returns:

- a feature map `(batch, h, w, channels)` (cxr_resnet, EfficientNetV2):
  that map, the last convolutional stage;
- pooled features `(batch, channels)` (keras.applications ConvNeXt pools
  inside): the last 4-D tensor inside the backbone, its last stage;
- tokens `(batch, tokens, channels)`: Swin's last-stage tokens (every token
  reaches the mean-pooled head); for DINOv2, whose head reads only the CLS
  token, the tokens entering the last transformer block (the last block's
  output patch tokens never reach the CLS token, so their gradient is zero).
  Tokens are laid out on their square patch grid after dropping the CLS and
  register tokens in front.
"""

import dataclasses
import math

from keras_cxr.errors import FieldError

# CLS + register tokens in front of the patch tokens: DINOv2 has 1 (+4 with registers).
_MAX_PREFIX_TOKENS = 5


class ExplainError(FieldError):
    """A model or input that a class-activation map cannot be made for."""


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
    """How to read the feature tensor of a `feature_model` as a map.

    Attributes:
        kind: ``"map"`` for `(batch, h, w, c)` features, ``"tokens"`` for
            `(batch, tokens, c)`.
        grid: `(h, w)` of the map, or of the patch grid for tokens.
        prefix_tokens: tokens before the patch tokens (CLS, registers).
        source: which tensor it is, in words (for reports).
    """

    kind: str
    grid: tuple[int, int]
    prefix_tokens: int
    source: str


def _chain(model):
    """The model's layers after its input, checked to form one chain ending in ``logits``."""
    names = [layer.name for layer in model.layers]
    if "backbone" not in names or "logits" not in names:
        raise ExplainError(
            f"{{model}} {model.name!r} has no 'backbone' and 'logits' layers: class-activation maps need a model "
            "built by keras_cxr.models.build (or loaded from its .keras file)", model="model")
    chain = []
    for layer in model.layers[1:]:
        chain.append(layer)
        if layer.name == "logits":
            return chain
    raise ExplainError(f"{{model}} {model.name!r}: no 'logits' layer after the input", model="model")


def _token_grid(tokens, where):
    side = math.isqrt(tokens)
    prefix = tokens - side * side
    if prefix > _MAX_PREFIX_TOKENS or side == 0:
        raise ExplainError(f"{{model}}: {where} has {tokens} tokens, which do not form a square patch grid "
                           f"after at most {_MAX_PREFIX_TOKENS} CLS/register tokens", model="model")
    return (side, side), prefix


def _dinov2_block_input(backbone):
    """The tokens entering the last transformer block of a DINOv2 backbone (see the module docstring)."""
    encoder = next((layer for layer in backbone.layers if type(layer).__name__ == "DINOV2Encoder"), None)
    if encoder is None:
        return None
    if encoder.num_layers < 2:
        return encoder.input, "the tokens entering its only transformer block"
    import keras

    # Keras hands back (x, {"stage1": ..., ...}) flattened, dict keys sorted as strings.
    layout = (None, {f"stage{i}": None for i in range(1, encoder.num_layers + 1)})
    _, stages = keras.tree.pack_sequence_as(layout, keras.tree.flatten(encoder.output))
    return stages[f"stage{encoder.num_layers - 1}"], f"the tokens entering transformer block {encoder.num_layers}"


def _swin_last_stage_input(backbone):
    """The tokens entering the last stage of a keras-hub Swin backbone (see the module docstring)."""
    stages = [layer for layer in backbone.layers if type(layer).__name__ == "SwinTransformerStage"]
    if len(stages) < 2:
        return None
    return stages[-2].output, f"the tokens entering the last stage ({stages[-1].name!r})"


def _last_map_inside(backbone):
    for layer in reversed(backbone.layers):
        if len(layer._inbound_nodes) != 1 or type(layer).__name__ == "InputLayer":
            continue
        output = layer.output
        if not isinstance(output, (list, tuple, dict)) and len(output.shape) == 4:
            return output, f"the output of {layer.name!r} (its last 4-D feature map)"
    return None


def _feature_tensor(backbone):
    """(tensor inside `backbone`, FeatureLayout) for the map of this backbone."""
    output = backbone.output
    rank = len(output.shape)
    if rank == 4:
        return output, FeatureLayout("map", tuple(output.shape[1:3]), 0, "the backbone's feature map")
    if rank == 3:
        found = _dinov2_block_input(backbone) or _swin_last_stage_input(backbone)
        tensor, source = found if found else (output, "the backbone's last-stage tokens")
        grid, prefix = _token_grid(int(tensor.shape[1]), source)
        return tensor, FeatureLayout("tokens", grid, prefix, source)
    found = _last_map_inside(backbone) if hasattr(backbone, "layers") else None
    if found is None:
        raise ExplainError(
            f"{{model}}: its backbone returns {tuple(output.shape)} and holds no 4-D feature map or token "
            "sequence: there is no convolutional stage or patch grid to map", model="model")
    tensor, source = found
    return tensor, FeatureLayout("map", tuple(tensor.shape[1:3]), 0, source)


def feature_model(model):
    """A model sharing `model`'s layers that returns `[features, logits]`, and how to read the features.

    Args:
        model: a keras-cxr model (`keras_cxr.models.build` or a loaded
            `.keras` file of one).

    Returns:
        `(keras.Model, FeatureLayout)`.

    Raises:
        ExplainError: the model is not a keras-cxr chain, or its backbone
            has no feature map or token grid.

    Example:
    ```python
    cam_model, layout = feature_model(keras_cxr.models.build("cxr_resnet", image_size=64))
    features, logits = cam_model(images)
    ```
    """
    import keras

    chain = _chain(model)
    backbone = model.get_layer("backbone")
    if not hasattr(backbone, "inputs"):
        raise ExplainError(f"{{model}} {model.name!r}: its backbone is not a Keras functional model",
                           model="model")
    tensor, layout = _feature_tensor(backbone)
    both = keras.Model(backbone.inputs, [tensor, backbone.output], name="backbone_with_features")
    images = keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype, name="images")
    x, features = images, None
    for layer in chain:
        if layer is backbone:
            features, x = both(x)
        else:
            x = layer(x)
    return keras.Model(images, [features, x], name=f"{model.name}_features"), layout
