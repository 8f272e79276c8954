"""DenseNet-121 in torchvision / torchxrayvision layout, for fine-tuning their PyTorch checkpoints.

The backbone is `keras.applications`' DenseNet: its math is torchvision's
`densenet121` layer for layer (stem conv 7x7 stride 2 padding 3, BN, ReLU,
max pool 3x3 stride 2 padding 1; dense layers BN-ReLU-conv1x1(4 x 32)-BN-
ReLU-conv3x3(32) concatenated; transitions BN-ReLU-conv1x1(half)-avg pool
2x2; final BN then ReLU, as torchvision's `forward` applies `F.relu` before
pooling), channels last. Only the names differ, and
`keras_cxr.models.torch_weights` maps them. Its BatchNormalization layers are
set to torch's epsilon 1e-5 (Keras's file says 1.001e-5) and torch's
momentum 0.1 (Keras momentum 0.9).

Two names, one per input convention of the checkpoints:

- `densenet121`: RGB, ImageNet-normalised (torchvision's checkpoints);
- `densenet121_xrv`: one gray channel on [-1024, 1024] (torchxrayvision's
  CXR checkpoints): `XRVNormalization` averages keras-cxr's 0-255 RGB input
  to gray and maps it by ``x / 255 * 2048 - 1024``, as
  ``xrv.datasets.normalize(img, 255)`` then ``img.mean(2)`` does.
"""

from keras_cxr.models import weights as weights_lib
from keras_cxr.models.registry import register_family

BLOCKS = (6, 12, 24, 16)
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
XRV = "densenet121_xrv"


def densenet_backbone(image_size, in_channels=3, blocks=BLOCKS, name="backbone"):
    """A DenseNet-BC feature extractor (growth 32, bottleneck 4 x 32, 64 stem channels), torch's BN settings.

    Args:
        image_size: input side in pixels (>= 32).
        in_channels: 3 (torchvision) or 1 (torchxrayvision).
        blocks: dense layers per block; `(6, 12, 24, 16)` is DenseNet-121.
            Smaller ones (e.g. `(1, 1, 1, 1)`) are for tests.
        name: the model's name.

    Returns:
        A functional `keras.Model`: normalised images `(batch, size, size,
        in_channels)` to the ReLU'd final feature map `(batch, size / 32,
        size / 32, channels)`, 1024 channels for DenseNet-121.

    Example:
    ```python
    backbone = densenet_backbone(224, in_channels=1)
    backbone.output_shape  # (None, 7, 7, 1024)
    ```
    """
    if in_channels not in (1, 3) or len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"in_channels must be 1 or 3 and blocks four numbers >= 1; got {in_channels}, {blocks}")
    import keras
    from keras.src.applications.densenet import DenseNet

    model = DenseNet(list(blocks), include_top=False, weights=None,
                     input_shape=(image_size, image_size, in_channels), name="densenet121")
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.epsilon, layer.momentum = BN_EPSILON, BN_MOMENTUM
    return keras.Model(model.inputs[0], model.outputs[0], name=name)


def _features(images, name, image_size, source):
    if source.kind not in (weights_lib.NONE, weights_lib.FILE, weights_lib.TORCH):
        raise weights_lib.unsupported(
            source, name, ["None", "a .weights.h5 file", "a PyTorch state_dict (.pt, .pth, .bin)"]
        )
    import keras

    from keras_cxr.models import torch_weights
    from keras_cxr.models.layers import ImageNetNormalization, XRVNormalization

    xrv = name == XRV
    x = (XRVNormalization if xrv else ImageNetNormalization)(name="normalize")(images)
    backbone = densenet_backbone(image_size, in_channels=1 if xrv else 3)
    if source.kind == weights_lib.FILE:
        weights_lib.load_file(backbone, source.path, name)
    if source.kind == weights_lib.TORCH:
        torch_weights.load_torch_state_dict(backbone, source.path, "densenet")
    x = backbone(x)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


register_family(
    "densenet",
    _features,
    [
        # name, default image size, default dropout, params, description
        ("densenet121", 224, 0.2, "7.04M",
         "DenseNet-121, torchvision layout, RGB: fine-tunes torchvision .pt checkpoints."),
        (XRV, 224, 0.2, "7.04M",
         "DenseNet-121, torchxrayvision layout, 1 gray channel: fine-tunes xrv CXR checkpoints."),
    ],
    accelerated=True,
)
