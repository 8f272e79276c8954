"""`cxr_resnet`: a small ResNet with basic blocks that trains on a CPU.

Stem Conv3x3(stride 2)+BN+ReLU, then one stage per width; each stage's first
block has stride 1 (first stage) or 2 (the others). A basic block is two 3x3
conv+BN with a 1x1 conv+BN projection shortcut where the stride or width
changes. Inputs are 0-255 pixels, rescaled to [-1, 1] inside.
"""

from keras_cxr.models import weights as weights_lib
from keras_cxr.models.registry import register_family

WIDTHS = (32, 64, 128, 256)
BLOCKS = (1, 1, 1, 1)
STEM_WIDTH = 32
# Registered sizes: (widths, blocks, stem width). The wide and deep ones are
# the study's width and depth rows (README, "Choosing the CPU recipe").
VARIANTS = {
    "cxr_resnet": (WIDTHS, BLOCKS, STEM_WIDTH),
    "cxr_resnet_wide": ((48, 96, 192, 384), BLOCKS, 48),
    "cxr_resnet_deep": (WIDTHS, (2, 2, 2, 2), STEM_WIDTH),
}
BN_MOMENTUM = 0.9


def _conv_bn(x, filters, kernel_size, strides, name, relu=True):
    import keras

    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=f"{name}_conv",
    )(x)
    # Momentum 0.9 (torch's 0.1): Keras's default 0.99 lags far behind the
    # weights in short from-scratch runs, and validation then sees stale
    # statistics.
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _basic_block(x, filters, strides, name):
    import keras

    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, f"{name}_proj", relu=False)
    x = _conv_bn(x, filters, 3, strides, f"{name}_1")
    x = _conv_bn(x, filters, 3, 1, f"{name}_2", relu=False)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def cxr_resnet_backbone(
    image_size, widths=WIDTHS, blocks=BLOCKS, stem_width=STEM_WIDTH, name="backbone"
):
    """The `cxr_resnet` feature extractor.

    Args:
        image_size: input side in pixels.
        widths: channels of each stage.
        blocks: basic blocks per stage (same length as `widths`).
        stem_width: channels of the stride-2 stem convolution.
        name: the model's name.

    Returns:
        A functional `keras.Model`: 0-255 images to the last feature map
        `(batch, image_size / 2**len(widths), ..., widths[-1])`.

    Example:
    ```python
    backbone = cxr_resnet_backbone(128, widths=(16, 32, 64, 128))
    ```
    """
    if len(widths) != len(blocks) or not widths or min(blocks) < 1:
        raise ValueError(
            f"widths and blocks need the same, non-zero length and blocks >= 1; "
            f"got widths={widths}, blocks={blocks}"
        )
    import keras

    images = keras.Input((image_size, image_size, 3), name="images")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(images)
    x = _conv_bn(x, stem_width, 3, 2, "stem")
    for stage, (width, count) in enumerate(zip(widths, blocks)):
        for block in range(count):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, width, strides, f"stage{stage + 1}_block{block + 1}")
    return keras.Model(images, x, name=name)


def _features(images, name, image_size, source):
    if source.kind not in (weights_lib.NONE, weights_lib.FILE):
        raise weights_lib.unsupported(source, name, ["None", "a .weights.h5 file"])
    import keras

    widths, blocks, stem_width = VARIANTS[name]
    backbone = cxr_resnet_backbone(image_size, widths=widths, blocks=blocks, stem_width=stem_width)
    if source.kind == weights_lib.FILE:
        weights_lib.load_file(backbone, source.path, name)
    x = backbone(images)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


register_family(
    "cxr_resnet",
    _features,
    [
        # name, default image size, default dropout, params, description
        ("cxr_resnet", 128, 0.2, "1.23M", "Small ResNet (basic blocks, widths 32-256) for CPU training."),
        ("cxr_resnet_wide", 128, 0.2, "2.76M", "cxr_resnet 1.5x as wide (widths 48-384)."),
        ("cxr_resnet_deep", 128, 0.2, "2.80M", "cxr_resnet with two blocks per stage."),
    ],
    accelerated=True,
)
