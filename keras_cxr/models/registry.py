"""Registry of model names, their specs and builders; `build` assembles models.

Every family module registers its names with `register`; `build` then turns a
name into a functional `keras.Model`:

    images (0-255 RGB) -> [normalisation] -> backbone -> pooling
        -> Dropout -> Dense("logits", float32) -> softmax("probs", float32)

The nested backbone is always the layer named ``"backbone"``. Models of
keras-cxr's own families (`ModelSpec.accelerated`) are marked for
`keras_cxr.accel`, and every built model goes through `keras_cxr.accel.prepare`.

Registering and looking up names imports neither Keras nor torch: `build`
imports Keras, and the builders import what they need.
"""

import dataclasses
import difflib

from keras_cxr import accel
from keras_cxr.accel import marks
from keras_cxr.models import torch_weights
from keras_cxr.models import weights as weights_lib
from keras_cxr.models.head import classification_head


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a model name stands for (for listings; `build` uses it too).

    Attributes:
        name: the registry name, e.g. `"effv2_s"`.
        family: the backbone family, e.g. `"efficientnet_v2"`.
        default_image_size: side of the square input when `image_size=None`.
        default_dropout: head dropout when `dropout=None`.
        description: one line for CLI/README listings.
        params: parameter count of `build(name)` (4 classes, default size),
            rounded, e.g. "20.3M"; Keras counts BatchNorm statistics too.
        pretrained: where `weights="imagenet"` loads from, or None if the
            model has no pretrained weights.
        accelerated: keras-cxr's own architecture: `build` marks it so
            keras_cxr.accel may walk its graph and trace it; user
            registrations stay unmarked unless they set it.
    """

    name: str
    family: str
    default_image_size: int
    default_dropout: float
    description: str
    params: str
    pretrained: str | None = None
    accelerated: bool = False


_REGISTRY = {}


def register(spec, builder):
    """Register a model name.

    Args:
        spec: its `ModelSpec`.
        builder: `builder(images, name, image_size, source)` that applies
            normalisation, backbone and pooling to the `images` KerasTensor
            and returns the pooled `(batch, channels)` features; `source` is a
            `weights.WeightsSource`.

    Example:
    ```python
    register(ModelSpec("my_net", "mine", 128, 0.2, "My net.", "1.0M"), my_builder)
    ```
    """
    if spec.name in _REGISTRY:
        raise ValueError(f"model name {spec.name!r} is already registered")
    _REGISTRY[spec.name] = (spec, builder)


def register_family(family, builder, rows, pretrained=None, accelerated=False):
    """Register the names of one family, all built by `builder`.

    Args:
        family: their `ModelSpec.family`.
        builder: see `register`.
        rows: one `(name, default_image_size, default_dropout, params,
            description)` tuple per name: its `ModelSpec` fields.
        pretrained: name -> its `ModelSpec.pretrained`; names not in it have
            no pretrained weights.
        accelerated: their `ModelSpec.accelerated` (True only for
            keras-cxr's own families).

    Example:
    ```python
    register_family("mine", my_builder, [("my_net", 128, 0.2, "1.0M", "My net.")])
    ```
    """
    pretrained = pretrained or {}
    for name, image_size, dropout, params, description in rows:
        register(
            ModelSpec(
                name, family, image_size, dropout, description, params, pretrained.get(name),
                accelerated,
            ),
            builder,
        )


def names():
    """All registered model names, sorted.

    Example:
    ```python
    keras_cxr.models.names()  # ["convnext_b", ..., "tiny_swin"]
    ```
    """
    return sorted(_REGISTRY)


def _entry(name):
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown model name {name!r}.{hint} Valid names: {', '.join(names())}"
        )
    return _REGISTRY[name]


def spec(name):
    """The `ModelSpec` of a model name.

    Args:
        name: a registered model name.

    Raises:
        ValueError: unknown name (the message lists the valid names).

    Example:
    ```python
    keras_cxr.models.spec("effv2_s").default_image_size  # 384
    ```
    """
    return _entry(name)[0]


def build(name, num_classes=4, image_size=None, dropout=None, weights=None):
    """Build a classifier that maps 0-255 RGB images to class probabilities.

    The model normalises its input itself, so feed raw pixels (uint8 or
    float32, values 0-255, shape `(batch, image_size, image_size, 3)`). Its
    output is softmax probabilities in float32, also under `mixed_float16`.
    The backbone is the nested layer `model.get_layer("backbone")`.

    Args:
        name: a model name, see `names()`.
        num_classes: number of classes (default 4).
        image_size: side of the square input; None means the name's
            `spec(name).default_image_size`.
        dropout: dropout before the classifier; None means the name's
            `spec(name).default_dropout`.
        weights: None (random initialisation), `"imagenet"` (downloads the
            pretrained backbone: keras.applications weights or the keras-hub
            preset in `spec(name).pretrained`), a local keras-hub preset
            directory (keras-hub families), or a `.weights.h5` file that is
            loaded into the backbone (e.g. written by
            `model.get_layer("backbone").save_weights(path)`), or a PyTorch
            `state_dict` file (`.pt`, `.pth`, `.bin`) converted into the
            backbone, for families in `torch_weights.FAMILIES`
            (`densenet121`, `densenet121_xrv`, `effv2_b0/b1/b2/b3/s/m/l`,
            `convnext_t/s/b/l`, `swin_t/s/b/l` and their tiny versions).

    Returns:
        A functional `keras.Model` named after `name`, marked for
        `keras_cxr.accel` when `spec(name).accelerated`.

    Raises:
        ValueError: unknown name, bad argument, missing path, or weights that
            the family cannot use.

    Example:
    ```python
    model = keras_cxr.models.build("tiny_effv2", image_size=64)
    probs = model.predict(np.zeros((2, 64, 64, 3), "uint8"))  # (2, 4)
    ```
    """
    model_spec, builder = _entry(name)
    image_size = model_spec.default_image_size if image_size is None else image_size
    dropout = model_spec.default_dropout if dropout is None else dropout
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    source = weights_lib.resolve(weights)
    if source.kind == weights_lib.TORCH and model_spec.family not in torch_weights.FAMILIES:
        convertible = [n for n in names() if _REGISTRY[n][0].family in torch_weights.FAMILIES]
        raise torch_weights.CheckpointError(f"model {name!r} cannot load PyTorch checkpoints ({source.path}); "
                                            f"keras-cxr converts them for {', '.join(convertible)}")

    import keras

    images = keras.Input((image_size, image_size, 3), name="images")
    features = builder(images, name, image_size, source)
    probs = classification_head(features, num_classes, float(dropout))
    model = keras.Model(images, probs, name=name)
    if model_spec.accelerated:
        marks.mark(model)
    accel.prepare(model)
    return model
